"""REPLACE: writes the sampled ids into input_ids in place at the masked positions and marks, in the same pass,
which positions changed (a sample equal to the original id is not a replacement)."""
import torch
import triton
import triton.language as tl

from ..tensor_checks import require
from . import configs


@triton.jit
def _replace_kernel(ids_ptr, stride_b, stride_t, T, positions_ptr, sampled_ptr, is_replaced_ptr, N,
                    BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < N
    p = tl.load(positions_ptr + i, mask=ok, other=0)
    new = tl.load(sampled_ptr + i, mask=ok, other=0)
    slot = ids_ptr + (p // T) * stride_b + (p % T) * stride_t
    old = tl.load(slot, mask=ok, other=0)
    tl.store(is_replaced_ptr + p, (new != old).to(tl.uint8), mask=ok)
    tl.store(slot, new, mask=ok)


def replace(input_ids, positions, sampled, *, interpret=False):
    """input_ids [B, T] int64 (any strides, written in place), positions [N] (flat, distinct), sampled [N].
    Returns is_replaced [B, T] bool."""
    dev = input_ids.device
    require("input_ids", input_ids, dtypes=(torch.int64,))
    n = require("positions", positions, device=dev, dtypes=(torch.int64,), contiguous=True).shape[0]
    require("sampled", sampled, device=dev, dtypes=(torch.int64,), contiguous=True, shape=(n,))
    is_replaced = torch.zeros(input_ids.shape, dtype=torch.bool, device=dev)
    if n == 0:
        return is_replaced
    meta = configs.elementwise(interpret)
    _replace_kernel[(triton.cdiv(n, meta["BLOCK"]),)](input_ids, *input_ids.stride(), input_ids.shape[1], positions,
                                                      sampled, is_replaced.view(torch.uint8), n, **meta)
    return is_replaced
