"""The package's structure: every backend keeps the contract, no module imports one that imports it back, the
features import one way (LAYERS), argparse lives in `cli` modules only, bad input has one base class and one exit
status, and the launchers check what their kernels rely on before handing them pointers."""
import ast
import importlib.util
import inspect
import pkgutil

import pytest
import torch

from electra_fast.ops import backends
from electra_fast.ops.backends.base import Backend

from conftest import _targets


@pytest.mark.parametrize("name", ["reference"] + [backend for backend, _ in _targets()])
def test_every_backend_keeps_the_contract(name):
    impl = backends.get(name)
    assert isinstance(impl, Backend), name
    assert isinstance(impl.GRADS_IN_FORWARD, bool)
    for method in ("generator_loss_and_sample", "generator_loss_and_sample_backward", "sample_logits",
                   "sample_logits_backward", "replace_", "rtd_loss"):
        want = [p for p in inspect.signature(getattr(Backend, method)).parameters if p != "self"]
        assert list(inspect.signature(getattr(impl, method)).parameters) == want, (name, method)


def _package_modules():
    """{dotted name: file} of every module of the installed package, every subpackage and kernels included."""
    import electra_fast.kernels  # shipped from its own folder (setup.py's package_dir)

    found = {}
    for package in (electra_fast, electra_fast.kernels):
        found[package.__name__] = package.__file__
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            spec = info.module_finder.find_spec(info.name)
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
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
    assert "electra_fast.pretraining.loop" in modules and "electra_fast.finetune.cli" in modules  # subpackages too
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


# The package's parts, lowest first: a part imports only parts of its own layer or below. "electra_fast" is the
# package's own __init__, the public API, which gathers the op stack, models, Hugging Face, data and pretraining.
LAYERS = (("errors", "locking", "files", "options", "schedule"),   # no feature: what every feature uses
          ("kernels", "ops"), ("models",), ("hf",), ("data",), ("pretraining",), ("electra_fast",), ("finetune",),
          ("benchmark",), ("cli", "__main__"))
# Known imports against LAYERS: the `check` command's checks (ops/numerics.py) time the benchmark's baselines.
UPWARD_EXCEPTIONS = {"electra_fast.ops.numerics"}
# argparse outside a `cli` module: the ops' own command-line tools (`python -m electra_fast.ops.X`).
ARGPARSE_EXCEPTIONS = {"electra_fast.ops.launch_limits", "electra_fast.ops.perf_model"}


def _part(module: str) -> str:
    """The part of the package that a module belongs to: electra_fast.pretraining.loop -> "pretraining"."""
    return module.split(".")[1] if "." in module else module


def test_the_parts_import_one_way():
    modules = _package_modules()
    layer = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
    assert {_part(name) for name in modules} == set(layer), "a part of the package missing from LAYERS"
    upward = []
    for name, path in modules.items():
        for imported in sorted(_imports(name, path, modules)):
            if layer[_part(imported)] > layer[_part(name)] and name not in UPWARD_EXCEPTIONS:
                upward.append(f"{name} -> {imported}")
    assert not upward, "imports against the layers (" + " < ".join("/".join(p) for p in LAYERS) + "): " + \
        ", ".join(upward)
    assert not any(_part(i) == "pretraining" for i in _imports("electra_fast.data.prepare",
                                                            modules["electra_fast.data.prepare"], modules))


def _imports_argparse(path: str) -> bool:
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import) and any(alias.name == "argparse" for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "argparse":
            return True
    return False


def test_argparse_only_in_cli_modules():
    modules = _package_modules()
    outside = sorted(name for name, path in modules.items()
                     if _imports_argparse(path) and not name.endswith(".cli") and name not in ARGPARSE_EXCEPTIONS)
    assert not outside, f"argparse outside a cli module: {outside}"
    assert _imports_argparse(modules["electra_fast.pretraining.cli"])  # the check sees an import where there is one


def test_bad_input_has_one_base_class_and_one_exit_status():
    from electra_fast import errors, locking
    from electra_fast.data.corpus import CorpusError
    from electra_fast.data.shards import DataError
    from electra_fast.finetune.data import FinetuneDataError
    from electra_fast.pretraining.checkpoint import CheckpointError
    from electra_fast.pretraining.plot import PlotError

    for error in (CorpusError, DataError, FinetuneDataError, CheckpointError, PlotError):
        assert issubclass(error, errors.BadInput) and issubclass(error, ValueError), error
    assert issubclass(locking.FolderInUse, OSError)  # the commands catch OSError beside BadInput
    assert errors.EXIT_BAD_INPUT == 2
    defined = []
    for name, path in _package_modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXIT_BAD_INPUT" for t in node.targets):
                defined.append(name)
    assert defined == ["electra_fast.errors"], defined


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
