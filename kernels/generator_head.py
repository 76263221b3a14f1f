"""The fused generator head on a GPU: the masked rows in chunks whose float32 logits (and their gradient) fit
the logits budget; per chunk, cuBLAS computes the logits, `sample_logits._fold_rows_kernel` folds them into the
loss, the argmax and the sampler's chunk log-masses (and, when the gradients are wanted, writes
(softmax - onehot) * row_scale in the input dtype), `sampler.sample` draws the samples from the same logits, and
cuBLAS turns the gradient tile into d hidden = G @ W and d weight += G.T @ h. Three matrix products in all
(6 N H V flops); everything else is a pass over a chunk that is still in cache or HBM.
"""
import functools

import torch

from ..tensor_checks import KERNEL_FLOATS, require
from . import configs
from .sample_logits import fold_rows, softmax_grad
from .sampler import sample


@functools.cache
def _float32_out(device: torch.device, dtype: torch.dtype) -> tuple[bool, bool]:
    """Whether this torch multiplies float16/bfloat16 matrices on `device` into a float32 result (torch >= 2.8 on
    CUDA: `mm(out_dtype=)`), and accumulates such a product into a float32 tensor in place (`addmm(out_dtype=,
    out=)`, refused by some versions). Asked once per device and dtype, on 2 x 2 matrices."""
    if device.type != "cuda":
        return False, False
    a = torch.ones(2, 2, dtype=dtype, device=device)
    acc = torch.zeros(2, 2, dtype=torch.float32, device=device)
    supported = []
    for product in (lambda: torch.mm(a, a, out_dtype=torch.float32),
                    lambda: torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)):
        try:
            supported.append(bool((product() == 2).all()))
        except (TypeError, RuntimeError, NotImplementedError):
            supported.append(False)
    return supported[0], supported[1] and bool((acc == 2).all())


def _mm_float32(a, b):
    """a @ b with a float32 result: float32 operands as they are (TF32 only where torch allows it), float16 and
    bfloat16 operands through cuBLAS with float32 output where torch offers it (no rounding of the logits to the
    input dtype, which would move samples), else upcast."""
    if a.dtype == b.dtype == torch.float32:
        return torch.mm(a, b)
    if a.dtype == b.dtype and _float32_out(a.device, a.dtype)[0]:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


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


def _add_gradients(g, hidden, weight, r0, grad_hidden, grad_weight, grad_bias):
    """Adds one chunk's gradient tile g [rows, V] into the three gradients (each None when not wanted)."""
    if grad_hidden is not None:
        torch.mm(g, weight, out=grad_hidden[r0:r0 + g.shape[0]])
    if grad_weight is not None:
        _addmm_float32_(grad_weight, g.T, hidden[r0:r0 + g.shape[0]])
    if grad_bias is not None:
        grad_bias += g.sum(0, dtype=torch.float32)


def _gradient_buffers(hidden, weight, bias, grads):
    dev = hidden.device
    return (torch.empty(hidden.shape, dtype=hidden.dtype, device=dev) if grads[0] else None,
            torch.zeros(weight.shape, dtype=torch.float32, device=dev) if grads[1] else None,
            torch.zeros(weight.shape[0], dtype=torch.float32, device=dev) if grads[2] and bias is not None else None)


def head_forward(hidden, weight, bias, targets, seed, row_scale, *, ignore_index, temperature, disallow_correct,
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
    grad_hidden, grad_weight, grad_bias = _gradient_buffers(hidden, weight, bias, grads)
    write_grad = any(grads)
    w_logits = _logits_operand(weight)
    for r0, rows in _chunks(n, v, hidden.dtype if write_grad else None, budget):
        logits = _mm_float32(hidden[r0:r0 + rows], w_logits.T)
        g = torch.empty(rows, v, dtype=hidden.dtype, device=dev) if write_grad else None
        chunk_targets = targets[r0:r0 + rows]
        chunk_stats, chunk_loss, chunk_predicted, chunk_lse = fold_rows(
            logits, bias, chunk_targets, ignore_index=ignore_index, temperature=temperature,
            disallow_correct=disallow_correct, grad=g, row_scale=row_scale[r0:r0 + rows], interpret=interpret)
        stats[r0:r0 + rows] = chunk_stats
        row_loss[r0:r0 + rows] = chunk_loss
        predicted[r0:r0 + rows] = chunk_predicted
        sample(logits, bias, chunk_lse, seed, chunk_targets, ignore_index=ignore_index, temperature=temperature,
               disallow_correct=disallow_correct, row_offset=r0, out=sampled[r0:r0 + rows], interpret=interpret)
        del logits  # the allocator reuses it for the next chunk
        if write_grad:
            _add_gradients(g, hidden, weight, r0, grad_hidden, grad_weight, grad_bias)
    return stats, row_loss, predicted, sampled, grad_hidden, grad_weight, grad_bias


def head_backward(hidden, weight, bias, targets, stats, row_scale, *, budget, interpret=False):
    """Gradients of the head's loss recomputing the logits chunk by chunk, from the forward's stats [N, 2] and
    row_scale [N] float32 (0 on ignored rows); inputs as for `head_forward`. Returns (grad_hidden [N, H] in
    hidden's dtype, grad_weight [V, H] float32, grad_bias [V] float32 | None)."""
    n, v = _check_head(hidden, weight, bias, targets, row_scale)
    require("stats", stats, device=hidden.device, dtypes=(torch.float32,), contiguous=True, shape=(n, 2))
    grad_hidden, grad_weight, grad_bias = _gradient_buffers(hidden, weight, bias, (True, True, True))
    w_logits = _logits_operand(weight)
    for r0, rows in _chunks(n, v, hidden.dtype, budget):
        logits = _mm_float32(hidden[r0:r0 + rows], w_logits.T)
        g = softmax_grad(logits, bias, targets[r0:r0 + rows], stats[r0:r0 + rows], row_scale[r0:r0 + rows],
                         out=torch.empty(rows, v, dtype=hidden.dtype, device=hidden.device), interpret=interpret)
        del logits
        _add_gradients(g, hidden, weight, r0, grad_hidden, grad_weight, grad_bias)
    return grad_hidden, grad_weight, grad_bias
