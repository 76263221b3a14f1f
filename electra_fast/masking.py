"""`mask_tokens`: which positions the generator fills (SPEC §2), in plain PyTorch."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor


class MaskedInputs(NamedTuple):
    masked_ids: Tensor  # [B, T] int64: the ids the generator sees
    positions: Tensor  # [N] int64: flat indices into input_ids.view(-1), strictly ascending
    targets: Tensor  # [N] int64: the original ids at positions


def _probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def mask_tokens(input_ids: Tensor, attention_mask: Optional[Tensor] = None, *, mask_token_id: int,
                mask_prob: float = 0.15, special_token_ids: Sequence[int] = (), mask_replace_prob: float = 0.85,
                random_token_prob: float = 0.0, vocab_size: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> MaskedInputs:
    """Chooses max(1, round_half_even(eligible * mask_prob)) positions per row, uniformly without duplicates,
    among tokens that are neither padding nor special (0 in a row with none eligible). Of those,
    `mask_replace_prob` become mask_token_id, `random_token_prob` a uniform id in [0, vocab_size), the rest keep
    their id. input_ids [B, T] int64; attention_mask [B, T] bool/0-1 or None."""
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
    device = input_ids.device

    eligible = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        eligible &= attention_mask != 0
    if len(special_token_ids):
        eligible &= ~torch.isin(input_ids, torch.tensor(list(special_token_ids), dtype=torch.int64, device=device))
    count = eligible.sum(dim=1)
    wanted = torch.round(count.to(torch.float64) * mask_prob).to(torch.int64).clamp_min(1)
    wanted = torch.minimum(wanted, count)

    # A uniform random subset of `wanted` eligible positions per row: the lowest random scores.
    scores = torch.rand(input_ids.shape, generator=generator, device=device)
    scores = scores.masked_fill(~eligible, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    selected = rank < wanted[:, None]
    positions = selected.view(-1).nonzero().squeeze(1)
    targets = input_ids.reshape(-1)[positions]

    action = torch.rand(positions.shape, generator=generator, device=device)
    new_ids = targets.clone()
    new_ids = torch.where(action < mask_replace_prob, torch.full_like(targets, mask_token_id), new_ids)
    if random_token_prob > 0:
        random_ids = torch.randint(0, vocab_size, positions.shape, generator=generator, device=device)
        use_random = (action >= mask_replace_prob) & (action < mask_replace_prob + random_token_prob)
        new_ids = torch.where(use_random, random_ids, new_ids)
    masked_ids = input_ids.clone()
    masked_ids.view(-1)[positions] = new_ids
    return MaskedInputs(masked_ids, positions, targets)
