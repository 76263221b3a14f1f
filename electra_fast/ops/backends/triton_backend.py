"""The `triton` backend: CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), kernels in electra_fast.kernels.
This module adapts dtypes and layouts and reduces per-row results; the kernels (and
cuBLAS, for the head's matrix products) do the work."""
from __future__ import annotations

import contextlib
import functools

import torch

# The kernel modules bear the ops' names, as this module's functions do: imported under the kernel's role.
from ...kernels import generator_loss_and_sample as head_kernel
from ...kernels import replace as replace_kernel
from ...kernels import rtd_loss as rtd_kernel
from ...kernels import sample_logits as logits_kernel
from ...kernels import sampler
from .. import settings
from ..kernel_args import KERNEL_FLOATS
from ..reference import compute_dtype, reduce_rows, row_scale

GRADS_IN_FORWARD = True  # the head's forward writes the gradient tiles while each logits chunk is at hand
_INTERPRET = settings.TRITON_INTERPRET


def device_guard(device: torch.device):
    """The CUDA device guard of `device` (nothing for a CPU one, under the interpreter): a Triton launch goes to the
    current CUDA device, which need not be the inputs' (tensors on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _on_inputs_device(fn):
    """`fn` run under the device guard of its first argument, a tensor on the device of all its inputs."""
    @functools.wraps(fn)
    def guarded(first, *args, **kwargs):
        with device_guard(first.device):
            return fn(first, *args, **kwargs)

    return guarded


def _head_dtype(*tensors) -> torch.dtype:
    """One dtype for the head's matrix products: the inputs' own when they agree on a kernel dtype, float32
    otherwise (mixed dtypes outside autocast, float64)."""
    dtypes = {t.dtype for t in tensors if t is not None}
    return dtypes.pop() if len(dtypes) == 1 and next(iter(dtypes)) in KERNEL_FLOATS else torch.float32


def _head_inputs(hidden, weight, bias, targets):
    dtype = _head_dtype(hidden, weight, bias)
    b = None if bias is None else bias.to(dtype).contiguous()
    return hidden.to(dtype), weight.to(dtype), b, targets.contiguous()


def _kernel_dtype(t: torch.Tensor) -> torch.Tensor:
    """float64 has no fast path in the kernels (internal math is float32 anyway): it runs as float32."""
    return t if t.dtype in KERNEL_FLOATS else t.to(torch.float32)


def _seed_on(seed: torch.Tensor, device: torch.device) -> torch.Tensor:
    return seed.to(device, non_blocking=True).reshape(1)


def _loss(row_loss, targets, ignore_index, reduction, dtype):
    valid = targets != ignore_index
    per_row = torch.where(valid, row_loss, torch.zeros((), device=row_loss.device))
    return reduce_rows(per_row.to(dtype), valid, reduction)


def _unit_row_scale(targets, ignore_index, reduction):
    one = torch.ones((), dtype=torch.float32, device=targets.device)
    return row_scale(one, targets, ignore_index, reduction).contiguous()


@_on_inputs_device
def generator_loss_and_sample(hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index,
                              reduction, grads):
    h, w, b, t = _head_inputs(hidden, weight, bias, targets)
    stats, row_loss, predicted, sampled, dh, dw, db = head_kernel.forward(
        h, w, b, t, _seed_on(seed, h.device), _unit_row_scale(t, ignore_index, reduction),
        ignore_index=ignore_index, temperature=temperature, disallow_correct=disallow_correct, grads=grads,
        budget=settings.logits_budget(), interpret=_INTERPRET)
    loss = _loss(row_loss, t, ignore_index, reduction, compute_dtype(hidden, weight, bias))
    return loss, sampled, predicted, stats, dh, dw, db


@_on_inputs_device
def generator_loss_and_sample_backward(grad_loss, hidden, weight, bias, targets, stats, ignore_index, reduction):
    h, w, b, t = _head_inputs(hidden, weight, bias, targets)
    scale = row_scale(grad_loss.to(torch.float32), t, ignore_index, reduction).contiguous()
    return head_kernel.backward(h, w, b, t, stats, scale, budget=settings.logits_budget(),
                                        interpret=_INTERPRET)


@_on_inputs_device
def sample_logits(logits, targets, seed, temperature, disallow_correct, ignore_index, reduction):
    z = _kernel_dtype(logits)
    has_targets = targets is not None
    if has_targets:
        targets = targets.contiguous()
    else:
        targets = torch.full((z.shape[0],), ignore_index, dtype=torch.int64, device=z.device)
    disallow_correct = disallow_correct and has_targets
    stats, row_loss, predicted, chunk_lse = logits_kernel.fold_rows(
        z, None, targets, ignore_index=ignore_index, temperature=temperature, disallow_correct=disallow_correct,
        interpret=_INTERPRET)
    sampled = sampler.sample(z, None, chunk_lse, _seed_on(seed, z.device), targets, ignore_index=ignore_index,
                             temperature=temperature, disallow_correct=disallow_correct, interpret=_INTERPRET)
    loss = _loss(row_loss, targets, ignore_index, reduction, compute_dtype(logits)) if has_targets else None
    return loss, sampled, predicted, stats


@_on_inputs_device
def sample_logits_backward(grad_loss, logits, targets, stats, ignore_index, reduction):
    z = _kernel_dtype(logits)
    targets = targets.contiguous()
    scale = row_scale(grad_loss.to(torch.float32), targets, ignore_index, reduction).contiguous()
    return logits_kernel.softmax_grad(z, None, targets, stats, scale, interpret=_INTERPRET)


@_on_inputs_device
def replace_(input_ids, positions, sampled, valid):
    valid = None if valid is None else valid.contiguous()
    return replace_kernel.replace(input_ids, positions.contiguous(), sampled.contiguous(), valid,
                                  interpret=_INTERPRET)


@_on_inputs_device
def rtd_loss(logits, is_replaced, attention_mask, reduction):
    x = _kernel_dtype(logits)
    weights = None if attention_mask is None else attention_mask.contiguous()
    per_token, grad = rtd_kernel.forward(x, is_replaced.contiguous(), weights, interpret=_INTERPRET)
    valid = torch.ones_like(per_token, dtype=torch.bool) if weights is None else weights != 0
    loss = reduce_rows(per_token.to(compute_dtype(logits)), valid, reduction)
    if reduction == "mean":
        grad = grad / valid.sum().clamp_min(1)
    return loss, grad
