"""The TST core against plain float64 loops on random inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from tstrain.superposition import (
    IGNORE_INDEX,
    bag_embeddings,
    bag_weights,
    linear_multi_hot_cross_entropy,
    multi_hot_cross_entropy,
    next_token_batch,
    reference_multi_hot_cross_entropy,
    superposition_batch,
    window_length,
)


def loop_mce(logits, targets, weights, ignore_index=IGNORE_INDEX):
    """Float64 loop: per slot, mean CE over valid targets; slots combined with weights."""
    V, s = logits.shape[-1], targets.shape[-1]
    z = logits.detach().reshape(-1, V).double()
    y = targets.reshape(-1, s)
    total = 0.0
    for i in range(s):
        ces = []
        for n in range(z.shape[0]):
            t = int(y[n, i])
            if t == ignore_index:
                continue
            lse = math.log(sum(math.exp(float(v)) for v in z[n]))
            ces.append(lse - float(z[n, t]))
        if ces:
            total += float(weights[i]) * sum(ces) / len(ces)
    return total


def loop_bag_embeddings(weight, ids):
    B, L, s = ids.shape
    out = torch.zeros(B, L, weight.shape[1], dtype=torch.float64)
    for b in range(B):
        for j in range(L):
            for i in range(s):
                out[b, j] += weight[ids[b, j, i]].double()
            out[b, j] /= s
    return out


def random_targets(shape, V, ignore_frac, gen):
    t = torch.randint(0, V, shape, generator=gen)
    mask = torch.rand(shape, generator=gen) < ignore_frac
    return torch.where(mask, torch.full_like(t, IGNORE_INDEX), t)


@pytest.mark.parametrize("scheme", ["uniform", "power", "exponential", "first", "mi"])
@pytest.mark.parametrize("s", [1, 3, 4])
def test_mce_matches_float64_loop(scheme, s):
    gen = torch.Generator().manual_seed(s * 7 + len(scheme))
    B, L, V = 2, 5, 11
    logits = torch.randn(B, L, V, generator=gen) * 3
    targets = random_targets((B, L, s), V, 0.3, gen)
    w = bag_weights(scheme, s)
    got = multi_hot_cross_entropy(logits, targets, scheme)
    assert got.item() == pytest.approx(loop_mce(logits, targets, w), rel=1e-5, abs=1e-6)


def test_mce_gradient_matches_float64_autograd_of_the_loop_formula():
    gen = torch.Generator().manual_seed(3)
    B, L, V, s = 3, 4, 13, 4
    logits = (torch.randn(B, L, V, generator=gen) * 2).double().requires_grad_()
    targets = random_targets((B, L, s), V, 0.25, gen)
    w = bag_weights("power", s)
    # Reference gradient: autograd through an explicit float64 log-softmax per slot.
    ref_logits = logits.detach().clone().requires_grad_()
    logp = torch.log_softmax(ref_logits.reshape(-1, V), -1)
    y = targets.reshape(-1, s)
    ref = ref_logits.new_zeros(())
    for i in range(s):
        keep = y[:, i] != IGNORE_INDEX
        if keep.any():
            ref = ref - w[i] * logp[keep, y[keep, i]].mean()
    ref.backward()
    got = multi_hot_cross_entropy(logits, targets, w)
    got.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-6)
    # The ignored-only rows get zero gradient from their ignored slots: check one fully ignored row.
    assert torch.isfinite(logits.grad).all()


def test_mce_gradcheck_float64():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = random_targets((6, 3), 7, 0.3, gen)
    # Logits stay float64 through the custom backward only if the function keeps dtype; check in float32 math.
    def f(z):
        return multi_hot_cross_entropy(z, targets, "exponential").double()
    assert torch.autograd.gradcheck(f, (logits,), eps=1e-3, atol=1e-3, rtol=1e-3)


def test_mce_s1_equals_cross_entropy_and_published_formulation():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 50, generator=gen)
    targets = random_targets((4, 9, 1), 50, 0.2, gen)
    ours = multi_hot_cross_entropy(logits, targets)
    plain = F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(ours, plain, rtol=1e-6, atol=1e-6)
    targets4 = random_targets((4, 9, 4), 50, 0.2, gen)
    w = bag_weights("power", 4)
    torch.testing.assert_close(
        multi_hot_cross_entropy(logits, targets4, w),
        reference_multi_hot_cross_entropy(logits, targets4, w),
        rtol=1e-5,
        atol=1e-6,
    )


def test_mce_bf16_logits_give_float32_loss_and_bf16_grad():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 32, generator=gen).bfloat16().requires_grad_()
    targets = torch.randint(0, 32, (8, 4), generator=gen)
    loss = multi_hot_cross_entropy(logits, targets)
    loss.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(loop_mce(logits.float(), targets, bag_weights("uniform", 4)), rel=1e-4)


def test_mce_rejects_out_of_range_targets():
    with pytest.raises(ValueError, match="target ids must lie in"):
        multi_hot_cross_entropy(torch.zeros(2, 5), torch.tensor([[1, 5], [0, 0]]))
    with pytest.raises(ValueError, match="target ids must lie in"):
        linear_multi_hot_cross_entropy(torch.zeros(2, 3), torch.zeros(5, 3), torch.tensor([[1, 5], [0, 0]]))


def test_unchecked_ids_give_the_same_loss_and_gradients():
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(12, 6, generator=gen, requires_grad=True)
    head = torch.randn(40, 6, generator=gen, requires_grad=True)
    targets = torch.randint(0, 40, (12, 3), generator=gen)
    targets[2, 1] = targets[7, 0] = IGNORE_INDEX
    for fn in (lambda check: multi_hot_cross_entropy(hidden @ head.t(), targets, "power", check_ids=check),
               lambda check: linear_multi_hot_cross_entropy(hidden, head, targets, "power", chunk_size=5,
                                                            check_ids=check)):
        grads = []
        for check in (True, False):
            loss = fn(check)
            grads.append((loss.detach(), *torch.autograd.grad(loss, (hidden, head))))
        assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_bag_weights_schemes():
    torch.testing.assert_close(bag_weights("uniform", 4), torch.full((4,), 0.25, dtype=torch.float64))
    p = bag_weights("power", 3)
    torch.testing.assert_close(p, torch.tensor([1, 1 / 2, 1 / 3], dtype=torch.float64) / (11 / 6))
    e = bag_weights("exponential", 3)
    assert e[0] / e[1] == pytest.approx(math.e)
    assert bag_weights("first", 5).tolist() == [1, 0, 0, 0, 0]
    m = bag_weights("mi", 4, mi_exponent=-1.25)
    assert m[0] / m[1] == pytest.approx(2**1.25)
    assert bag_weights([3, 1], 2).tolist() == [0.75, 0.25]
    for bad in ([1, -1], [0, 0], [1, 2, 3]):
        with pytest.raises(ValueError):
            bag_weights(bad, 2)
    with pytest.raises(ValueError, match="unknown bag weight scheme"):
        bag_weights("cosine", 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bag_embeddings_match_loop_and_gradient(dtype):
    gen = torch.Generator().manual_seed(2)
    V, d, B, L, s = 17, 6, 2, 3, 4
    weight = torch.randn(V, d, generator=gen).to(dtype).requires_grad_()
    ids = torch.randint(0, V, (B, L, s), generator=gen)
    out = bag_embeddings(weight, ids)
    assert out.dtype == dtype and out.shape == (B, L, d)
    ref = loop_bag_embeddings(weight.detach(), ids)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.double(), ref.to(dtype).double(), rtol=tol, atol=tol)
    # d(sum(out * g))/dweight[v] = sum over occurrences of v of g[b, j] / s
    g = torch.randn(B, L, d, generator=gen)
    (out.float() * g).sum().backward()
    ref_grad = torch.zeros(V, d, dtype=torch.float64)
    for b in range(B):
        for j in range(L):
            for i in range(s):
                ref_grad[ids[b, j, i]] += g[b, j].double() / s
    torch.testing.assert_close(weight.grad.double(), ref_grad.to(dtype).double(), rtol=tol * 10, atol=tol * 10)


def test_bag_embeddings_s1_is_the_plain_lookup_and_accepts_module():
    emb = torch.nn.Embedding(10, 4)
    ids = torch.randint(0, 10, (2, 5, 1))
    assert torch.equal(bag_embeddings(emb, ids), emb(ids[..., 0]))


def test_bag_embeddings_sum_in_float32_for_bf16():
    # 16 copies of a value that bf16 cannot accumulate exactly: the mean must still be the value.
    weight = torch.full((2, 1), 1.0 + 2**-7, dtype=torch.bfloat16)
    ids = torch.zeros(1, 1, 16, dtype=torch.long)
    assert bag_embeddings(weight, ids).item() == weight[0, 0].item()


def loop_windows(window, L, s, variant):
    """Plain index arithmetic for each variant's (inputs, targets)."""
    B = window.shape[0]
    if variant == "both":
        inp = [[[int(window[b, j * s + i]) for i in range(s)] for j in range(L)] for b in range(B)]
        tgt = [[[int(window[b, (j + 1) * s + i]) for i in range(s)] for j in range(L)] for b in range(B)]
    elif variant == "input":
        inp = [[[int(window[b, j * s + i]) for i in range(s)] for j in range(L)] for b in range(B)]
        tgt = [[[int(window[b, (j + 1) * s])] for j in range(L)] for b in range(B)]
    else:
        inp = [[int(window[b, t]) for t in range(L)] for b in range(B)]
        tgt = [[[int(window[b, t + 1 + i]) for i in range(s)] for t in range(L)] for b in range(B)]
    return torch.tensor(inp), torch.tensor(tgt)


@pytest.mark.parametrize("variant", ["both", "input", "output"])
@pytest.mark.parametrize("s", [2, 3, 4])
def test_superposition_batch_matches_index_loop(variant, s):
    L, B = 5, 2
    stride, length = window_length(L, s, variant)
    window = torch.randint(0, 1000, (B, length))
    inputs, targets = superposition_batch(window, L, s, variant)
    ref_in, ref_t = loop_windows(window, L, s, variant)
    ref_in = ref_in if ref_in.dim() == 3 else ref_in.unsqueeze(-1)  # token inputs: bags of one
    assert inputs.dim() == targets.dim() == 3  # one shape for every variant
    assert torch.equal(inputs, ref_in) and torch.equal(targets, ref_t)
    # Every input token is one of the first `stride` tokens, each exactly once.
    assert inputs.reshape(B, -1).shape[1] == stride


@pytest.mark.parametrize("s", [2, 4, 8])
def test_target_bag_never_overlaps_its_input_bag(s):
    L = 6
    _, length = window_length(L, s, "both")
    positions = torch.arange(length).unsqueeze(0)  # the window holds its own positions
    inputs, targets = superposition_batch(positions, L, s, "both")
    for j in range(L):
        assert set(inputs[0, j].tolist()).isdisjoint(targets[0, j].tolist())
        assert min(targets[0, j].tolist()) > max(inputs[0, j].tolist())  # strictly in the future


def test_next_token_batch_and_window_lengths():
    window = torch.arange(12).reshape(2, 6)
    inputs, targets = next_token_batch(window)
    assert torch.equal(inputs, window[:, :5]) and torch.equal(targets[..., 0], window[:, 1:])
    assert window_length(8, 4, "both") == (32, 36)
    assert window_length(8, 4, "input") == (32, 33)
    assert window_length(8, 4, "output") == (8, 12)
    assert window_length(8, 4, None) == (8, 9) == window_length(8, 1, "both")
    with pytest.raises(ValueError):
        superposition_batch(torch.zeros(1, 7, dtype=torch.long), 8, 4, "both")
    for variant in (None, "both", "input", "output"):  # next-token: every variant at s = 1, and no variant
        inputs, targets = superposition_batch(window, 5, 1 if variant else 4, variant)
        assert torch.equal(inputs[..., 0], window[:, :5]) and torch.equal(targets[..., 0], window[:, 1:])


@pytest.mark.parametrize("chunk", [1, 5, 1000])
@pytest.mark.parametrize("s", [1, 4])
def test_fused_head_and_mce_match_the_float64_loop_in_value_and_gradients(chunk, s):
    from tstrain.superposition import linear_multi_hot_cross_entropy

    gen = torch.Generator().manual_seed(11 + s)
    B, L, d, V = 2, 7, 5, 19
    hidden = torch.randn(B, L, d, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, d, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = random_targets((B, L, s), V, 0.3, gen)
    w = bag_weights("power", s)
    got = linear_multi_hot_cross_entropy(hidden, weight, targets, w, chunk_size=chunk)
    (got * 2.5).backward()  # a non-unit upstream gradient must scale both gradients
    logits = (hidden.detach() @ weight.detach().t())
    assert got.item() == pytest.approx(loop_mce(logits, targets, w), rel=1e-6)
    h2 = hidden.detach().clone().requires_grad_()
    w2 = weight.detach().clone().requires_grad_()
    ref = multi_hot_cross_entropy(h2 @ w2.t(), targets, w) * 2.5
    ref.backward()
    torch.testing.assert_close(hidden.grad, h2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, w2.grad, rtol=1e-5, atol=1e-6)


def exact_bf16_case(s: int, N: int = 96, V: int = 1000, d: int = 8, seed: int = 0):
    """Return float32 ``(hidden (N, d), weight (V, d), targets (N, s))`` whose bf16 logits are exact: entries are
    quarters in [-1, 1), so each logit is a sixteenth below 8 in size, 7 bits; a fifth of the targets ignored."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-4, 4, (N, d), generator=g) / 4
    weight = torch.randint(-4, 4, (V, d), generator=g) / 4
    targets = torch.randint(0, V, (N, s), generator=g)
    targets[torch.rand(N, s, generator=g) < 0.2] = IGNORE_INDEX
    return hidden, weight, targets


def bf16_unfused_reference(hidden, weight, targets, chunk: int, weights="uniform"):
    """Return ``(loss, grad hidden, grad weight)`` of the unfused loss of the same bf16 logits at float32 rounding:
    the float32 MCE of the logits and its gradient ``g``, then the products of the fused path's contract: ``g`` and
    the inputs in bf16, each product rounded to bf16, ``W``'s per-chunk products summed in float32."""
    logits = (hidden.bfloat16() @ weight.bfloat16().t()).float().requires_grad_()
    assert torch.equal(logits.double(), hidden.double() @ weight.double().t())  # the case's logits are exact
    loss = multi_hot_cross_entropy(logits, targets, weights)
    loss.backward()
    g, h, w = logits.grad.bfloat16(), hidden.bfloat16(), weight.bfloat16()
    grad_w = sum((g[i : i + chunk].t() @ h[i : i + chunk]).float() for i in range(0, len(g), chunk))
    return loss.detach(), (g @ w).float(), grad_w


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Return the largest difference relative to the largest magnitude of ``want``."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


@pytest.mark.parametrize("s", [1, 4])
def test_fused_head_and_mce_under_bf16_autocast_equal_the_unfused_loss_of_the_same_bf16_logits(s):
    # The softmax is float32 on bf16 logits: the loss agrees to float32 rounding and the gradients to the bit
    # (the same bf16 products). A softmax in bf16 misses the loss by ~1e-4 and the gradients by ~1e-3.
    from tstrain.superposition import linear_multi_hot_cross_entropy

    hidden, weight, targets = exact_bf16_case(s)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_multi_hot_cross_entropy(h, w, targets, "power", chunk_size=40)  # 96 = 40 + 40 + 16
    got.backward()
    ref_loss, ref_h, ref_w = bf16_unfused_reference(hidden, weight, targets, 40, "power")
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref_loss.item(), rel=1e-6, abs=0)
    assert h.grad.dtype == w.grad.dtype == torch.float32
    assert relative_error(h.grad, ref_h) <= 2**-12 and relative_error(w.grad, ref_w) <= 2**-12
