"""`mask_tokens`: Google's position count per row, no padding or special ids, the 85/0/15 split (SPEC §2)."""
import pytest
import torch

from electra_fast import mask_tokens

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
    assert all(torch.equal(x, y) for x, y in zip(a, b))


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
