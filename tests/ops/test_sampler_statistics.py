"""The sampler draws exactly from softmax(logits / T): chi-square over many rows with the same logits, and ids of
probability 0 (or the excluded target) are never drawn (contract §4)."""
import pytest
import torch

import electra_fast
from electra_fast.ops.numerics import chi_square_pvalue, sampler_logits

from conftest import interpreted


def _rows(backend):
    return 3000 if interpreted(backend) else 40000


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sample_logits_frequencies(target, temperature):
    backend, device = target
    v = 300 if interpreted(backend) else 1031  # several 128-id chunks, the last one short
    logits = torch.randn(v) * 1.5
    logits[logits.argsort()[-3:]] += 3.0  # a few likely ids spread over chunks
    n = _rows(backend)
    _, sampled, _ = electra_fast.sample_logits(logits.expand(n, v).to(device), temperature=temperature,
                                               seed=int(torch.randint(0, 2**62, ())))
    probs = torch.softmax(logits.double() / temperature, 0)
    assert chi_square_pvalue(sampled, probs) > 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sample_logits_frequencies_in_half_precision(target, dtype):
    # Logits where the dtype's spacing is 0.5 to 1 (the check's): the draws follow the softmax of the logits as
    # rounded to the dtype, which differs visibly from that of the float32 values before rounding.
    backend, device = target
    v = 300 if interpreted(backend) else 1031
    logits = sampler_logits(dtype, v, seed=int(torch.randint(0, 2**31, ())))  # every 7th id -inf
    n = _rows(backend)
    _, sampled, _ = electra_fast.sample_logits(logits.expand(n, v).to(device), temperature=0.6,
                                               seed=int(torch.randint(0, 2**62, ())))
    assert (sampled.cpu() % 7 != 0).all()
    assert chi_square_pvalue(sampled, torch.softmax(logits.double() / 0.6, 0)) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_head_frequencies_and_zero_probability(target, dtype):
    backend, device = target
    v, h = (260, 16) if interpreted(backend) else (1031, 32)
    n = _rows(backend)
    hidden_row = torch.randn(h).to(dtype)
    weight = (torch.randn(v, h) * 0.4).to(dtype)
    bias = torch.zeros(v, dtype=dtype)
    bias[::3] = float("-inf")  # probability 0
    hidden = hidden_row.expand(n, h)
    targets = torch.randint(0, v, (n,))
    _, sampled, _ = electra_fast.generator_loss_and_sample(hidden.to(device), weight.to(device), bias.to(device),
                                                           targets.to(device), seed=int(torch.randint(0, 2**62, ())))
    assert (sampled.cpu() % 3 != 0).all()
    # The truth from the inputs as rounded to the dtype; the head's logits are float32 products of them.
    probs = torch.softmax(weight.double() @ hidden_row.double() + bias.double(), 0)
    assert chi_square_pvalue(sampled, probs) > 1e-3


def test_disallow_correct_frequencies(target):
    backend, device = target
    v = 200 if interpreted(backend) else 700
    n = _rows(backend)
    logits = torch.randn(v)
    top = int(logits.argmax())
    logits[top] += 4.0  # the target dominates: excluding it reshapes the whole distribution
    targets = torch.full((n,), top)
    _, sampled, _ = electra_fast.sample_logits(logits.expand(n, v).to(device), targets.to(device),
                                               disallow_correct=True, seed=int(torch.randint(0, 2**62, ())))
    assert (sampled.cpu() != top).all()
    kept = logits.double().clone()
    kept[top] = float("-inf")
    assert chi_square_pvalue(sampled, torch.softmax(kept, 0)) > 1e-3


def test_only_the_target_has_mass_gives_lowest_other_id(target):
    _, device = target
    logits = torch.full((4, 9), float("-inf"))
    targets = torch.tensor([0, 3, 8, 0])
    logits[torch.arange(4), targets] = 1.0
    _, sampled, _ = electra_fast.sample_logits(logits.to(device), targets.to(device), disallow_correct=True, seed=4)
    assert sampled.cpu().tolist() == [1, 0, 0, 1]


def test_chi_square_pvalue_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    probs = torch.softmax(torch.randn(50, dtype=torch.float64), 0)  # float64: scipy checks the sums to 1.5e-8
    samples = torch.multinomial(probs, 3000, replacement=True)
    counts = torch.bincount(samples, minlength=50).double()
    expected = probs.double() * 3000
    keep = expected >= 5
    if expected[~keep].sum() >= 5:
        observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
        wanted = torch.cat([expected[keep], expected[~keep].sum()[None]])
        assert abs(chi_square_pvalue(samples, probs) - stats.chisquare(observed, wanted).pvalue) < 1e-9
    skewed = torch.zeros(3000, dtype=torch.long)  # everything in bin 0: rejected
    assert chi_square_pvalue(skewed, probs) < 1e-6
