"""The package's structure: every backend keeps the contract, no module imports one that imports it back, and
the launchers check what their kernels rely on before handing them pointers."""
import ast
import importlib.util
import inspect
import pkgutil

import pytest
import torch

import electra_fast
from electra_fast.ops import backends
from electra_fast.ops.backends.base import Backend
from conftest import _targets


@pytest.mark.parametrize("name", ["reference"] + [backend for backend, _ in _targets()])
def test_every_backend_keeps_the_contract(name):
    impl = backends.get(name)
    assert isinstance(impl, Backend), name
    assert isinstance(impl.GRADS_IN_FORWARD, bool)
    for method in ("generator_loss_and_sample", "generator_loss_and_sample_backward", "sample_logits", "sample_logits_backward", "replace_", "rtd_loss"):
        want = [p for p in inspect.signature(getattr(Backend, method)).parameters if p != "self"]
        assert list(inspect.signature(getattr(impl, method)).parameters) == want, (name, method)


def _package_modules():
    """{dotted name: file} of every module of the installed package, kernels included."""
    import electra_fast.kernels  # shipped from its own folder (setup.py's package_dir)

    found = {}
    for package in (electra_fast, electra_fast.ops.backends, electra_fast.kernels):
        found[package.__name__] = package.__file__
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            spec = info.module_finder.find_spec(info.name)
            if not info.ispkg and spec is not None and spec.origin and spec.origin.endswith(".py"):
                found[info.name] = spec.origin
    return found


def _is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _imports(name, path, modules):
    """The package modules that `name` imports anywhere in its source (inside functions too)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base for alias in node.names]
        else:
            continue
        edges |= {t for t in targets if t in modules and t != name}
    return edges


def test_no_import_cycle_inside_the_package():
    modules = _package_modules()
    assert "electra_fast.kernels.sampler" in modules and "electra_fast.ops.backends.triton_backend" in modules
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_cpp_call_checks_its_arguments_and_writes_nothing():
    from electra_fast.ops.backends import cpp_backend

    ids = torch.arange(12).view(3, 4)
    before = ids.clone()
    with pytest.raises(TypeError, match="positions"):
        cpp_backend.replace_(ids, torch.tensor([1, 5], dtype=torch.int32), torch.tensor([7, 7]), None)
    with pytest.raises(TypeError, match="valid"):
        cpp_backend.replace_(ids, torch.tensor([1, 5]), torch.tensor([7, 7]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="g must be contiguous"):
        cpp_backend._backward_tile(torch.randn(4, 6)[:, ::2], 0, torch.zeros(4, dtype=torch.int64), -100,
                                   torch.zeros(4, 2), torch.ones(4))
    assert torch.equal(ids, before)


def test_triton_launcher_checks_its_arguments():
    pytest.importorskip("triton")
    from electra_fast.kernels import replace, sample_logits

    logits = torch.randn(5, 300)
    with pytest.raises(TypeError, match="targets"):
        sample_logits.fold_rows(logits, None, torch.zeros(5, dtype=torch.int32), ignore_index=-100,
                                temperature=1.0, disallow_correct=False)
    with pytest.raises(ValueError, match="bias"):
        sample_logits.fold_rows(logits, torch.zeros(299), torch.zeros(5, dtype=torch.int64), ignore_index=-100,
                                temperature=1.0, disallow_correct=False)
    ids = torch.arange(12).view(3, 4)
    with pytest.raises(ValueError, match="sampled"):
        replace.replace(ids, torch.tensor([1, 5]), torch.tensor([7]))
    assert torch.equal(ids, torch.arange(12).view(3, 4))
