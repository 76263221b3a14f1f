"""Which positions the generator fills (contract §2), in plain PyTorch, in two forms of one selection:

- `mask_token_slots`: Google's fixed `max_predictions_per_seq` slots per row, padded, so that every shape is
  static and nothing reads a tensor's values on the host (one graph under torch.compile, CUDA-graph capture);
- `mask_tokens`: the variable-length form of contract §2, the valid slots of the same selection, flat.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # targets of unused slots (the head's default ignore_index)
# What the masked positions become: (share [MASK], share a uniformly random id); the rest keep their id.
# ELECTRA's 85/0/15 (Google's code), BERT's 80/10/10.
MASKING_SPLITS = {"electra": (0.85, 0.0), "bert": (0.8, 0.1)}
UNUSED_POSITION = -1  # positions of unused slots


class MaskedInputs(NamedTuple):
    masked_ids: Tensor  # [B, T] int64: the ids the generator sees
    positions: Tensor  # [N] int64: flat indices into input_ids.view(-1), strictly ascending
    targets: Tensor  # [N] int64: the original ids at positions


class MaskedSlots(NamedTuple):
    masked_ids: Tensor  # [B, T] int64: the ids the generator sees
    positions: Tensor  # [B, P] int64: flat indices into input_ids.view(-1), ascending along each row's valid
    #                    slots, which come first; UNUSED_POSITION (-1) in unused slots
    targets: Tensor  # [B, P] int64: the original ids at positions; IGNORE_INDEX (-100) in unused slots
    valid: Tensor  # [B, P] bool: which slots hold a masked position


def _probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def check_max_predictions(max_predictions: Optional[int]) -> None:
    """None (the default P) or an int >= 1, else a ValueError."""
    if max_predictions is not None and (isinstance(max_predictions, bool) or not isinstance(max_predictions, int)
                                        or max_predictions < 1):
        raise ValueError(f"max_predictions must be None or an int >= 1, got {max_predictions!r}")


def default_max_predictions(seq_len: int, mask_prob: float) -> int:
    """ceil(mask_prob * seq_len), at least 1: never fewer slots than a row of seq_len eligible tokens masks
    (round_half_even(x) <= ceil(x)). The 1e-9 keeps float error (0.15 * 20 = 3.0000000000000004) from adding a
    slot."""
    return max(1, math.ceil(mask_prob * seq_len - 1e-9))


def mask_token_slots(input_ids: Tensor, attention_mask: Optional[Tensor] = None, *, mask_token_id: int,
                     mask_prob: float = 0.15, max_predictions: Optional[int] = None,
                     special_token_ids: Sequence[int] = (), mask_replace_prob: float = 0.85,
                     random_token_prob: float = 0.0, vocab_size: Optional[int] = None,
                     generator: Optional[torch.Generator] = None) -> MaskedSlots:
    """Masks min(max_predictions, max(1, round_half_even(eligible * mask_prob))) positions per row, uniformly
    without duplicates, among tokens that are neither padding nor special (none in a row with none eligible),
    into `max_predictions` slots per row (P, default `default_max_predictions(T, mask_prob)`, which never cuts a
    row's count). Of the masked, `mask_replace_prob` become mask_token_id, `random_token_prob` a uniform id in
    [0, vocab_size), the rest keep their id. No host sync, no data-dependent shape.

    input_ids [B, T] int64; attention_mask [B, T] bool/0-1 or None. Returns MaskedSlots with positions, targets
    and valid of shape [B, P]."""
    if not isinstance(input_ids, Tensor) or input_ids.dtype != torch.int64 or input_ids.dim() != 2:
        raise TypeError("input_ids must be a 2-D int64 tensor")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
    mask_prob = _probability("mask_prob", mask_prob)
    mask_replace_prob = _probability("mask_replace_prob", mask_replace_prob)
    random_token_prob = _probability("random_token_prob", random_token_prob)
    if mask_replace_prob + random_token_prob > 1.0 + 1e-9:
        raise ValueError("mask_replace_prob + random_token_prob must be at most 1")
    if random_token_prob > 0 and (vocab_size is None or vocab_size < 1):
        raise ValueError("random_token_prob > 0 needs vocab_size >= 1")
    check_max_predictions(max_predictions)
    batch, seq_len = input_ids.shape
    if max_predictions is None:
        max_predictions = default_max_predictions(seq_len, mask_prob)
    device = input_ids.device

    eligible = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        eligible &= attention_mask != 0
    for special in special_token_ids:  # compares, not isin: no host-made id tensor to copy during capture
        eligible &= input_ids != special
    count = eligible.sum(dim=1)
    wanted = torch.round(count.to(torch.float64) * mask_prob).to(torch.int64).clamp_min(1)
    wanted = torch.minimum(torch.minimum(wanted, count), torch.full_like(wanted, max_predictions))

    # A uniform random subset of `wanted` eligible positions per row: the lowest random scores (ineligible
    # tokens score 2, after every eligible one). Slots past T (P > T) stay unused.
    scores = torch.rand(input_ids.shape, generator=generator, device=device).masked_fill(~eligible, 2.0)
    lowest = scores.topk(min(max_predictions, seq_len), dim=1, largest=False).indices
    lowest = F.pad(lowest, (0, max_predictions - lowest.shape[1]), value=seq_len)
    slot = torch.arange(max_predictions, device=device)
    valid = slot < wanted[:, None]
    # Unused slots point at column T, past every real one, so sorting puts the valid slots first, ascending.
    columns = torch.where(valid, lowest, seq_len).sort(dim=1).values
    rows = torch.arange(batch, device=device)[:, None]
    positions = torch.where(valid, rows * seq_len + columns, UNUSED_POSITION)
    # Column T is a spare: unused slots read and write it, and it is cut off at the end.
    padded = F.pad(input_ids, (0, 1))
    originals = padded.gather(1, columns)
    targets = torch.where(valid, originals, IGNORE_INDEX)

    action = torch.rand(valid.shape, generator=generator, device=device)
    new_ids = torch.where(action < mask_replace_prob, mask_token_id, originals)
    if random_token_prob > 0:
        random_ids = torch.randint(0, vocab_size, valid.shape, generator=generator, device=device)
        use_random = (action >= mask_replace_prob) & (action < mask_replace_prob + random_token_prob)
        new_ids = torch.where(use_random, random_ids, new_ids)
    masked_ids = padded.scatter(1, columns, new_ids)[:, :seq_len].contiguous()
    return MaskedSlots(masked_ids, positions, targets, valid)


def mask_tokens(input_ids: Tensor, attention_mask: Optional[Tensor] = None, *, mask_token_id: int,
                mask_prob: float = 0.15, special_token_ids: Sequence[int] = (), mask_replace_prob: float = 0.85,
                random_token_prob: float = 0.0, vocab_size: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> MaskedInputs:
    """The variable-length form (contract §2): max(1, round_half_even(eligible * mask_prob)) positions per row,
    uniformly without duplicates, among tokens that are neither padding nor special (0 in a row with none
    eligible), as flat positions [N], strictly ascending, and their targets [N]. The valid slots of
    `mask_token_slots` with its default slot count, which cuts no row; the flattening syncs with the host (N
    depends on the data). input_ids [B, T] int64; attention_mask [B, T] bool/0-1 or None."""
    slots = mask_token_slots(input_ids, attention_mask, mask_token_id=mask_token_id, mask_prob=mask_prob,
                             special_token_ids=special_token_ids, mask_replace_prob=mask_replace_prob,
                             random_token_prob=random_token_prob, vocab_size=vocab_size, generator=generator)
    return MaskedInputs(slots.masked_ids, slots.positions[slots.valid], slots.targets[slots.valid])
