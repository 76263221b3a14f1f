"""contract §3's sampler, stage by stage, ROWS rows per program: the chunk by Gumbel-max over the chunk log-masses,
then the id by Gumbel-max over that chunk's 128 logits (+ bias), read from the logits in memory."""
import torch
import triton
import triton.language as tl

from ..ops.kernel_args import KERNEL_FLOATS, require
from . import configs
from .helpers import first_argmax, gumbel_noise


@triton.jit
def _sample_kernel(chunk_lse_ptr, n_chunks, seed_ptr, targets_ptr, ignore_index, temperature, logits_ptr,
                   stride_lr, stride_lv, bias_ptr, row_offset, N, V, sampled_ptr, HAS_BIAS: tl.constexpr,
                   DISALLOW: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < N
    noise_rows = rows + row_offset  # the row's index within the whole call: the noise does not depend on chunking
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
        noise = gumbel_noise(seed, noise_rows, 0, tl.zeros([ROWS], tl.int32) + c0 // 4, BLOCK_C // 4)
        keys = tl.where(lse > float("-inf"), lse + noise, float("-inf"))  # NaN and -inf never win
        key, index = first_argmax(keys, cs[None, :], 1, none)
        better = key > best_key
        chunk = tl.where(better, index, chunk)
        best_key = tl.where(better, key, best_key)

    # Stage 2: the id inside it.
    first = tl.maximum(chunk, 0)
    ids = first.to(tl.int64)[:, None] * 128 + tl.arange(0, 128)[None, :]
    in_vocab = row_ok[:, None] & (ids < V)
    logits = tl.load(logits_ptr + rows[:, None] * stride_lr + ids * stride_lv, mask=in_vocab,
                     other=float("-inf")).to(tl.float32)
    if HAS_BIAS:
        logits += tl.load(bias_ptr + ids, mask=in_vocab, other=0.0).to(tl.float32)
    z = logits / temperature
    allowed = in_vocab & (ids != excluded[:, None]) & (z > float("-inf"))
    noise = gumbel_noise(seed, noise_rows, 1, first * (128 // 4), 128 // 4)
    keys = tl.where(allowed, z + noise, float("-inf"))
    key, index = first_argmax(keys, ids, 1, none)
    fallback = tl.where(excluded == 0, 1, 0)
    sampled = tl.where((chunk >= 0) & (key > float("-inf")), index, fallback)
    tl.store(sampled_ptr + rows, sampled, mask=row_ok)


def sample(logits, bias, chunk_lse, seed, targets, *, ignore_index, temperature, disallow_correct, row_offset=0,
           out=None, interpret=False, config=None):
    """Samples [N] int64 of the rows of logits [N, V] (float16/bfloat16/float32, any strides) + bias [V]
    (contiguous) | None, given their chunk log-masses [N, C] float32 (contiguous, from `fold_rows`); targets [N]
    int64 contiguous; seed a 1-element int64 tensor on the device. The rows are rows row_offset.. of the call
    (their noise stream). Written into `out` ([N] int64) when given. `config` overrides `configs.sampler`."""
    n, v = require("logits", logits, dtypes=KERNEL_FLOATS).shape
    dev = logits.device
    n_chunks = triton.cdiv(v, configs.CHUNK)
    require("bias", bias, device=dev, dtypes=KERNEL_FLOATS, contiguous=True, shape=(v,),
            optional=True)
    require("chunk_lse", chunk_lse, device=dev, dtypes=(torch.float32,), contiguous=True, shape=(n, n_chunks))
    require("seed", seed, device=dev, dtypes=(torch.int64,), shape=(1,))
    require("targets", targets, device=dev, dtypes=(torch.int64,), contiguous=True, shape=(n,))
    require("out", out, device=dev, dtypes=(torch.int64,), contiguous=True, shape=(n,), optional=True)
    sampled = torch.empty(n, dtype=torch.int64, device=chunk_lse.device) if out is None else out
    if n == 0:
        return sampled
    meta = config or configs.sampler(interpret)
    _sample_kernel[(triton.cdiv(n, meta["ROWS"]),)](
        chunk_lse, n_chunks, seed, targets, ignore_index, temperature, logits, *logits.stride(),
        bias if bias is not None else chunk_lse, row_offset, n, v, sampled,
        HAS_BIAS=bias is not None, DISALLOW=disallow_correct, **meta)
    return sampled
