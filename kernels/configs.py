"""Launch settings of every Triton kernel, in one place: the launchers read them, and the launch-limit test
compiles each setting they can return ahead of time for every supported GPU (contract §7).

Under the interpreter the cost is per program and per op, so it gets few, big programs; on a GPU the settings
keep the kernels memory-bound: the head's matrix products run in cuBLAS, and the kernels only stream logits.
"""
from __future__ import annotations

CHUNK = 128  # contract §3: the sampler's canonical chunk of ids; every BLOCK_V is a multiple of it


def fold_rows(interpret: bool) -> dict:
    """`sample_logits._fold_rows_kernel`: BLOCK_N rows per program walking the vocabulary BLOCK_V ids at a
    time. On a GPU one row per program (a grid of one program per row of the chunk), and BLOCK_V = 128 ids x 8
    chunks per warp x num_warps, which the kernel's layout spreads one chunk per 4 threads."""
    if interpret:
        return dict(BLOCK_N=16, BLOCK_V=512, num_warps=4)
    return dict(BLOCK_N=1, BLOCK_V=4096, num_warps=4)


def softmax_grad(interpret: bool, vocab: int, multiprocessors: int) -> dict:
    """`sample_logits._softmax_grad_kernel`: BLOCK_N rows x BLOCK_V ids per step, each program down its columns
    over 1 / ROW_PROGRAMS of the rows; ROW_PROGRAMS makes at least 4 programs per multiprocessor (each one adds
    a row of column sums, d bias's partial sums)."""
    if interpret:
        return dict(BLOCK_N=16, BLOCK_V=1024, num_warps=4, ROW_PROGRAMS=1)
    block_v = 2048
    column_programs = -(-vocab // block_v)
    row_programs = max(1, -(-4 * multiprocessors // column_programs))
    return dict(BLOCK_N=1, BLOCK_V=block_v, num_warps=4, ROW_PROGRAMS=row_programs)


def sampler(interpret: bool) -> dict:
    """`sampler._sample_kernel`: ROWS rows per program, BLOCK_C chunk log-masses per step of stage 1."""
    if interpret:
        return dict(ROWS=32, BLOCK_C=256, num_warps=4)
    return dict(ROWS=2, BLOCK_C=128, num_warps=4)


def elementwise(interpret: bool) -> dict:
    """`replace._replace_kernel` and `rtd_loss._rtd_kernel`: BLOCK elements per program."""
    return dict(BLOCK=1024, num_warps=4)


def padded_vocab(vocab: int) -> int:
    """The row stride of the head's logits and gradient buffers: V rounded up to 16 elements, so that every row
    starts 64-byte (float32) or 32-byte (16-bit) aligned and the kernels load and store 16-byte vectors."""
    return -(-vocab // 16) * 16


def head_chunk_rows(rows: int, vocab: int, grad_itemsize: int, budget: int) -> int:
    """Masked rows per chunk of the head: their float32 logits [rows, padded V] and, when the gradient is written,
    its [rows, padded V] in the input dtype (grad_itemsize bytes, 0 when not written) fit `budget` bytes; at
    least one row. As few chunks as the budget allows (each is one read-modify-write pass of the GEMMs over the
    float32 d weight), of equal size (no small last chunk that leaves the GPU idle)."""
    per_row = padded_vocab(vocab) * (4 + grad_itemsize)
    most = max(1, min(rows, budget // max(per_row, 1)))
    chunks = -(-rows // most)
    return -(-rows // chunks) if rows else most
