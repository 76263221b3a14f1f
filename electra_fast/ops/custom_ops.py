"""The torch ops `torch.ops.electra_fast.*`: one PyTorch `custom_op` per public op, each with a fake (meta)
kernel and autograd (contract §2 "Ops").

Every op takes the backend by name ("auto", "triton", "cpp", "reference") and dispatches inside, so that a
compiled graph guards on it and an op's backward runs on the backend that ran its forward. Value checks (ids in
range, positions ascending) run here, inside the ops, so that a compiled caller still raises on bad values.
The ops return extra outputs that the public wrappers (`electra_fast.ops.api`) hide: the softmax statistics the
backward uses, and the head's gradients where its backend computes them in the forward pass.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, library
from torch.autograd.function import once_differentiable

from . import backends, settings
from .reference import compute_dtype


def _backend(name: str, device: torch.device) -> backends.Backend:
    return backends.get(settings.resolve_backend(name, device))


def _autocast_off(device: torch.device):
    """Autocast stays on inside a custom op's body; the public wrappers have already cast the inputs, and casting
    again there would give the reference bfloat16 logits where the kernels keep float32 ones (and different
    samples), so every backend runs with it off."""
    return torch.autocast(device.type, enabled=False)


# --------------------------------------------------------------------------------------------------------
# Value checks (inside the ops).


def _check_ids(name: str, ids: Tensor, vocab: int, ignore_index: Optional[int] = None) -> None:
    if not settings.value_checks() or ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= vocab)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bool(bad.any()):
        first = ids[bad][0].item()
        allowed = f"[0, {vocab})" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
        raise ValueError(f"{name} must hold ids in {allowed}; found {first}")


def _check_binary(name: str, values: Optional[Tensor]) -> None:
    if values is None or values.dtype == torch.bool or not settings.value_checks() or values.numel() == 0:
        return
    if bool(((values != 0) & (values != 1)).any()):
        raise ValueError(f"{name} must be bool or hold only 0 and 1")


def _check_replace(positions: Tensor, sampled: Tensor, valid: Optional[Tensor], numel: int) -> None:
    """The slots replace_ writes (those whose `valid` is True, all when it is None): positions in [0, numel) and
    strictly ascending, samples >= 0. One host sync for all three (no boolean indexing, which is another)."""
    if not settings.value_checks() or positions.numel() == 0:
        return
    written = torch.ones_like(positions, dtype=torch.bool) if valid is None else valid
    out_of_range = written & ((positions < 0) | (positions >= numel))
    # Each written position above the largest written one before it.
    largest_before = torch.where(written, positions, -1).cummax(0).values
    not_ascending = written[1:] & (positions[1:] <= largest_before[:-1])
    negative = written & (sampled < 0)
    bad_range, bad_order, bad_sample = torch.stack([out_of_range.any(), not_ascending.any(), negative.any()]).tolist()
    if bad_range:
        raise ValueError(f"positions must be flat indices in [0, {numel}) of input_ids")
    if bad_order:
        raise ValueError("positions must be strictly ascending")
    if bad_sample:
        raise ValueError("sampled must hold ids >= 0")


def _loss_shape(n: int, reduction: str):
    return (n,) if reduction == "none" else ()


# --------------------------------------------------------------------------------------------------------
# generator_loss_and_sample


def _forward_grads(backend: str, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], reduction: str,
                   wanted: tuple) -> tuple:
    """Which of (d hidden, d weight, d bias) the head's forward computes: those wanted, where the upstream
    gradient is a scalar (mean or sum: the backward only scales them) and the backend computes gradients in its
    forward pass; never for float16, whose gradient tile, written before a loss scaler's factor is known, would
    underflow (entries near 1 / (N V)). Decided from names and dtypes alone, so the fake agrees (on meta too)."""
    if (reduction == "none" or not backends.get(settings.backend_name(backend, hidden.device)).GRADS_IN_FORWARD
            or torch.float16 in (hidden.dtype, weight.dtype)):
        return False, False, False
    return wanted[0], wanted[1], wanted[2] and bias is not None


def _grad_or_empty(grad: Optional[Tensor], like: Optional[Tensor], wanted: bool, anchor: Tensor) -> Tensor:
    if not wanted:
        return anchor.new_empty((0,))
    return grad.to(like.dtype)


@library.custom_op("electra_fast::generator_loss_and_sample", mutates_args=())
def generator_loss_and_sample(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
                              seed: Tensor, temperature: float, disallow_correct: bool, ignore_index: int,
                              reduction: str, backend: str, grad_hidden: bool, grad_weight: bool,
                              grad_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused head: (loss, sampled [N], predicted [N], stats [N, 2], d hidden, d weight, d bias). The three
    gradients are those of the loss for a unit upstream gradient where the forward computes them (see
    `_forward_grads`), else empty tensors. See `electra_fast.generator_loss_and_sample`."""
    _check_ids("targets", targets, weight.shape[0], ignore_index)
    grads = _forward_grads(backend, hidden, weight, bias, reduction, (grad_hidden, grad_weight, grad_bias))
    with _autocast_off(hidden.device):
        loss, sampled, predicted, stats, dh, dw, db = _backend(backend, hidden.device).generator_loss_and_sample(
            hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index, reduction, grads)
    return (loss, sampled, predicted, stats, _grad_or_empty(dh, hidden, grads[0], hidden),
            _grad_or_empty(dw, weight, grads[1], hidden), _grad_or_empty(db, bias, grads[2], hidden))


@generator_loss_and_sample.register_fake
def _(hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index, reduction, backend,
      grad_hidden, grad_weight, grad_bias):
    n = hidden.shape[0]
    grads = _forward_grads(backend, hidden, weight, bias, reduction, (grad_hidden, grad_weight, grad_bias))
    loss = hidden.new_empty(_loss_shape(n, reduction), dtype=compute_dtype(hidden, weight, bias))
    ids = hidden.new_empty((n,), dtype=torch.int64)
    return (loss, ids, torch.empty_like(ids), hidden.new_empty((n, 2), dtype=torch.float32),
            *(torch.empty_like(t) if wanted else hidden.new_empty((0,))
              for t, wanted in zip((hidden, weight, bias), grads, strict=True)))


@library.custom_op("electra_fast::generator_loss_and_sample_backward", mutates_args=())
def generator_loss_and_sample_backward(grad_loss: Tensor, hidden: Tensor, weight: Tensor, bias: Optional[Tensor],
                            targets: Tensor, stats: Tensor, ignore_index: int, reduction: str,
                            backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the fused head's loss, recomputing the logits: (d hidden, d weight, d bias or an empty
    tensor), each in its input's dtype."""
    with _autocast_off(hidden.device):
        dh, dw, db = _backend(backend, hidden.device).generator_loss_and_sample_backward(
            grad_loss, hidden, weight, bias, targets, stats, ignore_index, reduction)
    db = hidden.new_empty((0,)) if db is None else db.to(bias.dtype)
    return dh.to(hidden.dtype), dw.to(weight.dtype), db


@generator_loss_and_sample_backward.register_fake
def _(grad_loss, hidden, weight, bias, targets, stats, ignore_index, reduction, backend):
    db = hidden.new_empty((0,)) if bias is None else torch.empty_like(bias)
    return torch.empty_like(hidden), torch.empty_like(weight), db


def _head_setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, _seed, _temperature, _disallow, ignore_index, reduction, backend, *wanted = inputs
    ctx.backend = settings.resolve_backend(backend, hidden.device)
    ctx.in_forward = _forward_grads(backend, hidden, weight, bias, reduction, tuple(wanted))
    ctx.ignore_index, ctx.reduction, ctx.has_bias = ignore_index, reduction, bias is not None
    ctx.save_for_backward(hidden, weight, bias, targets, output[3], *output[4:])
    # Outputs nobody differentiates get None, not zeros: materialised, the unused gradient of the d weight output
    # alone would be a zero [V, H] allocated and written at every backward.
    ctx.set_materialize_grads(False)


@once_differentiable
def _head_backward(ctx, grad_loss, _grad_sampled, _grad_predicted, _grad_stats, *_grad_grads):
    inputs = 13  # of generator_loss_and_sample
    if grad_loss is None:  # no gradient reached the loss; the other outputs carry none to the inputs
        return (None,) * inputs
    hidden, weight, bias, targets, stats, *forward_grads = ctx.saved_tensors
    needed = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias)
    if all(done or not need for done, need in zip(ctx.in_forward, needed, strict=True)):
        # The forward computed them for a unit upstream gradient; the upstream gradient is a scalar. In eager
        # they are scaled in place: a copy would hold a second [V, H]. A second backward through the same graph
        # (retain_graph) then fails in autograd's own check of the saved tensors, rather than scaling them
        # twice. Traced (fake or functional tensors: torch.compile, AOTAutograd) the graph records a product.
        in_place = type(grad_loss) is torch.Tensor
        grads = [(g.detach().mul_(grad_loss) if in_place else g * grad_loss) if need else None
                 for g, need in zip(forward_grads, needed, strict=True)]
    else:
        dh, dw, db = generator_loss_and_sample_backward(grad_loss, hidden, weight, bias, targets, stats,
                                                        ctx.ignore_index, ctx.reduction, ctx.backend)
        grads = [dh, dw, db if ctx.has_bias else None]
    return (*grads, *(None,) * (inputs - len(grads)))


generator_loss_and_sample.register_autograd(_head_backward, setup_context=_head_setup_context)


# --------------------------------------------------------------------------------------------------------
# sample_logits


@library.custom_op("electra_fast::sample_logits", mutates_args=())
def sample_logits(logits: Tensor, targets: Optional[Tensor], seed: Tensor, temperature: float,
                  disallow_correct: bool, ignore_index: int, reduction: str,
                  backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, sampled, predicted, stats) of logits [N, V]; the loss is 0 when targets is None."""
    if targets is not None:
        _check_ids("targets", targets, logits.shape[1], ignore_index)
    with _autocast_off(logits.device):
        loss, sampled, predicted, stats = _backend(backend, logits.device).sample_logits(
            logits, targets, seed, temperature, disallow_correct, ignore_index, reduction)
    if loss is None:
        loss = logits.new_zeros(_loss_shape(logits.shape[0], reduction), dtype=compute_dtype(logits))
    return loss, sampled, predicted, stats


@sample_logits.register_fake
def _(logits, targets, seed, temperature, disallow_correct, ignore_index, reduction, backend):
    n = logits.shape[0]
    ids = logits.new_empty((n,), dtype=torch.int64)
    return (logits.new_empty(_loss_shape(n, reduction), dtype=compute_dtype(logits)), ids, torch.empty_like(ids),
            logits.new_empty((n, 2), dtype=torch.float32))


@library.custom_op("electra_fast::sample_logits_backward", mutates_args=())
def sample_logits_backward(grad_loss: Tensor, logits: Tensor, targets: Tensor, stats: Tensor, ignore_index: int,
                           reduction: str, backend: str) -> Tensor:
    """d loss / d logits, in the logits' dtype."""
    with _autocast_off(logits.device):
        grad = _backend(backend, logits.device).sample_logits_backward(grad_loss, logits, targets, stats, ignore_index,
                                                                reduction)
    return grad.to(logits.dtype)


@sample_logits_backward.register_fake
def _(grad_loss, logits, targets, stats, ignore_index, reduction, backend):
    return torch.empty_like(logits)


def _logits_setup_context(ctx, inputs, output):
    logits, targets, _seed, _temperature, _disallow, ignore_index, reduction, backend = inputs
    ctx.save_for_backward(logits, targets, output[3])
    ctx.ignore_index, ctx.reduction = ignore_index, reduction
    ctx.backend = settings.resolve_backend(backend, logits.device)


@once_differentiable
def _logits_backward(ctx, grad_loss, _grad_sampled, _grad_predicted, _grad_stats):
    logits, targets, stats = ctx.saved_tensors
    if targets is None:
        return None, None, None, None, None, None, None, None
    grad = sample_logits_backward(grad_loss, logits, targets, stats, ctx.ignore_index, ctx.reduction, ctx.backend)
    return grad, None, None, None, None, None, None, None


sample_logits.register_autograd(_logits_backward, setup_context=_logits_setup_context)


# --------------------------------------------------------------------------------------------------------
# replace_


@library.custom_op("electra_fast::replace_", mutates_args=("input_ids",))
def replace_(input_ids: Tensor, positions: Tensor, sampled: Tensor, valid: Optional[Tensor],
             backend: str) -> Tensor:
    """Writes sampled into input_ids at flat positions (those whose `valid` is True, all when it is None), in
    place; returns is_replaced [B, T] bool. Nothing is written unless every value is valid."""
    _check_replace(positions, sampled, valid, input_ids.numel())
    return _backend(backend, input_ids.device).replace_(input_ids, positions, sampled, valid)


@replace_.register_fake
def _(input_ids, positions, sampled, valid, backend):
    return torch.empty_like(input_ids, dtype=torch.bool)


# --------------------------------------------------------------------------------------------------------
# rtd_loss


@library.custom_op("electra_fast::rtd_loss", mutates_args=())
def rtd_loss(logits: Tensor, is_replaced: Tensor, attention_mask: Optional[Tensor], reduction: str,
             backend: str) -> tuple[Tensor, Tensor]:
    """(loss, d loss / d logits for a unit upstream gradient [B, T], float32 or float64 like the loss)."""
    _check_binary("is_replaced", is_replaced)
    _check_binary("attention_mask", attention_mask)
    with _autocast_off(logits.device):
        loss, grad = _backend(backend, logits.device).rtd_loss(logits, is_replaced, attention_mask, reduction)
    return loss, grad.to(compute_dtype(logits))


@rtd_loss.register_fake
def _(logits, is_replaced, attention_mask, reduction, backend):
    shape = logits.shape if reduction == "none" else ()
    dtype = compute_dtype(logits)
    return logits.new_empty(shape, dtype=dtype), logits.new_empty(logits.shape, dtype=dtype)


def _rtd_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.logits_dtype = inputs[0].dtype


@once_differentiable
def _rtd_backward(ctx, grad_loss, _grad_grad):
    (grad,) = ctx.saved_tensors
    return (grad_loss * grad).to(ctx.logits_dtype), None, None, None, None


rtd_loss.register_autograd(_rtd_backward, setup_context=_rtd_setup_context)

