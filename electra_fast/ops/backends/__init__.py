"""The backends behind the ops: `reference` (plain PyTorch, the definition), `cpp` (CPU, electra_fast._C) and
`triton` (CUDA, or CPU under the Triton interpreter). Each module keeps the contract of `base.Backend`."""
from __future__ import annotations

from .base import Backend


def get(name: str) -> Backend:
    """The backend module of a concrete name ("reference", "cpp", "triton"), imported on first use: triton is
    not installed everywhere, and the C++ extension need not be loaded for the reference."""
    if name == "reference":
        from . import reference_backend

        return reference_backend
    if name == "cpp":
        from . import cpp_backend

        return cpp_backend
    if name == "triton":
        from . import triton_backend

        return triton_backend
    raise ValueError(f"no backend named {name!r}")
