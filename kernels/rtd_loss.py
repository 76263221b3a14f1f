"""The replaced-token-detection loss: sigmoid BCE with logits per token, weighted by the attention mask, and its
gradient in the same pass (so the backward is one scale)."""
import torch
import triton
import triton.language as tl

from ..ops.kernel_args import KERNEL_FLOATS, require
from . import configs


@triton.jit
def _rtd_kernel(logits_ptr, stride_b, stride_t, labels_ptr, weights_ptr, loss_ptr, grad_ptr, T, n,
                HAS_WEIGHTS: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    x = tl.load(logits_ptr + (i // T) * stride_b + (i % T) * stride_t, mask=ok, other=0.0).to(tl.float32)
    y = tl.load(labels_ptr + i, mask=ok, other=0).to(tl.float32)
    if HAS_WEIGHTS:
        w = tl.load(weights_ptr + i, mask=ok, other=0).to(tl.float32)
    else:
        w = tl.where(ok, 1.0, 0.0)
    # max(x, 0) - x*y + log(1 + exp(-|x|)): stable for any finite x.
    bce = tl.where(x > 0, x, 0.0) - x * y + tl.log(1.0 + tl.exp(-tl.abs(x)))
    e = tl.exp(-tl.abs(x))
    sig = tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    tl.store(loss_ptr + i, tl.where(w != 0, w * bce, 0.0), mask=ok)
    tl.store(grad_ptr + i, tl.where(w != 0, w * (sig - y), 0.0), mask=ok)


def forward(logits, labels, weights, *, interpret=False):
    """logits [B, T] float (any strides), labels [B, T] and weights [B, T] | None contiguous 0/1 (bool or int).
    Returns (per-token weighted loss, d(sum)/d logits), float32 [B, T]."""
    b, t = require("logits", logits, dtypes=KERNEL_FLOATS).shape
    require("labels", labels, device=logits.device, contiguous=True, shape=(b, t))
    require("weights", weights, device=logits.device, contiguous=True, shape=(b, t), optional=True)
    loss = torch.empty(b, t, dtype=torch.float32, device=logits.device)
    grad = torch.empty_like(loss)
    n = b * t
    if n == 0:
        return loss, grad
    meta = configs.elementwise(interpret)
    labels = labels.view(torch.uint8) if labels.dtype == torch.bool else labels
    if weights is not None and weights.dtype == torch.bool:
        weights = weights.view(torch.uint8)
    _rtd_kernel[(triton.cdiv(n, meta["BLOCK"]),)](logits, *logits.stride(), labels,
                                                  weights if weights is not None else labels, loss, grad, t, n,
                                                  HAS_WEIGHTS=weights is not None, **meta)
    return loss, grad
