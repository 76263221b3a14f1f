"""SPEC §3's sampler, stage by stage, ROWS rows per program: the chunk by Gumbel-max over the chunk log-masses,
then the id by Gumbel-max over that chunk's 128 logits — read from `logits` when the caller has them,
recomputed from hidden, weight and bias for the fused head."""
import torch
import triton
import triton.language as tl

from .helpers import first_argmax, gumbel_noise


@triton.jit
def _sample_kernel(chunk_lse_ptr, n_chunks, seed_ptr, targets_ptr, ignore_index, temperature, logits_ptr,
                   stride_lr, stride_lv, hidden_ptr, stride_hr, stride_hk, weight_ptr, stride_wv, stride_wk,
                   bias_ptr, N, V, H, sampled_ptr,
                   FROM_LOGITS: tl.constexpr, HAS_BIAS: tl.constexpr, DISALLOW: tl.constexpr,
                   ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < N
    seed = tl.load(seed_ptr)
    targets = tl.load(targets_ptr + rows, mask=row_ok, other=ignore_index)
    excluded = tl.where(DISALLOW & (targets != ignore_index), targets, -1)
    none = 2**30

    # Stage 1: the chunk.
    best_key = tl.full([ROWS], float("-inf"), tl.float32)
    chunk = tl.full([ROWS], -1, tl.int32)
    for c0 in range(0, n_chunks, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        lse = tl.load(chunk_lse_ptr + rows[:, None] * n_chunks + cs[None, :],
                      mask=row_ok[:, None] & (cs[None, :] < n_chunks), other=float("-inf"))
        noise = gumbel_noise(seed, rows, 0, tl.zeros([ROWS], tl.int32) + c0 // 4, BLOCK_C // 4)
        keys = tl.where(lse > float("-inf"), lse + noise, float("-inf"))  # NaN and -inf never win
        key, index = first_argmax(keys, cs[None, :], 1, none)
        better = key > best_key
        chunk = tl.where(better, index, chunk)
        best_key = tl.where(better, key, best_key)

    # Stage 2: the id inside it.
    first = tl.maximum(chunk, 0)
    ids = first.to(tl.int64)[:, None] * 128 + tl.arange(0, 128)[None, :]
    in_vocab = row_ok[:, None] & (ids < V)
    if FROM_LOGITS:
        logits = tl.load(logits_ptr + rows[:, None] * stride_lr + ids * stride_lv, mask=in_vocab,
                         other=float("-inf")).to(tl.float32)
    else:
        logits = tl.zeros([ROWS, 128], dtype=tl.float32)
        for k0 in range(0, H, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            k_ok = ks < H
            h = tl.load(hidden_ptr + rows[:, None] * stride_hr + ks[None, :] * stride_hk,
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            w = tl.load(weight_ptr + ids[:, :, None] * stride_wv + ks[None, None, :] * stride_wk,
                        mask=in_vocab[:, :, None] & k_ok[None, None, :], other=0.0).to(tl.float32)
            logits += tl.sum(w * h[:, None, :], axis=2)
        if HAS_BIAS:
            logits += tl.load(bias_ptr + ids, mask=in_vocab, other=0.0).to(tl.float32)
    z = logits / temperature
    allowed = in_vocab & (ids != excluded[:, None]) & (z > float("-inf"))
    noise = gumbel_noise(seed, rows, 1, first * (128 // 4), 128 // 4)
    keys = tl.where(allowed, z + noise, float("-inf"))
    key, index = first_argmax(keys, ids, 1, none)
    fallback = tl.where(excluded == 0, 1, 0)
    sampled = tl.where((chunk >= 0) & (key > float("-inf")), index, fallback)
    tl.store(sampled_ptr + rows, sampled, mask=row_ok)


def sample(chunk_lse: torch.Tensor, seed: torch.Tensor, targets: torch.Tensor, ignore_index: int,
           temperature: float, disallow_correct: bool, vocab: int, *, logits=None, hidden=None, weight=None,
           bias=None, interpret: bool = False, blocks=None) -> torch.Tensor:
    """Samples [N] int64 from chunk log-masses [N, C] float32 (contiguous) and either logits [N, V] or
    (hidden [N, H], weight [V, H], bias [V] contiguous | None); seed is a 1-element int64 tensor on the device.
    `blocks` = (ROWS, BLOCK_C, BLOCK_H) overrides the launcher's choice."""
    n, n_chunks = chunk_lse.shape
    sampled = torch.empty(n, dtype=torch.int64, device=chunk_lse.device)
    if n == 0:
        return sampled
    from_logits = logits is not None
    hidden_size = 0 if from_logits else hidden.shape[1]
    if interpret:
        rows, block_c, block_h = 32, 256, triton.next_power_of_2(max(hidden_size, 16))
    else:
        rows, block_c, block_h = 2, 128, 32
    if blocks is not None:
        rows, block_c, block_h = blocks
    unused = chunk_lse
    _sample_kernel[(triton.cdiv(n, rows),)](
        chunk_lse, n_chunks, seed, targets, ignore_index, temperature,
        logits if from_logits else unused, *(logits.stride() if from_logits else (0, 0)),
        unused if from_logits else hidden, *((0, 0) if from_logits else hidden.stride()),
        unused if from_logits else weight, *((0, 0) if from_logits else weight.stride()),
        bias if bias is not None else unused, n, vocab, hidden_size, sampled,
        FROM_LOGITS=from_logits, HAS_BIAS=bias is not None, DISALLOW=disallow_correct,
        ROWS=rows, BLOCK_C=block_c, BLOCK_H=block_h)
    return sampled
