"""The `triton` backend: CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), kernels in electra_fast.kernels.
This module only adapts dtypes and reduces per-row results; the kernels do the work."""
from __future__ import annotations

import torch

from .kernels import generator_head, generator_head_backward, replace as replace_kernel, rtd_loss, sample_logits
from .kernels import sampler
from .ops import TRITON_INTERPRET
from .reference import compute_dtype, reduce_rows, row_scale

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernel_dtype(t: torch.Tensor | None) -> torch.Tensor | None:
    """float64 has no fast path in the kernels (internal math is float32 anyway): it runs as float32."""
    return t if t is None or t.dtype in _KERNEL_DTYPES else t.to(torch.float32)


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The kernels index the bias as a dense [V] vector (it may arrive expanded)."""
    return None if bias is None else _kernel_dtype(bias).contiguous()


def _precision() -> str:
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _seed_on(seed: torch.Tensor, device: torch.device) -> torch.Tensor:
    return seed.to(device, non_blocking=True).reshape(1)


def _loss(row_loss, targets, ignore_index, reduction, dtype):
    valid = targets != ignore_index
    per_row = torch.where(valid, row_loss, torch.zeros((), device=row_loss.device))
    return reduce_rows(per_row.to(dtype), valid, reduction)


def head_forward(hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index, reduction):
    targets = targets.contiguous()
    h, w, b = _kernel_dtype(hidden), _kernel_dtype(weight), _bias(bias)
    stats, row_loss, predicted, chunk_lse = generator_head.head_forward(
        h, w, b, targets, ignore_index=ignore_index, temperature=temperature, disallow_correct=disallow_correct,
        precision=_precision(), interpret=TRITON_INTERPRET)
    sampled = sampler.sample(chunk_lse, _seed_on(seed, h.device), targets, ignore_index, temperature,
                             disallow_correct, w.shape[0], hidden=h, weight=w, bias=b, interpret=TRITON_INTERPRET)
    loss = _loss(row_loss, targets, ignore_index, reduction, compute_dtype(hidden, weight, bias))
    return loss, sampled, predicted, stats


def head_backward(grad_loss, hidden, weight, bias, targets, stats, ignore_index, reduction):
    targets = targets.contiguous()
    scale = row_scale(grad_loss.to(torch.float32), targets, ignore_index, reduction).contiguous()
    return generator_head_backward.head_backward(
        _kernel_dtype(hidden), _kernel_dtype(weight), _bias(bias), targets, stats, scale,
        precision=_precision(), interpret=TRITON_INTERPRET)


def logits_forward(logits, targets, seed, temperature, disallow_correct, ignore_index, reduction):
    z = _kernel_dtype(logits)
    has_targets = targets is not None
    if has_targets:
        targets = targets.contiguous()
    else:
        targets = torch.full((z.shape[0],), ignore_index, dtype=torch.int64, device=z.device)
    disallow_correct = disallow_correct and has_targets
    stats, row_loss, predicted, chunk_lse = sample_logits.logits_forward(
        z, targets, ignore_index=ignore_index, temperature=temperature, disallow_correct=disallow_correct,
        interpret=TRITON_INTERPRET)
    sampled = sampler.sample(chunk_lse, _seed_on(seed, z.device), targets, ignore_index, temperature,
                             disallow_correct, z.shape[1], logits=z, interpret=TRITON_INTERPRET)
    loss = _loss(row_loss, targets, ignore_index, reduction, compute_dtype(logits)) if has_targets else None
    return loss, sampled, predicted, stats


def logits_backward(grad_loss, logits, targets, stats, ignore_index, reduction):
    targets = targets.contiguous()
    scale = row_scale(grad_loss.to(torch.float32), targets, ignore_index, reduction).contiguous()
    return sample_logits.logits_backward(_kernel_dtype(logits), targets, stats, scale, interpret=TRITON_INTERPRET)


def replace(input_ids, positions, sampled):
    return replace_kernel.replace(input_ids, positions.contiguous(), sampled.contiguous(), interpret=TRITON_INTERPRET)


def rtd_forward(logits, is_replaced, attention_mask, reduction):
    x = _kernel_dtype(logits)
    weights = None if attention_mask is None else attention_mask.contiguous()
    per_token, grad = rtd_loss.rtd_forward(x, is_replaced.contiguous(), weights, interpret=TRITON_INTERPRET)
    valid = torch.ones_like(per_token, dtype=torch.bool) if weights is None else weights != 0
    loss = reduce_rows(per_token.to(compute_dtype(logits)), valid, reduction)
    if reduction == "mean":
        grad = grad / valid.sum().clamp_min(1)
    return loss, grad
