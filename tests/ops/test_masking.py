"""`mask_tokens` and `mask_token_slots`: Google's position count per row, no padding or special ids, the
85/0/15 split (contract §2); the fixed slots of Google's max_predictions_per_seq."""
import itertools
import math

import pytest
import torch
from scipy.stats import chisquare

from electra_fast import mask_token_slots, mask_tokens

MASK, CLS, SEP, PAD = 103, 101, 102, 0


def _batch(b=64, t=50, v=1000):
    ids = torch.randint(200, v, (b, t))
    lengths = torch.randint(3, t + 1, (b,))
    attention = torch.arange(t)[None, :] < lengths[:, None]
    ids[:, 0] = CLS
    ids[torch.arange(b), lengths - 1] = SEP
    ids[~attention] = PAD
    return ids, attention


def test_counts_positions_and_targets():
    ids, attention = _batch()
    out = mask_tokens(ids, attention, mask_token_id=MASK, mask_prob=0.15, special_token_ids=(CLS, SEP, PAD))
    eligible = (attention & (ids != CLS) & (ids != SEP)).sum(1)
    expected = torch.round(eligible.double() * 0.15).long().clamp_min(1).minimum(eligible)
    rows = out.positions // ids.shape[1]
    assert torch.equal(torch.bincount(rows, minlength=ids.shape[0]), expected)
    assert (out.positions[1:] > out.positions[:-1]).all()
    assert torch.equal(out.targets, ids.view(-1)[out.positions])
    chosen = ids.view(-1)[out.positions]
    assert ((chosen != CLS) & (chosen != SEP) & (chosen != PAD)).all()
    assert attention.view(-1)[out.positions].all()
    unchanged = torch.ones(ids.numel(), dtype=torch.bool)
    unchanged[out.positions] = False
    assert torch.equal(out.masked_ids.view(-1)[unchanged], ids.view(-1)[unchanged])


def test_round_half_even():
    # 10 eligible tokens * 0.25 = 2.5 -> 2; 14 * 0.25 = 3.5 -> 4.
    ids = torch.arange(1, 15)[None, :].repeat(2, 1) + 200
    attention = torch.ones_like(ids, dtype=torch.bool)
    attention[0, 10:] = False
    out = mask_tokens(ids, attention, mask_token_id=MASK, mask_prob=0.25)
    assert torch.bincount(out.positions // 14, minlength=2).tolist() == [2, 4]


def test_replace_split_is_85_0_15_by_default_and_random_when_asked():
    ids, attention = _batch(b=400, t=128)
    g = torch.Generator().manual_seed(0)
    out = mask_tokens(ids, attention, mask_token_id=MASK, special_token_ids=(CLS, SEP), generator=g)
    new = out.masked_ids.view(-1)[out.positions]
    share_mask = (new == MASK).double().mean()
    assert abs(share_mask - 0.85) < 0.02
    assert torch.equal(new[new != MASK], out.targets[new != MASK])
    out = mask_tokens(ids, attention, mask_token_id=MASK, mask_replace_prob=0.5, random_token_prob=0.3,
                      vocab_size=1000, generator=g)
    new = out.masked_ids.view(-1)[out.positions]
    changed = (new != MASK) & (new != out.targets)
    assert abs(changed.double().mean() - 0.3) < 0.03


def test_rows_without_eligible_tokens_and_generator_repeatability():
    ids = torch.tensor([[CLS, SEP, PAD, PAD], [CLS, 300, 301, SEP]])
    attention = ids != PAD
    out = mask_tokens(ids, attention, mask_token_id=MASK, special_token_ids=(CLS, SEP))
    assert (out.positions // 4).tolist() == [1]
    a = mask_tokens(ids, attention, mask_token_id=MASK, generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, attention, mask_token_id=MASK, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_bad_arguments():
    ids, attention = _batch(b=2, t=5)
    with pytest.raises(ValueError, match="mask_prob"):
        mask_tokens(ids, attention, mask_token_id=MASK, mask_prob=1.5)
    with pytest.raises(ValueError, match="vocab_size"):
        mask_tokens(ids, attention, mask_token_id=MASK, random_token_prob=0.1)
    with pytest.raises(ValueError, match="attention_mask"):
        mask_tokens(ids, attention[:, :3], mask_token_id=MASK)
    with pytest.raises(TypeError, match="input_ids"):
        mask_tokens(ids.float(), attention, mask_token_id=MASK)


def test_slots_counts_positions_and_targets():
    ids, attention = _batch()
    b, t = ids.shape
    out = mask_token_slots(ids, attention, mask_token_id=MASK, mask_prob=0.15, special_token_ids=(CLS, SEP, PAD))
    p = math.ceil(0.15 * t)
    assert out.positions.shape == out.targets.shape == out.valid.shape == (b, p)
    eligible = (attention & (ids != CLS) & (ids != SEP)).sum(1)
    expected = torch.round(eligible.double() * 0.15).long().clamp_min(1).minimum(eligible)
    assert torch.equal(out.valid.sum(1), expected)  # the default P never cuts a row's count
    assert torch.equal(out.valid, torch.arange(p)[None, :] < expected[:, None])  # valid slots first
    chosen = out.positions[out.valid]
    assert (chosen[1:] > chosen[:-1]).all()  # ascending along the rows, rows in order
    assert torch.equal(chosen // t, torch.arange(b).repeat_interleave(expected))
    assert attention.view(-1)[chosen].all() and not torch.isin(ids.view(-1)[chosen], torch.tensor([CLS, SEP])).any()
    assert torch.equal(out.targets[out.valid], ids.view(-1)[chosen])
    assert (out.positions[~out.valid] == -1).all() and (out.targets[~out.valid] == -100).all()
    unchanged = torch.ones(ids.numel(), dtype=torch.bool)
    unchanged[chosen] = False
    assert torch.equal(out.masked_ids.view(-1)[unchanged], ids.view(-1)[unchanged])
    assert abs((out.masked_ids.view(-1)[chosen] == MASK).double().mean() - 0.85) < 0.1


def test_slots_of_rows_with_fewer_eligible_tokens_than_slots_and_with_none():
    ids = torch.tensor([[CLS, 300, 301, 302, 303, 304, 305, 306, 307, SEP],   # 8 eligible: cut to P = 3
                        [CLS, 400, SEP, 401, PAD, PAD, PAD, PAD, PAD, PAD],   # 2 eligible, both masked
                        [CLS, SEP, PAD, PAD, PAD, PAD, PAD, PAD, PAD, PAD]])  # none
    out = mask_token_slots(ids, ids != PAD, mask_token_id=MASK, mask_prob=1.0, max_predictions=3,
                           special_token_ids=(CLS, SEP), mask_replace_prob=1.0)
    assert out.valid.tolist() == [[True] * 3, [True, True, False], [False] * 3]
    assert out.positions[1].tolist() == [11, 13, -1] and out.targets[1].tolist() == [400, 401, -100]
    assert out.positions[2].tolist() == [-1] * 3 and out.targets[2].tolist() == [-100] * 3
    assert torch.equal(out.masked_ids[2], ids[2])
    assert (out.masked_ids == MASK).sum(1).tolist() == [3, 2, 0]
    wide = mask_token_slots(ids, ids != PAD, mask_token_id=MASK, mask_prob=1.0, max_predictions=12,
                            special_token_ids=(CLS, SEP))  # more slots than tokens: the rest unused
    assert wide.valid.sum(1).tolist() == [8, 2, 0] and wide.positions.shape == (3, 12)


@pytest.mark.parametrize("max_predictions", [None, 2])
def test_slots_choose_uniform_subsets(max_predictions):
    # 6 eligible tokens at mask_prob 0.5: 3 per row (C(6, 3) = 20 subsets, each 1/20), or 2 when P = 2
    # (C(6, 2) = 15): every subset of the row's count equally likely, as the variable form draws them.
    rows = 6000
    ids = torch.tensor([[CLS, 300, 301, 302, SEP, 303, 304, 305, SEP, PAD]]).repeat(rows, 1)
    eligible_columns = [1, 2, 3, 5, 6, 7]
    out = mask_token_slots(ids, ids != PAD, mask_token_id=MASK, mask_prob=0.5, max_predictions=max_predictions,
                           special_token_ids=(CLS, SEP), generator=torch.Generator().manual_seed(0))
    k = 3 if max_predictions is None else 2
    subsets = {s: i for i, s in enumerate(itertools.combinations(eligible_columns, k))}
    assert (out.valid.sum(1) == k).all()
    columns = (out.positions[:, :k] % ids.shape[1]).tolist()
    counts = torch.bincount(torch.tensor([subsets[tuple(c)] for c in columns]), minlength=len(subsets))
    assert chisquare(counts.numpy()).pvalue > 1e-3
    variable = mask_tokens(ids, ids != PAD, mask_token_id=MASK, mask_prob=0.5, special_token_ids=(CLS, SEP),
                           generator=torch.Generator().manual_seed(1))
    per_column = torch.bincount(variable.positions % ids.shape[1], minlength=ids.shape[1])[eligible_columns]
    assert chisquare(per_column.numpy()).pvalue > 1e-3  # the variable form: each eligible token 1/2 of rows


def test_bad_max_predictions():
    ids, attention = _batch(b=2, t=5)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_predictions"):
            mask_token_slots(ids, attention, mask_token_id=MASK, max_predictions=bad)
