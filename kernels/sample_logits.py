"""Softmax statistics, sample inputs and gradient of rows of logits held in memory: the `sample_logits` op's
kernels, and the epilogue of the generator head, whose logits chunks come from cuBLAS.

`_fold_rows_kernel` walks each row's vocabulary once, folding the running max and sum of exponentials, the
target logit, the argmax and the sampler's 128-id chunk log-masses; with WRITE_GRAD it walks the row a second
time (from cache) and writes d loss / d logits = (softmax - onehot) * row_scale, so the head's forward can hand
that tile straight to the gradient GEMMs. `_softmax_grad_kernel` writes the same gradient from saved
statistics, for a backward that recomputes the logits.
"""
import torch
import triton
import triton.language as tl

from ..tensor_checks import KERNEL_FLOATS, require
from . import configs
from .helpers import empty_row_state, finish_rows, fold_logits_tile, softmax_grad_tile, store_chunk_lse


def _check_rows(logits, bias, targets):
    """What both launchers rely on: logits [N, V] of a kernel dtype, bias [V] and targets [N] beside it."""
    n, v = require("logits", logits, dtypes=KERNEL_FLOATS).shape
    require("bias", bias, device=logits.device, dtypes=KERNEL_FLOATS, contiguous=True, shape=(v,), optional=True)
    require("targets", targets, device=logits.device, dtypes=(torch.int64,), contiguous=True, shape=(n,))


@triton.jit
def _load_logits(logits_ptr, stride_n, stride_v, bias_ptr, rows, cols, mask, V, HAS_BIAS: tl.constexpr):
    """logits[rows, cols] (+ bias[cols]) as float32, -inf outside `mask` (rows x cols, within [N, V])."""
    x = tl.load(logits_ptr + rows[:, None] * stride_n + cols[None, :] * stride_v, mask=mask,
                other=float("-inf")).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + cols, mask=cols < V, other=0.0).to(tl.float32)[None, :]
    return x


@triton.jit
def _fold_rows_kernel(logits_ptr, stride_n, stride_v, bias_ptr, targets_ptr, scale_ptr, stats_ptr, row_loss_ptr,
                      predicted_ptr, chunk_lse_ptr, grad_ptr, N, V, n_chunks, ignore_index, temperature,
                      HAS_BIAS: tl.constexpr, DISALLOW: tl.constexpr, WRITE_GRAD: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    targets = tl.load(targets_ptr + rows, mask=row_ok, other=ignore_index)
    valid = targets != ignore_index

    m, s, target_logit, best, best_id, nan_seen = empty_row_state(BLOCK_N)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = _load_logits(logits_ptr, stride_n, stride_v, bias_ptr, rows, cols.to(tl.int64),
                         row_ok[:, None] & (cols[None, :] < V), V, HAS_BIAS)
        m, s, target_logit, best, best_id, nan_seen, chunk_lse = fold_logits_tile(
            x, cols, targets, valid, temperature, m, s, target_logit, best, best_id, nan_seen,
            DISALLOW, BLOCK_N, BLOCK_V)
        store_chunk_lse(chunk_lse_ptr, chunk_lse, rows, row_ok, v0, n_chunks, BLOCK_V)
    finish_rows(rows, row_ok, m, s, target_logit, best_id, nan_seen, stats_ptr, row_loss_ptr, predicted_ptr)

    if WRITE_GRAD:
        log_sum = tl.where(nan_seen, float("nan"), tl.log(s))
        scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
        for v0 in range(0, V, BLOCK_V):
            cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
            ok = row_ok[:, None] & (cols[None, :] < V)
            x = _load_logits(logits_ptr, stride_n, stride_v, bias_ptr, rows, cols, ok, V, HAS_BIAS)
            g = softmax_grad_tile(x, cols, targets, m, log_sum, scale)
            tl.store(grad_ptr + rows[:, None] * V + cols[None, :], g.to(grad_ptr.dtype.element_ty), mask=ok)


def fold_rows(logits, bias, targets, *, ignore_index, temperature, disallow_correct, grad=None, row_scale=None,
              interpret=False, config=None):
    """Statistics of logits [N, V] (+ bias [V], contiguous, or None): float16/bfloat16/float32, any strides;
    targets [N] int64 contiguous. With `grad` ([N, V] contiguous, any float dtype) and `row_scale` ([N] float32,
    0 on ignored rows) also writes d loss / d logits into grad.
    Returns (stats [N, 2] = (max, log sum exp(x - max)), row_loss [N] (cross-entropy; meaningless on ignored
    rows), predicted [N] int64, chunk_lse [N, ceil(V / 128)]), float32. `config` overrides `configs.fold_rows`."""
    n, v = logits.shape
    n_chunks = triton.cdiv(v, configs.CHUNK)
    dev = logits.device
    _check_rows(logits, bias, targets)
    require("grad", grad, device=dev, dtypes=KERNEL_FLOATS, contiguous=True, shape=(n, v), optional=True)
    require("row_scale", row_scale, device=dev, dtypes=(torch.float32,), contiguous=True, shape=(n,),
            optional=grad is None)
    stats = torch.empty(n, 2, dtype=torch.float32, device=dev)
    row_loss = torch.empty(n, dtype=torch.float32, device=dev)
    predicted = torch.empty(n, dtype=torch.int64, device=dev)
    chunk_lse = torch.empty(n, n_chunks, dtype=torch.float32, device=dev)
    if n == 0:
        return stats, row_loss, predicted, chunk_lse
    meta = config or configs.fold_rows(interpret)
    _fold_rows_kernel[(triton.cdiv(n, meta["BLOCK_N"]),)](
        logits, *logits.stride(), bias if bias is not None else logits, targets,
        row_scale if row_scale is not None else stats, stats, row_loss, predicted, chunk_lse,
        grad if grad is not None else stats, n, v, n_chunks, ignore_index, temperature,
        HAS_BIAS=bias is not None, DISALLOW=disallow_correct, WRITE_GRAD=grad is not None, **meta)
    return stats, row_loss, predicted, chunk_lse


@triton.jit
def _softmax_grad_kernel(logits_ptr, stride_n, stride_v, bias_ptr, targets_ptr, stats_ptr, scale_ptr, grad_ptr,
                         N, V, HAS_BIAS: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) + tl.arange(0, 1)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    ok = (rows[:, None] < N) & (cols[None, :] < V)
    x = _load_logits(logits_ptr, stride_n, stride_v, bias_ptr, rows, cols, ok, V, HAS_BIAS)
    targets = tl.load(targets_ptr + rows)
    row_max = tl.load(stats_ptr + rows * 2)
    log_sum = tl.load(stats_ptr + rows * 2 + 1)
    scale = tl.load(scale_ptr + rows)
    g = softmax_grad_tile(x, cols, targets, row_max, log_sum, scale)
    tl.store(grad_ptr + rows[:, None] * V + cols[None, :], g.to(grad_ptr.dtype.element_ty), mask=ok)


def softmax_grad(logits, bias, targets, stats, row_scale, *, out=None, interpret=False, config=None):
    """d loss / d logits [N, V] = (softmax - onehot(target)) * row_scale, exactly 0 on rows with scale 0.
    logits [N, V] (+ bias [V] contiguous | None), targets [N] int64, stats [N, 2] and row_scale [N] float32, all
    but logits contiguous. Written into `out` ([N, V] contiguous, any float dtype), else a new float32 tensor."""
    n, v = logits.shape
    _check_rows(logits, bias, targets)
    require("stats", stats, device=logits.device, dtypes=(torch.float32,), contiguous=True, shape=(n, 2))
    require("row_scale", row_scale, device=logits.device, dtypes=(torch.float32,), contiguous=True, shape=(n,))
    require("out", out, device=logits.device, dtypes=KERNEL_FLOATS, contiguous=True, shape=(n, v), optional=True)
    grad = torch.empty(n, v, dtype=torch.float32, device=logits.device) if out is None else out
    if n == 0:
        return grad
    meta = config or configs.softmax_grad(interpret)
    _softmax_grad_kernel[(n, triton.cdiv(v, meta["BLOCK_V"]))](
        logits, *logits.stride(), bias if bias is not None else logits, targets, stats, row_scale, grad, n, v,
        HAS_BIAS=bias is not None, **meta)
    return grad
