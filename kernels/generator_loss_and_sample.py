"""The fused generator head on a GPU: the masked rows in chunks whose float32 logits (and their gradient) fit
the logits budget; per chunk, cuBLAS computes the logits, `sample_logits._fold_rows_kernel` folds them into the
loss, the argmax and the sampler's chunk log-masses, `sampler.sample` draws the samples from the same logits, and,
when the gradients are wanted, `sample_logits._softmax_grad_kernel` writes (softmax - onehot) * row_scale in the
input dtype with d bias's column sums, and cuBLAS turns that tile into d hidden = G @ W and d weight (+)= G.T @ h.
Three matrix products in all (6 N H V flops); everything else is a pass over a chunk in HBM.
"""
import functools

import torch

from ..ops.kernel_args import KERNEL_FLOATS, require
from . import configs
from .sample_logits import column_sum_rows, fold_rows, softmax_grad
from .sampler import sample


@functools.cache
def _float32_out(device: torch.device, dtype: torch.dtype) -> tuple[bool, bool]:
    """Whether this torch multiplies float16/bfloat16 matrices on `device` into a float32 tensor given as `out`
    (torch >= 2.8 on CUDA: `mm(out_dtype=, out=)`), and accumulates such a product into a float32 tensor in place
    (`addmm(out_dtype=, out=)`, refused by some versions). Asked once per device and dtype, on 2 x 2 matrices; the
    product goes into a view with padded rows, as the head's logits do (`_ChunkBuffers`)."""
    if device.type != "cuda":
        return False, False
    a = torch.ones(2, 2, dtype=dtype, device=device)
    acc = torch.zeros(2, 2, dtype=torch.float32, device=device)
    product = torch.empty(2, configs.padded_vocab(3), dtype=torch.float32, device=device)[:, :2]
    supported = []
    for multiply in (lambda: torch.mm(a, a, out_dtype=torch.float32, out=product),
                     lambda: torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)):
        try:
            supported.append(bool((multiply() == 2).all()))
        except (TypeError, RuntimeError, NotImplementedError):
            supported.append(False)
    return supported[0] and bool((product == 2).all()), supported[1] and bool((acc == 2).all())


def _mm_float32(a, b, out=None):
    """a @ b with a float32 result (into `out` when given): float32 operands as they are (TF32 only where torch
    allows it), float16 and bfloat16 operands through cuBLAS with float32 output where torch offers it (no
    rounding of the logits to the input dtype, which would move samples), else upcast."""
    if a.dtype == b.dtype == torch.float32:
        return torch.mm(a, b, out=out)
    if a.dtype == b.dtype and _float32_out(a.device, a.dtype)[0]:
        return torch.mm(a, b, out_dtype=torch.float32, out=out)
    return torch.mm(a.float(), b.float(), out=out)


def _logits_operand(weight):
    """weight as the logits GEMM takes it: as it is where that GEMM gives float32 results from its dtype, else
    upcast once for all chunks rather than once per chunk."""
    if weight.dtype == torch.float32 or _float32_out(weight.device, weight.dtype)[0]:
        return weight
    return weight.float()


def _addmm_float32_(acc, a, b):
    """acc += a @ b for a float32 accumulator, in one GEMM pass over acc where cuBLAS can (beta = 1)."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
    elif _float32_out(a.device, a.dtype)[1]:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc += _mm_float32(a, b)


def _check_head(hidden, weight, bias, targets, row_scale):
    """What the head's launchers rely on; returns (N, V)."""
    n, h = require("hidden", hidden, dtypes=KERNEL_FLOATS).shape
    dev = hidden.device
    v = require("weight", weight, device=dev, dtypes=(hidden.dtype,)).shape[0]
    require("weight", weight, shape=(v, h))
    require("bias", bias, device=dev, dtypes=(hidden.dtype,), contiguous=True, shape=(v,), optional=True)
    require("targets", targets, device=dev, dtypes=(torch.int64,), contiguous=True, shape=(n,))
    require("row_scale", row_scale, device=dev, dtypes=(torch.float32,), contiguous=True, shape=(n,))
    return n, v


def _chunks(n, v, grad_dtype, budget):
    rows = configs.head_chunk_rows(n, v, 0 if grad_dtype is None else grad_dtype.itemsize, budget)
    return [(r0, min(rows, n - r0)) for r0 in range(0, n, rows)]


class _ChunkBuffers:
    """The chunks' [rows, V] float32 logits and gradient tile (None without gradients), allocated once for the
    largest chunk and sliced for each, rows 16-byte aligned (row stride V padded to 16): the kernels load and store
    16-byte vectors. The gradient's padding columns are zeros: it is a GEMM operand, and some CPU GEMMs read an
    operand's row padding and let a NaN there into the product."""

    def __init__(self, rows, v, grad_dtype, device):
        padded = configs.padded_vocab(v)
        self.v = v
        self.logits = torch.empty(rows, padded, dtype=torch.float32, device=device)
        self.grad = None if grad_dtype is None else torch.empty(rows, padded, dtype=grad_dtype, device=device)
        if self.grad is not None and padded > v:
            self.grad[:, v:].zero_()

    def views(self, rows):
        return self.logits[:rows, :self.v], None if self.grad is None else self.grad[:rows, :self.v]


class _Gradients:
    """The head's three gradients, accumulated chunk by chunk from each gradient tile g [rows, V]: d hidden
    [N, H] in hidden's dtype, d weight [V, H] and d bias [V] in float32 (None where not wanted). The first chunk
    writes d weight (beta 0), the others add to it: no zero-filled [V, H] read back. d bias comes from the
    gradient kernel's column sums, per program down the rows, summed once at the end."""

    def __init__(self, hidden, weight, bias, wanted, interpret):
        self.hidden, self.weight = hidden, weight
        dev, v = hidden.device, weight.shape[0]
        self.d_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=dev) if wanted[0] else None
        self.wants_weight = wanted[1]
        self.d_weight = None
        self.column_sums = (torch.zeros(column_sum_rows(v, dev, interpret), v, dtype=torch.float32, device=dev)
                            if wanted[2] and bias is not None else None)

    def add(self, g, r0):
        rows = self.hidden[r0:r0 + g.shape[0]]
        if self.d_hidden is not None:
            torch.mm(g, self.weight, out=self.d_hidden[r0:r0 + g.shape[0]])
        if self.wants_weight:
            if self.d_weight is None:
                self.d_weight = _mm_float32(g.T, rows)
            else:
                _addmm_float32_(self.d_weight, g.T, rows)

    def result(self):
        if self.wants_weight and self.d_weight is None:  # no rows
            self.d_weight = torch.zeros(self.weight.shape, dtype=torch.float32, device=self.weight.device)
        d_bias = None if self.column_sums is None else self.column_sums.sum(0)
        return self.d_hidden, self.d_weight, d_bias


def forward(hidden, weight, bias, targets, seed, row_scale, *, ignore_index, temperature, disallow_correct,
                 grads, budget, interpret=False):
    """hidden [N, H] and weight [V, H] of one dtype (float16/bfloat16/float32, any strides), bias [V]
    contiguous | None, targets [N] int64 contiguous, seed a 1-element int64 tensor on the device, row_scale [N]
    float32 (d loss / d row loss for a unit upstream gradient; used when any of `grads` = (d hidden, d weight,
    d bias) is wanted). Returns (stats [N, 2], row_loss [N], predicted [N], sampled [N], grad_hidden [N, H] in
    hidden's dtype | None, grad_weight [V, H] float32 | None, grad_bias [V] float32 | None)."""
    n, v = _check_head(hidden, weight, bias, targets, row_scale)
    dev = hidden.device
    require("seed", seed, device=dev, dtypes=(torch.int64,), shape=(1,))
    stats = torch.empty(n, 2, dtype=torch.float32, device=dev)
    row_loss = torch.empty(n, dtype=torch.float32, device=dev)
    predicted = torch.empty(n, dtype=torch.int64, device=dev)
    sampled = torch.empty(n, dtype=torch.int64, device=dev)
    gradients = _Gradients(hidden, weight, bias, grads, interpret)
    grad_dtype = hidden.dtype if any(grads) else None
    chunks = _chunks(n, v, grad_dtype, budget)
    buffers = _ChunkBuffers(chunks[0][1] if chunks else 0, v, grad_dtype, dev)
    chunk_lse = torch.empty(chunks[0][1] if chunks else 0, -(-v // configs.CHUNK), dtype=torch.float32, device=dev)
    w_logits = _logits_operand(weight)
    bias = None if bias is None else bias.float()  # read by every row of every chunk: converted once
    for r0, rows in chunks:
        logits, g = buffers.views(rows)
        _mm_float32(hidden[r0:r0 + rows], w_logits.T, out=logits)
        part = slice(r0, r0 + rows)
        fold_rows(logits, bias, targets[part], ignore_index=ignore_index, temperature=temperature,
                  disallow_correct=disallow_correct, out=(stats[part], row_loss[part], predicted[part],
                                                          chunk_lse[:rows]), interpret=interpret)
        sample(logits, bias, chunk_lse[:rows], seed, targets[part], ignore_index=ignore_index,
               temperature=temperature, disallow_correct=disallow_correct, row_offset=r0, out=sampled[part],
               interpret=interpret)
        if g is not None:
            softmax_grad(logits, bias, targets[part], stats[part], row_scale[part], out=g,
                         column_sums=gradients.column_sums, interpret=interpret)
            gradients.add(g, r0)
    return (stats, row_loss, predicted, sampled, *gradients.result())


def backward(hidden, weight, bias, targets, stats, row_scale, *, budget, interpret=False):
    """Gradients of the head's loss recomputing the logits chunk by chunk, from the forward's stats [N, 2] and
    row_scale [N] float32 (0 on ignored rows); inputs as for `forward`. Returns (grad_hidden [N, H] in
    hidden's dtype, grad_weight [V, H] float32, grad_bias [V] float32 | None)."""
    n, v = _check_head(hidden, weight, bias, targets, row_scale)
    dev = hidden.device
    require("stats", stats, device=dev, dtypes=(torch.float32,), contiguous=True, shape=(n, 2))
    gradients = _Gradients(hidden, weight, bias, (True, True, True), interpret)
    chunks = _chunks(n, v, hidden.dtype, budget)
    buffers = _ChunkBuffers(chunks[0][1] if chunks else 0, v, hidden.dtype, dev)
    w_logits = _logits_operand(weight)
    bias = None if bias is None else bias.float()
    for r0, rows in chunks:
        logits, g = buffers.views(rows)
        _mm_float32(hidden[r0:r0 + rows], w_logits.T, out=logits)
        part = slice(r0, r0 + rows)
        softmax_grad(logits, bias, targets[part], stats[part], row_scale[part], out=g,
                     column_sums=gradients.column_sums, interpret=interpret)
        gradients.add(g, r0)
    return gradients.result()
