"""The GPU path: bf16 autocast through the MCE, the fused head + loss (Triton on CUDA), compile, resume, export.

Marked ``cuda``: they run on a CUDA device (``benchmarks/gpu/check.sh`` runs them there). On a
machine without one they skip, except under ``TSTRAIN_DRY_RUN=1``, where the same tests run on the
CPU at tiny sizes (the GPU check's dry run, itself run by ``tests/test_gpu_check.py``).
"""

import os

import pytest
import torch
from safetensors.torch import load_file

from tstrain.superposition import IGNORE_INDEX, bag_weights, linear_multi_hot_cross_entropy, multi_hot_cross_entropy

DRY_RUN = os.environ.get("TSTRAIN_DRY_RUN") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else ("cpu" if DRY_RUN else None)
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE is None, reason="needs CUDA (TSTRAIN_DRY_RUN=1 runs these on the CPU, tiny)")]
SMALL = DEVICE != "cuda"


def float64_mce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The plain formula in float64: for each slot, the mean CE over its valid targets, weighted."""
    z = logits.double()
    total = z.new_zeros(())
    for i in range(targets.shape[-1]):
        valid = targets[:, i] != IGNORE_INDEX
        if valid.any():
            rows, y = z[valid], targets[valid, i:i + 1]
            total = total + float(weights[i]) * (torch.logsumexp(rows, -1) - rows.gather(-1, y)[:, 0]).mean()
    return total


def bf16_case(N, V, d, s):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, d, generator=g).to(DEVICE)
    weight = (torch.randn(V, d, generator=g) * 0.05).to(DEVICE)
    targets = torch.randint(0, V, (N, s), generator=g)
    targets[torch.rand(N, s, generator=g) < 0.1] = IGNORE_INDEX
    return hidden, weight, targets.to(DEVICE)


@pytest.mark.parametrize("s", [1, 4, 16])
def test_bf16_mce_forward_and_backward_match_a_float64_loop(s):
    N, V, d = (64, 512, 32) if SMALL else (2048, 49152, 576)
    hidden, weight, targets = bf16_case(N, V, d, s)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        logits = hidden @ weight.t()
    assert logits.dtype == torch.bfloat16
    logits = logits.detach().requires_grad_()
    w = bag_weights("power", s)
    loss = multi_hot_cross_entropy(logits, targets, "power")
    loss.backward()
    ref_logits = logits.detach().double().requires_grad_()
    ref = float64_mce(ref_logits, targets, w)
    ref.backward()
    # The kernel works in float32 on the bf16 logits: the loss agrees to float32 rounding over V terms.
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # The gradient is returned in the logits' dtype (bf16): 8 bits of mantissa, so 2^-8 of its scale.
    scale = ref_logits.grad.abs().max().item()
    assert (logits.grad.double() - ref_logits.grad).abs().max().item() <= 2**-8 * scale


def test_the_fused_head_and_loss_equal_the_unfused_ones_under_bf16():
    N, V, d, s = (96, 512, 32, 4) if SMALL else (4096, 128256, 576, 4)
    hidden, weight, targets = bf16_case(N, V, d, s)
    grads = []
    for fused in (False, True):
        h, W = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            if fused:
                loss = linear_multi_hot_cross_entropy(h, W, targets, "uniform", chunk_size=N // 4)
            else:
                loss = multi_hot_cross_entropy(h @ W.t(), targets, "uniform")
        loss.backward()
        grads.append((loss.item(), h.grad.float(), W.grad.float()))
    (la, ha, wa), (lb, hb, wb) = grads
    # Both compute bf16 logits chunk by chunk or whole; float32 softmax; bf16 rounding of the products.
    assert lb == pytest.approx(la, rel=1e-3)
    for a, b in ((ha, hb), (wa, wb)):
        assert (a - b).abs().max().item() <= 2**-7 * a.abs().max().item()


@pytest.mark.parametrize("s,V", [(1, 128256), (4, 128256), (16, 49152), (4, 262144)])
def test_the_fused_head_and_loss_in_bf16_match_a_float64_loop_at_real_sizes(s, V):
    # On CUDA this is the Triton kernel (chosen once its self-check passed; triton ships with PyTorch's CUDA wheels).
    N, V, d = (64, 1000, 32) if SMALL else (2048 if V > 131072 else 4096, V, 576)
    if DEVICE == "cuda":  # the kernel passed its self-check on this device, so ``auto`` runs it
        from tstrain.superposition import fused_loss_path

        assert fused_loss_path(DEVICE, refresh=True).path == "triton"
    hidden, weight, targets = bf16_case(N, V, d, s)
    h, W = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    loss = linear_multi_hot_cross_entropy(h, W, targets, "power", chunk_size=N // 3)
    loss.backward()
    h64, W64 = h.detach().double().requires_grad_(), W.detach().double().requires_grad_()
    ref = float64_mce(h64 @ W64.t(), targets, bag_weights("power", s))
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-3)  # bf16 logits: 8 bits of mantissa each
    for got, want in ((h.grad, h64.grad), (W.grad, W64.grad)):
        assert got.dtype == torch.bfloat16
        assert (got.double() - want).abs().max().item() <= 2**-7 * want.abs().max().item()


@pytest.mark.parametrize("s", [1, 4])
def test_the_fused_path_under_bf16_autocast_equals_the_unfused_loss_of_the_same_bf16_logits(s):
    # On CUDA the Triton kernel: its loss to float32 rounding (a softmax in bf16 misses by ~1e-4), its gradients
    # to one bf16 step of their scale (it rounds them to nearest itself; where a float32 value sits on a rounding
    # boundary the reference's matmuls may round the other way).
    from test_superposition import bf16_unfused_reference, exact_bf16_case, relative_error

    N, V = (96, 1000) if SMALL else (2048, 49152)
    hidden, weight, targets = exact_bf16_case(s, N=N, V=V)
    h, w = hidden.to(DEVICE, copy=True).requires_grad_(), weight.to(DEVICE, copy=True).requires_grad_()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = linear_multi_hot_cross_entropy(h, w, targets.to(DEVICE), "power", chunk_size=N // 3 + 8)
    loss.backward()
    ref_loss, ref_h, ref_w = bf16_unfused_reference(hidden, weight, targets, N // 3 + 8, "power")
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6, abs=0)
    assert relative_error(h.grad.cpu(), ref_h) <= 2**-8 and relative_error(w.grad.cpu(), ref_w) <= 2**-8


def device_cfg(tiny_cfg, **overrides):
    steps = 6 if SMALL else 20
    return tiny_cfg(**{"train.device": DEVICE, "train.precision": "bf16", "train.steps": steps, "tst.ratio": 0.5,
                       "train.eval_every": 3, **overrides})


def test_compiled_and_eager_layers_give_the_same_loss_curve_in_bf16(tiny_cfg, tmp_path):
    from test_train import train_rows
    from tstrain.train.loop import train

    for mode in ("off", "on"):
        train(device_cfg(tiny_cfg, **{"train.compile": mode}), tmp_path / mode)
    eager, compiled = train_rows(tmp_path / "off"), train_rows(tmp_path / "on")
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], rel=2e-2)  # bf16: ~3 digits


def test_a_checkpoint_on_this_device_resumes_to_identical_weights(tiny_cfg, tmp_path, monkeypatch):
    from test_train import train_crashing_at
    from tstrain.train.loop import train

    # Bit-identical resumption needs deterministic kernels (the embedding's backward adds with atomics on CUDA).
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        flags = {"train.checkpoint_every": 2}
        train(device_cfg(tiny_cfg, **flags), tmp_path / "whole")
        train_crashing_at(5, device_cfg(tiny_cfg, **flags), tmp_path / "broken")
        train(device_cfg(tiny_cfg, **flags), tmp_path / "broken", resume=True)
    finally:
        torch.use_deterministic_algorithms(False)
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "broken" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_exported_model_generates_on_this_device_as_on_the_cpu(tiny_cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    from tstrain.model_io import export
    from tstrain.train.loop import train

    train(device_cfg(tiny_cfg), tmp_path / "run")
    export(tmp_path / "run", tmp_path / "hf")
    ids = torch.tensor([[5, 17, 42, 7]])
    outputs, logits = {}, {}
    for where in ("cpu", DEVICE):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).to(where).eval()
        with torch.no_grad():
            logits[where] = model(input_ids=ids.to(where)).logits.cpu()
            outputs[where] = model.generate(ids.to(where), max_new_tokens=8, do_sample=False).cpu()
    assert torch.allclose(logits[DEVICE], logits["cpu"], rtol=1e-4, atol=1e-4)
    assert torch.equal(outputs[DEVICE], outputs["cpu"]) and outputs["cpu"].shape[1] > ids.shape[1]
