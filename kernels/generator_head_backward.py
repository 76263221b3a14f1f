"""The fused generator head, backward: each (rows x vocabulary) tile of logits is recomputed and turned into
d loss / d logits = (softmax - onehot) * row_scale in registers, then multiplied into the gradients.

Two schedules. The default recomputes each tile once and adds its products into d hidden, d weight and d bias
with float32 atomics (one program per tile; the order of the additions, hence the last bits, may vary between
runs). Under torch.use_deterministic_algorithms(True) each output element is instead summed by one program in a
fixed order — d hidden per row block walking the vocabulary, d weight and d bias per vocabulary block walking the
rows — at the price of one recomputation of the logits per output and per H block of the output."""
import torch
import triton
import triton.language as tl

from .helpers import dot, logits_tile


@triton.jit
def _grad_logits_tile(hidden_ptr, stride_hn, stride_hk, weight_ptr, stride_wv, stride_wk, bias_ptr, targets_ptr,
                      stats_ptr, scale_ptr, rows, cols, N, V, H, HAS_BIAS: tl.constexpr, FP32: tl.constexpr,
                      PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                      BLOCK_H: tl.constexpr):
    """(softmax - onehot(target)) * row_scale for rows x cols, float32 [BLOCK_N, BLOCK_V]; 0 outside the
    tensors and on ignored rows (row_scale 0)."""
    row_ok = rows < N
    col_ok = cols < V
    acc = logits_tile(hidden_ptr, stride_hn, stride_hk, weight_ptr, stride_wv, stride_wk, bias_ptr, rows, cols, N, V,
                      H, HAS_BIAS, FP32, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
    row_max = tl.load(stats_ptr + rows * 2, mask=row_ok, other=0.0)
    log_sum = tl.load(stats_ptr + rows * 2 + 1, mask=row_ok, other=0.0)
    scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
    targets = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
    onehot = (cols[None, :] == targets[:, None]).to(tl.float32)
    g = (tl.exp((acc - row_max[:, None]) - log_sum[:, None]) - onehot) * scale[:, None]
    return tl.where((scale[:, None] != 0) & col_ok[None, :], g, 0.0)


@triton.jit
def _grad_hidden_kernel(hidden_ptr, stride_hn, stride_hk, weight_ptr, stride_wv, stride_wk, bias_ptr, targets_ptr,
                        stats_ptr, scale_ptr, grad_hidden_ptr, N, V, H, HAS_BIAS: tl.constexpr, FP32: tl.constexpr,
                        PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                        BLOCK_H: tl.constexpr, BLOCK_HO: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    ho = tl.program_id(1) * BLOCK_HO + tl.arange(0, BLOCK_HO)
    acc = tl.zeros([BLOCK_N, BLOCK_HO], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        g = _grad_logits_tile(hidden_ptr, stride_hn, stride_hk, weight_ptr, stride_wv, stride_wk, bias_ptr,
                              targets_ptr, stats_ptr, scale_ptr, rows, cols, N, V, H, HAS_BIAS, FP32, PRECISION,
                              BLOCK_N, BLOCK_V, BLOCK_H)
        w = tl.load(weight_ptr + cols[:, None] * stride_wv + ho[None, :] * stride_wk,
                    mask=(cols[:, None] < V) & (ho[None, :] < H), other=0.0)
        if FP32:
            w = w.to(tl.float32)
        else:
            g = g.to(w.dtype)
        acc = dot(g, w, acc, FP32, PRECISION)
    tl.store(grad_hidden_ptr + rows[:, None] * H + ho[None, :], acc, mask=(rows[:, None] < N) & (ho[None, :] < H))


@triton.jit
def _grad_weight_kernel(hidden_ptr, stride_hn, stride_hk, weight_ptr, stride_wv, stride_wk, bias_ptr, targets_ptr,
                        stats_ptr, scale_ptr, grad_weight_ptr, grad_bias_ptr, N, V, H, HAS_BIAS: tl.constexpr,
                        FP32: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HO: tl.constexpr):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    ho = tl.program_id(1) * BLOCK_HO + tl.arange(0, BLOCK_HO)
    acc = tl.zeros([BLOCK_V, BLOCK_HO], tl.float32)
    acc_bias = tl.zeros([BLOCK_V], tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        g = _grad_logits_tile(hidden_ptr, stride_hn, stride_hk, weight_ptr, stride_wv, stride_wk, bias_ptr,
                              targets_ptr, stats_ptr, scale_ptr, rows, cols, N, V, H, HAS_BIAS, FP32, PRECISION,
                              BLOCK_N, BLOCK_V, BLOCK_H)
        h = tl.load(hidden_ptr + rows[:, None] * stride_hn + ho[None, :] * stride_hk,
                    mask=(rows[:, None] < N) & (ho[None, :] < H), other=0.0)
        acc_bias += tl.sum(g, axis=0)
        if FP32:
            h = h.to(tl.float32)
        else:
            g = g.to(h.dtype)
        acc = dot(tl.trans(g), h, acc, FP32, PRECISION)
    ok = cols < V
    tl.store(grad_weight_ptr + cols[:, None] * H + ho[None, :], acc, mask=ok[:, None] & (ho[None, :] < H))
    if HAS_BIAS:
        if tl.program_id(1) == 0:
            tl.store(grad_bias_ptr + cols, acc_bias, mask=ok)


@triton.jit
def _grad_atomic_kernel(hidden_ptr, stride_hn, stride_hk, weight_ptr, stride_wv, stride_wk, bias_ptr, targets_ptr,
                        stats_ptr, scale_ptr, grad_hidden_ptr, grad_weight_ptr, grad_bias_ptr, N, V, H,
                        HAS_BIAS: tl.constexpr, FP32: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HO: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    g = _grad_logits_tile(hidden_ptr, stride_hn, stride_hk, weight_ptr, stride_wv, stride_wk, bias_ptr, targets_ptr,
                          stats_ptr, scale_ptr, rows, cols, N, V, H, HAS_BIAS, FP32, PRECISION, BLOCK_N, BLOCK_V,
                          BLOCK_H)
    if HAS_BIAS:
        tl.atomic_add(grad_bias_ptr + cols, tl.sum(g, axis=0), mask=col_ok)
    if FP32:
        g_dot = g
    else:
        g_dot = g.to(hidden_ptr.dtype.element_ty)
    for h0 in range(0, H, BLOCK_HO):
        ho = h0 + tl.arange(0, BLOCK_HO)
        ho_ok = ho < H
        w = tl.load(weight_ptr + cols[:, None] * stride_wv + ho[None, :] * stride_wk,
                    mask=col_ok[:, None] & ho_ok[None, :], other=0.0)
        h = tl.load(hidden_ptr + rows[:, None] * stride_hn + ho[None, :] * stride_hk,
                    mask=row_ok[:, None] & ho_ok[None, :], other=0.0)
        if FP32:
            w = w.to(tl.float32)
            h = h.to(tl.float32)
        dh = dot(g_dot, w, tl.zeros([BLOCK_N, BLOCK_HO], tl.float32), FP32, PRECISION)
        tl.atomic_add(grad_hidden_ptr + rows[:, None] * H + ho[None, :], dh, mask=row_ok[:, None] & ho_ok[None, :])
        dw = dot(tl.trans(g_dot), h, tl.zeros([BLOCK_V, BLOCK_HO], tl.float32), FP32, PRECISION)
        tl.atomic_add(grad_weight_ptr + cols[:, None] * H + ho[None, :], dw, mask=col_ok[:, None] & ho_ok[None, :])


def head_backward(hidden, weight, bias, targets, stats, row_scale, *, precision, interpret=False,
                  deterministic=None):
    """Gradients of the head's loss given the forward's stats [N, 2] and row_scale [N] (float32, 0 on ignored
    rows). Returns
    (grad_hidden [N, H], grad_weight [V, H], grad_bias [V] | None), float32. `deterministic` (default:
    torch.are_deterministic_algorithms_enabled()) picks the fixed-order schedule over the atomic one."""
    n, h = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    grad_hidden = torch.zeros(n, h, dtype=torch.float32, device=dev)
    grad_weight = torch.zeros(v, h, dtype=torch.float32, device=dev)
    grad_bias = None if bias is None else torch.zeros(v, dtype=torch.float32, device=dev)
    if n == 0:
        return grad_hidden, grad_weight, grad_bias
    fp32 = hidden.dtype != weight.dtype or hidden.dtype == torch.float32
    full_h = triton.next_power_of_2(max(h, 16))
    if interpret:
        block_n, block_v, block_h, block_ho, warps = 16, 256, full_h, full_h, 4
    else:  # float32 tiles take twice the registers: smaller ones keep them from spilling
        block_n, block_v, block_h, block_ho, warps = (32 if fp32 else 64), 128, 64, min(full_h, 64 if fp32 else 128), 8
    args = (hidden, *hidden.stride(), weight, *weight.stride(), bias if bias is not None else weight, targets, stats,
            row_scale)
    meta = dict(HAS_BIAS=bias is not None, FP32=fp32, PRECISION=precision, BLOCK_N=block_n, BLOCK_V=block_v,
                BLOCK_H=block_h, BLOCK_HO=block_ho, num_warps=warps)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    if not deterministic:
        _grad_atomic_kernel[(triton.cdiv(n, block_n), triton.cdiv(v, block_v))](
            *args, grad_hidden, grad_weight, grad_bias if grad_bias is not None else grad_weight, n, v, h, **meta)
        return grad_hidden, grad_weight, grad_bias
    h_blocks = triton.cdiv(h, block_ho)
    _grad_hidden_kernel[(triton.cdiv(n, block_n), h_blocks)](*args, grad_hidden, n, v, h, **meta)
    _grad_weight_kernel[(triton.cdiv(v, block_v), h_blocks)](
        *args, grad_weight, grad_bias if grad_bias is not None else grad_weight, n, v, h, **meta)
    return grad_hidden, grad_weight, grad_bias
