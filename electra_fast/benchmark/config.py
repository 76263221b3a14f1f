"""What one benchmark run measures, and its defaults per device (contract §5, §6)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from electra_fast import models

CPU_BATCH_SIZE = 8  # contract §6: the default finishes in minutes on a laptop CPU
CUDA_BATCH_SIZE = 128  # ELECTRA-Small's real batch (Clark et al., 2020): 128 sequences of 128 tokens
DTYPES = ("float32", "bfloat16", "float16")
PARTS = ("head", "ops", "step", "recommended", "graph")


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 matrix products natively (CUDA: compute capability >= 8.0; CPU: oneDNN's
    AVX-512 bf16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass
class Config:
    """One benchmark run. `batch_size` and `dtype` left as None take the device's defaults: on CUDA
    ELECTRA-Small's real batch (128 x 128) under bfloat16 where the card supports it, on the CPU batch 8 in
    float32. `dtype` is the head's input dtype and the step's autocast dtype (float32: no autocast)."""

    preset: str = "small"
    batch_size: int | None = None
    seq_len: int = 128
    num_layers: int | None = None  # None: the preset's
    head_rows: int = 2458  # ELECTRA-Small's masked rows per step (128 x 128 x 0.15)
    head_hidden: int | None = None  # None: the preset's embedding size (the generator head's input width)
    vocab_size: int = 30522  # BERT uncased
    dtype: str | None = None
    device: str = "cpu"
    warmup: int = 2
    repeats: int = 5
    memory: bool = True
    parts: tuple = ("head", "ops", "step")

    def __post_init__(self):
        device = torch.device(self.device)
        if self.batch_size is None:
            self.batch_size = CUDA_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE
        if self.dtype is None:
            self.dtype = "bfloat16" if device.type == "cuda" and bf16_supported(device) else "float32"
        self.parts = tuple(self.parts)
        if self.preset not in models.PRESETS:
            raise ValueError(f"preset must be one of {sorted(models.PRESETS)}, got {self.preset!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ValueError(f"parts must be among {PARTS}, got {sorted(unknown)}")
        # warmup >= 1: contract §5 times after warm-up, and a variant that cannot run is found there
        for name in ("batch_size", "seq_len", "head_rows", "vocab_size", "warmup", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def hidden_size(self) -> int:
        """H of the head tables."""
        return self.head_hidden or models.PRESETS[self.preset]["embedding_size"]
