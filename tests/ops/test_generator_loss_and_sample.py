"""The fused generator head against the float64 reference (contract §4)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import electra_fast
from electra_fast.ops import api, backends, reference

from conftest import interpreted
from helpers import assert_samples_match, head_inputs, rel_err


def _shapes(backend):
    if interpreted(backend):
        return [(1, 16, 7), (37, 24, 1031), (20, 32, 300)]
    return [(1, 16, 7), (37, 24, 1031), (300, 64, 2500), (203, 128, 30522)]


def _truth(hidden, weight, bias, targets, reduction, temperature=1.0, disallow_correct=False, seed=0):
    """Loss and gradients by plain float64 autograd through the definitions in electra_fast.ops.reference (no op, no
    backend: independent of what is under test), with the definition's samples and argmax."""
    leaves = [t.detach().cpu().double().requires_grad_()
              for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    targets = targets.cpu()
    logits = reference.head_logits(leaves[0], leaves[1], leaves[2] if bias is not None else None)
    loss = reference.cross_entropy(logits, targets, -100, reduction)
    grads = torch.autograd.grad(loss.sum(), leaves)
    with torch.no_grad():
        sampled = reference.sample_from_logits(logits, targets, torch.tensor(seed), temperature=temperature,
                                               disallow_correct=disallow_correct)
        predicted = reference.predicted_ids(logits)
    return loss.detach(), grads, sampled, predicted


def _errors_against_truth(device, n, h, v, reduction, with_bias):
    """Fresh inputs through the backend under test and through `_truth`: (loss error, [gradient errors]), after
    asserting dtypes, samples and argmax."""
    hidden, weight, bias, targets = head_inputs(n, h, v, device=device, bias=with_bias, ignored_every=5, scale=3.0)
    seed = int(torch.randint(0, 2**62, ()))
    leaves = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
    loss, sampled, predicted = electra_fast.generator_loss_and_sample(
        leaves[0], leaves[1], leaves[2] if with_bias else None, targets, seed=seed, reduction=reduction)
    grads = torch.autograd.grad(loss.sum(), leaves)
    t_loss, t_grads, t_sampled, t_predicted = _truth(hidden, weight, bias, targets, reduction, seed=seed)

    assert loss.dtype == torch.float32 and loss.shape == t_loss.shape
    assert all(g.dtype == leaf.dtype for g, leaf in zip(grads, leaves, strict=True))
    logits = reference.head_logits(hidden.cpu().double(), weight.cpu().double(),
                                   None if bias is None else bias.cpu().double())
    assert_samples_match(sampled, t_sampled, logits, seed=seed)
    assert torch.equal(predicted.cpu(), t_predicted) or rel_err(
        logits.gather(1, predicted.cpu()[:, None]), logits.gather(1, t_predicted[:, None])) < 1e-6
    return rel_err(loss.cpu(), t_loss), [rel_err(g.cpu(), tg) for g, tg in zip(grads, t_grads, strict=True)]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_float64_reference(target, reduction, with_bias, poisoned):
    backend, device = target
    for n, h, v in _shapes(backend):
        loss_error, grad_errors = _errors_against_truth(device, n, h, v, reduction, with_bias)
        assert loss_error <= 1e-5 and max(grad_errors) <= 1e-5, (n, h, v, loss_error, grad_errors)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradient_check_fails_when_a_backend_gradient_is_perturbed(target, monkeypatch, reduction):
    """The truth is independent of the backend under test: nudging that backend's gradients (in whichever pass
    computes them) by 1e-4 must fail the check above."""
    backend, device = target
    impl = backends.get(backend)
    forward, backward = impl.generator_loss_and_sample, impl.generator_loss_and_sample_backward

    def nudged_forward(*args):
        loss, sampled, predicted, stats, *grads = forward(*args)
        return (loss, sampled, predicted, stats, *(None if g is None else g * (1 + 1e-4) for g in grads))

    def nudged_backward(*args):
        return tuple(None if g is None else g * (1 + 1e-4) for g in backward(*args))

    monkeypatch.setattr(impl, "generator_loss_and_sample", nudged_forward)
    monkeypatch.setattr(impl, "generator_loss_and_sample_backward", nudged_backward)
    loss_error, grad_errors = _errors_against_truth(device, 20, 16, 300, reduction, True)
    assert loss_error <= 1e-5 and min(grad_errors) > 5e-5, grad_errors


def test_chunked_head_matches_one_chunk(target, poisoned, monkeypatch):
    """A logits budget that forces at least three ragged chunks of rows gives the truth's loss and gradients
    and the same samples (each row keeps its noise stream, from its offset in the call)."""
    backend, device = target
    n, h, v = 37, 16, 1031
    offsets = []
    if backend == "triton":
        from electra_fast.kernels import generator_loss_and_sample

        sample = generator_loss_and_sample.sample
        monkeypatch.setattr(generator_loss_and_sample, "sample",
                            lambda *a, **k: offsets.append(k["row_offset"]) or sample(*a, **k))
    previous = electra_fast.ops.settings.logits_budget()
    electra_fast.set_logits_budget(10 * v * 4)  # 10 rows of float32 logits; 5 when the gradient is written too
    try:
        for reduction in ("mean", "none"):
            offsets.clear()
            loss_error, grad_errors = _errors_against_truth(device, n, h, v, reduction, True)
            assert loss_error <= 1e-5 and max(grad_errors) <= 1e-5, (reduction, loss_error, grad_errors)
            if backend == "triton":
                assert len(offsets) >= 3 and offsets == sorted(set(offsets)) and offsets[0] == 0, offsets
    finally:
        electra_fast.set_logits_budget(previous)


def test_head_is_once_differentiable(target):
    _, device = target
    hidden, weight, bias, targets = head_inputs(6, 8, 50, device=device)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss, _, _ = electra_fast.generator_loss_and_sample(*leaves, targets)
    (grad_hidden,) = torch.autograd.grad(loss, leaves[0], create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad"):
        grad_hidden.sum().backward()
    loss, _, _ = electra_fast.generator_loss_and_sample(*leaves, targets)
    upstream = torch.ones((), device=device, requires_grad=True)
    (grad_hidden,) = torch.autograd.grad(loss, leaves[0], grad_outputs=upstream, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad_hidden.sum().backward()


def test_a_second_backward_through_the_head_is_refused_or_exact(target):
    """retain_graph: where the forward computed the gradients, the backward scales them in place, so a second
    backward must fail (autograd's check of saved tensors) rather than return them scaled twice."""
    backend, device = target
    hidden, weight, bias, targets = head_inputs(6, 8, 50, device=device)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss, _, _ = electra_fast.generator_loss_and_sample(*leaves, targets)
    first = torch.autograd.grad(3 * loss, leaves, retain_graph=True)
    try:
        second = torch.autograd.grad(3 * loss, leaves)
    except RuntimeError as e:
        assert backends.get(backend).GRADS_IN_FORWARD and "inplace operation" in str(e)
    else:
        assert not backends.get(backend).GRADS_IN_FORWARD
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


class _CreatedTensors(TorchDispatchMode):
    """Records (op, shape) of every tensor an op returns that shares no storage with the op's inputs."""

    def __init__(self):
        super().__init__()
        self.created = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        self.created += [(func, tuple(t.shape)) for t in tree_leaves(out)
                         if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs]
        return out


def _weight_sized_tensors_of_the_backward(hidden, weight, bias, targets, reduction):
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss, _, _ = electra_fast.generator_loss_and_sample(*leaves, targets, reduction=reduction)
    with _CreatedTensors() as spy:
        (3 * loss).sum().backward()
    truth = _truth(hidden, weight, bias, targets, reduction)[1]
    assert all(rel_err(leaf.grad.cpu(), 3 * g) < 1e-5 for leaf, g in zip(leaves, truth, strict=True))
    return [func for func, shape in spy.created if shape == tuple(weight.shape)]


def test_a_backward_after_forward_gradients_creates_no_weight_sized_tensor_and_a_recomputing_one_does(target):
    """Where the forward computed the gradients the backward only scales them, in place: no [V, H] tensor may be
    made (autograd used to materialise a zero gradient for the unused d weight output, a second [V, H]). With
    reduction "none" the backward recomputes, and the spy must see the d weight it writes."""
    backend, device = target
    hidden, weight, bias, targets = head_inputs(6, 8, 50, device=device)
    assert _weight_sized_tensors_of_the_backward(hidden, weight, bias, targets, "none")
    in_backward = _weight_sized_tensors_of_the_backward(hidden, weight, bias, targets, "mean")
    assert bool(in_backward) != backends.get(backend).GRADS_IN_FORWARD


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
    """Same inputs and seed: the same samples, and bit-identical loss and gradients run after run, with or
    without torch.use_deterministic_algorithms (every reduction has a fixed order; contract §4)."""
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
    for g, tg in zip(runs[0][3:], t_grads, strict=True):
        assert rel_err(g.cpu(), tg) <= 1e-5
    for a, b in zip(*runs, strict=True):
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


def test_seeds_are_made_on_the_inputs_device():
    # An int seed is filled in on the device and None is drawn there: a host-to-device copy inside a step cannot be
    # captured in a CUDA graph (torch.compile's "reduce-overhead" skips the graph instead).
    meta = torch.device("meta")
    assert api.resolve_seed(7, meta).device == meta and api.resolve_seed(None, meta).device == meta
    assert int(api.resolve_seed(2**63 - 1, torch.device("cpu"))) == 2**63 - 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a GPU")
@pytest.mark.parametrize("seed", [2**40 + 7, None])
def test_the_head_is_captured_in_a_cuda_graph_with_an_int_seed_or_none(seed):
    hidden, weight, bias, targets = head_inputs(300, 64, 2500, device="cuda", ignored_every=5)
    weight.requires_grad_()

    def step():
        loss, sampled, _ = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=seed)
        return torch.autograd.grad(loss, weight)[0], sampled

    electra_fast.set_value_checks(False)  # a value check is a host sync, refused in a capture
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            eager = step()  # warm-up: Triton compiles, cuBLAS makes its handles
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        graph.replay()
        first = [t.clone() for t in captured]
        graph.replay()
    finally:
        electra_fast.set_value_checks(True)
    if seed is not None:  # the same function of the inputs as eager, on every replay
        torch.testing.assert_close(first[0], eager[0])
        assert torch.equal(first[1], eager[1]) and torch.equal(captured[1], eager[1])
    else:  # each replay draws a new seed on the device
        assert not torch.equal(captured[1], first[1])


@pytest.mark.gpu
def test_triton_launches_run_under_the_inputs_device_guard(monkeypatch):
    pytest.importorskip("triton")
    from electra_fast.ops.backends import triton_backend

    assert triton_backend.device_guard(torch.device("cuda", 1)).idx == 1  # a CUDA device's own guard
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not interpreted("triton"):
        pytest.skip("the triton backend runs CUDA tensors, or CPU tensors under the interpreter")
    guarded = []
    real_guard = triton_backend.device_guard
    monkeypatch.setattr(triton_backend, "device_guard", lambda d: guarded.append(d) or real_guard(d))
    hidden, weight, bias, targets = head_inputs(5, 16, 300, device=device)
    with electra_fast.use_backend("triton"):
        weight.requires_grad_()
        loss, sampled, _ = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=1,
                                                                  reduction="none")  # backward recomputes
        loss.sum().backward()
        logits = (hidden @ weight.T).detach().requires_grad_()
        electra_fast.sample_logits(logits, targets, seed=1)[0].backward()
        ids = targets[None, :].clone()
        positions, new = torch.tensor([0, 3], device=device), torch.tensor([1, 2], device=device)
        replaced = electra_fast.replace_(ids, positions, new)
        electra_fast.rtd_loss(torch.randn(1, 5, device=device), replaced)
    # Every backend entry: the head's and sample_logits' forward and backward, replace_ and rtd_loss.
    assert guarded == [device] * 6, guarded


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_the_head_on_the_second_gpu_while_the_first_is_current():
    hidden, weight, bias, targets = head_inputs(37, 24, 1031, device="cuda:1", ignored_every=5, scale=3.0)
    with torch.cuda.device(0):
        loss, sampled, _ = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=3)
    t_loss, _, t_sampled, _ = _truth(hidden, weight, bias, targets, "mean", seed=3)
    assert loss.device == sampled.device == torch.device("cuda", 1)
    assert rel_err(loss.cpu(), t_loss) < 1e-5
    logits = reference.head_logits(hidden.cpu().double(), weight.cpu().double(), bias.cpu().double())
    assert_samples_match(sampled, t_sampled, logits, seed=3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored_and_empty(target, reduction, poisoned):
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
    bias = bias[:1].expand(600)  # expanded
    leaves = [torch.stack([hidden, -hidden], dim=2).reshape(30, 64)[:, ::2].detach().requires_grad_(),  # strided
              weight.T.contiguous().T.requires_grad_(),  # column-major
              bias.detach().requires_grad_()]
    assert not leaves[0].is_contiguous() and not leaves[1].is_contiguous() and leaves[2].stride() == (0,)
    targets_nc = torch.stack([targets, targets], 1)[:, 0]
    loss, sampled, predicted = electra_fast.generator_loss_and_sample(*leaves, targets_nc, seed=3)
    grads = torch.autograd.grad(loss, leaves)
    t_loss, t_grads, t_sampled, t_predicted = _truth(hidden, weight, bias, targets, "mean", seed=3)
    assert rel_err(loss.cpu(), t_loss) <= 1e-5
    assert all(rel_err(g.cpu(), t) <= 1e-5 for g, t in zip(grads, t_grads, strict=True))
    logits = reference.head_logits(hidden.cpu().double(), weight.cpu().double(), bias.cpu().double())
    assert_samples_match(sampled, t_sampled, logits, seed=3)
    assert torch.equal(predicted.cpu(), t_predicted)


def test_ignored_rows_get_exactly_zero_gradient_even_with_nan_logits(target):
    _, device = target
    hidden, weight, bias, targets = head_inputs(9, 16, 300, device=device, ignored_every=3)
    hidden[0] = float("nan")  # row 0 is ignored (every third row is)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss, sampled, _ = electra_fast.generator_loss_and_sample(*leaves, targets, seed=2)
    grad_hidden = torch.autograd.grad(loss, leaves[0])[0]  # (d weight is NaN, as in eager: 0 * NaN hidden)
    ignored = targets == -100
    assert torch.isfinite(loss) and torch.equal(grad_hidden[ignored], torch.zeros_like(grad_hidden[ignored]))
    t_loss, t_grads, _, _ = _truth(hidden[1:], weight, bias, targets[1:], "sum")  # row 0 left out
    n_valid = int((~ignored).sum())
    assert rel_err(loss.cpu(), t_loss / n_valid) <= 1e-5
    assert rel_err(grad_hidden[1:].cpu(), t_grads[0] / n_valid) <= 1e-5 and 0 <= int(sampled[0]) < 300


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
    for g, eg, tg in zip(grads, eager_grads, t_grads, strict=True):
        assert g.dtype == dtype
        assert rel_err(g.cpu(), tg) <= rel_err(eg.cpu(), tg) + 1e-2


def test_mixed_dtypes_as_under_autocast(target):
    backend, device = target
    hidden, weight, bias, targets = head_inputs(40, 32, 500, device=device, scale=2.0)
    leaves = [hidden.to(torch.bfloat16).requires_grad_(), weight.clone().requires_grad_(),
              bias.clone().requires_grad_()]
    loss, _, _ = electra_fast.generator_loss_and_sample(*leaves, targets)
    grads = torch.autograd.grad(loss, leaves)
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32]
    t_loss, t_grads, _, _ = _truth(leaves[0].detach(), weight, bias, targets, "mean")
    assert rel_err(loss.cpu(), t_loss) <= 1e-5
    # d weight and d bias come back in float32 from float32 math; d hidden is rounded to bfloat16 once.
    assert rel_err(grads[0].cpu(), t_grads[0]) <= 1e-2
    assert rel_err(grads[1].cpu(), t_grads[1]) <= 1e-5 and rel_err(grads[2].cpu(), t_grads[2]) <= 1e-5


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_the_head_in_the_autocast_dtype(target, autocast_dtype):
    """Under torch.autocast the head casts hidden, weight and bias as F.linear does: the result equals the head
    on inputs cast by hand, the loss stays float32, and each gradient reaches its float32 leaf."""
    backend, device = target
    hidden, weight, bias, targets = head_inputs(40, 32, 500, device=device, scale=2.0, ignored_every=7)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    with torch.autocast(device.type, dtype=autocast_dtype):
        loss, sampled, _ = electra_fast.generator_loss_and_sample(*leaves, targets, seed=4)
    grads = torch.autograd.grad(loss, leaves)
    cast = [t.to(autocast_dtype).requires_grad_() for t in (hidden, weight, bias)]
    want_loss, want_sampled, _ = electra_fast.generator_loss_and_sample(*cast, targets, seed=4)
    want_grads = torch.autograd.grad(want_loss, cast)
    assert loss.dtype == torch.float32 and torch.equal(loss, want_loss) and torch.equal(sampled, want_sampled)
    for g, want, leaf in zip(grads, want_grads, leaves, strict=True):
        assert g.dtype == leaf.dtype == torch.float32 and torch.equal(g, want.float())
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=False):  # outside autocast: float32 math
        loss_fp32, _, _ = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=4)
    t_loss, _, _, _ = _truth(hidden, weight, bias, targets, "mean")
    assert rel_err(loss_fp32.cpu(), t_loss) <= 1e-5 and not torch.equal(loss_fp32, loss)


def test_backends_agree_under_autocast(target):
    """Autocast casts the inputs once, in the public function; inside the op every backend computes the same
    function of them (the reference too, whose matmul autocast would otherwise round to bfloat16)."""
    backend, device = target
    hidden, weight, bias, targets = head_inputs(200, 32, 1031, device=device, scale=3.0, ignored_every=7)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss, sampled, _ = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=9)
        with electra_fast.use_backend("reference"):
            want_loss, want, _ = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets, seed=9)
    logits = reference.head_logits(*(t.to(torch.bfloat16).cpu().double() for t in (hidden, weight, bias)))
    assert_samples_match(sampled, want, logits, seed=9)
    assert rel_err(loss.cpu(), want_loss.cpu()) <= 1e-5


def test_float64_inputs_give_float64_loss(target):
    _, device = target
    hidden, weight, bias, targets = head_inputs(12, 16, 200, dtype=torch.float64, device=device, ignored_every=4)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss, _, _ = electra_fast.generator_loss_and_sample(*leaves, targets)
    grads = torch.autograd.grad(loss, leaves)
    t_loss, t_grads, _, _ = _truth(hidden, weight, bias, targets, "mean")
    assert loss.dtype == torch.float64 and rel_err(loss.cpu(), t_loss) <= 1e-5
    assert all(g.dtype == torch.float64 and rel_err(g.cpu(), t) <= 1e-5 for g, t in zip(grads, t_grads, strict=True))


def test_float16_gradients_survive_a_loss_scale(target):
    """Under a loss scaler the float16 gradient must not be formed before the scale is known: its entries,
    about 1 / (N V), are below float16's smallest number. No worse than eager float16, plus contract §4's 1e-2."""
    _, device = target
    n, h, v = 1024, 16, 30522
    hidden, weight, bias, targets = head_inputs(n, h, v, dtype=torch.float16, device=device, ignored_every=9)
    scale = 65536.0
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss, _, _ = electra_fast.generator_loss_and_sample(*leaves, targets)
    grads = [g / scale for g in torch.autograd.grad(loss * scale, leaves)]
    eager_leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    eager = F.cross_entropy(F.linear(*eager_leaves).float(), targets, ignore_index=-100)
    eager_grads = [g / scale for g in torch.autograd.grad(eager * scale, eager_leaves)]
    _, t_grads, _, _ = _truth(hidden, weight, bias, targets, "mean")
    for g, eg, tg in zip(grads, eager_grads, t_grads, strict=True):
        assert g.dtype == torch.float16 and rel_err(g.cpu(), tg) <= rel_err(eg.cpu(), tg) + 1e-2


def test_triton_samples_do_not_depend_on_block_sizes(target):
    backend, device = target
    if backend != "triton":
        pytest.skip("block sizes are a Triton launcher setting")
    from electra_fast.kernels import sample_logits, sampler

    hidden, weight, bias, targets = head_inputs(37, 32, 1031, device=device, ignored_every=5, scale=3.0)
    logits = hidden @ weight.T
    seed = torch.tensor([int(torch.randint(0, 2**62, ()))], device=device)
    results = []
    common = dict(ignore_index=-100, temperature=0.8, disallow_correct=True, interpret=interpreted(backend))
    for fold_config, sampler_config in ((dict(BLOCK_N=16, BLOCK_V=128, num_warps=4), dict(ROWS=1, BLOCK_C=128)),
                                        (dict(BLOCK_N=4, BLOCK_V=1024, num_warps=4), dict(ROWS=8, BLOCK_C=256))):
        stats, _, predicted, chunk_lse = sample_logits.fold_rows(logits, bias, targets, config=fold_config, **common)
        sampled = sampler.sample(logits, bias, chunk_lse, seed, targets, config=sampler_config, **common)
        results.append((stats, predicted, chunk_lse, sampled))
    (stats_a, pred_a, chunks_a, sampled_a), (stats_b, pred_b, chunks_b, sampled_b) = results
    assert torch.allclose(stats_a, stats_b, rtol=1e-5) and torch.allclose(chunks_a, chunks_b, rtol=1e-5)
    assert torch.equal(pred_a, pred_b)
    full = reference.head_logits(hidden.cpu().double(), weight.cpu().double(), bias.cpu().double())
    assert_samples_match(sampled_a, sampled_b, full, targets.cpu(), seed=int(seed), temperature=0.8,
                         disallow_correct=True)


@given(n=strategies.integers(0, 24), h=strategies.integers(1, 40), v=strategies.integers(2, 700),
       with_bias=strategies.booleans(),
       reduction=strategies.sampled_from(["mean", "sum", "none"]), ignored_every=strategies.integers(0, 4),
       seed=strategies.integers(0, 2**63 - 1))
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
    # contract §4: no further from the float64 truth than eager PyTorch in float32, plus 1e-5 (confident rows of
    # tiny vocabularies make float32 itself lose digits: the loss is then a small difference of logits).
    eager_leaves = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
    eager = F.cross_entropy(F.linear(eager_leaves[0], eager_leaves[1], eager_leaves[2] if with_bias else None),
                            targets, reduction=reduction)
    eager_grads = torch.autograd.grad(eager.sum(), eager_leaves) if n else []
    def allowed(eager_value, truth):  # eager's mean over no row is NaN; ours is defined as 0
        err = rel_err(eager_value, truth)
        return 1e-5 + (err if math.isfinite(err) else 0.0)

    assert rel_err(loss, t_loss) <= allowed(eager, t_loss)
    for g, eg, tg in zip(grads, eager_grads, t_grads if n else [], strict=True):  # n = 0: no gradient taken
        assert rel_err(g, tg) <= allowed(eg, tg)
    logits = reference.head_logits(hidden.double(), weight.double(), None if bias is None else bias.double())
    assert_samples_match(sampled, t_sampled, logits, seed=seed)
