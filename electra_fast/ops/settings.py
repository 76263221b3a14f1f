"""Module-level settings that the ops and the backends both read: the selected backend, the value checks, the
head's chunk budget and whether the Triton interpreter runs (contract §2: a module-level setting, not a
`ContextVar`, which torch.compile cannot trace)."""
from __future__ import annotations

import contextlib
import os

import torch

BACKENDS = ("auto", "triton", "cpp", "reference")
# Read once, at import: the Triton interpreter must be chosen before triton is imported.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEFAULT_LOGITS_BUDGET = 512 << 20  # bytes of float32 logits (and their gradient) the head holds at once (contract §1)

_settings = {"backend": "auto", "value_checks": True, "logits_budget": DEFAULT_LOGITS_BUDGET}


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


def value_checks() -> bool:
    return _settings["value_checks"]


def set_logits_budget(num_bytes: int) -> None:
    """Bytes of logits (float32) plus their gradient that the GPU head holds at once; it takes the masked rows
    in chunks that fit (at least one row per chunk). Default 512 MiB."""
    if isinstance(num_bytes, bool) or not isinstance(num_bytes, int) or num_bytes <= 0:
        raise ValueError(f"logits budget must be a positive number of bytes, got {num_bytes!r}")
    _settings["logits_budget"] = num_bytes


def logits_budget() -> int:
    return _settings["logits_budget"]


def backend_name(name: str, device: torch.device) -> str:
    """The concrete backend `name` means for tensors on `device` ("auto": CUDA -> triton, else cpp), without
    checking that it can run them (the fakes call this on meta tensors)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        return "triton" if device.type == "cuda" else "cpp"
    return name


def resolve_backend(name: str, device: torch.device) -> str:
    """The concrete backend ("triton", "cpp" or "reference") that `name` means for tensors on `device`, or a
    ValueError saying why it cannot run them."""
    name = backend_name(name, device)
    if name == "cpp" and device.type != "cpu":
        raise ValueError(f"backend 'cpp' runs CPU tensors only, got tensors on {device}")
    if name == "triton" and not (device.type == "cuda" or (device.type == "cpu" and TRITON_INTERPRET)):
        raise ValueError(f"backend 'triton' runs CUDA tensors (or CPU tensors when TRITON_INTERPRET=1 was set "
                         f"before electra_fast was imported), got tensors on {device}")
    return name
