"""The torch ops themselves: registration, opcheck, torch.compile, backend selection and argument errors."""
import pytest
import torch
from torch import library

import electra_fast
from electra_fast.ops import settings

from helpers import head_inputs


def _head_args(device, backend, reduction, grads_in_forward):
    hidden, weight, bias, targets = head_inputs(9, 16, 200, device=device, ignored_every=4)
    leaves = [t.requires_grad_() for t in (hidden, weight, bias)]
    return (*leaves, targets, torch.tensor(5), 1.0, False, -100, reduction, backend, *(grads_in_forward,) * 3)


def test_ops_are_registered():
    for name in ("generator_loss_and_sample", "sample_logits", "replace_", "rtd_loss"):
        assert hasattr(torch.ops.electra_fast, name)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck(target, reduction):
    backend, device = target
    for grads_in_forward in (False, True):
        library.opcheck(torch.ops.electra_fast.generator_loss_and_sample.default,
                        _head_args(device, backend, reduction, grads_in_forward))
    logits = torch.randn(7, 130, device=device, requires_grad=True)
    targets = torch.randint(0, 130, (7,), device=device)
    library.opcheck(torch.ops.electra_fast.sample_logits.default,
                    (logits, targets, torch.tensor(3), 0.8, True, -100, reduction, backend))
    x = torch.randn(3, 5, device=device, requires_grad=True)
    labels = torch.rand(3, 5, device=device) < 0.3
    library.opcheck(torch.ops.electra_fast.rtd_loss.default, (x, labels, torch.ones_like(labels), reduction, backend))
    ids = torch.randint(0, 9, (3, 5), device=device)
    positions, sampled = torch.tensor([1, 4, -1, 9], device=device), torch.tensor([2, 2, 2, 2], device=device)
    library.opcheck(torch.ops.electra_fast.replace_.default, (ids, positions[[0, 1, 3]], sampled[:3], None, backend))
    library.opcheck(torch.ops.electra_fast.replace_.default,
                    (ids, positions, sampled, positions >= 0, backend))


def _step(hidden, weight, bias, targets, logits, labels, mask, seed):
    loss, sampled, predicted = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=seed)
    return loss + electra_fast.rtd_loss(logits, labels, mask), sampled, predicted


def test_torch_compile_fullgraph_matches_eager(target):
    _, device = target
    hidden, weight, bias, targets = head_inputs(12, 16, 300, device=device, ignored_every=5)
    logits = torch.randn(2, 6, device=device)
    labels = torch.rand(2, 6, device=device) < 0.3
    mask = torch.ones(2, 6, dtype=torch.bool, device=device)
    results = []
    for fn in (_step, torch.compile(_step, fullgraph=True)):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias, logits)]
        loss, sampled, predicted = fn(*leaves[:3], targets, leaves[3], labels, mask, torch.tensor(99))
        results.append((loss, sampled, predicted, *torch.autograd.grad(loss, leaves)))
    for eager, compiled in zip(*results, strict=True):
        assert torch.allclose(eager, compiled, rtol=1e-5, atol=1e-6)


def test_torch_compile_seed_none_and_value_checks(target):
    _, device = target
    hidden, weight, bias, targets = head_inputs(8, 16, 100, device=device)

    @torch.compile(fullgraph=True)
    def draw(t):
        return electra_fast.generator_loss_and_sample(hidden, weight, bias, t)[1]

    torch.manual_seed(0)
    a = draw(targets)
    torch.manual_seed(0)
    assert torch.equal(a, draw(targets))  # repeatable under torch.manual_seed
    with pytest.raises(ValueError, match="targets"):
        draw(torch.full_like(targets, 100))


def test_backend_selection(target):
    backend, device = target
    assert electra_fast.get_backend() == backend
    with electra_fast.use_backend("reference"):
        assert electra_fast.get_backend() == "reference"
    assert electra_fast.get_backend() == backend
    with pytest.raises(ValueError, match="backend"):
        electra_fast.set_backend("cuda")


def test_backend_that_cannot_run_the_tensors_raises():
    if torch.cuda.is_available():
        with electra_fast.use_backend("cpp"), pytest.raises(ValueError, match="cpp"):
            electra_fast.rtd_loss(torch.zeros(1, 2, device="cuda"), torch.zeros(1, 2, dtype=torch.bool, device="cuda"))
    if not settings.TRITON_INTERPRET:
        with electra_fast.use_backend("triton"), pytest.raises(ValueError, match="triton"):
            electra_fast.rtd_loss(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool))


def test_value_checks_can_be_turned_off(target):
    _, device = target
    hidden, weight, bias, targets = head_inputs(4, 16, 50, device=device)
    bad = torch.full_like(targets, 50)
    with pytest.raises(ValueError, match=r"targets must hold ids in \[0, 50\)"):
        electra_fast.generator_loss_and_sample(hidden, weight, bias, bad)
    electra_fast.set_value_checks(False)
    try:
        ids = torch.zeros(1, 4, dtype=torch.int64, device=device)
        electra_fast.replace_(ids, torch.tensor([2, 1], device=device), torch.tensor([5, 6], device=device))
    finally:
        electra_fast.set_value_checks(True)


H, V = 8, 30


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(hidden=torch.zeros(3, H, dtype=torch.int64)), TypeError, "hidden"),
    (dict(hidden=torch.zeros(3, H + 1)), ValueError, "weight"),
    (dict(hidden=torch.zeros(H)), ValueError, "hidden"),
    (dict(weight=torch.zeros(0, H), bias=None), ValueError, "empty vocabulary"),
    (dict(bias=torch.zeros(V + 1)), ValueError, "bias"),
    (dict(targets=torch.zeros(4, dtype=torch.int64)), ValueError, "targets"),
    (dict(targets=torch.zeros(3, dtype=torch.int32)), TypeError, "targets"),
    (dict(targets=torch.tensor([0, 1, V])), ValueError, "targets"),
    (dict(targets=torch.tensor([0, -1, 2])), ValueError, "targets"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2**63), ValueError, "seed"),
    (dict(seed=1.5), ValueError, "seed"),
    (dict(seed=torch.tensor([1, 2])), ValueError, "seed"),
    (dict(weight=torch.zeros(1, H), bias=None, targets=torch.zeros(3, dtype=torch.int64), disallow_correct=True),
     ValueError, "disallow_correct"),
])
def test_bad_head_arguments(kwargs, error, message):
    args = dict(hidden=torch.randn(3, H), weight=torch.randn(V, H), bias=torch.randn(V),
                targets=torch.tensor([0, 1, 2]))
    args.update(kwargs)
    extra = {k: args.pop(k) for k in ("temperature", "reduction", "seed", "disallow_correct") if k in args}
    with pytest.raises(error, match=message):
        electra_fast.generator_loss_and_sample(args["hidden"], args["weight"], args["bias"], args["targets"], **extra)


def test_mixed_devices_raise():
    meta = torch.randn(V, H, device="meta")
    with pytest.raises(ValueError, match="one device"):
        electra_fast.generator_loss_and_sample(torch.randn(3, H), meta, None, torch.tensor([0, 1, 2]))


def test_bad_sample_logits_and_rtd_arguments():
    with pytest.raises(ValueError, match="needs targets"):
        electra_fast.sample_logits(torch.randn(2, 5), disallow_correct=True)
    with pytest.raises(ValueError, match="targets"):
        electra_fast.sample_logits(torch.randn(2, 5), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="is_replaced"):
        electra_fast.rtd_loss(torch.randn(2, 5), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="is_replaced"):
        electra_fast.rtd_loss(torch.randn(2, 5), torch.zeros(2, 5))
    with pytest.raises(TypeError, match="positions"):
        electra_fast.replace_(torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="sampled"):
        electra_fast.replace_(torch.zeros(2, 5, dtype=torch.int64), torch.tensor([1, 2]), torch.tensor([1]))
