"""`replace_`: in-place REPLACE and the labels (a sample equal to the original id is not a replacement)."""
import pytest
import torch

import electra_fast


def _case(device, b=3, t=11, v=20, n=9):
    ids = torch.randint(0, v, (b, t), device=device)
    positions = torch.randperm(b * t)[:n].sort().values.to(device)
    sampled = torch.randint(0, v, (n,), device=device)
    sampled[::3] = ids.view(-1)[positions[::3]]  # some samples equal the original
    return ids, positions, sampled


def test_matches_reference(target, poisoned):
    _, device = target
    ids, positions, sampled = _case(device)
    want_ids = ids.clone().cpu()
    with electra_fast.use_backend("reference"):
        want = electra_fast.replace_(want_ids, positions.cpu(), sampled.cpu())
    got = electra_fast.replace_(ids, positions, sampled)
    assert got.dtype == torch.bool
    assert torch.equal(got.cpu(), want) and torch.equal(ids.cpu(), want_ids)
    assert not got.view(-1)[positions[::3]].any()  # equal samples count as real
    assert got.sum() <= positions.numel()


def test_non_contiguous_input_ids(target):
    _, device = target
    base = torch.randint(0, 20, (11, 3), device=device)
    ids = base.T  # [3, 11], strided
    positions = torch.tensor([0, 4, 12, 30], device=device)
    sampled = torch.tensor([1, 2, 3, 4], device=device)
    expected = ids.contiguous()
    expected.view(-1)[positions] = sampled
    is_replaced = electra_fast.replace_(ids, positions, sampled)
    assert torch.equal(ids, expected) and torch.equal(base.T, expected)
    assert is_replaced.shape == (3, 11)


def test_empty(target):
    _, device = target
    ids = torch.randint(0, 5, (2, 4), device=device)
    before = ids.clone()
    empty = torch.empty(0, dtype=torch.int64, device=device)
    assert not electra_fast.replace_(ids, empty, empty).any()
    assert torch.equal(ids, before)


@pytest.mark.parametrize("positions, sampled, message", [
    ([0, 5, 5], [1, 2, 3], "ascending"),
    ([3, 1, 2], [1, 2, 3], "ascending"),
    ([0, 2, 99], [1, 2, 3], "positions"),
    ([0, -1, 2], [1, 2, 3], "positions"),
    ([0, 1, 2], [1, -2, 3], "sampled"),
])
def test_bad_values_write_nothing(target, positions, sampled, message):
    _, device = target
    ids = torch.randint(0, 20, (3, 11), device=device)
    before = ids.clone()
    with pytest.raises(ValueError, match=message):
        electra_fast.replace_(ids, torch.tensor(positions, device=device), torch.tensor(sampled, device=device))
    assert torch.equal(ids, before)


def _slots(device, b=3, t=11, v=20, p=4):
    """Fixed slots as mask_token_slots lays them out: per row the valid ones first, ascending, then unused slots
    whose position and sample are garbage (out of range, repeated, negative) that must be skipped unread."""
    ids = torch.randint(0, v, (b, t), device=device)
    counts = torch.tensor([p, 0, 2][:b])
    positions = torch.tensor([[-1, 10**6, 0, 0][:p]] * b)
    sampled = torch.full((b, p), -5)
    for row, count in enumerate(counts.tolist()):
        positions[row, :count] = row * t + torch.randperm(t)[:count].sort().values
        sampled[row, :count] = torch.randint(0, v, (count,))
    valid = torch.arange(p)[None, :] < counts[:, None]
    sampled[0, 0] = ids.view(-1)[positions[0, 0]]  # a sample equal to the original
    return ids, positions.view(-1).to(device), sampled.view(-1).to(device), valid.view(-1).to(device)


def test_valid_slots_match_reference_of_the_valid_ones(target, poisoned):
    _, device = target
    ids, positions, sampled, valid = _slots(device)
    want_ids = ids.clone().cpu()
    with electra_fast.use_backend("reference"):
        want = electra_fast.replace_(want_ids, positions.cpu()[valid.cpu()], sampled.cpu()[valid.cpu()])
    got = electra_fast.replace_(ids, positions, sampled, valid)
    assert torch.equal(got.cpu(), want) and torch.equal(ids.cpu(), want_ids)
    assert got.sum() >= 1 and not got.view(-1)[positions[0]]


def test_valid_slots_with_value_checks_off(target):
    _, device = target
    ids, positions, sampled, valid = _slots(device)
    expected = ids.clone()
    expected.view(-1)[positions[valid]] = sampled[valid]
    electra_fast.set_value_checks(False)
    try:
        electra_fast.replace_(ids, positions, sampled, valid)
    finally:
        electra_fast.set_value_checks(True)
    assert torch.equal(ids, expected)


def test_bad_valid_slots_write_nothing(target):
    _, device = target
    ids, positions, sampled, valid = _slots(device)
    before = ids.clone()
    unordered = positions.clone()
    unordered[0], unordered[1] = positions[1], positions[0]
    for bad_positions, bad_sampled, message in ((unordered, sampled, "ascending"),
                                                (positions, torch.where(valid, -3, sampled), "sampled")):
        with pytest.raises(ValueError, match=message):
            electra_fast.replace_(ids, bad_positions, bad_sampled, valid)
        assert torch.equal(ids, before)
    with pytest.raises(TypeError, match="valid"):
        electra_fast.replace_(ids, positions, sampled, valid.long())
    with pytest.raises(ValueError, match="valid"):
        electra_fast.replace_(ids, positions, sampled, valid[1:])
