"""The `cpp` backend: CPU tensors, C++ epilogues (electra_fast._C) over vocabulary tiles whose matrix products
run through torch's BLAS.

The generator head walks the vocabulary in tiles (`tile_width`) for all rows at once: one GEMM writes the tile's
logits into a reused buffer, and the C++ epilogue folds it into per-row state (running max and sum of
exponentials, target logit, argmax, the sampler's chunk log-masses) while it is still in cache. The backward
recomputes each tile, turns it into softmax - one-hot in place, and feeds it to the two gradient GEMMs: four
GEMMs in all, and no [N, V] tensor held.

When training asks for the gradients (a mean or sum loss), the forward computes them instead, in blocks of
BLOCK_ROWS whole rows (fewer where the logits budget, `electra_fast.set_logits_budget`, is smaller): each block's
logits, once folded, are turned into softmax - one-hot in place and fed to the gradient GEMMs. Three GEMMs, as a
plain cross-entropy over materialised logits takes, with [BLOCK_ROWS, V] held instead of [N, V].
"""
from __future__ import annotations

import torch

from ... import _C
from .. import settings
from ..kernel_args import require
from ..reference import CHUNK, compute_dtype, reduce_rows, row_scale

GRADS_IN_FORWARD = True  # in blocks of BLOCK_ROWS rows: three GEMMs instead of four

MIN_TILE = 512  # ids; narrower tiles make the GEMMs inefficient

# Rows per block when the forward computes the gradients. Each block reads and writes all of d weight [V, H] once
# while the block saves the GEMM recomputing its logits, so the block must be a few hundred rows for the saving to
# dominate, whatever V; and no more, since the block's logits are what the head holds. Measured fwd+bwd on 2
# cores shared with other work: V = 250,002, H = 256, 1,229 rows: 67 rows 13.4 s, 134 11.5 s, 268 9.3 s, 536
# 10.0 s, 1,073 11.1 s, against 12.0-14.0 s recomputing in the backward; V = 30,522, H = 128, 2,458 rows: 256
# rows 1.6-1.8 s, 512 1.4 s, against 2.2-2.7 s.
BLOCK_ROWS = 256


def _last_level_cache_bytes(default: int = 8 << 20) -> int:
    """Size of the CPU's last-level cache (Linux sysfs), or `default` where it cannot be read."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
    except OSError:
        return default
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


# A logits tile stays in the last-level cache between its GEMM and its epilogue. Half that cache, not less:
# each tile costs a few parallel regions, and on a machine whose cores are shared with other work every
# region waits for a descheduled thread (measured on 2 shared cores: 4 MiB tiles 1,550 ms, 16 MiB 1,263 ms for
# the ELECTRA-Small head, the same 435 ms on idle cores).
TILE_BYTES = min(max(4 << 20, _last_level_cache_bytes() // 2), 32 << 20)


def tile_width(rows: int, vocab: int) -> int:
    """Vocabulary ids per tile: a multiple of CHUNK, so that tiles hold whole sampler chunks; wide when there
    are few rows (fewer calls), never under MIN_TILE."""
    width = max(MIN_TILE, TILE_BYTES // (4 * max(rows, 1)) // CHUNK * CHUNK)
    return min(width, -(-vocab // CHUNK) * CHUNK)


def _threads() -> int:
    return torch.get_num_threads()


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def _ptr(name: str, t: torch.Tensor | None, dtype: torch.dtype, shape=None, optional: bool = False) -> int:
    """The address the C++ kernel receives for `t`, after checking what it relies on: a contiguous CPU tensor of
    `dtype` (and `shape`). 0 for an optional None."""
    t = require(name, t, device="cpu", dtypes=(dtype,), contiguous=True, shape=shape, optional=optional)
    return 0 if t is None else t.data_ptr()


class _RowState:
    """Per-row state the forward epilogue merges tile by tile."""

    def __init__(self, n: int, vocab: int):
        self.n_chunks = -(-vocab // CHUNK)
        self.run_max = torch.full((n,), float("-inf"))
        self.run_sum = torch.zeros(n)
        self.target_logit = torch.zeros(n)
        self.best = torch.full((n,), float("-inf"))
        self.best_id = torch.zeros(n, dtype=torch.int64)
        self.nan = torch.zeros(n, dtype=torch.uint8)
        self.chunk_lse = torch.empty(n, self.n_chunks)

    def rows(self, begin: int, end: int) -> "_RowState":
        """The state of rows begin..end-1, sharing this one's storage."""
        part = _RowState.__new__(_RowState)
        part.n_chunks = self.n_chunks
        for name in ("run_max", "run_sum", "target_logit", "best", "best_id", "nan", "chunk_lse"):
            setattr(part, name, getattr(self, name)[begin:end])
        return part

    def stats(self) -> torch.Tensor:
        """The softmax statistics [N, 2] (max, log sum exp(x - max)) of the rows folded over the whole vocabulary;
        NaN where a logit was NaN."""
        log_sum = torch.where(self.nan.bool(), torch.full((), float("nan")), torch.log(self.run_sum))
        return torch.stack([self.run_max, log_sum], dim=1)

    def fold(self, logits, v0, targets, ignore_index, temperature, disallow_correct):
        rows, width = logits.shape
        f32, n = torch.float32, (rows,)
        _C.head_forward_tile(_ptr("logits", logits, f32), rows, width, v0, _ptr("targets", targets, torch.int64, n),
                             ignore_index, temperature, disallow_correct, _ptr("run_max", self.run_max, f32, n),
                             _ptr("run_sum", self.run_sum, f32, n), _ptr("target_logit", self.target_logit, f32, n),
                             _ptr("best", self.best, f32, n), _ptr("best_id", self.best_id, torch.int64, n),
                             _ptr("nan", self.nan, torch.uint8, n),
                             _ptr("chunk_lse", self.chunk_lse, f32, (rows, self.n_chunks)), self.n_chunks, _threads())

    def finish(self, targets, seed, temperature, disallow_correct, ignore_index, reduction, loss_dtype,
               logits=None, hidden=None, weight=None, bias=None):
        """Loss, samples, argmax and the softmax statistics [N, 2] (max, log sum exp(x - max)) the backward
        uses. The sampler's stage 2 reads `logits` [N, V] when given, else recomputes the chosen chunk from hidden,
        weight, bias (float32, contiguous)."""
        n = targets.shape[0]
        stats = self.stats()
        log_sum = stats[:, 1]
        valid = targets != ignore_index
        # log_sum + (max - target) rather than logsumexp - target: no cancellation when the target dominates.
        per_row = torch.where(valid, log_sum + (self.run_max - self.target_logit), torch.zeros(()))
        loss = reduce_rows(per_row.to(loss_dtype), valid, reduction)
        sampled = torch.empty(n, dtype=torch.int64)
        vocab = logits.shape[1] if logits is not None else weight.shape[0]
        hidden_size = 0 if hidden is None else hidden.shape[1]
        f32 = torch.float32
        _C.sample_rows(_ptr("chunk_lse", self.chunk_lse, f32, (n, self.n_chunks)), n, self.n_chunks, vocab,
                       int(seed), temperature, _ptr("targets", targets, torch.int64, (n,)), ignore_index,
                       disallow_correct, _ptr("logits", logits, f32, (n, vocab), optional=True),
                       _ptr("hidden", hidden, f32, (n, hidden_size), optional=True),
                       _ptr("weight", weight, f32, (vocab, hidden_size), optional=True),
                       _ptr("bias", bias, f32, (vocab,), optional=True), hidden_size,
                       _ptr("sampled", sampled, torch.int64, (n,)), _threads())
        return loss, sampled, self.best_id, stats


def _tiles(rows: int, vocab: int):
    """(first id, width) of each vocabulary tile, and the buffer the tiles' logits reuse."""
    tile = tile_width(rows, vocab)
    return [(v0, min(tile, vocab - v0)) for v0 in range(0, vocab, tile)], torch.empty(rows * min(tile, vocab))


def _tile_logits(buffer, h, w, b, v0, width):
    """h @ w[v0:v0+width].T (+ b) into the reused buffer, as a contiguous [N, width] view."""
    out = buffer[: h.shape[0] * width].view(h.shape[0], width)
    if b is None:
        return torch.mm(h, w[v0:v0 + width].T, out=out)
    return torch.addmm(b[v0:v0 + width], h, w[v0:v0 + width].T, out=out)


def _backward_tile(g, v0, targets, ignore_index, stats, scale):
    """Turns logits tile g [N, width] (ids v0..) into (softmax - onehot) * scale in place."""
    n, width = g.shape
    _C.head_backward_tile(_ptr("g", g, torch.float32), n, width, v0, _ptr("targets", targets, torch.int64, (n,)),
                          ignore_index, _ptr("stats", stats, torch.float32, (n, 2)),
                          _ptr("scale", scale, torch.float32, (n,)), _threads())


def generator_loss_and_sample(hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index,
                              reduction, grads):
    h, w, b = _f32(hidden), _f32(weight), _f32(bias)
    targets = targets.contiguous()
    n, vocab = h.shape[0], w.shape[0]
    state = _RowState(n, vocab)
    fold = (targets, ignore_index, temperature, disallow_correct)
    dh = dw = db = None
    if any(grads):
        dh, dw, db = _fold_with_grads(state, h, w, b, fold, reduction, grads)
    else:
        tiles, buffer = _tiles(n, vocab)
        for v0, width in tiles:
            state.fold(_tile_logits(buffer, h, w, b, v0, width), v0, *fold)
    loss, sampled, predicted, stats = state.finish(targets, seed, temperature, disallow_correct, ignore_index,
                                                   reduction, compute_dtype(hidden, weight, bias), hidden=h,
                                                   weight=w, bias=b)
    return loss, sampled, predicted, stats, dh, dw, db


def _fold_with_grads(state, h, w, b, fold, reduction, grads):
    """Folds every row into `state` in blocks of BLOCK_ROWS whole rows (fewer where the logits budget is
    smaller), and returns the wanted gradients (d hidden, d weight, d bias; None for the others) for a unit
    upstream gradient."""
    targets, ignore_index = fold[0], fold[1]
    n, vocab = h.shape[0], w.shape[0]
    block = max(1, min(n, BLOCK_ROWS, settings.logits_budget() // (4 * vocab)))
    scale = row_scale(torch.ones(()), targets, ignore_index, reduction).contiguous()
    dh = torch.empty_like(h) if grads[0] else None
    # The first block writes d weight and d bias, the others add to them: no [V, H] zeroed, then read, for nothing
    # (without rows, no block writes them).
    fresh = torch.empty_like if n else torch.zeros_like
    dw = fresh(w) if grads[1] else None
    db = fresh(b) if grads[2] else None
    buffer = torch.empty(block * vocab)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        part, rows = state.rows(r0, r1), h[r0:r1]
        g = _tile_logits(buffer, rows, w, b, 0, vocab)
        part.fold(g, 0, targets[r0:r1], *fold[1:])
        _backward_tile(g, 0, targets[r0:r1], ignore_index, part.stats(), scale[r0:r1])
        if dh is not None:
            torch.mm(g, w, out=dh[r0:r1])
        if dw is not None:
            dw.addmm_(g.T, rows, beta=0 if r0 == 0 else 1)
        if db is not None:
            if r0 == 0:
                torch.sum(g, dim=0, out=db)
            else:
                db += g.sum(dim=0)
    return dh, dw, db


def generator_loss_and_sample_backward(grad_loss, hidden, weight, bias, targets, stats, ignore_index, reduction):
    h, w, b = _f32(hidden), _f32(weight), _f32(bias)
    targets = targets.contiguous()
    scale = row_scale(grad_loss.to(torch.float32), targets, ignore_index, reduction).contiguous()
    n, vocab = h.shape[0], w.shape[0]
    grad_h = torch.zeros_like(h)
    grad_w = torch.empty_like(w)
    grad_b = None if b is None else torch.empty_like(b)
    tiles, buffer = _tiles(n, vocab)
    stats = stats.contiguous()
    for v0, width in tiles:
        g = _tile_logits(buffer, h, w, b, v0, width)
        _backward_tile(g, v0, targets, ignore_index, stats, scale)
        grad_h.addmm_(g, w[v0:v0 + width])
        torch.mm(g.T, h, out=grad_w[v0:v0 + width])
        if grad_b is not None:
            torch.sum(g, dim=0, out=grad_b[v0:v0 + width])
    return grad_h, grad_w, grad_b


def sample_logits(logits, targets, seed, temperature, disallow_correct, ignore_index, reduction):
    z = _f32(logits)
    n, vocab = z.shape
    has_targets = targets is not None
    targets = targets.contiguous() if has_targets else torch.full((n,), ignore_index, dtype=torch.int64)
    state = _RowState(n, vocab)
    state.fold(z, 0, targets, ignore_index, temperature, disallow_correct and has_targets)
    return state.finish(targets, seed, temperature, disallow_correct and has_targets, ignore_index, reduction,
                        compute_dtype(logits), logits=z)


def sample_logits_backward(grad_loss, logits, targets, stats, ignore_index, reduction):
    g = logits.to(torch.float32, copy=True).contiguous()
    targets = targets.contiguous()
    scale = row_scale(grad_loss.to(torch.float32), targets, ignore_index, reduction).contiguous()
    _backward_tile(g, 0, targets, ignore_index, stats.contiguous(), scale)
    return g


def replace_(input_ids, positions, sampled, valid):
    is_replaced = torch.zeros(input_ids.shape, dtype=torch.bool)
    positions, sampled = positions.contiguous(), sampled.contiguous()
    valid = None if valid is None else valid.contiguous()
    require("input_ids", input_ids, device="cpu", dtypes=(torch.int64,))
    n = (positions.shape[0],)
    _C.replace_ids(input_ids.data_ptr(), input_ids.shape[1], input_ids.stride(0), input_ids.stride(1),
                   _ptr("positions", positions, torch.int64, n), _ptr("sampled", sampled, torch.int64, n),
                   _ptr("valid", valid, torch.bool, n, optional=True), n[0],
                   _ptr("is_replaced", is_replaced, torch.bool, input_ids.shape))
    return is_replaced


def rtd_loss(logits, is_replaced, attention_mask, reduction):
    x = logits.to(torch.float32).contiguous()
    labels = is_replaced.to(torch.float32).contiguous()
    weights = torch.ones_like(x) if attention_mask is None else attention_mask.to(torch.float32).contiguous()
    per_token, grad = torch.empty_like(x), torch.empty_like(x)
    f32, shape = torch.float32, x.shape
    _C.rtd_loss_forward(_ptr("logits", x, f32), _ptr("labels", labels, f32, shape),
                        _ptr("weights", weights, f32, shape), x.numel(), _ptr("per_token", per_token, f32, shape),
                        _ptr("grad", grad, f32, shape), _threads())
    dtype = compute_dtype(logits)
    loss = reduce_rows(per_token.to(dtype), weights != 0, reduction)
    if reduction == "mean":
        grad = grad / weights.sum().clamp_min(1)
    return loss, grad
