"""The fused generator head against the float64 reference (SPEC §4)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import electra_fast
from electra_fast import reference
from conftest import dtypes_for, interpreted
from helpers import assert_samples_match, head_inputs, rel_err


def _shapes(backend):
    if interpreted(backend):
        return [(1, 16, 7), (37, 24, 1031), (20, 32, 300)]
    return [(1, 16, 7), (37, 24, 1031), (300, 64, 2500), (203, 128, 30522)]


def _truth(hidden, weight, bias, targets, reduction, temperature=1.0, disallow_correct=False, seed=0):
    """Loss, gradients and samples of the reference in float64."""
    leaves = [t.detach().cpu().double().requires_grad_() for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    b = leaves[2] if bias is not None else None
    with electra_fast.use_backend("reference"):
        loss, sampled, predicted = electra_fast.generator_loss_and_sample(
            leaves[0], leaves[1], b, targets.cpu(), seed=seed, reduction=reduction, temperature=temperature,
            disallow_correct=disallow_correct)
    grads = torch.autograd.grad(loss.sum(), leaves)
    return loss.detach(), grads, sampled, predicted


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_float64_reference(target, reduction, with_bias, poisoned):
    backend, device = target
    for n, h, v in _shapes(backend):
        hidden, weight, bias, targets = head_inputs(n, h, v, device=device, bias=with_bias, ignored_every=5,
                                                    scale=3.0)
        seed = int(torch.randint(0, 2**62, ()))
        leaves = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
        loss, sampled, predicted = electra_fast.generator_loss_and_sample(
            leaves[0], leaves[1], leaves[2] if with_bias else None, targets, seed=seed, reduction=reduction)
        grads = torch.autograd.grad(loss.sum(), leaves)
        t_loss, t_grads, t_sampled, t_predicted = _truth(hidden, weight, bias, targets, reduction, seed=seed)

        assert loss.dtype == torch.float32 and loss.shape == t_loss.shape
        assert rel_err(loss.cpu(), t_loss) <= 1e-5, (n, h, v)
        for g, tg, leaf in zip(grads, t_grads, leaves):
            assert g.dtype == leaf.dtype
            assert rel_err(g.cpu(), tg) <= 1e-5, (n, h, v)
        logits = reference.head_logits(hidden.cpu().double(), weight.cpu().double(),
                                       None if bias is None else bias.cpu().double())
        assert_samples_match(sampled, t_sampled, logits, seed=seed)
        assert torch.equal(predicted.cpu(), t_predicted) or rel_err(
            logits.gather(1, predicted.cpu()[:, None]), logits.gather(1, t_predicted[:, None])) < 1e-6


@pytest.mark.parametrize("temperature", [0.5, 1.7])
@pytest.mark.parametrize("disallow_correct", [False, True])
def test_temperature_and_disallow_correct(target, temperature, disallow_correct):
    backend, device = target
    n, h, v = (24, 16, 700) if interpreted(backend) else (257, 48, 3001)
    hidden, weight, bias, targets = head_inputs(n, h, v, device=device, ignored_every=4, scale=4.0)
    # Make the target the likeliest id of some rows, so that excluding it matters.
    weight[targets[1::4].cpu()] = hidden[1::4].to(weight.dtype) * 0.5
    seed = int(torch.randint(0, 2**62, ()))
    loss, sampled, _ = electra_fast.generator_loss_and_sample(
        hidden, weight, bias, targets, seed=seed, temperature=temperature, disallow_correct=disallow_correct)
    loss_t1, *_ = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=seed)
    assert torch.equal(loss, loss_t1)  # temperature never changes the loss
    t_loss, _, t_sampled, _ = _truth(hidden, weight, bias, targets, "mean", temperature, disallow_correct, seed)
    assert rel_err(loss.cpu(), t_loss) <= 1e-5
    logits = reference.head_logits(hidden.cpu().double(), weight.cpu().double(), bias.cpu().double())
    assert_samples_match(sampled, t_sampled, logits, targets.cpu(), seed=seed, temperature=temperature,
                         disallow_correct=disallow_correct)
    if disallow_correct:
        valid = targets != -100
        assert not (sampled[valid] == targets[valid]).any()


@pytest.mark.parametrize("deterministic", [False, True])
def test_same_seed_same_sample_and_repeatable(target, deterministic):
    """Same inputs and seed: the same samples and loss; bit-identical gradients on the CPU, and on CUDA under
    torch.use_deterministic_algorithms(True) (atomics may change the last bits otherwise, SPEC §4)."""
    backend, device = target
    hidden, weight, bias, targets = head_inputs(33, 16, 513, device=device, scale=2.0, ignored_every=4)
    runs = []
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        for _ in range(2):
            leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
            loss, sampled, predicted = electra_fast.generator_loss_and_sample(*leaves, targets, seed=77)
            runs.append((loss, sampled, predicted, *torch.autograd.grad(loss, leaves)))
    finally:
        torch.use_deterministic_algorithms(previous)
    t_loss, t_grads, _, _ = _truth(hidden, weight, bias, targets, "mean", seed=77)
    for g, tg in zip(runs[0][3:], t_grads):
        assert rel_err(g.cpu(), tg) <= 1e-5
    if device.type == "cuda" and not deterministic:
        runs = [r[:3] for r in runs]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    _, other, _ = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=78)
    assert not torch.equal(other, runs[0][1])


def test_seed_none_follows_torch_manual_seed(target):
    _, device = target
    hidden, weight, bias, targets = head_inputs(16, 16, 300, device=device, scale=2.0)
    torch.manual_seed(5)
    a = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets)[1]
    torch.manual_seed(5)
    b = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets)[1]
    c = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets)[1]
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_seed_tensor_equals_int_seed(target):
    _, device = target
    hidden, weight, bias, targets = head_inputs(16, 16, 300, device=device, scale=2.0)
    a = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=2**40 + 3)[1]
    b = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=torch.tensor(2**40 + 3))[1]
    assert torch.equal(a, b)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored_and_empty(target, reduction):
    _, device = target
    for n in (0, 5):
        hidden, weight, bias, targets = head_inputs(n, 16, 40, device=device)
        targets = torch.full_like(targets, -100)
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        loss, sampled, predicted = electra_fast.generator_loss_and_sample(*leaves, targets, reduction=reduction)
        grads = torch.autograd.grad(loss.sum(), leaves)
        assert not loss.isnan().any() and (loss == 0).all()
        assert all((g == 0).all() for g in grads)
        assert sampled.shape == (n,) and ((sampled >= 0) & (sampled < 40)).all()


def test_non_contiguous_and_expanded_inputs(target):
    backend, device = target
    hidden, weight, bias, targets = head_inputs(30, 32, 600, device=device, scale=2.0)
    hidden_nc = torch.stack([hidden, -hidden], dim=2).reshape(30, 64)[:, ::2]  # strided
    weight_t = weight.T.contiguous().T  # column-major
    bias_x = bias[:1].expand(600)  # expanded
    targets_nc = torch.stack([targets, targets], 1)[:, 0]
    got = electra_fast.generator_loss_and_sample(hidden_nc, weight_t, bias_x, targets_nc, seed=3)
    want = electra_fast.generator_loss_and_sample(hidden.contiguous(), weight.contiguous(),
                                                  bias_x.contiguous(), targets.contiguous(), seed=3)
    assert rel_err(got[0], want[0]) <= 1e-6
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


def test_nonfinite_inputs_give_nan_loss_and_valid_ids(target):
    _, device = target
    hidden, weight, bias, targets = head_inputs(8, 16, 300, device=device)
    hidden[0, 0] = float("nan")
    hidden[1, 3] = float("inf")
    weight[5] = float("nan")  # every row has a NaN logit at id 5
    loss, sampled, predicted = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=1,
                                                                      reduction="none")
    assert loss.isnan().all()
    assert ((sampled >= 0) & (sampled < 300)).all() and ((predicted >= 0) & (predicted < 300)).all()
    assert (sampled != 5).all()  # NaN counts as -inf for the sampler


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_no_worse_than_eager(target, dtype):
    backend, device = target
    if dtype not in dtypes_for(backend):
        pytest.skip("the Triton interpreter runs float32 only")
    hidden, weight, bias, targets = head_inputs(64, 64, 1031, dtype=dtype, device=device, scale=3.0,
                                                ignored_every=6)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss, _, _ = electra_fast.generator_loss_and_sample(*leaves, targets)
    grads = torch.autograd.grad(loss, leaves)
    eager_leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    eager = F.cross_entropy(F.linear(*eager_leaves), targets, ignore_index=-100)
    eager_grads = torch.autograd.grad(eager, eager_leaves)
    t_loss, t_grads, _, _ = _truth(hidden, weight, bias, targets, "mean")
    assert loss.dtype == torch.float32
    assert rel_err(loss.cpu(), t_loss) <= rel_err(eager.float().cpu(), t_loss) + 1e-2
    for g, eg, tg, leaf in zip(grads, eager_grads, t_grads, leaves):
        assert g.dtype == dtype
        assert rel_err(g.cpu(), tg) <= rel_err(eg.cpu(), tg) + 1e-2


def test_mixed_dtypes_as_under_autocast(target):
    backend, device = target
    if interpreted(backend):
        pytest.skip("the Triton interpreter runs float32 only")
    hidden, weight, bias, targets = head_inputs(40, 32, 500, device=device, scale=2.0)
    leaves = [hidden.to(torch.bfloat16).requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()]
    loss, _, _ = electra_fast.generator_loss_and_sample(*leaves, targets)
    grads = torch.autograd.grad(loss, leaves)
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32]
    t_loss, t_grads, _, _ = _truth(leaves[0].detach(), weight, bias, targets, "mean")
    assert rel_err(loss.cpu(), t_loss) <= 1e-5
    assert all(rel_err(g.cpu(), tg) <= 1e-2 for g, tg in zip(grads, t_grads))


def test_float64_inputs_give_float64_loss(target):
    _, device = target
    hidden, weight, bias, targets = head_inputs(12, 16, 200, dtype=torch.float64, device=device)
    loss, _, _ = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets)
    t_loss, _, _, _ = _truth(hidden, weight, bias, targets, "mean")
    assert loss.dtype == torch.float64 and rel_err(loss.cpu(), t_loss) <= 1e-5


def test_triton_samples_do_not_depend_on_block_sizes(target):
    backend, device = target
    if backend != "triton":
        pytest.skip("block sizes are a Triton launcher setting")
    from electra_fast.kernels import generator_head, sampler

    hidden, weight, bias, targets = head_inputs(37, 32, 1031, device=device, ignored_every=5, scale=3.0)
    seed = torch.tensor([int(torch.randint(0, 2**62, ()))], device=device)
    results = []
    for head_blocks, sampler_blocks in (((16, 128, 16, 4), (1, 128, 16)), ((32, 512, 32, 4), (8, 256, 32))):
        stats, _, predicted, chunk_lse = generator_head.head_forward(
            hidden, weight, bias, targets, ignore_index=-100, temperature=0.8, disallow_correct=True,
            precision="ieee", interpret=interpreted(backend), blocks=head_blocks)
        sampled = sampler.sample(chunk_lse, seed, targets, -100, 0.8, True, 1031, hidden=hidden, weight=weight,
                                 bias=bias, interpret=interpreted(backend), blocks=sampler_blocks)
        results.append((stats, predicted, chunk_lse, sampled))
    (stats_a, pred_a, chunks_a, sampled_a), (stats_b, pred_b, chunks_b, sampled_b) = results
    assert torch.allclose(stats_a, stats_b, rtol=1e-5) and torch.allclose(chunks_a, chunks_b, rtol=1e-5)
    assert torch.equal(pred_a, pred_b)
    logits = reference.head_logits(hidden.cpu().double(), weight.cpu().double(), bias.cpu().double())
    assert_samples_match(sampled_a, sampled_b, logits, targets.cpu(), seed=int(seed), temperature=0.8,
                         disallow_correct=True)


@given(n=st.integers(0, 24), h=st.integers(1, 40), v=st.integers(2, 700), with_bias=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]), ignored_every=st.integers(0, 4),
       seed=st.integers(0, 2**63 - 1))
@settings(max_examples=30, deadline=None)
def test_cpp_matches_reference_on_any_shape(n, h, v, with_bias, reduction, ignored_every, seed):
    with electra_fast.use_backend("cpp"):
        hidden, weight, bias, targets = head_inputs(n, h, v, bias=with_bias, ignored_every=ignored_every, scale=3.0,
                                                    generator=torch.Generator().manual_seed(seed % 2**32))
        leaves = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
        loss, sampled, _ = electra_fast.generator_loss_and_sample(
            leaves[0], leaves[1], leaves[2] if with_bias else None, targets, seed=seed, reduction=reduction)
        grads = torch.autograd.grad(loss.sum(), leaves) if n else []
    t_loss, t_grads, t_sampled, _ = _truth(hidden, weight, bias, targets, reduction, seed=seed)
    # SPEC §4: no further from the float64 truth than eager PyTorch in float32, plus 1e-5 (confident rows of
    # tiny vocabularies make float32 itself lose digits: the loss is then a small difference of logits).
    eager_leaves = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
    eager = F.cross_entropy(F.linear(eager_leaves[0], eager_leaves[1], eager_leaves[2] if with_bias else None),
                            targets, reduction=reduction)
    eager_grads = torch.autograd.grad(eager.sum(), eager_leaves) if n else []
    def allowed(eager_value, truth):  # eager's mean over no row is NaN; ours is defined as 0
        err = rel_err(eager_value, truth)
        return 1e-5 + (err if math.isfinite(err) else 0.0)

    assert rel_err(loss, t_loss) <= allowed(eager, t_loss)
    for g, eg, tg in zip(grads, eager_grads, t_grads):
        assert rel_err(g, tg) <= allowed(eg, tg)
    logits = reference.head_logits(hidden.double(), weight.double(), None if bias is None else bias.double())
    assert_samples_match(sampled, t_sampled, logits, seed=seed)
