"""The whole ELECTRA step as one graph: torch.compile(fullgraph=True) of the pretrainer's forward, whose
backward AOTAutograd compiles with it, for the built-in models and Hugging Face's ELECTRA classes; no read of a
tensor's value on the host with value checks off; on CUDA, the step replayed as CUDA graphs.

The compiled steps run on the "aot_eager" backend: graph capture (what a data-dependent shape or a host sync
breaks) is the same for every backend, and Inductor's C++ code generation of a whole step takes about a minute on
two cores; the benchmark compiles with Inductor."""
import contextlib
import copy

import pytest
import torch
from test_electra_pretrainer import CLS, MASK, SEP, V, _batch, _builtin, _hugging_face
from torch.utils._python_dispatch import TorchDispatchMode

import electra_fast

from helpers import flat_output


def _electra_15(**kw):
    return _builtin(rtd_tokens="masked", **kw)


def _mlm():
    torch.manual_seed(0)
    return electra_fast.MlmPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK,
                                                  special_token_ids=(CLS, SEP), num_layers=2, hidden_size=64,
                                                  num_heads=2, intermediate_size=128, embedding_size=32,
                                                  max_position_embeddings=64, dropout=0.0)


@contextlib.contextmanager
def value_checks(enabled: bool):
    """The ops' value checks on or off inside the block, on again after it (the default)."""
    electra_fast.set_value_checks(enabled)
    try:
        yield
    finally:
        electra_fast.set_value_checks(True)


@pytest.mark.parametrize("make", [_builtin, _hugging_face, _electra_15, _mlm])
def test_step_is_one_graph(make):
    torch._dynamo.reset()
    model = make()
    with value_checks(False):
        explained = torch._dynamo.explain(model)(*_batch())
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def _train(step, model, steps=2):
    """Losses, metrics and gradients of `steps` AdamW steps of `step` (model's forward, eager or compiled)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, mask = _batch()
    results = []
    for i in range(steps):
        torch.manual_seed(10 + i)
        out = step(ids, mask)
        opt.zero_grad()
        out.loss.backward()
        results.append((flat_output(out), [p.grad.clone() for p in model.parameters()
                                                          if p.grad is not None]))
        opt.step()
    return results, [p.detach().clone() for p in model.parameters()]


# Value checks off is the CUDA-graph configuration; on, the checks run inside the ops, which the graph calls.
@pytest.mark.parametrize("make, objective, checks", [(_builtin, "mle", True), (_builtin, "adversarial", False),
                                                     (_hugging_face, "mle", False),
                                                     (_hugging_face, "adversarial", True)])
def test_compiled_steps_equal_eager(make, objective, checks):
    eager = make(generator_objective=objective)
    with value_checks(checks):
        compiled = _assert_compiled_equals_eager(eager)
    assert torch.allclose(compiled.reward_baseline, eager.reward_baseline)


@pytest.mark.parametrize("make", [_electra_15, _mlm])
def test_compiled_baseline_objectives_equal_eager(make):
    _assert_compiled_equals_eager(make())


def _assert_compiled_equals_eager(eager):
    """Two training steps of a copy of `eager` compiled as one graph give its outputs, gradients and weights;
    returns the compiled copy."""
    torch._dynamo.reset()
    compiled = copy.deepcopy(eager)
    want, want_params = _train(eager, eager)
    got, got_params = _train(torch.compile(compiled, fullgraph=True, backend="aot_eager"), compiled)
    for (want_out, want_grads), (got_out, got_grads) in zip(want, got, strict=True):
        assert torch.allclose(got_out, want_out, rtol=1e-5, atol=1e-6)
        for g, w in zip(got_grads, want_grads, strict=True):
            assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)
    for g, w in zip(got_params, want_params, strict=True):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-6)
    return compiled


@pytest.mark.skipif(not hasattr(torch._dynamo.config, "trace_autograd_ops"),
                    reason="this torch's Dynamo cannot trace Tensor.backward()")
def test_step_with_its_backward_call_is_one_graph():
    # The step as a user writes it, loss.backward() inside: one graph where Dynamo traces autograd calls.
    eager = _builtin()
    compiled = copy.deepcopy(eager)
    ids, mask = _batch()

    def step_of(model):
        def step(ids, mask):
            out = model(ids, mask)
            out.loss.backward()
            return out.loss.detach()
        return step

    torch._dynamo.reset()
    with value_checks(False), torch._dynamo.config.patch(trace_autograd_ops=True):
        explained = torch._dynamo.explain(step_of(copy.deepcopy(eager)))(ids, mask)
        torch.manual_seed(3)
        got = torch.compile(step_of(compiled), fullgraph=True, backend="aot_eager")(ids, mask)
        torch.manual_seed(3)
        want = step_of(eager)(ids, mask)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(compiled.parameters(), eager.parameters(), strict=True):
        assert (g.grad is None) == (w.grad is None)
        assert g.grad is None or torch.allclose(g.grad, w.grad, rtol=1e-4, atol=1e-6)


class _HostReads(TorchDispatchMode):
    """Records the aten ops, outside the electra_fast custom ops (whose bodies run with the mode off), that read a
    tensor's values on the host: on CUDA, each a sync and a CUDA-graph capture error."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.masked_select.default, torch.ops.aten.equal.default, torch.ops.aten.is_nonzero.default}

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        indices = args[1] if func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default) else ()
        if func in self.READS or any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


# The built-in models only: Hugging Face's eager attention mask asks `padding_mask.all()` on the host (to skip the
# mask), a check it leaves out when compiling.
@pytest.mark.parametrize("objective", ["mle", "adversarial"])
def test_step_reads_no_tensor_values_on_the_host(objective):
    model = _builtin(generator_objective=objective)
    ids, mask = _batch()
    reads = _HostReads()
    with value_checks(False), reads:
        model(ids, mask).loss.backward()
    assert reads.found == []


def _cudagraph_counters() -> dict:
    """Inductor's counts of CUDA-graph skips (a compiled graph or a call that fell back to running its ops
    eagerly, `log_cudagraph_skip_and_bump_counter` and its silent siblings in torch 2.11 and 2.13) and of graph
    partitions (nodes that no CUDA graph can hold, split off to run eagerly between the graphs)."""
    from torch._dynamo.utils import counters

    return {name: counters["inductor"][name] for name in ("cudagraph_skips", "cudagraph_partitions")}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_equals_eager_and_makes_no_host_sync(monkeypatch):
    import torch._inductor.config as inductor_config
    from torch._inductor import cudagraph_trees

    # Count the replays: CUDAGraphNode.run_graph replays a recorded graph (its recording replays once through
    # another path, so a step that re-records counts none).
    replays = []
    real_run_graph = cudagraph_trees.CUDAGraphNode.run_graph

    def counted_run_graph(node):
        replays[-1] += 1
        return real_run_graph(node)

    monkeypatch.setattr(cudagraph_trees.CUDAGraphNode, "run_graph", counted_run_graph)
    torch._dynamo.reset()
    before = _cudagraph_counters()
    eager = _builtin().cuda()
    graphed = copy.deepcopy(eager)
    replay = torch.compile(graphed, fullgraph=True, mode="reduce-overhead")
    ids, mask = (t.cuda() for t in _batch())
    results = []
    # fallback_random: eager's random streams inside the graph. cudagraph_or_error: a skip that Inductor logs
    # raises with its reason instead of running the step's ops eagerly.
    with value_checks(False), inductor_config.patch({"fallback_random": True, "triton.cudagraph_or_error": True}):
        for model, step in ((eager, eager), (graphed, replay)):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            outputs = []
            for i in range(5):
                torch.manual_seed(10 + i)
                replays.append(0)
                # Steps 0 and 1 warm up and capture; the replays after them must not wait for the GPU.
                torch.cuda.set_sync_debug_mode("error" if step is replay and i >= 2 else "default")
                try:
                    torch.compiler.cudagraph_mark_step_begin()
                    out = step(ids, mask)
                    opt.zero_grad()
                    out.loss.backward()
                    opt.step()
                    outputs.append(flat_output(out))
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            results.append(torch.stack(outputs))
    after = _cudagraph_counters()
    assert after["cudagraph_skips"] == before["cudagraph_skips"], "Inductor skipped CUDA graphs: the ops ran eagerly"
    assert after["cudagraph_partitions"] == before["cudagraph_partitions"], (
        "Inductor split the step around nodes no CUDA graph can hold (CPU ops, device copies, cudagraph-unsafe "
        "ops): those run eagerly between the graphs")
    # Each step after warm-up (0) and recording (1) replays the forward's and the backward's graphs.
    assert replays[:5] == [0] * 5 and all(count >= 2 for count in replays[7:]), replays
    assert torch.allclose(results[1], results[0], rtol=1e-4, atol=1e-5)
