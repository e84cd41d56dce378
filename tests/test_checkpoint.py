"""Atomic checkpoints: verification, corruption fallback, retention."""

import json

import pytest
import torch

from tstrain.train.checkpoint import (
    CheckpointError,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)


def model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def test_save_verify_load_round_trip(tmp_path):
    model, opt = model_and_optimizer()
    path = save_checkpoint(tmp_path, 7, model, opt, {"data_tokens": 10, "at_switch": False})
    assert path.name == "step-00000007" and verify_checkpoint(path)["data_tokens"] == 10
    other, other_opt = model_and_optimizer(seed=1)
    torch.manual_seed(123)
    load_checkpoint(path, other, other_opt)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], other_opt.state_dict()["state"][0]["exp_avg"])


def test_corrupt_or_incomplete_checkpoints_are_skipped_with_a_warning(tmp_path):
    model, opt = model_and_optimizer()
    save_checkpoint(tmp_path, 1, model, opt, {})
    p2 = save_checkpoint(tmp_path, 2, model, opt, {})
    p3 = save_checkpoint(tmp_path, 3, model, opt, {})
    (tmp_path / ".tmp-step-00000004-1").mkdir()  # a crash mid-write leaves only this
    data = bytearray((p3 / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (p3 / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        verify_checkpoint(p3)
    with open(p2 / "optimizer.pt", "r+b") as f:
        f.truncate(10)
    with pytest.raises(CheckpointError, match="truncated"):
        verify_checkpoint(p2)
    with pytest.warns(UserWarning, match="skipping checkpoint step-00000003"):
        path, state = latest_good_checkpoint(tmp_path)
    assert path.name == "step-00000001" and state["step"] == 1
    (tmp_path / "step-00000009").mkdir()
    with pytest.raises(CheckpointError, match="never completed"):
        verify_checkpoint(tmp_path / "step-00000009")


def test_prune_keeps_the_newest_and_the_switch_checkpoint(tmp_path):
    model, opt = model_and_optimizer()
    for step in range(1, 7):
        save_checkpoint(tmp_path, step, model, opt, {"at_switch": step == 2})
    (tmp_path / ".tmp-step-00000007-1").mkdir()
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000005", "step-00000006"]
    assert not list(tmp_path.glob(".tmp-*"))
    assert json.loads((tmp_path / "step-00000002" / "state.json").read_text())["at_switch"]


class Payload:
    """Unpickling this creates a file: the proof that loading ran code from the checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _reseal(path):
    """Rewrite the manifest so tampered files still verify (an attacker can do that too)."""
    from tstrain.fileio import sha256_file

    manifest = json.loads((path / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        meta.update(bytes=(path / name).stat().st_size, sha256=sha256_file(path / name))
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_malicious_pickle_in_optimizer_pt_is_refused_without_running_it(tmp_path):
    import pickle

    model, opt = model_and_optimizer()
    path = save_checkpoint(tmp_path / "ckpts", 1, model, opt, {})
    marker = tmp_path / "pwned"
    (path / "optimizer.pt").write_bytes(pickle.dumps({"state": Payload(marker)}, protocol=2))
    _reseal(path)
    verify_checkpoint(path)
    with pytest.raises(CheckpointError, match="refusing to load .*optimizer.pt.*could run code"):
        load_checkpoint(path, model, opt)
    assert not marker.exists()


def test_a_malicious_dcp_metadata_is_refused_without_running_it(tmp_path):
    import pickle

    import torch.distributed.checkpoint as dcp

    from tstrain.train.checkpoint import check_dcp_metadata

    path = tmp_path / "dcp"
    with pytest.warns(UserWarning):  # DCP warns when it saves without a process group
        dcp.save({"w": torch.ones(3)}, checkpoint_id=path)
    check_dcp_metadata(path)  # genuine metadata passes
    marker = tmp_path / "pwned"
    (path / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match="refusing to load .*metadata"):
        check_dcp_metadata(path)
    assert not marker.exists()
