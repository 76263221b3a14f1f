"""What a kernel launcher relies on, checked before it hands raw pointers to a kernel (Triton or C++): device,
dtype, contiguity and shape, each failure a ValueError (TypeError for a dtype) naming the argument."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

KERNEL_FLOATS = (torch.float16, torch.bfloat16, torch.float32)  # the float dtypes the kernels read and write


def require(name: str, t: Optional[torch.Tensor], *, device: Optional[torch.device] = None,
            dtypes: Optional[Sequence[torch.dtype]] = None, contiguous: bool = False,
            shape: Optional[Sequence[int]] = None, optional: bool = False) -> Optional[torch.Tensor]:
    """Returns t after checking it; None passes only when `optional`."""
    if t is None:
        if optional:
            return None
        raise ValueError(f"{name} is required")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if device is not None and t.device != torch.device(device):
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {tuple(str(d) for d in dtypes)}, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return t
