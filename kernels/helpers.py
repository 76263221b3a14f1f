"""Shared Triton helpers: SPEC §3's noise stream, first-index argmax, the per-tile fold of the softmax
statistics and the softmax gradient of a tile.

The noise G(stream, j) for one row is indexed by the vocabulary id (or chunk index) j, never by tile, so a
sample does not depend on block sizes, warps or the grid.
"""
import triton
import triton.language as tl


@triton.jit
def uniform_from_words(words):
    """A uint32 Philox word -> float32 in [0, 1): read as int32, negatives folded by ~x, times 4.6566127342e-10."""
    x = words.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, -x - 1, x)
    return x.to(tl.float32) * 4.6566127342e-10


@triton.jit
def gumbel_noise(seed, rows, stream, first_quad, QUADS: tl.constexpr):
    """G(stream, j) for j in [4 * first_quad, 4 * (first_quad + QUADS)) of each row: [ROWS, 4 * QUADS] float32
    for rows [ROWS] and first_quad [ROWS] (int32).

    Philox4x32-10 with key (seed lo, seed hi) and counter (j >> 2, row, stream, 0); one call gives the words of
    four consecutive j, put back in index order by the joins below.
    """
    quads = first_quad[:, None] + tl.arange(0, QUADS)[None, :]
    zeros = tl.zeros_like(quads)
    r0, r1, r2, r3 = tl.philox(seed, quads, zeros + rows.to(tl.int32)[:, None], zeros + stream, zeros)
    words = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [quads.shape[0], 4 * QUADS])
    return -tl.log(-tl.log(uniform_from_words(words)))


@triton.jit
def first_argmax(values, index, axis: tl.constexpr, none):
    """(max, index of its first occurrence) along `axis`; NaN must already be -inf. Where every value is -inf the
    index is `none`."""
    best = tl.max(values, axis=axis)
    hit = (values == tl.expand_dims(best, axis)) & (values > float("-inf"))
    return best, tl.min(tl.where(hit, index, none), axis=axis)


@triton.jit
def empty_row_state(BLOCK_N: tl.constexpr):
    """The forward fold's per-row state before the first tile: (max, sum, target logit, best, best id, NaN)."""
    return (tl.full([BLOCK_N], float("-inf"), tl.float32), tl.zeros([BLOCK_N], tl.float32),
            tl.zeros([BLOCK_N], tl.float32), tl.full([BLOCK_N], float("-inf"), tl.float32),
            tl.zeros([BLOCK_N], tl.int32), tl.zeros([BLOCK_N], tl.int1))


@triton.jit
def store_chunk_lse(chunk_lse_ptr, chunk_lse, rows, row_ok, v0, n_chunks, BLOCK_V: tl.constexpr):
    """Writes one tile's chunk log-masses [BLOCK_N, BLOCK_V // 128] to chunk_lse [N, n_chunks]."""
    chunks = v0 // 128 + tl.arange(0, BLOCK_V // 128)
    tl.store(chunk_lse_ptr + rows[:, None] * n_chunks + chunks[None, :], chunk_lse,
             mask=row_ok[:, None] & (chunks[None, :] < n_chunks))


@triton.jit
def fold_logits_tile(x, cols, targets, valid, temperature, m, s, target_logit, best, best_id, nan_seen,
                     DISALLOW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    """Folds one logits tile x [BLOCK_N, BLOCK_V] (float32, -inf past the vocabulary) of ids `cols` into the
    per-row state: running max m and sum s of exp (the loss's log-sum-exp), the target logit, the first argmax,
    a NaN flag. Returns the new state and the tile's sampler chunk log-masses [BLOCK_N, BLOCK_V // 128] of
    z = x / temperature (NaN as -inf; the target excluded where DISALLOW and the row is valid)."""
    is_nan = x != x
    nan_seen = nan_seen | (tl.max(is_nan.to(tl.int32), axis=1) > 0)
    xs = tl.where(is_nan, float("-inf"), x)
    is_target = cols[None, :] == targets[:, None]
    target_logit += tl.sum(tl.where(is_target, x, 0.0), axis=1)

    tile_best, tile_arg = first_argmax(xs, cols[None, :], 1, 2**30)
    better = tile_best > best
    best = tl.where(better, tile_best, best)
    best_id = tl.where(better, tile_arg, best_id)

    m_new = tl.maximum(m, tile_best)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(xs - m_safe[:, None]), axis=1)

    z = xs / temperature
    if DISALLOW:
        z = tl.where(is_target & valid[:, None], float("-inf"), z)
    z = tl.reshape(z, [BLOCK_N, BLOCK_V // 128, 128])
    z_max = tl.max(z, axis=2)
    z_safe = tl.where(z_max == float("-inf"), 0.0, z_max)
    z_sum = tl.sum(tl.exp(z - z_safe[:, :, None]), axis=2)
    chunk_lse = tl.where(z_max == float("-inf"), float("-inf"), z_max + tl.log(z_sum))
    return m_new, s, target_logit, best, best_id, nan_seen, chunk_lse


@triton.jit
def finish_rows(rows, row_ok, m, s, target_logit, best_id, nan_seen, stats_ptr, row_loss_ptr, predicted_ptr):
    """Stores the per-row results of the forward fold: the softmax statistics (max, log of the sum of exp(x - max),
    NaN if any logit was), the cross-entropy log(sum) + (max - target logit) — accurate for confident rows, where
    log-sum-exp minus the target logit would cancel — and the argmax."""
    log_sum = tl.where(nan_seen, float("nan"), tl.log(s))
    tl.store(stats_ptr + rows * 2, m, mask=row_ok)
    tl.store(stats_ptr + rows * 2 + 1, log_sum, mask=row_ok)
    tl.store(row_loss_ptr + rows, log_sum + (m - target_logit), mask=row_ok)
    tl.store(predicted_ptr + rows, best_id.to(tl.int64), mask=row_ok)


@triton.jit
def softmax_grad_tile(x, cols, targets, row_max, log_sum, scale):
    """(softmax(x) - onehot(target)) * scale of a logits tile x [BLOCK_N, BLOCK_V] float32, from each row's
    statistics; exactly 0 on rows with scale 0 (ignored rows, NaN logits included)."""
    onehot = (cols[None, :] == targets[:, None]).to(tl.float32)
    g = (tl.exp((x - row_max[:, None]) - log_sum[:, None]) - onehot) * scale[:, None]
    return tl.where(scale[:, None] != 0, g, 0.0)
