"""The public API of contract §2. These wrappers check shapes, dtypes, devices and scalar arguments (never
values, which the ops check), hide the ops' extra outputs, and call `torch.ops.electra_fast.*`."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import (
    custom_ops,  # noqa: F401  (registers torch.ops.electra_fast)
    settings,
)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")
SEED_LIMIT = 2**63


def _tensor(name: str, value) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _float(name: str, value, ndim: int) -> Tensor:
    _tensor(name, value)
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {value.dtype}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    return value


def _ids(name: str, value, ndim: int) -> Tensor:
    _tensor(name, value)
    if value.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {value.dtype}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    return value


def _binary(name: str, value, shape) -> Tensor:
    _tensor(name, value)
    if value.dtype.is_floating_point or value.dtype.is_complex:
        raise TypeError(f"{name} must be bool or an integer tensor of 0/1, got {value.dtype}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    return value


def _same_device(**tensors) -> str:
    """The backend that will run these tensors, resolved now so that the op's backward runs on it too."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
    return settings.resolve_backend(settings.get_backend(), next(iter(devices.values())))


def _autocast(*tensors: Optional[Tensor]) -> tuple:
    """Under torch.autocast, the head's float inputs in the autocast dtype, as F.linear casts them."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t if t is None or t.dtype == torch.float64 else t.to(dtype) for t in tensors)


def _wants_grad(t: Optional[Tensor]) -> bool:
    return t is not None and t.requires_grad and torch.is_grad_enabled()


def _reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return float(temperature)


def _ignore_index(ignore_index) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return ignore_index


def resolve_seed(seed, device: torch.device) -> Tensor:
    """contract §2 "Seeds" as a 0-dim int64 tensor on `device`, the inputs' device: an int in [0, 2^63) is filled in
    there (no host-to-device copy, which a CUDA graph cannot capture), None draws on `device` from torch's default
    generator for it (no host sync; torch.compile traces it; a captured CUDA graph draws anew on each replay), and
    a 0-dim int64 tensor is taken as it is (the backend moves it where it runs)."""
    if seed is None:
        return torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64, device=device)
    if isinstance(seed, Tensor):
        if seed.dtype != torch.int64 or seed.dim() != 0:
            raise ValueError(f"seed tensor must be 0-dim int64, got {seed.dtype} with shape {tuple(seed.shape)}")
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int in [0, 2**63), a 0-dim int64 tensor or None, got {seed!r}")
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return torch.full((), seed, dtype=torch.int64, device=device)


def _vocab_checks(vocab: int, disallow_correct: bool, name: str) -> None:
    if vocab == 0:
        raise ValueError(f"{name} has an empty vocabulary (V = 0)")
    if disallow_correct and vocab < 2:
        raise ValueError(f"disallow_correct=True needs a vocabulary of at least 2 ids, {name} has V = {vocab}")


def generator_loss_and_sample(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor, *,
                              temperature: float = 1.0, disallow_correct: bool = False, seed=None,
                              ignore_index: int = -100, reduction: str = "mean"):
    """The fused generator head: MLM loss, a sample and the argmax at the masked rows, without [N, V] logits.

    hidden [N, H], weight [V, H] (the tied token embedding), bias [V] or None: float16/bfloat16/float32/float64.
    Under torch.autocast they are cast to the autocast dtype first, as F.linear casts them; otherwise inputs of
    different dtypes compute in float32. targets [N] int64 (ignore_index for rows without a target). Returns
    (loss, sampled [N] int64, predicted [N] int64); loss is float32 (float64 for float64 inputs), 0-dim or [N]
    for reduction="none", differentiable (once) in hidden, weight and bias, each gradient in its input's dtype.
    The sample is an exact draw from softmax(logits / temperature).
    """
    _float("hidden", hidden, 2)
    _float("weight", weight, 2)
    if bias is not None:
        _float("bias", bias, 1)
    _ids("targets", targets, 1)
    n, h = hidden.shape
    vocab = weight.shape[0]
    if weight.shape[1] != h:
        raise ValueError(f"weight must be [V, {h}] to match hidden [N, {h}], got {tuple(weight.shape)}")
    if bias is not None and bias.shape[0] != vocab:
        raise ValueError(f"bias must be [{vocab}] to match weight [V={vocab}, H], got {tuple(bias.shape)}")
    if targets.shape[0] != n:
        raise ValueError(f"targets must be [{n}] to match hidden [N={n}, H], got {tuple(targets.shape)}")
    backend = _same_device(hidden=hidden, weight=weight, bias=bias, targets=targets)
    _vocab_checks(vocab, disallow_correct, "weight")
    hidden, weight, bias = _autocast(hidden, weight, bias)
    loss, sampled, predicted, *_ = torch.ops.electra_fast.generator_loss_and_sample(
        hidden, weight, bias, targets, resolve_seed(seed, hidden.device), _temperature(temperature),
        bool(disallow_correct), _ignore_index(ignore_index), _reduction(reduction), backend, _wants_grad(hidden),
        _wants_grad(weight), _wants_grad(bias))
    return loss, sampled, predicted


def sample_logits(logits: Tensor, targets: Optional[Tensor] = None, *, temperature: float = 1.0,
                  disallow_correct: bool = False, seed=None, ignore_index: int = -100, reduction: str = "mean"):
    """Loss, sample and argmax of logits [N, V] the caller already has.

    Returns (loss or None when targets is None, sampled [N] int64, predicted [N] int64); the loss is
    differentiable in logits. `disallow_correct` needs targets.
    """
    _float("logits", logits, 2)
    n, vocab = logits.shape
    if targets is not None:
        _ids("targets", targets, 1)
        if targets.shape[0] != n:
            raise ValueError(f"targets must be [{n}] to match logits [N={n}, V], got {tuple(targets.shape)}")
    elif disallow_correct:
        raise ValueError("disallow_correct=True needs targets")
    backend = _same_device(logits=logits, targets=targets)
    _vocab_checks(vocab, disallow_correct, "logits")
    loss, sampled, predicted, _ = torch.ops.electra_fast.sample_logits(
        logits, targets, resolve_seed(seed, logits.device), _temperature(temperature), bool(disallow_correct),
        _ignore_index(ignore_index), _reduction(reduction), backend)
    return (loss if targets is not None else None), sampled, predicted


def replace_(input_ids: Tensor, positions: Tensor, sampled: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Writes `sampled` [N] into `input_ids` [B, T] (the original ids) in place at flat `positions` [N]
    (strictly ascending indices into input_ids.view(-1)); returns is_replaced [B, T] bool, True only where the
    id changed. `valid` [N] bool, when given, marks the slots to write: the others (the unused slots of
    `mask_token_slots`, flattened) are skipped whatever their position and sample, and the valid ones must be
    strictly ascending. Nothing is written unless every argument is valid."""
    _ids("input_ids", input_ids, 2)
    _ids("positions", positions, 1)
    _ids("sampled", sampled, 1)
    if sampled.shape != positions.shape:
        raise ValueError(f"sampled must have the shape of positions {tuple(positions.shape)}, "
                         f"got {tuple(sampled.shape)}")
    if valid is not None:
        _tensor("valid", valid)
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
        if valid.shape != positions.shape:
            raise ValueError(f"valid must have the shape of positions {tuple(positions.shape)}, "
                             f"got {tuple(valid.shape)}")
    backend = _same_device(input_ids=input_ids, positions=positions, sampled=sampled, valid=valid)
    return torch.ops.electra_fast.replace_(input_ids, positions, sampled, valid, backend)


def rtd_loss(logits: Tensor, is_replaced: Tensor, attention_mask: Optional[Tensor] = None, *,
             reduction: str = "mean") -> Tensor:
    """Replaced-token-detection loss: sigmoid BCE with logits [B, T] against is_replaced [B, T] (bool or 0/1),
    weighted by attention_mask [B, T] (bool or 0/1; all ones when None). "mean" divides by the number of
    attended tokens (0 when there are none); "none" gives [B, T] with 0 at padding. Float32 (float64 for float64
    logits), differentiable in logits."""
    _float("logits", logits, 2)
    _binary("is_replaced", is_replaced, logits.shape)
    if attention_mask is not None:
        _binary("attention_mask", attention_mask, logits.shape)
    backend = _same_device(logits=logits, is_replaced=is_replaced, attention_mask=attention_mask)
    loss, _ = torch.ops.electra_fast.rtd_loss(logits, is_replaced, attention_mask, _reduction(reduction), backend)
    return loss
