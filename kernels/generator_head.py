"""The fused generator head, forward: 2-D tiles of (masked rows x vocabulary) computed by `tl.dot` over H and
folded in registers into per-row log-sum-exp, target logit, argmax and the sampler's 128-id chunk log-masses;
the [N, V] logits never reach memory. The sample is then drawn by `sampler.sample`, which recomputes the
chosen chunk's 128 logits."""
import torch
import triton
import triton.language as tl

from .helpers import empty_row_state, finish_rows, fold_logits_tile, logits_tile, store_chunk_lse


@triton.jit
def _head_forward_kernel(hidden_ptr, stride_hn, stride_hk, weight_ptr, stride_wv, stride_wk, bias_ptr, targets_ptr,
                         stats_ptr, row_loss_ptr, predicted_ptr, chunk_lse_ptr, N, V, H, n_chunks, ignore_index,
                         temperature, HAS_BIAS: tl.constexpr, DISALLOW: tl.constexpr, FP32: tl.constexpr,
                         PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                         BLOCK_H: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    targets = tl.load(targets_ptr + rows, mask=row_ok, other=ignore_index)
    valid = targets != ignore_index

    m, s, target_logit, best, best_id, nan_seen = empty_row_state(BLOCK_N)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        acc = logits_tile(hidden_ptr, stride_hn, stride_hk, weight_ptr, stride_wv, stride_wk, bias_ptr, rows,
                          cols.to(tl.int64), N, V, H, HAS_BIAS, FP32, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        x = tl.where((cols < V)[None, :], acc, float("-inf"))
        m, s, target_logit, best, best_id, nan_seen, chunk_lse = fold_logits_tile(
            x, cols, targets, valid, temperature, m, s, target_logit, best, best_id, nan_seen,
            DISALLOW, BLOCK_N, BLOCK_V)
        store_chunk_lse(chunk_lse_ptr, chunk_lse, rows, row_ok, v0, n_chunks, BLOCK_V)
    finish_rows(rows, row_ok, m, s, target_logit, best_id, nan_seen, stats_ptr, row_loss_ptr, predicted_ptr)


def head_forward(hidden, weight, bias, targets, *, ignore_index, temperature, disallow_correct, precision,
                 interpret=False, blocks=None):
    """hidden [N, H], weight [V, H], bias [V] | None (float16/bfloat16/float32, any strides), targets [N] int64.
    Returns (stats [N, 2] = (max, log sum exp(x - max)), row_loss [N] (cross-entropy; meaningless on ignored
    rows), predicted [N] int64, chunk_lse [N, ceil(V / 128)]), float32.
    `blocks` = (BLOCK_N, BLOCK_V, BLOCK_H, num_warps) overrides the launcher's choice."""
    n, h = hidden.shape
    v = weight.shape[0]
    n_chunks = triton.cdiv(v, 128)
    dev = hidden.device
    stats = torch.empty(n, 2, dtype=torch.float32, device=dev)
    row_loss = torch.empty(n, dtype=torch.float32, device=dev)
    predicted = torch.empty(n, dtype=torch.int64, device=dev)
    chunk_lse = torch.empty(n, n_chunks, dtype=torch.float32, device=dev)
    if n == 0:
        return stats, row_loss, predicted, chunk_lse
    fp32 = hidden.dtype != weight.dtype or hidden.dtype == torch.float32
    if interpret:  # few, big programs: the interpreter's cost is per program and per op
        block_n, block_v, block_h, warps = 16, 256, triton.next_power_of_2(max(h, 16)), 4
    else:  # float32 tiles take twice the registers: fewer rows keep them from spilling
        block_n, block_v, block_h, warps = (32 if fp32 else 64), 128, 64, 8
    if blocks is not None:
        block_n, block_v, block_h, warps = blocks
    _head_forward_kernel[(triton.cdiv(n, block_n),)](
        hidden, *hidden.stride(), weight, *weight.stride(), bias if bias is not None else weight, targets,
        stats, row_loss, predicted, chunk_lse, n, v, h, n_chunks, ignore_index, temperature,
        HAS_BIAS=bias is not None, DISALLOW=disallow_correct, FP32=fp32, PRECISION=precision,
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, num_warps=warps)
    return stats, row_loss, predicted, chunk_lse
