"""The torch ops `torch.ops.electra_fast.*`: one PyTorch `custom_op` per public op, each with a fake
(meta) kernel and autograd, and the backend chosen *inside* the op (SPEC §2 "Ops").

Every backend module offers the same functions:

    head_forward(hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index, reduction)
        -> loss, sampled, predicted, stats
    head_backward(grad_loss, hidden, weight, bias, targets, stats, ignore_index, reduction) -> dh, dw, db
    logits_forward(logits, targets | None, seed, ...) -> loss (None without targets), sampled, predicted, stats
    logits_backward(grad_loss, logits, targets, stats, ignore_index, reduction) -> dlogits

stats [N, 2] float32 are each row's softmax statistics, (max, log sum exp(logits - max)), which the backward
uses; the ops return them as an extra output that the public wrappers hide.
    replace(input_ids, positions, sampled) -> is_replaced          (mutates input_ids)
    rtd_forward(logits, is_replaced, attention_mask, reduction) -> loss, dloss/dlogits

Value checks (ids in range, positions ascending) run here, inside the ops, so that a compiled caller still
raises on bad values.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
from torch import Tensor, library

from . import reference
from .reference import compute_dtype

BACKENDS = ("auto", "triton", "cpp", "reference")
# Read once, at import: the Triton interpreter must be chosen before triton is imported.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

_settings = {"backend": "auto", "value_checks": True}


# --------------------------------------------------------------------------------------------------------
# Backend and value-check settings (module-level: torch.compile cannot trace a ContextVar).


def set_backend(name: str) -> None:
    """Selects the backend for all later calls: "auto" (CUDA -> triton, CPU -> cpp), "triton", "cpp",
    "reference"."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _settings["backend"] = name


def get_backend() -> str:
    return _settings["backend"]


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager form of `set_backend`; restores the previous backend on exit."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def set_value_checks(enabled: bool) -> None:
    """Turns the value checks (ids and positions in range) on or off. On CUDA each check costs a device sync;
    turn them off for CUDA-graph capture and hot loops. Shape, dtype and device checks always run."""
    _settings["value_checks"] = bool(enabled)


def _cpp_backend():
    from . import cpp_backend

    return cpp_backend


def _triton_backend():
    from . import triton_backend

    return triton_backend


def backend_for(device: torch.device):
    """The backend module that runs tensors on `device` under the current setting, or a clear error."""
    name = get_backend()
    if name == "auto":
        name = "triton" if device.type == "cuda" else "cpp"
    if name == "reference":
        return _ReferenceBackend
    if name == "cpp":
        if device.type != "cpu":
            raise ValueError(f"backend 'cpp' runs CPU tensors only, got tensors on {device}")
        return _cpp_backend()
    if device.type == "cuda" or (device.type == "cpu" and TRITON_INTERPRET):
        return _triton_backend()
    raise ValueError(f"backend 'triton' runs CUDA tensors (or CPU tensors when TRITON_INTERPRET=1 was set "
                     f"before electra_fast was imported), got tensors on {device}")


# --------------------------------------------------------------------------------------------------------
# The reference as a backend: the definitions of reference.py and their gradients written out.


class _ReferenceBackend:
    @staticmethod
    def head_forward(hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index, reduction):
        logits = reference.head_logits(hidden, weight, bias)
        return _ReferenceBackend.logits_forward(logits, targets, seed, temperature, disallow_correct, ignore_index,
                                                reduction)

    @staticmethod
    def logits_forward(logits, targets, seed, temperature, disallow_correct, ignore_index, reduction):
        loss, sampled, predicted = reference.sample_logits(
            logits, targets, seed, temperature=temperature, disallow_correct=disallow_correct,
            ignore_index=ignore_index, reduction=reduction)
        z = logits.to(torch.float32)
        row_max = z.amax(dim=-1)
        return loss, sampled, predicted, torch.stack([row_max, torch.logsumexp(z, dim=-1) - row_max], dim=1)

    @staticmethod
    def head_backward(grad_loss, hidden, weight, bias, targets, stats, ignore_index, reduction):
        dtype = compute_dtype(hidden, weight, bias)
        g = reference.cross_entropy_grad(reference.head_logits(hidden, weight, bias), targets, grad_loss,
                                         ignore_index, reduction)
        db = None if bias is None else g.sum(0)
        return g @ weight.to(dtype), g.T @ hidden.to(dtype), db

    @staticmethod
    def logits_backward(grad_loss, logits, targets, stats, ignore_index, reduction):
        return reference.cross_entropy_grad(logits.to(compute_dtype(logits)), targets, grad_loss, ignore_index,
                                            reduction)

    @staticmethod
    def replace(input_ids, positions, sampled):
        return reference.replace_(input_ids, positions, sampled)

    @staticmethod
    def rtd_forward(logits, is_replaced, attention_mask, reduction):
        return (reference.rtd_loss(logits, is_replaced, attention_mask, reduction),
                reference.rtd_loss_grad(logits, is_replaced, attention_mask, reduction))


# --------------------------------------------------------------------------------------------------------
# Value checks (inside the ops).


def _check_ids(name: str, ids: Tensor, vocab: int, ignore_index: Optional[int] = None) -> None:
    if not _settings["value_checks"] or ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= vocab)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bool(bad.any()):
        first = ids[bad][0].item()
        allowed = f"[0, {vocab})" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
        raise ValueError(f"{name} must hold ids in {allowed}; found {first}")


def _check_binary(name: str, values: Optional[Tensor]) -> None:
    if values is None or values.dtype == torch.bool or not _settings["value_checks"] or values.numel() == 0:
        return
    if bool(((values != 0) & (values != 1)).any()):
        raise ValueError(f"{name} must be bool or hold only 0 and 1")


def _check_positions(positions: Tensor, numel: int) -> None:
    if not _settings["value_checks"] or positions.numel() == 0:
        return
    if bool(((positions < 0) | (positions >= numel)).any()):
        raise ValueError(f"positions must be flat indices in [0, {numel}) of input_ids")
    if positions.numel() > 1 and bool((positions[1:] <= positions[:-1]).any()):
        raise ValueError("positions must be strictly ascending")


def _loss_shape(n: int, reduction: str):
    return (n,) if reduction == "none" else ()


# --------------------------------------------------------------------------------------------------------
# generator_loss_and_sample


@library.custom_op("electra_fast::generator_loss_and_sample", mutates_args=())
def generator_loss_and_sample(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
                              seed: Tensor, temperature: float, disallow_correct: bool, ignore_index: int,
                              reduction: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused head: (loss, sampled [N], predicted [N], stats [N, 2]). See `electra_fast.generator_loss_and_sample`."""
    _check_ids("targets", targets, weight.shape[0], ignore_index)
    backend = backend_for(hidden.device)
    return backend.head_forward(hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index,
                                reduction)


@generator_loss_and_sample.register_fake
def _(hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index, reduction):
    n = hidden.shape[0]
    loss = hidden.new_empty(_loss_shape(n, reduction), dtype=compute_dtype(hidden, weight, bias))
    ids = hidden.new_empty((n,), dtype=torch.int64)
    return loss, ids, torch.empty_like(ids), hidden.new_empty((n, 2), dtype=torch.float32)


@library.custom_op("electra_fast::generator_head_backward", mutates_args=())
def generator_head_backward(grad_loss: Tensor, hidden: Tensor, weight: Tensor, bias: Optional[Tensor],
                            targets: Tensor, stats: Tensor, ignore_index: int,
                            reduction: str) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the fused head's loss: (d hidden, d weight, d bias or an empty tensor), each in its input's
    dtype."""
    backend = backend_for(hidden.device)
    dh, dw, db = backend.head_backward(grad_loss, hidden, weight, bias, targets, stats, ignore_index, reduction)
    db = hidden.new_empty((0,)) if db is None else db.to(bias.dtype)
    return dh.to(hidden.dtype), dw.to(weight.dtype), db


@generator_head_backward.register_fake
def _(grad_loss, hidden, weight, bias, targets, stats, ignore_index, reduction):
    db = hidden.new_empty((0,)) if bias is None else torch.empty_like(bias)
    return torch.empty_like(hidden), torch.empty_like(weight), db


def _head_setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, _seed, _temperature, _disallow, ignore_index, reduction = inputs
    ctx.save_for_backward(hidden, weight, bias, targets, output[3])
    ctx.ignore_index, ctx.reduction = ignore_index, reduction


def _head_backward(ctx, grad_loss, _grad_sampled, _grad_predicted, _grad_stats):
    hidden, weight, bias, targets, stats = ctx.saved_tensors
    dh, dw, db = generator_head_backward(grad_loss, hidden, weight, bias, targets, stats, ctx.ignore_index,
                                         ctx.reduction)
    return dh, dw, (db if bias is not None else None), None, None, None, None, None, None


generator_loss_and_sample.register_autograd(_head_backward, setup_context=_head_setup_context)


# --------------------------------------------------------------------------------------------------------
# sample_logits


@library.custom_op("electra_fast::sample_logits", mutates_args=())
def sample_logits(logits: Tensor, targets: Optional[Tensor], seed: Tensor, temperature: float,
                  disallow_correct: bool, ignore_index: int, reduction: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, sampled, predicted, stats) of logits [N, V]; the loss is 0 when targets is None."""
    if targets is not None:
        _check_ids("targets", targets, logits.shape[1], ignore_index)
    loss, sampled, predicted, stats = backend_for(logits.device).logits_forward(
        logits, targets, seed, temperature, disallow_correct, ignore_index, reduction)
    if loss is None:
        loss = logits.new_zeros(_loss_shape(logits.shape[0], reduction), dtype=compute_dtype(logits))
    return loss, sampled, predicted, stats


@sample_logits.register_fake
def _(logits, targets, seed, temperature, disallow_correct, ignore_index, reduction):
    n = logits.shape[0]
    ids = logits.new_empty((n,), dtype=torch.int64)
    return (logits.new_empty(_loss_shape(n, reduction), dtype=compute_dtype(logits)), ids, torch.empty_like(ids),
            logits.new_empty((n, 2), dtype=torch.float32))


@library.custom_op("electra_fast::sample_logits_backward", mutates_args=())
def sample_logits_backward(grad_loss: Tensor, logits: Tensor, targets: Tensor, stats: Tensor, ignore_index: int,
                           reduction: str) -> Tensor:
    """d loss / d logits, in the logits' dtype."""
    grad = backend_for(logits.device).logits_backward(grad_loss, logits, targets, stats, ignore_index, reduction)
    return grad.to(logits.dtype)


@sample_logits_backward.register_fake
def _(grad_loss, logits, targets, stats, ignore_index, reduction):
    return torch.empty_like(logits)


def _logits_setup_context(ctx, inputs, output):
    logits, targets, _seed, _temperature, _disallow, ignore_index, reduction = inputs
    ctx.save_for_backward(logits, targets, output[3])
    ctx.ignore_index, ctx.reduction = ignore_index, reduction


def _logits_backward(ctx, grad_loss, _grad_sampled, _grad_predicted, _grad_stats):
    logits, targets, stats = ctx.saved_tensors
    if targets is None:
        return None, None, None, None, None, None, None
    grad = sample_logits_backward(grad_loss, logits, targets, stats, ctx.ignore_index, ctx.reduction)
    return grad, None, None, None, None, None, None


sample_logits.register_autograd(_logits_backward, setup_context=_logits_setup_context)


# --------------------------------------------------------------------------------------------------------
# replace_


@library.custom_op("electra_fast::replace_", mutates_args=("input_ids",))
def replace_(input_ids: Tensor, positions: Tensor, sampled: Tensor) -> Tensor:
    """Writes sampled into input_ids at flat positions, in place; returns is_replaced [B, T] bool. Nothing is
    written unless every value is valid."""
    _check_positions(positions, input_ids.numel())
    if _settings["value_checks"] and sampled.numel() and bool((sampled < 0).any()):
        raise ValueError("sampled must hold ids >= 0")
    return backend_for(input_ids.device).replace(input_ids, positions, sampled)


@replace_.register_fake
def _(input_ids, positions, sampled):
    return torch.empty_like(input_ids, dtype=torch.bool)


# --------------------------------------------------------------------------------------------------------
# rtd_loss


@library.custom_op("electra_fast::rtd_loss", mutates_args=())
def rtd_loss(logits: Tensor, is_replaced: Tensor, attention_mask: Optional[Tensor],
             reduction: str) -> tuple[Tensor, Tensor]:
    """(loss, d loss / d logits for a unit upstream gradient [B, T], float32 or float64 like the loss)."""
    _check_binary("is_replaced", is_replaced)
    _check_binary("attention_mask", attention_mask)
    loss, grad = backend_for(logits.device).rtd_forward(logits, is_replaced, attention_mask, reduction)
    return loss, grad.to(compute_dtype(logits))


@rtd_loss.register_fake
def _(logits, is_replaced, attention_mask, reduction):
    shape = logits.shape if reduction == "none" else ()
    dtype = compute_dtype(logits)
    return logits.new_empty(shape, dtype=dtype), logits.new_empty(logits.shape, dtype=dtype)


def _rtd_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.logits_dtype = inputs[0].dtype


def _rtd_backward(ctx, grad_loss, _grad_grad):
    (grad,) = ctx.saved_tensors
    return (grad_loss * grad).to(ctx.logits_dtype), None, None, None


rtd_loss.register_autograd(_rtd_backward, setup_context=_rtd_setup_context)
