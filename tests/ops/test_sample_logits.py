"""`sample_logits`: loss, gradient, samples and argmax of given logits against the float64 reference."""
import pytest
import torch
import torch.nn.functional as F

import electra_fast
from electra_fast.ops import backends, reference

from conftest import interpreted
from helpers import assert_samples_match, rel_err


def _logits(n, v, device, dtype=torch.float32):
    return (torch.randn(n, v) * 2.5).to(dtype=dtype, device=device)


def _errors_against_truth(device, backend, n, v, reduction):
    """(loss error, gradient error) of the backend under test against plain float64 autograd through the
    definitions (independent of any backend), after checking dtypes, samples and argmax."""
    return _errors_of(_logits(n, v, device), lambda leaf: leaf, reduction)


def _errors_of(leaf, view, reduction="mean"):
    """As `_errors_against_truth`, for the logits view(leaf) [N, V] (a layout of a leaf tensor), gradients taken
    with respect to the leaf."""
    leaf = leaf.requires_grad_()
    logits = view(leaf)
    n, v = logits.shape
    # Targets among the finite logits (a -inf target's loss is inf, in the truth too), every third row ignored.
    targets = torch.multinomial(torch.isfinite(logits.detach()).float(), 1).view(n).to(leaf.device)
    targets[::3] = -100
    seed = int(torch.randint(0, 2**62, ()))
    loss, sampled, predicted = electra_fast.sample_logits(logits, targets, seed=seed, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    truth_leaf = leaf.detach().cpu().double().requires_grad_()
    truth = view(truth_leaf)
    t_loss = reference.cross_entropy(truth, targets.cpu(), -100, reduction)
    (t_grad,) = torch.autograd.grad(t_loss.sum(), truth_leaf)
    t_sampled = reference.sample_from_logits(truth.detach(), targets.cpu(), torch.tensor(seed))
    assert grad.dtype == logits.dtype
    assert_samples_match(sampled, t_sampled, truth.detach(), seed=seed)
    assert torch.equal(predicted.cpu(), reference.predicted_ids(truth.detach()))
    return rel_err(loss.cpu(), t_loss), rel_err(grad.cpu(), t_grad)


@pytest.mark.parametrize("layout", ["transposed", "every other column", "one row expanded"])
def test_logits_of_any_layout(target, layout):
    _, device = target
    n, v = 19, 1031
    leaf, view = {"transposed": (torch.randn(v, n) * 2.5, lambda t: t.T),
                  "every other column": (torch.randn(n, 2 * v) * 2.5, lambda t: t[:, ::2]),
                  "one row expanded": (torch.randn(1, v) * 2.5, lambda t: t.expand(n, v))}[layout]
    loss_error, grad_error = _errors_of(leaf.to(device), view)
    assert loss_error <= 1e-5 and grad_error <= 1e-5, (loss_error, grad_error)


def test_logits_expanded_along_the_vocabulary(target):
    # Column stride 0: every id of a row has one logit (a gradient with respect to it is 0 in exact arithmetic,
    # so only the forward is compared). A kernel stepping by the id alone would read past the storage.
    _, device = target
    column = torch.randn(9, 1) * 2.5
    logits = column.to(device).expand(9, 700)
    targets = torch.randint(0, 700, (9,), device=device)
    loss, sampled, predicted = electra_fast.sample_logits(logits, targets, seed=5, reduction="none")
    truth = column.double().expand(9, 700)
    assert rel_err(loss.cpu(), reference.cross_entropy(truth, targets.cpu(), -100, "none")) <= 1e-6
    assert torch.equal(predicted.cpu(), torch.zeros(9, dtype=torch.int64))  # ties: the lowest id
    assert_samples_match(sampled, reference.sample_from_logits(truth, targets.cpu(), torch.tensor(5)), truth, seed=5)


@pytest.mark.parametrize("shift", [-100.0, 1000.0])
@pytest.mark.parametrize("v", [700, 1031])
def test_a_shift_of_every_logit_changes_nothing(target, shift, v):
    # Softmax and cross-entropy do not see a common shift; the kernels must not lose it in float32 either, nor
    # meet an exponential's overflow or underflow. The ragged last tile of V, and a chunk of -inf in the middle,
    # are where a fold's running sums meet -inf.
    _, device = target
    logits = torch.randn(19, v) * 2.5 + shift
    logits[:, 128:256] = float("-inf")
    loss_error, grad_error = _errors_of(logits.to(device), lambda leaf: leaf)
    assert loss_error <= 1e-5 and grad_error <= 1e-5, (loss_error, grad_error)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_float64_reference(target, reduction, poisoned):
    backend, device = target
    shapes = [(1, 7), (19, 1031)] if interpreted(backend) else [(1, 7), (19, 1031), (64, 30522)]
    for n, v in shapes:
        loss_error, grad_error = _errors_against_truth(device, backend, n, v, reduction)
        assert loss_error <= 1e-5 and grad_error <= 1e-5, (n, v, loss_error, grad_error)


def test_gradient_check_fails_when_a_backend_gradient_is_perturbed(target, monkeypatch):
    backend, device = target
    impl = backends.get(backend)
    backward = impl.sample_logits_backward
    monkeypatch.setattr(impl, "sample_logits_backward", lambda *args: backward(*args) * (1 + 1e-4))
    loss_error, grad_error = _errors_against_truth(device, backend, 19, 1031, "mean")
    assert loss_error <= 1e-5 < 5e-5 < grad_error


def test_without_targets(target):
    _, device = target
    logits = _logits(9, 300, device)
    loss, sampled, predicted = electra_fast.sample_logits(logits, seed=11)
    assert loss is None
    assert torch.equal(predicted, logits.argmax(-1))
    with electra_fast.use_backend("reference"):
        _, t_sampled, _ = electra_fast.sample_logits(logits.cpu().double(), seed=11)
    assert_samples_match(sampled, t_sampled, logits.cpu(), seed=11)


def test_ignored_rows_still_sampled(target):
    _, device = target
    logits = _logits(6, 50, device)
    targets = torch.full((6,), -100, device=device)
    loss, sampled, _ = electra_fast.sample_logits(logits, targets, seed=2)
    assert loss.item() == 0.0
    with electra_fast.use_backend("reference"):
        _, t_sampled, _ = electra_fast.sample_logits(logits.cpu(), targets.cpu(), seed=2)
    assert torch.equal(sampled.cpu(), t_sampled)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_no_worse_than_eager(target, dtype):
    backend, device = target
    logits = _logits(50, 1031, device, dtype).requires_grad_()
    targets = torch.randint(0, 1031, (50,), device=device)
    loss, _, _ = electra_fast.sample_logits(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    eager = F.cross_entropy(logits, targets)
    (eager_grad,) = torch.autograd.grad(eager, logits)
    truth = logits.detach().double().cpu().requires_grad_()
    t_loss = F.cross_entropy(truth, targets.cpu())
    (t_grad,) = torch.autograd.grad(t_loss, truth)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert rel_err(loss.cpu(), t_loss) <= rel_err(eager.float().cpu(), t_loss) + 1e-2
    assert rel_err(grad.cpu(), t_grad) <= rel_err(eager_grad.cpu(), t_grad) + 1e-2
