"""Softmax statistics, sampler inputs and gradient of rows of logits held in memory: the `sample_logits` op's
kernels, and the epilogue of the generator head, whose logits chunks come from cuBLAS.

`_fold_rows_kernel` walks each row once: per 128-id chunk it takes the chunk's max and the sum of exp(x - max),
one exponential per logit, which give both the sampler's chunk log-mass and (combined per chunk, not per logit)
the row's log-sum-exp; the argmax is found from the chunk maxima and one read of the winning chunk. NaN and inf,
and the id that `disallow_correct` excludes, are handled once per row, not per logit. `_softmax_grad_kernel`
writes d loss / d logits = (softmax - onehot) * row_scale from the saved statistics, and the column sums that
are d bias, in one pass over the logits.
"""
import functools

import torch
import triton
import triton.language as tl

from ..ops.kernel_args import KERNEL_FLOATS, require
from . import configs
from .helpers import LOG2E, first_argmax

# The fold sees a tile as [rows, PARTS, chunks, 128 // PARTS] ids, id = 128 chunk + (128 // PARTS) part + lane.
# Triton spreads the 16 contiguous lanes over 4 threads (4-wide vectors) and the next axis, the chunks, over the
# warp's other threads: each thread holds 4 ids of each of the 8 parts of one chunk, which reduces in registers
# and 2 shuffles.
PARTS = tl.constexpr(8)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _check_rows(logits, bias, targets):
    """What both launchers rely on: logits [N, V] of a kernel dtype, bias [V] and targets [N] beside it."""
    n, v = require("logits", logits, dtypes=KERNEL_FLOATS).shape
    require("bias", bias, device=logits.device, dtypes=KERNEL_FLOATS, contiguous=True, shape=(v,), optional=True)
    require("targets", targets, device=logits.device, dtypes=(torch.int64,), contiguous=True, shape=(n,))


def _adjacent_columns(logits):
    """logits whose ids lie next to each other in memory (any row stride), copied when they do not: the kernels
    read a row's ids as consecutive 16-byte vectors."""
    return logits if logits.shape[1] <= 1 or logits.stride(1) == 1 else logits.contiguous()


@triton.jit
def exact_chunk_lse(row_starts, bias_ptr, chunks, excluded, V, inv_t, HAS_BIAS: tl.constexpr):
    """contract §3's chunk log-masses evaluated id by id: logsumexp of z = x / T over the 128 ids of each of `chunks`
    [BLOCK_N, CB] (int64) of the rows starting at row_starts [BLOCK_N], NaN as -inf, the id excluded [BLOCK_N]
    (-1: none) as -inf. [BLOCK_N, CB] float32. The fold's slow path: rows with a NaN or an inf, and the chunk
    of the id that disallow_correct excludes."""
    ids = chunks[:, :, None] * 128 + tl.arange(0, 128)[None, None, :]
    ok = ids < V
    x = tl.load(row_starts[:, None, None] + ids, mask=ok, other=float("-inf")).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + ids, mask=ok, other=0.0).to(tl.float32)
    z = tl.where((x != x) | (ids == excluded[:, None, None]), float("-inf"), x) * inv_t
    z_max = tl.max(z, axis=2)
    z_ref = tl.where(z_max == float("-inf"), 0.0, z_max)
    z_sum = tl.sum(tl.exp(z - z_ref[:, :, None]), axis=2)
    return tl.where(z_max == float("-inf"), float("-inf"), z_ref + tl.log(z_sum))


@triton.jit
def _fold_tile(row_ptrs, bias_ptr, cols, chunks, lse_ptrs, store_ok, V, k, inv_t, m_acc, s_acc, best, best_chunk,
               bad, HAS_BIAS: tl.constexpr, UNIT_TEMPERATURE: tl.constexpr, MASKED: tl.constexpr):
    """Folds one tile of logits (ids `cols` [BLOCK_N or 1, Q, C, 128 // Q]; its chunk slots `chunks` [.., C]) into
    the per-slot state [BLOCK_N, C]: running max and sum of exp (the row's log-sum-exp, combined after the loop),
    the best chunk max and its chunk, a NaN/inf flag. Stores the tile's chunk log-masses where `store_ok`.
    MASKED: the last, ragged tile (a mask on every load; the full tiles load unmasked 16-byte vectors)."""
    if MASKED:
        x = tl.load(row_ptrs + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(bias_ptr + cols, mask=cols < V, other=0.0).to(tl.float32)
    else:
        x = tl.load(row_ptrs + cols).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(bias_ptr + cols).to(tl.float32)
    # The chunk's max (NaN ignored) is the reference of its exponentials, so one exponential per logit serves the
    # chunk's log-mass and, rescaled per chunk, the row's sum. A NaN, or an inf - inf, makes the chunk's sum NaN:
    # `bad`, and the row's chunk log-masses are redone id by id after the loop.
    cmax = tl.max(tl.max(x, axis=1), axis=2)
    cref = tl.where(cmax == float("-inf"), 0.0, cmax)
    # The difference first, exact for close values: a product of each first would lose the digits a large
    # common offset of the logits (a shift the softmax does not see) carries.
    shifted = x - cref[:, None, :, None]
    csum_z = tl.sum(tl.sum(tl.exp2(shifted * k), axis=1), axis=2)
    if UNIT_TEMPERATURE:
        csum_x = csum_z
    else:  # the loss's exponentials are of x, the sampler's of x / T
        csum_x = tl.sum(tl.sum(tl.exp2(shifted * LOG2E), axis=1), axis=2)
    lse = tl.where(cmax == float("-inf"), float("-inf"), cref * inv_t + tl.log(csum_z))
    tl.store(lse_ptrs + chunks, lse, mask=store_ok)
    bad |= (csum_x != csum_x).to(tl.int32)
    m_new = tl.maximum(m_acc, cmax)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    # cmax, not cref: a chunk of -inf only adds 0 * exp2(-inf), never 0 * inf (cref is 0 there).
    s_acc = s_acc * tl.exp2((m_acc - m_ref) * LOG2E) + csum_x * tl.exp2((cmax - m_ref) * LOG2E)
    better = cmax > best
    return m_new, s_acc, tl.where(better, cmax, best), tl.where(better, chunks, best_chunk), bad


@triton.jit
def _per_chunk_slot(values, zero):
    """values [BLOCK_N] as [BLOCK_N, C] laid out as the fold's chunk reductions leave their results (zero: the
    tile's ids times 0), so that the per-slot state and stores need no layout conversion in the loop."""
    return tl.max(tl.max(values[:, None, None, None] + zero, axis=1), axis=2)


@triton.jit
def _fold_rows_kernel(logits_ptr, stride_n, bias_ptr, targets_ptr, stats_ptr, row_loss_ptr,
                      predicted_ptr, chunk_lse_ptr, N, V, n_chunks, ignore_index, temperature,
                      HAS_BIAS: tl.constexpr, DISALLOW: tl.constexpr, UNIT_TEMPERATURE: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    C: tl.constexpr = BLOCK_V // 128
    first = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ok = first < N
    rows = tl.minimum(first, N - 1).to(tl.int64)  # rows past N repeat row N - 1: their loads need no mask
    ids = (tl.arange(0, C)[None, None, :, None] * 128 + tl.arange(0, PARTS)[None, :, None, None] * (128 // PARTS)
           + tl.arange(0, 128 // PARTS)[None, None, None, :])
    zero = 0 * ids
    tile_chunks = tl.max(tl.max(ids, axis=1), axis=2) // 128
    targets = tl.load(targets_ptr + rows)
    valid = (targets != ignore_index) & (targets >= 0) & (targets < V)
    excluded = tl.where(DISALLOW & valid, targets, -1)  # the id disallow_correct leaves out of the sample
    skipped = _per_chunk_slot(tl.where(excluded >= 0, excluded // 128, -1), zero)  # its chunk is written after
    ok_c = _per_chunk_slot(first, zero) < N
    row_ptrs = logits_ptr + rows[:, None, None, None] * stride_n
    lse_ptrs = chunk_lse_ptr + _per_chunk_slot(rows, zero) * n_chunks
    inv_t = 1.0 / temperature
    k = LOG2E * inv_t
    m_acc = tl.full([BLOCK_N, C], float("-inf"), tl.float32)
    s_acc = tl.zeros([BLOCK_N, C], tl.float32)
    best = tl.full([BLOCK_N, C], float("-inf"), tl.float32)
    best_chunk = tl.zeros([BLOCK_N, C], tl.int32)
    bad = tl.zeros([BLOCK_N, C], tl.int32)
    v_full = V // BLOCK_V * BLOCK_V
    for v0 in range(0, v_full, BLOCK_V):
        chunks = v0 // 128 + tile_chunks
        m_acc, s_acc, best, best_chunk, bad = _fold_tile(
            row_ptrs, bias_ptr, v0 + ids, chunks, lse_ptrs, ok_c & (chunks != skipped), V, k, inv_t, m_acc, s_acc,
            best, best_chunk, bad, HAS_BIAS, UNIT_TEMPERATURE, False)
    if v_full < V:
        chunks = v_full // 128 + tile_chunks
        m_acc, s_acc, best, best_chunk, bad = _fold_tile(
            row_ptrs, bias_ptr, v_full + ids, chunks, lse_ptrs, ok_c & (chunks < n_chunks) & (chunks != skipped), V,
            k, inv_t, m_acc, s_acc, best, best_chunk, bad, HAS_BIAS, UNIT_TEMPERATURE, True)

    m = tl.max(m_acc, axis=1)
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    s = tl.sum(s_acc * tl.exp2((m_acc - m_ref[:, None]) * LOG2E), axis=1)
    row_bad = tl.max(bad, axis=1) > 0
    log_sum = tl.where(row_bad, float("nan"), tl.log(s))  # as PyTorch: NaN for a NaN (or +inf) logit
    row_starts = logits_ptr + rows * stride_n
    if tl.max(row_bad.to(tl.int32), axis=0) > 0:
        tl.debug_barrier()  # every chunk of these rows again, id by id, after the loop's stores
        for c0 in range(0, n_chunks, 4):
            every = c0 + tl.arange(0, 4).to(tl.int64)[None, :] + 0 * rows[:, None]
            tl.store(chunk_lse_ptr + rows[:, None] * n_chunks + every,
                     exact_chunk_lse(row_starts, bias_ptr, every, excluded, V, inv_t, HAS_BIAS),
                     mask=rows_ok[:, None] & (every < n_chunks))
    elif DISALLOW:
        own = tl.maximum(excluded // 128, 0)[:, None]
        tl.store(chunk_lse_ptr + rows[:, None] * n_chunks + own,
                 exact_chunk_lse(row_starts, bias_ptr, own, excluded, V, inv_t, HAS_BIAS),
                 mask=(rows_ok & (excluded >= 0))[:, None])

    target_logit = tl.load(row_starts + targets, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        target_logit += tl.load(bias_ptr + targets, mask=valid, other=0.0).to(tl.float32)
    # The argmax: the first id of the first chunk whose max is the row's (0 where every logit is -inf or NaN).
    row_best, chunk = first_argmax(best, best_chunk, 1, 2**30)
    in_chunk = tl.minimum(chunk, n_chunks - 1).to(tl.int64)[:, None] * 128 + tl.arange(0, 128)[None, :]
    x = tl.load(row_starts[:, None] + in_chunk, mask=in_chunk < V, other=float("-inf")).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + in_chunk, mask=in_chunk < V, other=0.0).to(tl.float32)
    _, predicted = first_argmax(tl.where(x != x, float("-inf"), x), in_chunk, 1, V)
    tl.store(stats_ptr + rows * 2, m, mask=rows_ok)
    tl.store(stats_ptr + rows * 2 + 1, log_sum, mask=rows_ok)
    # log(sum) + (max - target logit): accurate for confident rows, where log-sum-exp minus the target would cancel.
    tl.store(row_loss_ptr + rows, log_sum + (m - target_logit), mask=rows_ok)
    tl.store(predicted_ptr + rows, tl.where(row_best > float("-inf"), predicted, 0), mask=rows_ok)


def fold_rows(logits, bias, targets, *, ignore_index, temperature, disallow_correct, out=None, interpret=False,
              config=None):
    """Statistics of logits [N, V] (+ bias [V], contiguous, or None): float16/bfloat16/float32, any row stride
    (rows 16-byte aligned load fastest; logits whose columns are not adjacent are copied first); targets [N]
    int64 contiguous.
    Returns (stats [N, 2] = (max, log sum exp(x - max)), row_loss [N] (cross-entropy; meaningless on ignored
    rows), predicted [N] int64, chunk_lse [N, ceil(V / 128)] (of logits / temperature, the target excluded under
    disallow_correct)), float32, written into `out` (those four, contiguous) when given. `config` overrides
    `configs.fold_rows`."""
    n, v = logits.shape
    n_chunks = triton.cdiv(v, configs.CHUNK)
    dev = logits.device
    _check_rows(logits, bias, targets)
    logits = _adjacent_columns(logits)
    shapes = {"stats": ((n, 2), torch.float32), "row_loss": ((n,), torch.float32),
              "predicted": ((n,), torch.int64), "chunk_lse": ((n, n_chunks), torch.float32)}
    if out is None:
        out = tuple(torch.empty(shape, dtype=dtype, device=dev) for shape, dtype in shapes.values())
    if len(out) != len(shapes):
        raise ValueError(f"out must be the four tensors ({', '.join(shapes)}), got {len(out)}")
    for (name, (shape, dtype)), tensor in zip(shapes.items(), out, strict=True):
        require(f"out {name}", tensor, device=dev, dtypes=(dtype,), contiguous=True, shape=shape)
    if n == 0:
        return out
    meta = config or configs.fold_rows(interpret)
    _fold_rows_kernel[(triton.cdiv(n, meta["BLOCK_N"]),)](
        logits, logits.stride(0), bias if bias is not None else logits, targets, *out, n, v, n_chunks, ignore_index,
        temperature, HAS_BIAS=bias is not None, DISALLOW=disallow_correct, UNIT_TEMPERATURE=temperature == 1.0,
        **meta)
    return out


@triton.jit
def _softmax_grad_kernel(logits_ptr, stride_n, bias_ptr, targets_ptr, stats_ptr, scale_ptr, grad_ptr,
                         stride_g, column_sums_ptr, N, V, rows_per_program, HAS_BIAS: tl.constexpr,
                         BIAS_GRAD: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_V: tl.constexpr):
    # Program (i, j): columns i * BLOCK_V.. of rows j * rows_per_program..; MASKED programs hold the ragged last
    # columns (the others load and store unmasked vectors along a row).
    if MASKED:
        cols_start = (V // BLOCK_V) * BLOCK_V
    else:
        cols_start = tl.program_id(0) * BLOCK_V
    cols = cols_start + tl.arange(0, BLOCK_V)
    col_ok = cols < V
    first = tl.program_id(1) * rows_per_program
    end = tl.minimum(first + rows_per_program, N)
    column_sums = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    for r0 in range(first, end, BLOCK_N):
        rows_ok = r0 + tl.arange(0, BLOCK_N) < end
        rows = tl.minimum(r0 + tl.arange(0, BLOCK_N), end - 1).to(tl.int64)
        # Rows past `end` repeat the last one with scale 0: nothing stored, nothing summed.
        scale = tl.where(rows_ok, tl.load(scale_ptr + rows), 0.0)
        row_max, log_sum = tl.load(stats_ptr + rows * 2), tl.load(stats_ptr + rows * 2 + 1)
        # The target's place in this program's columns, compared in 32 bits (-1: elsewhere, ignored rows too).
        target_lane = tl.load(targets_ptr + rows) - cols_start
        target_lane = tl.where((target_lane >= 0) & (target_lane < BLOCK_V), target_lane, -1).to(tl.int32)
        pointers = logits_ptr + rows[:, None] * stride_n + cols[None, :]
        # The bias is read again at every step, from cache: held in registers it would cost a register per id.
        if MASKED:
            x = tl.load(pointers, mask=col_ok[None, :], other=0.0).to(tl.float32)
            if HAS_BIAS:
                x += tl.load(bias_ptr + cols[None, :], mask=col_ok[None, :], other=0.0).to(tl.float32)
        else:
            x = tl.load(pointers).to(tl.float32)
            if HAS_BIAS:
                x += tl.load(bias_ptr + cols[None, :]).to(tl.float32)
        p = tl.exp2((x - row_max[:, None]) * LOG2E - (log_sum * LOG2E)[:, None])  # the difference first (fold)
        g = p * scale[:, None] - tl.where(tl.arange(0, BLOCK_V)[None, :] == target_lane[:, None], scale[:, None], 0.0)
        g = tl.where(scale[:, None] != 0, g, 0.0)  # exactly 0 on ignored rows, NaN logits included
        if MASKED:
            store_ok = rows_ok[:, None] & col_ok[None, :]
        else:
            store_ok = rows_ok[:, None]
        tl.store(grad_ptr + rows[:, None] * stride_g + cols[None, :], g.to(grad_ptr.dtype.element_ty),
                 mask=store_ok)
        if BIAS_GRAD:
            column_sums += g
    if BIAS_GRAD:  # this program's row of the caller's buffer: no other program adds to it in this launch
        sums_ptrs = column_sums_ptr + tl.program_id(1) * V + cols
        tl.store(sums_ptrs, tl.load(sums_ptrs, mask=col_ok) + tl.sum(column_sums, axis=0), mask=col_ok)


def column_sum_rows(v: int, device: torch.device, interpret: bool = False) -> int:
    """The rows of the `column_sums` buffer that `softmax_grad` fills for vocabulary size `v` on `device`: one per
    program down the rows."""
    return configs.softmax_grad(interpret, v, _multiprocessors(device))["ROW_PROGRAMS"]


def softmax_grad(logits, bias, targets, stats, row_scale, *, out=None, column_sums=None, interpret=False,
                 config=None):
    """d loss / d logits [N, V] = (softmax - onehot(target)) * row_scale, exactly 0 on rows with scale 0.
    logits [N, V] (any strides, as for `fold_rows`) + bias [V] contiguous | None, targets [N] int64, stats [N, 2]
    and row_scale [N] float32, all but logits contiguous. Written into `out` ([N, V] with unit column stride, any
    float dtype), else a new float32 tensor, which is returned. With `column_sums` ([P, V] float32, contiguous; P from
    `column_sum_rows`), the gradient's column sums are added to it, program p down the rows adding its part to row p:
    summed over P, d bias (in float32, before the gradient's rounding to its dtype); a chunked caller adds chunk after
    chunk to the same buffer and sums it once."""
    n, v = logits.shape
    dev = logits.device
    _check_rows(logits, bias, targets)
    logits = _adjacent_columns(logits)
    require("stats", stats, device=dev, dtypes=(torch.float32,), contiguous=True, shape=(n, 2))
    require("row_scale", row_scale, device=dev, dtypes=(torch.float32,), contiguous=True, shape=(n,))
    require("out", out, device=dev, dtypes=KERNEL_FLOATS, shape=(n, v), optional=True)
    if out is not None and v > 1 and out.stride(1) != 1:
        raise ValueError(f"out must have unit column stride, got strides {out.stride()}")
    require("column_sums", column_sums, device=dev, dtypes=(torch.float32,), contiguous=True, optional=True)
    meta = dict(config or configs.softmax_grad(interpret, v, _multiprocessors(dev)))
    row_programs = meta.pop("ROW_PROGRAMS")
    if column_sums is not None:
        require("column_sums", column_sums, shape=(column_sums.shape[0], v))
        row_programs = column_sums.shape[0]
    grad = torch.empty(n, v, dtype=torch.float32, device=dev) if out is None else out
    if n == 0:
        return grad
    rows_per_program = triton.cdiv(n, row_programs)
    row_programs = triton.cdiv(n, rows_per_program)  # no program without rows
    full, ragged = v // meta["BLOCK_V"], v % meta["BLOCK_V"] != 0
    for programs, masked in ((full, False), (int(ragged), True)):
        if programs:
            _softmax_grad_kernel[(programs, row_programs)](
                logits, logits.stride(0), bias if bias is not None else logits, targets, stats, row_scale, grad,
                grad.stride(0), column_sums if column_sums is not None else stats, n, v, rows_per_program,
                HAS_BIAS=bias is not None, BIAS_GRAD=column_sums is not None, MASKED=masked, **meta)
    return grad
