"""`sample_logits`, forward: the head's per-row fold over logits the caller already has, one row block per
program walking the vocabulary in tiles; the sample is then drawn by `sampler.sample` from the same logits."""
import torch
import triton
import triton.language as tl

from .helpers import empty_row_state, finish_rows, fold_logits_tile, store_chunk_lse


@triton.jit
def _logits_forward_kernel(logits_ptr, stride_n, stride_v, targets_ptr, stats_ptr, row_loss_ptr, predicted_ptr,
                           chunk_lse_ptr, N, V, n_chunks, ignore_index, temperature, DISALLOW: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    targets = tl.load(targets_ptr + rows, mask=row_ok, other=ignore_index)
    valid = targets != ignore_index

    m, s, target_logit, best, best_id, nan_seen = empty_row_state(BLOCK_N)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        ok = row_ok[:, None] & (cols[None, :] < V)
        x = tl.load(logits_ptr + rows[:, None] * stride_n + cols.to(tl.int64)[None, :] * stride_v, mask=ok,
                    other=float("-inf")).to(tl.float32)
        m, s, target_logit, best, best_id, nan_seen, chunk_lse = fold_logits_tile(
            x, cols, targets, valid, temperature, m, s, target_logit, best, best_id, nan_seen,
            DISALLOW, BLOCK_N, BLOCK_V)
        store_chunk_lse(chunk_lse_ptr, chunk_lse, rows, row_ok, v0, n_chunks, BLOCK_V)
    finish_rows(rows, row_ok, m, s, target_logit, best_id, nan_seen, stats_ptr, row_loss_ptr, predicted_ptr)


def logits_forward(logits, targets, *, ignore_index, temperature, disallow_correct, interpret=False):
    """logits [N, V] (float16/bfloat16/float32), targets [N] int64. Returns (stats [N, 2] = (max,
    log sum exp(x - max)), row_loss [N], predicted [N] int64, chunk_lse [N, ceil(V / 128)]), float32."""
    n, v = logits.shape
    n_chunks = triton.cdiv(v, 128)
    dev = logits.device
    stats = torch.empty(n, 2, dtype=torch.float32, device=dev)
    row_loss = torch.empty(n, dtype=torch.float32, device=dev)
    predicted = torch.empty(n, dtype=torch.int64, device=dev)
    chunk_lse = torch.empty(n, n_chunks, dtype=torch.float32, device=dev)
    if n == 0:
        return stats, row_loss, predicted, chunk_lse
    block_n, block_v = (16, 512) if interpret else (4, 1024)
    _logits_forward_kernel[(triton.cdiv(n, block_n),)](
        logits, *logits.stride(), targets, stats, row_loss, predicted, chunk_lse, n, v, n_chunks, ignore_index,
        temperature, DISALLOW=disallow_correct, BLOCK_N=block_n, BLOCK_V=block_v)
    return stats, row_loss, predicted, chunk_lse


@triton.jit
def _logits_backward_kernel(logits_ptr, stride_n, stride_v, targets_ptr, stats_ptr, scale_ptr, grad_ptr, N, V,
                            BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    ok = cols < V
    x = tl.load(logits_ptr + row * stride_n + cols * stride_v, mask=ok, other=float("-inf")).to(tl.float32)
    target = tl.load(targets_ptr + row)
    row_max = tl.load(stats_ptr + row * 2)
    log_sum = tl.load(stats_ptr + row * 2 + 1)
    scale = tl.load(scale_ptr + row)
    g = (tl.exp((x - row_max) - log_sum) - (cols == target).to(tl.float32)) * scale
    tl.store(grad_ptr + row * V + cols, tl.where(scale != 0, g, 0.0), mask=ok)


def logits_backward(logits, targets, stats, row_scale, *, interpret=False):
    """d loss / d logits [N, V] float32 = (softmax - onehot(target)) * row_scale (0 on ignored rows)."""
    n, v = logits.shape
    grad = torch.empty(n, v, dtype=torch.float32, device=logits.device)
    if n == 0:
        return grad
    block_v = 1024 if interpret else 2048
    _logits_backward_kernel[(n, triton.cdiv(v, block_v))](logits, *logits.stride(), targets, stats, row_scale, grad,
                                                          n, v, BLOCK_V=block_v)
    return grad
