"""Which fused loss path runs: the Triton kernel only after its self-check passed on the device.

The device is faked through the chooser's seams (``identify``, ``load``, ``check``, ``cache``, ``say``),
so the decision is tested on a machine without a GPU; the self-check itself runs on the CPU with the
chunked path standing in for the kernel, and with a kernel that is wrong.
"""

import json

import pytest
import torch

from tstrain.kernels import KERNEL_ENV, Choice, KernelChooser
from tstrain.kernels.choice import CACHE_FILE, cache_dir, self_check
from tstrain.superposition import _LinearMultiHotCE, fused_loss_path

GPU = "Fake GPU sm_90; torch 9; CUDA 13; triton 4; kernel abc"


class Kernel:
    """A stand-in for the Triton Function: never applied by the chooser's decision."""


class Device:
    """A fake device: its identity, whether triton loads, and a self-check that counts its calls."""

    def __init__(self, tmp_path, identity=GPU, verdict="", loads=True):
        self.identity, self.verdict, self.loads = identity, verdict, loads
        self.checks, self.said = 0, []
        self.cache = tmp_path / "cache"

    def check(self, device, kernel, reference):
        self.checks += 1
        assert kernel is Kernel and reference is _LinearMultiHotCE
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict

    def chooser(self) -> KernelChooser:
        return KernelChooser(identify=lambda device: self.identity, check=self.check, cache=self.cache,
                             load=lambda: (Kernel, "") if self.loads else (None, "triton does not import (no triton)"),
                             say=self.said.append)


@pytest.fixture(autouse=True)
def auto(monkeypatch):
    monkeypatch.delenv(KERNEL_ENV, raising=False)


def test_a_device_that_passed_its_self_check_runs_the_kernel_and_the_verdict_is_kept(tmp_path):
    dev = Device(tmp_path)
    first = dev.chooser()
    assert first.choose("cuda", _LinearMultiHotCE).path == "triton"
    assert first.kernel(torch.device("cuda"), _LinearMultiHotCE) is Kernel
    assert dev.checks == 1  # once in a process
    saved = json.loads((dev.cache / CACHE_FILE).read_text())["verdicts"][GPU]
    assert saved["passed"] is True and saved["detail"] == ""
    second = dev.chooser()  # a new process on the same device and versions: the cached verdict, no check
    assert "passed its self-check" in second.choose("cuda", _LinearMultiHotCE).reason and dev.checks == 1
    second.choose("cuda", _LinearMultiHotCE, refresh=True)  # doctor checks again
    assert dev.checks == 2 and dev.said == []


def test_a_new_version_or_device_is_checked_afresh(tmp_path):
    dev = Device(tmp_path)
    dev.chooser().choose("cuda", _LinearMultiHotCE)
    dev.identity = GPU.replace("torch 9", "torch 10")
    dev.verdict = "bf16 s=4: loss off by 0.5 of its scale (allowed 0.02)"
    choice = dev.chooser().choose("cuda", _LinearMultiHotCE)
    assert dev.checks == 2 and choice.path == "chunked" and "loss off by 0.5" in choice.reason
    assert set(json.loads((dev.cache / CACHE_FILE).read_text())["verdicts"]) == {GPU, dev.identity}


def test_a_failed_check_keeps_the_chunked_path_and_says_so_once(tmp_path):
    dev = Device(tmp_path, verdict="fp32 s=1: head gradient off by 1 of its scale (allowed 0.0001)")
    chooser = dev.chooser()
    for _ in range(3):
        choice = chooser.choose("cuda", _LinearMultiHotCE)
        assert choice.path == "chunked" and chooser.kernel(torch.device("cuda"), _LinearMultiHotCE) is None
    assert "failed its self-check" in choice.reason and "head gradient" in choice.reason
    assert len(dev.said) == 1 and "chunked PyTorch path" in dev.said[0] and "head gradient" in dev.said[0]
    assert dev.checks == 1
    assert json.loads((dev.cache / CACHE_FILE).read_text())["verdicts"][GPU]["passed"] is False
    dev.chooser().choose("cuda", _LinearMultiHotCE)  # the failure is cached too
    assert dev.checks == 1


def test_a_kernel_that_crashes_in_its_check_fails_it_without_stopping(tmp_path):
    dev = Device(tmp_path, verdict=RuntimeError("no kernel image is available for execution on the device"))
    choice = dev.chooser().choose("cuda", _LinearMultiHotCE)
    assert choice.path == "chunked" and "RuntimeError: no kernel image" in choice.reason


def test_without_triton_the_chunked_path_runs_and_forcing_triton_is_refused(tmp_path, monkeypatch):
    dev = Device(tmp_path, loads=False)
    choice = dev.chooser().choose("cuda", _LinearMultiHotCE)
    assert choice == Choice("chunked", "triton does not import (no triton)") and len(dev.said) == 1
    monkeypatch.setenv(KERNEL_ENV, "triton")
    with pytest.raises(RuntimeError, match="TSTRAIN_LOSS_KERNEL=triton, but the Triton kernel cannot load"):
        dev.chooser().choose("cuda", _LinearMultiHotCE)
    assert dev.checks == 0


@pytest.mark.parametrize("forced,path", [("chunked", "chunked"), ("triton", "triton"), (" Triton ", "triton")])
def test_the_variable_forces_a_path_without_a_check(tmp_path, monkeypatch, forced, path):
    dev = Device(tmp_path, verdict="would fail")
    monkeypatch.setenv(KERNEL_ENV, forced)
    choice = dev.chooser().choose("cuda", _LinearMultiHotCE)
    assert choice.path == path and KERNEL_ENV in choice.reason and dev.checks == 0 and dev.said == []


def test_a_bad_value_of_the_variable_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match="set it to auto, triton or chunked"):
        Device(tmp_path).chooser().choose("cuda", _LinearMultiHotCE)


def test_off_cuda_the_chunked_path_runs_unchecked_and_unannounced(tmp_path):
    dev = Device(tmp_path, identity=None)
    choice = dev.chooser().choose("cpu", _LinearMultiHotCE)
    assert choice.path == "chunked" and "CUDA devices only" in choice.reason and dev.checks == 0 and dev.said == []
    assert fused_loss_path("cpu").path == "chunked"  # the process's own chooser, on this machine's CPU


def test_an_unwritable_cache_keeps_the_verdict_in_the_process(tmp_path):
    (tmp_path / "cache").write_text("a file where the dir should be")
    dev = Device(tmp_path)
    dev.cache = tmp_path / "cache" / "tstrain"
    chooser = dev.chooser()
    assert chooser.choose("cuda", _LinearMultiHotCE).path == chooser.choose("cuda", _LinearMultiHotCE).path == "triton"
    assert dev.checks == 1


def test_the_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "tstrain"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "tstrain"


class OffByOnePercent(torch.autograd.Function):
    """The chunked path with its loss 1% too large: a kernel the self-check must reject."""

    @staticmethod
    def forward(ctx, hidden, weight, safe, scales, chunk):
        with torch.enable_grad():
            h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
            loss = _LinearMultiHotCE.apply(h, w, safe, scales, chunk)
            loss.backward()
        ctx.save_for_backward(h.grad, w.grad)
        return loss.detach() * 1.01

    @staticmethod
    def backward(ctx, grad):
        gh, gw = ctx.saved_tensors
        return gh * grad, gw * grad, None, None, None


def test_the_self_check_passes_a_path_equal_to_the_reference_and_names_what_a_wrong_one_gets_wrong():
    cpu = torch.device("cpu")
    assert self_check(cpu, _LinearMultiHotCE, _LinearMultiHotCE) == ""
    found = self_check(cpu, OffByOnePercent, _LinearMultiHotCE)
    assert "float32 s=1: loss off by 0.01" in found and "bfloat16 s=4: loss" in found
    assert "gradient" not in found  # the gradients were right


@pytest.mark.parametrize("fused,path", [("on", "chunked"), ("off", "unfused")])
def test_the_trainer_logs_and_records_the_path_that_ran(tiny_cfg, tmp_path, capsys, fused, path):
    from tstrain.train.loop import train

    summary = train(tiny_cfg(**{"train.steps": 2, "train.fused_loss": fused}), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary.loss_path == saved["loss_path"] == path and saved["loss_path_reason"]
    assert f"loss path: {path} (" in capsys.readouterr().out  # a start line, as "no checkpoint ..."


def test_the_trainer_refuses_a_bad_loss_path_variable_in_one_line(tiny_cfg, tmp_path, monkeypatch):
    from tstrain.errors import ConfigError
    from tstrain.train.loop import train

    monkeypatch.setenv(KERNEL_ENV, "cuda")
    with pytest.raises(ConfigError, match="TSTRAIN_LOSS_KERNEL='cuda' is not a loss path"):
        train(tiny_cfg(**{"train.steps": 2, "train.fused_loss": "on"}), tmp_path / "run")


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"verdicts": [1]}',
                                  json.dumps({"verdicts": {GPU: {"passed": 1}}})])  # a verdict of another layout
def test_a_damaged_cache_file_is_checked_over_and_rewritten(tmp_path, text):
    dev = Device(tmp_path)
    dev.cache.mkdir()
    (dev.cache / CACHE_FILE).write_text(text)
    assert dev.chooser().choose("cuda", _LinearMultiHotCE).path == "triton" and dev.checks == 1
    assert json.loads((dev.cache / CACHE_FILE).read_text())["verdicts"][GPU]["passed"] is True

