"""Launch settings of every Triton kernel, in one place: the launchers read them, and the launch-limit test
compiles each setting they can return ahead of time for every supported GPU (SPEC §7).

Under the interpreter the cost is per program and per op, so it gets few, big programs; on a GPU the settings
keep the kernels memory-bound: the head's matrix products run in cuBLAS, and the kernels only stream logits.
"""
from __future__ import annotations

CHUNK = 128  # SPEC §3: the sampler's canonical chunk of ids; every BLOCK_V is a multiple of it


def fold_rows(interpret: bool) -> dict:
    """`sample_logits._fold_rows_kernel`: BLOCK_N rows per program walking the vocabulary BLOCK_V ids at a
    time (twice when it also writes the gradient)."""
    if interpret:
        return dict(BLOCK_N=16, BLOCK_V=512, num_warps=4)
    return dict(BLOCK_N=4, BLOCK_V=1024, num_warps=4)


def softmax_grad(interpret: bool) -> dict:
    """`sample_logits._softmax_grad_kernel`: one row x BLOCK_V ids per program."""
    return dict(BLOCK_V=1024 if interpret else 2048, num_warps=4)


def sampler(interpret: bool) -> dict:
    """`sampler._sample_kernel`: ROWS rows per program, BLOCK_C chunk log-masses per step of stage 1."""
    if interpret:
        return dict(ROWS=32, BLOCK_C=256, num_warps=4)
    return dict(ROWS=2, BLOCK_C=128, num_warps=4)


def elementwise(interpret: bool) -> dict:
    """`replace._replace_kernel` and `rtd_loss._rtd_kernel`: BLOCK elements per program."""
    return dict(BLOCK=1024, num_warps=4)


def head_chunk_rows(rows: int, vocab: int, grad_itemsize: int, budget: int) -> int:
    """Masked rows per chunk of the head: their float32 logits [rows, V] and, when the gradient is written,
    its [rows, V] in the input dtype (grad_itemsize bytes, 0 when not written) fit `budget` bytes; at least one
    row."""
    per_row = vocab * (4 + grad_itemsize)
    return max(1, min(rows, budget // max(per_row, 1)))
