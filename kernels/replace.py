"""REPLACE: writes the sampled ids into input_ids in place at the masked positions and marks, in the same pass,
which positions changed (a sample equal to the original id is not a replacement)."""
import torch
import triton
import triton.language as tl

from ..ops.kernel_args import require
from . import configs


@triton.jit
def _replace_kernel(ids_ptr, stride_b, stride_t, T, positions_ptr, sampled_ptr, valid_ptr, is_replaced_ptr, N,
                    HAS_VALID: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < N
    if HAS_VALID:  # skipped slots are never read: their position may be anything
        ok = ok & (tl.load(valid_ptr + i, mask=ok, other=0) != 0)
    p = tl.load(positions_ptr + i, mask=ok, other=0)
    new = tl.load(sampled_ptr + i, mask=ok, other=0)
    slot = ids_ptr + (p // T) * stride_b + (p % T) * stride_t
    old = tl.load(slot, mask=ok, other=0)
    tl.store(is_replaced_ptr + p, (new != old).to(tl.uint8), mask=ok)
    tl.store(slot, new, mask=ok)


def replace(input_ids, positions, sampled, valid=None, *, interpret=False):
    """input_ids [B, T] int64 (any strides, written in place), positions [N] (flat, distinct where valid),
    sampled [N], valid [N] bool or None (all valid). Returns is_replaced [B, T] bool."""
    dev = input_ids.device
    require("input_ids", input_ids, dtypes=(torch.int64,))
    n = require("positions", positions, device=dev, dtypes=(torch.int64,), contiguous=True).shape[0]
    require("sampled", sampled, device=dev, dtypes=(torch.int64,), contiguous=True, shape=(n,))
    require("valid", valid, device=dev, dtypes=(torch.bool,), contiguous=True, shape=(n,), optional=True)
    is_replaced = torch.zeros(input_ids.shape, dtype=torch.bool, device=dev)
    if n == 0:
        return is_replaced
    meta = configs.elementwise(interpret)
    valid_bytes = positions if valid is None else valid.view(torch.uint8)  # any pointer when HAS_VALID is off
    _replace_kernel[(triton.cdiv(n, meta["BLOCK"]),)](input_ids, *input_ids.stride(), input_ids.shape[1], positions,
                                                      sampled, valid_bytes, is_replaced.view(torch.uint8), n,
                                                      HAS_VALID=valid is not None, **meta)
    return is_replaced
