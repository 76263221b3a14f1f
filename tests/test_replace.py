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
