"""SPEC §3's sampler, stage by stage, one program per row: the chunk by Gumbel-max over the chunk log-masses,
then the id by Gumbel-max over that chunk's 128 logits — read from `logits` when the caller has them,
recomputed from hidden, weight and bias for the fused head."""
import torch
import triton
import triton.language as tl

from .helpers import first_argmax, gumbel_noise

CHUNK = 128


@triton.jit
def _sample_kernel(chunk_lse_ptr, n_chunks, seed_ptr, targets_ptr, ignore_index, temperature, logits_ptr,
                   stride_lr, stride_lv, hidden_ptr, stride_hr, stride_hk, weight_ptr, stride_wv, stride_wk,
                   bias_ptr, V, H, sampled_ptr,
                   FROM_LOGITS: tl.constexpr, HAS_BIAS: tl.constexpr, DISALLOW: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    seed = tl.load(seed_ptr)
    target = tl.load(targets_ptr + row)
    excluded = tl.where(DISALLOW & (target != ignore_index), target, -1)
    none = 2**30

    # Stage 1: the chunk.
    best_key = float("-inf")
    chunk = -1
    for c0 in range(0, n_chunks, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        lse = tl.load(chunk_lse_ptr + row * n_chunks + cs, mask=cs < n_chunks, other=float("-inf"))
        noise = gumbel_noise(seed, row, 0, c0 // 4, BLOCK_C // 4)
        keys = tl.where(lse > float("-inf"), lse + noise, float("-inf"))  # NaN and -inf never win
        key, index = first_argmax(keys, cs, 0, none)
        better = key > best_key
        chunk = tl.where(better, index, chunk)
        best_key = tl.where(better, key, best_key)

    # Stage 2: the id inside it.
    ids = tl.maximum(chunk, 0).to(tl.int64) * 128 + tl.arange(0, 128)
    in_vocab = ids < V
    if FROM_LOGITS:
        logits = tl.load(logits_ptr + row * stride_lr + ids * stride_lv, mask=in_vocab, other=float("-inf"))
        logits = logits.to(tl.float32)
    else:
        logits = tl.zeros([128], dtype=tl.float32)
        for k0 in range(0, H, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            h = tl.load(hidden_ptr + row * stride_hr + ks * stride_hk, mask=ks < H, other=0.0).to(tl.float32)
            w = tl.load(weight_ptr + ids[:, None] * stride_wv + ks[None, :] * stride_wk,
                        mask=in_vocab[:, None] & (ks[None, :] < H), other=0.0).to(tl.float32)
            logits += tl.sum(w * h[None, :], axis=1)
        if HAS_BIAS:
            logits += tl.load(bias_ptr + ids, mask=in_vocab, other=0.0).to(tl.float32)
    z = logits / temperature
    allowed = in_vocab & (ids != excluded) & (z > float("-inf"))
    noise = gumbel_noise(seed, row, 1, tl.maximum(chunk, 0) * (128 // 4), 128 // 4)
    keys = tl.where(allowed, z + noise, float("-inf"))
    key, index = first_argmax(keys, ids, 0, none)
    fallback = tl.where(excluded == 0, 1, 0)
    sampled = tl.where((chunk >= 0) & (key > float("-inf")), index, fallback)
    tl.store(sampled_ptr + row, sampled)


def sample(chunk_lse: torch.Tensor, seed: torch.Tensor, targets: torch.Tensor, ignore_index: int,
           temperature: float, disallow_correct: bool, vocab: int, *, logits=None, hidden=None, weight=None,
           bias=None, interpret: bool = False) -> torch.Tensor:
    """Samples [N] int64 from chunk log-masses [N, C] float32 and either logits [N, V] or (hidden [N, H],
    weight [V, H], bias [V] | None)."""
    n, n_chunks = chunk_lse.shape
    sampled = torch.empty(n, dtype=torch.int64, device=chunk_lse.device)
    if n == 0:
        return sampled
    from_logits = logits is not None
    dummy = chunk_lse
    hidden_size = 0 if from_logits else hidden.shape[1]
    block_c = 256 if interpret else 128
    block_h = triton.next_power_of_2(max(hidden_size, 16)) if interpret else 64
    _sample_kernel[(n,)](
        chunk_lse, n_chunks, seed, targets, ignore_index, temperature,
        logits if from_logits else dummy, *(logits.stride() if from_logits else (0, 0)),
        dummy if from_logits else hidden, *((0, 0) if from_logits else hidden.stride()),
        dummy if from_logits else weight, *((0, 0) if from_logits else weight.stride()),
        bias if bias is not None else dummy, vocab, hidden_size, sampled,
        FROM_LOGITS=from_logits, HAS_BIAS=bias is not None, DISALLOW=disallow_correct,
        BLOCK_C=block_c, BLOCK_H=block_h)
    return sampled
