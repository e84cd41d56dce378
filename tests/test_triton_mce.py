"""The Triton fused head + multi-hot CE against a float64 reference, on the CPU through Triton's interpreter.

The kernel runs in a child process with ``TRITON_INTERPRET=1`` (it must be set before triton
compiles anything, and must not leak into the rest of the suite); this process builds the same
inputs, computes the float64 reference and compares. The ``cuda`` tests check it at real sizes on
a GPU (tests/test_cuda.py).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernel needs the triton package (pip install -e '.[triton]')")

ROOT = Path(__file__).resolve().parents[1]
IGNORE = -100
AUTOCAST_BAGS, AUTOCAST_CHUNK = (1, 4), 40  # the bf16 autocast cases: 96 positions in chunks of 40

# name -> (N, V, d, s, dtype, weights, chunk_size, block_v, needs_grad). V=300 with tiles of 128 leaves a partial tile.
CASES = {
    "s=1 is plain next-token CE (fp32)": (10, 300, 8, 1, "float32", "uniform", 4, 128, True),
    "s=4 with ignored targets (fp32)": (12, 300, 8, 4, "float32", "uniform", 5, 128, True),
    "s=4 with power bag weights (bf16)": (12, 300, 8, 4, "bfloat16", "power", 5, 128, True),
    "s=3, a bag size that is no power of two, exponential weights (bf16)": (9, 300, 8, 3, "bfloat16",
                                                                            "exponential", 4, 64, True),
    "s=4, V a whole number of tiles, one chunk (fp32)": (8, 256, 8, 4, "float32", "power", 64, 128, True),
    "s=4 without gradients (evaluation)": (12, 300, 8, 4, "float32", "uniform", 5, 128, False),
    "V = 262,144 in the kernel's own tiles (bf16)": (4, 262144, 8, 2, "bfloat16", "uniform", 3, None, True),
}


def case_inputs(name: str):
    """Return ``(hidden (N, d), weight (V, d), targets (N, s))`` of a case: random, with ignored targets,
    a token twice in one bag, a row wholly ignored; the same in every process."""
    N, V, d, s, dtype, *_ = CASES[name]
    g = torch.Generator().manual_seed(len(name))
    hidden = torch.randn(N, d, generator=g).to(getattr(torch, dtype))
    weight = (torch.randn(V, d, generator=g) * 0.5).to(getattr(torch, dtype))
    targets = torch.randint(0, V, (N, s), generator=g)
    targets[torch.rand(N, s, generator=g) < 0.15] = IGNORE
    if s > 1:
        targets[0, 1] = targets[0, 0] = 7  # the same token twice in a bag: both slots' scales land on one logit
    targets[2] = IGNORE
    return hidden, weight, targets


def run_cases(out: Path) -> None:
    """Child: run every case through the kernel and save its loss and gradients."""
    from tstrain.kernels.triton_mce import TritonLinearMultiHotCE
    from tstrain.superposition import _prepared_targets

    results = {}
    for name, (_, V, _, _, _, weights, chunk, block, needs_grad) in CASES.items():
        hidden, weight, targets = case_inputs(name)
        hidden.requires_grad_(needs_grad)
        weight.requires_grad_(needs_grad)
        safe, scales = _prepared_targets(targets, V, weights, IGNORE, -1.25, "cpu")
        loss = TritonLinearMultiHotCE.apply(hidden, weight, safe, scales, chunk, block)
        if needs_grad:
            loss.backward()
        results[name] = (loss.detach(), hidden.grad, weight.grad)
    from test_superposition import exact_bf16_case

    for s in AUTOCAST_BAGS:  # float32 weights under bf16 autocast, as the trainer runs the kernel
        hidden, weight, targets = (t.clone() for t in exact_bf16_case(s))
        hidden.requires_grad_()
        weight.requires_grad_()
        safe, scales = _prepared_targets(targets, weight.shape[0], "power", IGNORE, -1.25, "cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = TritonLinearMultiHotCE.apply(hidden, weight, safe, scales, AUTOCAST_CHUNK)
        loss.backward()
        results[f"autocast s={s}"] = (loss.detach(), hidden.grad, weight.grad)
    from tstrain.kernels.choice import self_check
    from tstrain.superposition import _LinearMultiHotCE

    results["self-check"] = self_check(torch.device("cpu"), TritonLinearMultiHotCE, _LinearMultiHotCE)
    torch.save(results, out)


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "results.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                                               os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("name", CASES)
def test_the_triton_kernel_matches_a_float64_reference(name, kernel_results):
    *_, dtype, weights, _, _, needs_grad = CASES[name]
    hidden, weight, targets = case_inputs(name)
    from tstrain.doctor import float64_reference

    ref_loss, ref_h, ref_w = float64_reference(hidden, weight, targets, weights)
    loss, grad_h, grad_w = kernel_results[name]
    # fp32: float32 rounding. bf16: the logits and the gradient are rounded to bf16 (8 bits of mantissa); the
    # interpreter rounds float32 -> bf16 toward zero where a GPU rounds to nearest, so it errs the more.
    bf16 = dtype == "bfloat16"
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(ref_loss, rel=2e-3 if bf16 else 1e-5)
    if not needs_grad:
        assert grad_h is None and grad_w is None
        return
    for got, ref in ((grad_h, ref_h), (grad_w, ref_w)):
        assert got.shape == ref.shape and got.dtype == getattr(torch, dtype)
        assert (got.double() - ref).abs().max().item() <= (2**-7 if bf16 else 1e-5) * ref.abs().max().item()


@pytest.mark.parametrize("arch", [80, 90])
def test_the_kernel_compiles_to_gpu_code_for_a100_and_h100_without_a_gpu(arch):
    # Triton's compiler (and the ptxas it ships) needs no device: the step the interpreter skips.
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tstrain.kernels.triton_mce import _mce_rows, row_block

    for dtype in ("bf16", "fp32"):
        for grad in (True, False):
            block, warps = row_block(128256)
            signature = {"z_ptr": f"*{dtype}", "y_ptr": "*i64", "scale_ptr": "*fp32", "loss_ptr": "*fp32", "V": "i32",
                         "S": "i32", "BLOCK_V": "constexpr", "BLOCK_S": "constexpr", "GRAD": "constexpr"}
            source = ASTSource(fn=_mce_rows, signature=signature,
                               constexprs={"BLOCK_V": block, "BLOCK_S": 4, "GRAD": grad})
            kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
            assert len(kernel.asm["cubin"]) > 0 and f".target sm_{arch}" in kernel.asm["ptx"]


@pytest.mark.parametrize("s", AUTOCAST_BAGS)
def test_under_bf16_autocast_the_kernel_equals_the_unfused_loss_of_the_same_bf16_logits(s, kernel_results):
    # The loss is float32 arithmetic on the bf16 logits: it agrees to float32 rounding, where a softmax in bf16
    # misses by ~1e-4. The kernel rounds the gradient to bf16 itself, which the interpreter does toward zero (a
    # GPU to nearest: tests/test_cuda.py checks that to one bf16 step), so here the gradients agree to two steps.
    from test_superposition import bf16_unfused_reference, exact_bf16_case, relative_error

    ref_loss, ref_h, ref_w = bf16_unfused_reference(*exact_bf16_case(s), AUTOCAST_CHUNK, "power")
    loss, grad_h, grad_w = kernel_results[f"autocast s={s}"]
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(ref_loss.item(), rel=1e-6, abs=0)
    assert grad_h.dtype == grad_w.dtype == torch.float32
    assert relative_error(grad_h, ref_h) <= 2**-6 and relative_error(grad_w, ref_w) <= 2**-6


def test_the_kernel_passes_the_self_check_that_admits_it_on_a_device(kernel_results):
    # What ``auto`` runs on a CUDA device before it uses the kernel there (kernels/choice.py), here under the
    # interpreter: it agrees with the chunked path in fp32 and bf16.
    assert kernel_results["self-check"] == ""


if __name__ == "__main__":
    run_cases(Path(sys.argv[1]))
