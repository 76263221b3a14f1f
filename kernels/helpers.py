"""Shared Triton helpers: contract §3's noise stream and first-index argmax.

The noise G(stream, j) for one row is indexed by the vocabulary id (or chunk index) j, never by tile, so a
sample does not depend on block sizes, warps or the grid.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * LOG2E): one multiply-add and the hardware exp2


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
