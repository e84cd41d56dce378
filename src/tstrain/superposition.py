"""Token Superposition Training: bags, averaged embeddings and the multi-hot cross entropy.

The whole method lives in this file and depends on torch alone (its settings' names and the window
layout, ``window_length``, come from the torch-free ``schedule``), so it can be checked against the
paper line by line and dropped into any training loop. Shapes: ``B`` sequences, ``L`` positions the
transformer sees, ``s`` the bag size, ``V`` the vocabulary, ``d`` the hidden size.

Window layout (the trainer reads windows of ``window_length(...)`` tokens):

- ``both`` (the method): a window of ``(L + 1) * s`` tokens. Position ``j`` sees bag ``j`` (tokens
  ``j*s .. j*s+s-1``) and predicts the whole next bag (tokens ``(j+1)*s .. (j+1)*s+s-1``). We read
  ``(L + 1) * s`` rather than the listing's ``L*s + 1`` so the last position has a full target bag.
- ``input``: bag inputs, next-token target: position ``j`` predicts token ``(j+1)*s`` only.
- ``output``: token inputs, next-bag target: position ``t`` predicts tokens ``t+1 .. t+s``.
- phase 2 / baseline: the plain shift, window ``L + 1``.

In every case the first ``stride`` tokens of the window are the inputs (each token is an input to
exactly one window) and the remaining ``window - stride`` tokens only serve as targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedule import DCLM_MI_EXPONENT, VARIANTS, WEIGHT_SCHEMES, window_length

IGNORE_INDEX = -100

# ----------------------------------------------------------------------------------------------
# Windows -> (inputs, targets)
# ----------------------------------------------------------------------------------------------


def next_token_batch(window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(inputs (B, L), targets (B, L, 1))`` for ordinary next-token prediction."""
    return window[:, :-1], window[:, 1:].unsqueeze(-1)


def superposition_batch(
    window: torch.Tensor, seq_len: int, bag_size: int, variant: str | None = "both"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(inputs (B, L, s_in), targets (B, L, s_out))`` cut from token windows ``(B, window)``.

    One shape for every case: inputs are bags of ``s_in`` ids (``s`` for the ``both`` and
    ``input`` variants; 1 for ``output``, whose inputs are plain tokens), targets bags of
    ``s_out`` ids (``s`` for ``both`` and ``output``; 1 for ``input``). ``bag_size`` 1 or
    ``variant`` None is ordinary next-token prediction: ``(B, L, 1)`` and ``(B, L, 1)``.
    """
    L, s = seq_len, bag_size
    if variant is None or s == 1:
        variant, s = "both", 1
    stride, length = window_length(L, s, variant)
    if window.dim() != 2 or window.shape[1] != length:
        raise ValueError(
            f"window must be (B, {length}) for seq_len={L}, bag_size={s}, variant={variant!r}; "
            f"got {tuple(window.shape)}"
        )
    B = window.shape[0]
    if variant == "both":
        bags = window.reshape(B, L + 1, s)
        return bags[:, :L], bags[:, 1:]
    if variant == "input":
        bags = window[:, :stride].reshape(B, L, s)
        targets = window[:, s::s].unsqueeze(-1)  # first token of the next bag
        return bags, targets
    if variant == "output":
        targets = window[:, 1:].unfold(1, s, 1)  # (B, L, s): tokens t+1 .. t+s
        return window[:, :L].unsqueeze(-1), targets
    raise ValueError(f"unknown TST variant {variant!r}; choose one of {VARIANTS}")


# ----------------------------------------------------------------------------------------------
# Input side: averaged bag embeddings
# ----------------------------------------------------------------------------------------------


def bag_embeddings(weight_or_embedding: torch.Tensor | torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Return the mean embedding of each bag, ``(B, L, d)`` in the weight's dtype.

    ``ids`` is ``(B, L, s)``. The sum runs in float32 whatever the weight's dtype (bf16 sums of
    16 vectors lose bits), and one gather of all ``s`` ids replaces the listing's ``s`` lookups.
    """
    weight = weight_or_embedding.weight if isinstance(weight_or_embedding, torch.nn.Embedding) else weight_or_embedding
    if ids.dim() != 3:
        raise ValueError(f"bag ids must be (B, L, s); got {tuple(ids.shape)}")
    s = ids.shape[-1]
    vectors = F.embedding(ids, weight)  # (B, L, s, d)
    return (vectors.float().sum(dim=-2) / s).to(weight.dtype)


# ----------------------------------------------------------------------------------------------
# Output side: the multi-hot cross entropy
# ----------------------------------------------------------------------------------------------


def bag_weights(
    scheme: str | torch.Tensor | list | tuple,
    bag_size: int,
    *,
    mi_exponent: float = DCLM_MI_EXPONENT,
) -> torch.Tensor:
    """Return the ``s`` slot weights (float64, summing to 1) of a weighting scheme.

    Slot ``i = 1..s`` is at distance ``i`` from the last token of the input bag.
    ``uniform``: 1/s; ``power``: 1/i; ``exponential``: e^-i; ``first``: the next token only;
    ``mi``: i**k, the part of the fitted ``MI(i) = C0 + a * i**k`` that decays with distance
    (the constant C0 carries no distance information), with ``k = mi_exponent``.
    A tensor or sequence of ``s`` non-negative numbers is normalised as given.
    """
    s = bag_size
    i = torch.arange(1, s + 1, dtype=torch.float64)
    if isinstance(scheme, str):
        if scheme == "uniform":
            w = torch.ones(s, dtype=torch.float64)
        elif scheme == "power":
            w = 1.0 / i
        elif scheme == "exponential":
            w = torch.exp(-i)
        elif scheme == "first":
            w = torch.zeros(s, dtype=torch.float64)
            w[0] = 1.0
        elif scheme == "mi":
            w = i**mi_exponent
        else:
            raise ValueError(f"unknown bag weight scheme {scheme!r}; "
                             f"choose one of {WEIGHT_SCHEMES} or give {s} numbers")
    else:
        w = torch.as_tensor(scheme, dtype=torch.float64).flatten()
        if w.numel() != s:
            raise ValueError(f"got {w.numel()} bag weights for bag size {s}")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"bag weights must be finite, non-negative and not all zero; got {w.tolist()}")
    return w / w.sum()


def target_scales(targets: torch.Tensor, weights: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Return the factor each target's CE is multiplied by, ``(N, s)`` float32.

    As in the published listing, slot ``i``'s CE is a mean over its non-ignored targets and the
    slots are combined with ``weights``: ``scale[n, i] = w_i * valid[n, i] / count_i``. A slot with
    no valid target contributes nothing (the listing would give NaN).
    """
    valid = (targets != ignore_index).to(torch.float64)
    counts = valid.sum(dim=0).clamp(min=1.0)
    return (valid * (weights.to(valid.device) / counts)).to(torch.float32)


def _prepared_targets(targets2, vocab_size, weights, ignore_index, mi_exponent, device, check_ids=True):
    """Return ``(safe_targets, scales)`` for flattened targets ``(N, s)``, checking the ids unless told not to."""
    valid = targets2 != ignore_index
    if check_ids and (valid & ((targets2 < 0) | (targets2 >= vocab_size))).any():  # one device sync per call
        lo, hi = int(targets2[valid].min()), int(targets2[valid].max())
        raise ValueError(f"target ids must lie in [0, {vocab_size}) (the vocabulary size of the logits); "
                         f"found {lo}..{hi}")
    w = bag_weights(weights, targets2.shape[-1], mi_exponent=mi_exponent)
    scales = target_scales(targets2, w, ignore_index).to(device)
    return torch.where(valid, targets2, torch.zeros_like(targets2)), scales


class _MultiHotCE(torch.autograd.Function):
    """``-sum(scale * log_softmax(z)[y])`` with one softmax per row and a hand-written backward.

    Forward keeps the float32 log-probabilities (one ``(N, V)`` buffer, as ordinary cross entropy
    keeps); backward builds the gradient ``softmax(z) * sum_i scale_i - sum_i scale_i * onehot(y_i)``
    in one new buffer, so memory and passes over the logits match one ordinary cross entropy
    whatever ``s`` is.
    """

    @staticmethod
    def forward(ctx, logits, safe_targets, scales):
        logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # (N, V), no float32 copy of the logits first
        loss = -(scales * logp.gather(-1, safe_targets)).sum()
        ctx.save_for_backward(logp, safe_targets, scales)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        logp, safe_targets, scales = ctx.saved_tensors
        grad = logp.exp()
        grad.mul_(scales.sum(dim=-1, keepdim=True) * grad_loss)
        grad.scatter_add_(-1, safe_targets, -scales * grad_loss)
        return grad.to(ctx.logits_dtype), None, None


def multi_hot_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: str | torch.Tensor | list | tuple = "uniform",
    ignore_index: int = IGNORE_INDEX,
    *,
    mi_exponent: float = DCLM_MI_EXPONENT,
    check_ids: bool = True,
) -> torch.Tensor:
    """Return the multi-hot cross entropy (a float32 scalar) of logits against bags of targets.

    ``logits`` is ``(..., V)`` and ``targets`` ``(..., s)`` with the same leading shape.
    ``loss = sum_i w_i * mean_n CE(z_n, y_{n,i})``, computed as ``lse(z) - sum_i w_i z[y_i]``:
    one log-sum-exp per position instead of ``s`` full softmaxes. With ``s = 1`` it is the
    ordinary mean next-token cross entropy. ``check_ids=False`` skips the range check of the
    target ids (its device sync) for callers whose ids are already known to be in range; an
    out-of-range id is then undefined behaviour, as in an unchecked gather.
    """
    if logits.shape[:-1] != targets.shape[:-1]:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree on leading dims")
    V, s = logits.shape[-1], targets.shape[-1]
    safe, scales = _prepared_targets(targets.reshape(-1, s), V, weights, ignore_index, mi_exponent, logits.device,
                                     check_ids)
    return _MultiHotCE.apply(logits.reshape(-1, V), safe, scales)


class _LinearMultiHotCE(torch.autograd.Function):
    """The LM head and the MCE fused, chunk by chunk over positions.

    Forward computes, for each chunk of positions, the logits ``h W^T``, the loss terms, and at
    once the gradients w.r.t. ``h`` and ``W`` (the loss is a sum over positions, so each chunk's
    gradient is final); backward only scales them. Peak memory is one ``(chunk, V)`` float32
    block instead of the whole ``(N, V)`` logits and their gradient. The three matmuls run in the
    compute dtype (autocast's, else the inputs'), with ``h`` and ``W`` cast once, not per chunk;
    only the softmax and the sum of ``W``'s per-chunk gradients are float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, safe_targets, scales, chunk_size):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        h_all, w = hidden.to(dtype), weight.to(dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        loss = hidden.new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type, enabled=False):
            for i in range(0, hidden.shape[0], chunk_size):
                h, y, sc = h_all[i : i + chunk_size], safe_targets[i : i + chunk_size], scales[i : i + chunk_size]
                logp = torch.log_softmax(h @ w.t(), dim=-1, dtype=torch.float32)  # (C, V)
                loss -= (sc * logp.gather(-1, y)).sum()
                if need_h or need_w:
                    z = logp.exp_().mul_(sc.sum(dim=-1, keepdim=True))  # now dloss/dlogits
                    g = z.scatter_add_(-1, y, -sc).to(dtype)
                    if need_h:
                        grad_h[i : i + chunk_size] = g @ w
                    if need_w:  # the product in the compute dtype (float32 accumulation inside), summed in float32
                        grad_w += g.t() @ h
        ctx.save_for_backward(grad_h, grad_w)
        ctx.has = (need_h, need_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        need_h, need_w = ctx.has
        gh = grad_h * grad_loss.to(grad_h.dtype) if need_h else None
        gw = grad_w * grad_loss if need_w else None
        return gh, gw, None, None, None


def linear_multi_hot_cross_entropy(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    weights: str | torch.Tensor | list | tuple = "uniform",
    ignore_index: int = IGNORE_INDEX,
    *,
    chunk_size: int = 1024,
    mi_exponent: float = DCLM_MI_EXPONENT,
    check_ids: bool = True,
) -> torch.Tensor:
    """Return ``multi_hot_cross_entropy(hidden @ head_weight.T, targets, weights)`` without ever
    holding the full logits: the head and the loss run fused over chunks of ``chunk_size``
    positions (on CUDA with the softmax pass in Triton, ``kernels.triton_mce``, where that kernel has passed its
    self-check on the device: ``fused_loss_path``).
    ``hidden`` is ``(..., d)``, ``head_weight`` ``(V, d)``, targets ``(..., s)``; ``check_ids`` as there."""
    d, s = hidden.shape[-1], targets.shape[-1]
    V = head_weight.shape[0]
    if hidden.shape[:-1] != targets.shape[:-1] or head_weight.shape[1] != d:
        raise ValueError(f"hidden {tuple(hidden.shape)}, head {tuple(head_weight.shape)} "
                         f"and targets {tuple(targets.shape)} disagree")
    safe, scales = _prepared_targets(targets.reshape(-1, s), V, weights, ignore_index, mi_exponent, hidden.device,
                                     check_ids)
    fused = _LinearMultiHotCE
    if hidden.is_cuda:  # the Triton kernel where it passed its self-check; imported here: the method needs torch alone
        from .kernels import cuda_linear_mce

        fused = cuda_linear_mce(hidden.device, _LinearMultiHotCE) or fused
    return fused.apply(hidden.reshape(-1, d), head_weight, safe, scales, max(1, chunk_size))


def fused_loss_path(device: torch.device | str, refresh: bool = False):
    """Return which path ``linear_multi_hot_cross_entropy`` takes on ``device`` and why (a ``kernels.Choice``:
    ``.path`` is ``"triton"`` or ``"chunked"``, ``.reason`` says why); ``refresh`` runs the Triton kernel's
    self-check on the device again."""
    from .kernels import loss_path

    return loss_path(device, _LinearMultiHotCE, refresh)


def reference_multi_hot_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Return the listing's formulation: ``s`` calls of the framework's cross entropy, weighted.

    Kept as the published baseline for benchmarks; it costs ``s`` full softmaxes. Slots with no
    valid target are skipped (the listing would return NaN for them).
    """
    V, s = logits.shape[-1], targets.shape[-1]
    logits2, targets2 = logits.reshape(-1, V).float(), targets.reshape(-1, s)
    total = logits2.new_zeros(())
    for i in range(s):
        if (targets2[:, i] != ignore_index).any():
            total = total + float(weights[i]) * F.cross_entropy(logits2, targets2[:, i], ignore_index=ignore_index)
    return total

