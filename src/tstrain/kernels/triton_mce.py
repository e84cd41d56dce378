"""The LM head and the multi-hot cross entropy fused, with the softmax pass in Triton.

Same contract and algorithm as ``superposition._LinearMultiHotCE`` (the reference): positions are
taken in chunks; for each chunk the logits ``h W^T`` are one matmul, and because the loss is a sum
over positions each chunk's gradients are final at once, so the forward also produces the gradients
and the backward only scales them. What Triton adds is the step between the matmuls: one kernel
reads each row of logits once for its log-sum-exp (online, block by block over ``V``), gathers the
row's ``s`` target logits, writes the row's loss, and overwrites the logits with their gradient
``sum_i scale_i * softmax(z) - sum_i scale_i * onehot(y_i)`` in the compute dtype. The PyTorch path
makes about six passes over a float32 ``(chunk, V)`` block for the same; here it is one read and one
read-write of a block in the compute dtype (bf16 under autocast), and memory is that block alone.
The three matmuls stay with cuBLAS (``torch.matmul``), the fastest product the device has.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _mce_rows(z_ptr, y_ptr, scale_ptr, loss_ptr, V, S, BLOCK_V: tl.constexpr, BLOCK_S: tl.constexpr,
              GRAD: tl.constexpr):
    """One program per row of ``z`` (C, V): the row's loss, and (GRAD) its gradient written over ``z``."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * V
    cols = tl.arange(0, BLOCK_V)
    # Pass 1: the log-sum-exp, a running max and a sum rescaled whenever the max grows.
    m = float("-inf")
    total = 0.0
    for start in range(0, V, BLOCK_V):
        x = tl.load(z_row + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        total = total * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(total)
    # The s targets: ignored ones come as id 0 with scale 0, so they add nothing anywhere.
    slots = tl.arange(0, BLOCK_S)
    in_bag = slots < S
    y = tl.load(y_ptr + row * S + slots, mask=in_bag, other=0)
    scale = tl.load(scale_ptr + row * S + slots, mask=in_bag, other=0.0)
    z_y = tl.load(z_row + y, mask=in_bag, other=0.0).to(tl.float32)
    scale_sum = tl.sum(scale, axis=0)
    tl.store(loss_ptr + row, tl.sum(scale * (lse - z_y), axis=0))
    if GRAD:
        # Pass 2: the softmax part of the gradient, over every column.
        for start in range(0, V, BLOCK_V):
            mask = start + cols < V
            x = tl.load(z_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(z_row + start + cols, (scale_sum * tl.exp(x - lse)).to(z_ptr.dtype.element_ty), mask=mask)
        # Then the target columns, recomputed whole from their saved logits (one rounding, as elsewhere); a
        # token twice in a bag gets both scales, and its duplicate slots store the same value.
        same = (y[:, None] == y[None, :]) & in_bag[None, :]
        scale_at_y = tl.sum(tl.where(same, scale[None, :], 0.0), axis=1)
        grad_y = scale_sum * tl.exp(z_y - lse) - scale_at_y
        tl.debug_barrier()  # pass 2's stores to these columns come first (other threads may have made them)
        tl.store(z_row + y, grad_y.to(z_ptr.dtype.element_ty), mask=in_bag)


def row_block(vocab_size: int) -> tuple[int, int]:
    """Return ``(BLOCK_V, num_warps)`` for rows of ``vocab_size`` logits: wide blocks, many warps."""
    block = min(triton.next_power_of_2(vocab_size), 8192)
    return block, (16 if block >= 8192 else 8 if block >= 2048 else 4)


def mce_rows_(logits: torch.Tensor, safe_targets: torch.Tensor, scales: torch.Tensor, losses: torch.Tensor,
              grad: bool, block_v: int | None = None) -> None:
    """Write each row's loss into ``losses`` (C,) and, when ``grad``, the gradient over ``logits`` (C, V)."""
    C, V = logits.shape
    S = safe_targets.shape[1]
    block, warps = row_block(V) if block_v is None else (block_v, 4)
    _mce_rows[(C,)](logits, safe_targets, scales, losses, V, S, BLOCK_V=block,
                    BLOCK_S=max(2, triton.next_power_of_2(S)), GRAD=grad, num_warps=warps)


_FLOAT32_OUT = {"cuda": True}  # whether this PyTorch's addmm adds bf16 products into float32 (not every version does)


def _add_product(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` into a float32 ``acc``: on CUDA cuBLAS writes float32 itself, no (V, d) temporary."""
    if acc.is_cuda and a.dtype != acc.dtype and _FLOAT32_OUT["cuda"]:
        try:
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            return
        except (RuntimeError, TypeError):  # refused by its argument checks, before any work: the general way
            _FLOAT32_OUT["cuda"] = False
    acc += (a @ b).to(acc.dtype)


class TritonLinearMultiHotCE(torch.autograd.Function):
    """``superposition._LinearMultiHotCE`` with the softmax, loss and gradient of a chunk in one Triton kernel.

    ``apply(hidden (N, d), weight (V, d), safe_targets (N, s), scales (N, s), chunk_size)``; the
    targets and scales are ``superposition._prepared_targets``'s. ``block_v`` (tests) fixes the
    kernel's tile over ``V``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, safe_targets, scales, chunk_size, block_v=None):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        h_all, w = hidden.to(dtype), weight.to(dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        targets, scales = safe_targets.contiguous(), scales.to(torch.float32).contiguous()
        with torch.autocast(device_type, enabled=False):
            for i in range(0, hidden.shape[0], chunk_size):
                h = h_all[i : i + chunk_size]
                z = h @ w.t()  # (C, V) in the compute dtype: the only block of that size
                mce_rows_(z, targets[i : i + chunk_size], scales[i : i + chunk_size], losses[i : i + chunk_size],
                          need_h or need_w, block_v)
                if need_h:
                    grad_h[i : i + chunk_size] = z @ w
                if need_w:
                    _add_product(grad_w, z.t(), h)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.has = (need_h, need_w)
        return losses.sum()

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        need_h, need_w = ctx.has
        gh = grad_h * grad_loss.to(grad_h.dtype) if need_h else None
        gw = grad_w * grad_loss if need_w else None
        return gh, gw, None, None, None, None
