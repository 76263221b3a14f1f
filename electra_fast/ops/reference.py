"""The definition: every op of contract §2 and the sampler of §3 in plain PyTorch.

The kernels are checked against these functions, so they favour being obviously right over being fast:
they materialise the [N, V] logits. Float inputs are computed in float32 (float64 stays float64). No
argument checking happens here; the public API (`electra_fast.ops.api`) does it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 128  # contract §3: canonical sampler chunk

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any float input is float64, else float32 (contract §2: internal math is float32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


# --------------------------------------------------------------------------------------------------------
# Philox4x32-10 in int64 tensor arithmetic (every value kept in [0, 2^32)).


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of a * b for a constant a and a tensor b of 32-bit values, without
    overflowing int64 (b is split into 16-bit halves)."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    t = a * b_lo  # < 2^48
    u = a * b_hi + (t >> 16)  # < 2^49
    return u >> 16, ((u & 0xFFFF) << 16) | (t & 0xFFFF)


def philox4x32_10(seed: torch.Tensor, c0, c1, c2, c3) -> list[torch.Tensor]:
    """Philox4x32-10 of counters (c0, c1, c2, c3) under key (seed mod 2^32, seed >> 32 mod 2^32).

    seed: int64 tensor broadcastable to the counters, value in [0, 2^63). Counters: int64 tensors with values
    in [0, 2^32). Returns the four output words as int64 tensors of values in [0, 2^32).
    """
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0, c1, c2, c3 = torch.broadcast_tensors(*(torch.as_tensor(c, dtype=torch.int64) for c in (c0, c1, c2, c3)))
    for _ in range(10):
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W0) & _MASK32
        k1 = (k1 + _PHILOX_W1) & _MASK32
    return [c0, c1, c2, c3]


def uniform_from_words(words: torch.Tensor) -> torch.Tensor:
    """Triton's `uint_to_uniform_float`: the word read as int32, negatives folded by ~x, times 4.6566127342e-10
    in float32. Values in [0, 1 - 2^-24]."""
    x = torch.where(words >= 2**31, words - 2**32, words)
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def gumbel_noise(seed: torch.Tensor, rows: torch.Tensor, stream: int, j: torch.Tensor) -> torch.Tensor:
    """G(stream, j) of contract §3 for each (row, j) pair (broadcast), float32."""
    rows, j = torch.broadcast_tensors(rows, j)
    words = philox4x32_10(seed, j >> 2, rows, stream, 0)
    word = torch.stack(words, dim=-1).gather(-1, (j & 3).unsqueeze(-1)).squeeze(-1)
    return -torch.log(-torch.log(uniform_from_words(word)))


# --------------------------------------------------------------------------------------------------------
# Sampler and the generator head.


def sample_from_logits(logits: torch.Tensor, targets: torch.Tensor | None, seed: torch.Tensor, *,
                       temperature: float = 1.0, disallow_correct: bool = False,
                       ignore_index: int = -100) -> torch.Tensor:
    """contract §3: an exact sample of softmax(logits / temperature) per row by Gumbel-max over 128-id chunks.

    logits: [N, V] float. targets: [N] int64 or None. seed: 0-dim int64. Returns [N] int64.
    """
    n, v = logits.shape
    z = (logits / temperature).nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    rows = torch.arange(n, device=logits.device)
    excluded = torch.full((n,), -1, dtype=torch.int64, device=logits.device)
    if disallow_correct and targets is not None:
        excluded = torch.where(targets != ignore_index, targets, excluded)
        hit = excluded >= 0
        z = z.clone()
        z[rows[hit], excluded[hit]] = float("-inf")
    n_chunks = -(-v // CHUNK)
    padded = F.pad(z, (0, n_chunks * CHUNK - v), value=float("-inf")).view(n, n_chunks, CHUNK)
    chunk_lse = torch.logsumexp(padded, dim=-1)

    g0 = gumbel_noise(seed, rows[:, None], 0, torch.arange(n_chunks, device=z.device)[None, :])
    keys = (chunk_lse + g0).nan_to_num(nan=float("-inf"))
    chunk = keys.argmax(dim=-1)  # first maximum: ties go to the lowest index
    chunk_ok = keys.amax(dim=-1) > float("-inf")

    ids = chunk[:, None] * CHUNK + torch.arange(CHUNK, device=z.device)[None, :]
    g1 = gumbel_noise(seed, rows[:, None], 1, ids)
    keys = (padded[rows, chunk] + g1).nan_to_num(nan=float("-inf"))
    choice = ids.gather(1, keys.argmax(dim=-1, keepdim=True)).squeeze(1)
    ok = chunk_ok & (keys.amax(dim=-1) > float("-inf"))
    fallback = (excluded == 0).to(torch.int64)  # the lowest id that is allowed
    return torch.where(ok, choice, fallback)


def predicted_ids(logits: torch.Tensor) -> torch.Tensor:
    """Argmax per row, ties to the lowest id, NaN never the maximum. [N, V] -> [N] int64."""
    return logits.nan_to_num(nan=float("-inf")).argmax(dim=-1)


def reduce_rows(per_row: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """contract §2's reductions of per-row (or per-token) losses that are already 0 where not valid: "none" as is,
    "sum", or "mean" over the valid entries, 0 (never NaN) when there are none."""
    if reduction == "none":
        return per_row
    total = per_row.sum()
    return total if reduction == "sum" else total / valid.sum().clamp_min(1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    """Cross-entropy of logits [N, V] against targets [N], ignored rows 0, reduced as `reduce_rows`."""
    per_row = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
    return reduce_rows(per_row, targets != ignore_index, reduction)


def row_scale(grad_loss: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    """d loss / d per-row loss [N] for the upstream gradient grad_loss (0-dim, or [N] for "none"): 0 on
    ignored rows, 1 / n_valid for "mean"."""
    valid = targets != ignore_index
    g = grad_loss
    if reduction == "mean":
        g = g / valid.sum().clamp_min(1)
    return torch.where(valid, g.expand(targets.shape), torch.zeros((), dtype=g.dtype, device=g.device))


def cross_entropy_grad(logits: torch.Tensor, targets: torch.Tensor, grad_loss: torch.Tensor, ignore_index: int,
                       reduction: str) -> torch.Tensor:
    """d cross_entropy / d logits = (softmax(logits) - onehot(target)) * row_scale, [N, V] in logits' dtype."""
    scale = row_scale(grad_loss.to(logits.dtype), targets, ignore_index, reduction)
    grad = torch.softmax(logits, dim=-1)
    rows = torch.arange(targets.shape[0], device=logits.device)
    valid = targets != ignore_index
    grad[rows[valid], targets[valid]] -= 1
    return torch.where(valid[:, None], grad * scale[:, None], torch.zeros((), dtype=grad.dtype))


def sample_logits(logits: torch.Tensor, targets: torch.Tensor | None, seed: torch.Tensor, *,
                  temperature: float = 1.0, disallow_correct: bool = False, ignore_index: int = -100,
                  reduction: str = "mean"):
    """Loss (None without targets), samples and argmax of logits [N, V]. See `electra_fast.sample_logits`."""
    z = logits.to(compute_dtype(logits))
    loss = None if targets is None else cross_entropy(z, targets, ignore_index, reduction)
    with torch.no_grad():
        sampled = sample_from_logits(z, targets, seed, temperature=temperature,
                                     disallow_correct=disallow_correct, ignore_index=ignore_index)
        predicted = predicted_ids(z)
    return loss, sampled, predicted


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """hidden @ weight.T + bias in the compute dtype: [N, H], [V, H], [V] -> [N, V]."""
    dtype = compute_dtype(hidden, weight, bias)
    logits = hidden.to(dtype) @ weight.to(dtype).T
    return logits if bias is None else logits + bias.to(dtype)


def generator_loss_and_sample(hidden, weight, bias, targets, seed, *, temperature=1.0, disallow_correct=False,
                              ignore_index=-100, reduction="mean"):
    """The fused head's definition: logits at the masked rows, then `sample_logits`."""
    return sample_logits(head_logits(hidden, weight, bias), targets, seed, temperature=temperature,
                         disallow_correct=disallow_correct, ignore_index=ignore_index, reduction=reduction)


# --------------------------------------------------------------------------------------------------------
# REPLACE and the RTD loss.


def replace_(input_ids: torch.Tensor, positions: torch.Tensor, sampled: torch.Tensor,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """Writes sampled into input_ids [B, T] at flat positions [N] (only where valid [N] bool is True, when
    given); returns is_replaced [B, T] bool."""
    if valid is not None:
        positions, sampled = positions[valid], sampled[valid]
    flat = input_ids.reshape(-1)
    is_replaced = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    is_replaced.view(-1)[positions] = flat[positions] != sampled
    b, t = positions // input_ids.shape[1], positions % input_ids.shape[1]
    input_ids[b, t] = sampled
    return is_replaced


def rtd_loss(logits: torch.Tensor, is_replaced: torch.Tensor, attention_mask: torch.Tensor | None,
             reduction: str = "mean") -> torch.Tensor:
    """Sigmoid BCE per token weighted by attention_mask (1 everywhere when None); see `electra_fast.rtd_loss`."""
    x = logits.to(compute_dtype(logits))
    weight = torch.ones_like(x) if attention_mask is None else attention_mask.to(x.dtype)
    per_token = F.binary_cross_entropy_with_logits(x, is_replaced.to(x.dtype), reduction="none")
    per_token = torch.where(weight != 0, per_token * weight, torch.zeros_like(per_token))
    return reduce_rows(per_token, weight != 0, reduction)


def rtd_loss_grad(logits: torch.Tensor, is_replaced: torch.Tensor, attention_mask: torch.Tensor | None,
                  reduction: str = "mean") -> torch.Tensor:
    """d rtd_loss / d logits for a unit upstream gradient: w * (sigmoid(x) - y), / sum(w) for "mean"."""
    x = logits.to(compute_dtype(logits))
    weight = torch.ones_like(x) if attention_mask is None else attention_mask.to(x.dtype)
    grad = torch.where(weight != 0, weight * (torch.sigmoid(x) - is_replaced.to(x.dtype)), torch.zeros_like(x))
    return grad / weight.sum().clamp_min(1) if reduction == "mean" else grad
