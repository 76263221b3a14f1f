"""The contract every backend keeps: six functions, written as a `typing.Protocol` that a backend module
satisfies (the test suite checks each backend against it).

Shapes: N rows (masked positions), H hidden size, V vocabulary, B x T tokens. Float inputs arrive as float16,
bfloat16, float32 or float64 (the reference keeps float64; the kernels compute in float32); ids are int64.
"stats" [N, 2] float32 are each row's softmax statistics (max, log sum exp(logits - max)), which the backward
uses. A backend returns floats in float32 (float64 for float64 inputs); the ops cast gradients to their inputs'
dtypes. Argument checks happen before a backend runs (the API checks shapes, dtypes and devices, the ops check
values); a backend checks only what its kernels rely on beyond that (contiguity, alignment).
"""
from __future__ import annotations

from typing import Optional, Protocol, Tuple, runtime_checkable

from torch import Tensor

GradsNeeded = Tuple[bool, bool, bool]  # (d hidden, d weight, d bias)


@runtime_checkable
class Backend(Protocol):
    GRADS_IN_FORWARD: bool  # whether generator_loss_and_sample computes the gradients it is asked for

    def generator_loss_and_sample(self, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
                                  seed: Tensor, temperature: float, disallow_correct: bool, ignore_index: int,
                                  reduction: str, grads: GradsNeeded) -> tuple:
        """The fused head: hidden [N, H], weight [V, H], bias [V] | None, targets [N], seed 0-dim int64.
        Returns (loss (0-dim, or [N] for "none"), sampled [N] int64, predicted [N] int64, stats [N, 2],
        grad_hidden [N, H] | None, grad_weight [V, H] | None, grad_bias [V] | None): the gradients of the loss
        for a unit upstream gradient, exactly those `grads` asks for (the ops ask only a backend whose
        GRADS_IN_FORWARD is True, only for reduction "mean" or "sum"), None for the others."""

    def generator_loss_and_sample_backward(self, grad_loss: Tensor, hidden: Tensor, weight: Tensor,
                                           bias: Optional[Tensor], targets: Tensor, stats: Tensor, ignore_index: int,
                                           reduction: str) -> tuple:
        """Gradients of the head's loss for upstream grad_loss (0-dim, or [N] for "none"), recomputing the
        logits: (grad_hidden [N, H], grad_weight [V, H], grad_bias [V] | None)."""

    def sample_logits(self, logits: Tensor, targets: Optional[Tensor], seed: Tensor, temperature: float,
                       disallow_correct: bool, ignore_index: int, reduction: str) -> tuple:
        """Loss (None without targets), sampled [N], predicted [N] and stats [N, 2] of logits [N, V]."""

    def sample_logits_backward(self, grad_loss: Tensor, logits: Tensor, targets: Tensor, stats: Tensor,
                               ignore_index: int, reduction: str) -> Tensor:
        """d loss / d logits [N, V] = (softmax - onehot(target)) * the row's share of grad_loss; 0 on ignored
        rows."""

    def replace_(self, input_ids: Tensor, positions: Tensor, sampled: Tensor, valid: Optional[Tensor]) -> Tensor:
        """Writes sampled [N] into input_ids [B, T] at flat positions [N] in place, skipping the slots whose
        valid [N] bool is False (none skipped when valid is None); returns is_replaced [B, T] bool (True where
        the id changed). Skipped slots are never read: their position may be anything."""

    def rtd_loss(self, logits: Tensor, is_replaced: Tensor, attention_mask: Optional[Tensor],
                    reduction: str) -> tuple:
        """The RTD loss of logits [B, T] and its gradient for a unit upstream gradient [B, T]."""
