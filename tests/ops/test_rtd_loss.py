"""`rtd_loss`: weighted sigmoid BCE, forward and backward, against the float64 reference."""
import pytest
import torch
import torch.nn.functional as F

import electra_fast
from electra_fast.ops import backends

from helpers import rel_err


def _case(device, b=5, t=37, dtype=torch.float32, mask_dtype=torch.bool):
    logits = (torch.randn(b, t) * 3).to(dtype=dtype, device=device)
    labels = (torch.rand(b, t) < 0.2).to(device)
    mask = (torch.arange(t)[None, :] < torch.randint(1, t + 1, (b, 1))).to(device=device, dtype=mask_dtype)
    return logits, labels, mask


def _errors_against_truth(device, reduction, with_mask):
    """(loss error, gradient error) of the backend under test against float64 autograd through PyTorch's own
    BCE; asserts the dtype, the shape and the zeros at padding."""
    logits, labels, mask = _case(device)
    mask = mask if with_mask else None
    x = logits.clone().requires_grad_()
    loss = electra_fast.rtd_loss(x, labels, mask, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    truth = logits.cpu().double().requires_grad_()
    weight = torch.ones_like(truth) if mask is None else mask.cpu().double()
    per_token = F.binary_cross_entropy_with_logits(truth, labels.cpu().double(), weight=weight, reduction="none")
    t_loss = {"none": per_token, "sum": per_token.sum(), "mean": per_token.sum() / weight.sum()}[reduction]
    (t_grad,) = torch.autograd.grad(t_loss.sum(), truth)
    assert loss.dtype == torch.float32 and loss.shape == t_loss.shape
    if reduction == "none" and with_mask:
        assert (loss[~mask] == 0).all()
    return rel_err(loss.cpu(), t_loss), rel_err(grad.cpu(), t_grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_mask", [True, False])
def test_matches_float64_reference(target, reduction, with_mask, poisoned):
    _, device = target
    loss_error, grad_error = _errors_against_truth(device, reduction, with_mask)
    assert loss_error <= 1e-5 and grad_error <= 1e-5


def test_gradient_check_fails_when_a_backend_gradient_is_perturbed(target, monkeypatch):
    backend, device = target
    impl = backends.get(backend)
    forward = impl.rtd_loss
    monkeypatch.setattr(impl, "rtd_loss", lambda *args: (lambda loss, grad: (loss, grad * (1 + 1e-4)))(
        *forward(*args)))
    loss_error, grad_error = _errors_against_truth(device, "mean", True)
    assert loss_error <= 1e-5 < 5e-5 < grad_error


def test_integer_labels_and_mask(target):
    _, device = target
    logits, labels, mask = _case(device, mask_dtype=torch.int64)
    a = electra_fast.rtd_loss(logits, labels.long(), mask)
    b = electra_fast.rtd_loss(logits, labels, mask.bool())
    assert torch.equal(a, b)


def test_no_attended_token_gives_zero(target):
    _, device = target
    logits, labels, mask = _case(device)
    x = logits.clone().requires_grad_()
    loss = electra_fast.rtd_loss(x, labels, torch.zeros_like(mask))
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.item() == 0 and (grad == 0).all()
    empty = torch.empty(0, 4, device=device, requires_grad=True)
    loss = electra_fast.rtd_loss(empty, torch.empty(0, 4, dtype=torch.bool, device=device))
    assert loss.item() == 0


def test_extreme_and_nonfinite_logits(target):
    _, device = target
    logits = torch.tensor([[80.0, -80.0, 0.0, float("nan")]], device=device)
    labels = torch.tensor([[0, 1, 1, 0]], device=device)
    loss = electra_fast.rtd_loss(logits[:, :3], labels[:, :3].bool(), reduction="none")
    assert torch.allclose(loss.cpu(), torch.tensor([[80.0, 80.0, 0.6931472]]))
    assert electra_fast.rtd_loss(logits, labels.bool()).isnan()
    mask = torch.tensor([[1, 1, 1, 0]], device=device)
    assert electra_fast.rtd_loss(logits, labels.bool(), mask).isfinite()  # padding never counts


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(target, dtype):
    backend, device = target
    logits, labels, mask = _case(device, dtype=dtype)
    x = logits.clone().requires_grad_()
    loss = electra_fast.rtd_loss(x, labels, mask)
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    truth = logits.cpu().double()
    t_loss = F.binary_cross_entropy_with_logits(truth, labels.cpu().double(), weight=mask.cpu().double(),
                                                reduction="sum") / mask.sum().cpu()
    assert rel_err(loss.cpu(), t_loss) <= 1e-5


def test_bad_values(target):
    _, device = target
    logits, labels, mask = _case(device)
    with pytest.raises(ValueError, match="is_replaced"):
        electra_fast.rtd_loss(logits, labels.long() * 2, mask)
    with pytest.raises(ValueError, match="attention_mask"):
        electra_fast.rtd_loss(logits, labels, mask.long() - 1)
