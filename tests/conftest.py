"""Shared fixtures. On a machine without CUDA the Triton kernels run through the interpreter: TRITON_INTERPRET
must be set before triton (and electra_fast) is imported, hence here."""
import os
import sys

import torch

# Test the installed package, never the source folder that `python -m pytest` puts first on sys.path: the source
# folder has neither the built C++ extension nor electra_fast.kernels (setup.py maps kernels/ there).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import electra_fast  # noqa: E402
from electra_fast.settings import TRITON_INTERPRET  # noqa: E402


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or TRITON_INTERPRET


def _targets():
    """(backend, device) pairs this machine can run."""
    found = [("cpp", "cpu")]
    if _triton_available():
        found.append(("triton", "cuda" if torch.cuda.is_available() else "cpu"))
    return found


@pytest.fixture(params=_targets(), ids=lambda p: p[0])
def target(request):
    """A (backend, device) under test, selected for the duration of the test."""
    backend, device = request.param
    with electra_fast.use_backend(backend):
        yield backend, torch.device(device)


def interpreted(backend: str) -> bool:
    return backend == "triton" and TRITON_INTERPRET


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: on cores shared with other work, a second OpenMP thread only
    adds waits (10x seen in fine-tuning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def poisoned(monkeypatch):
    """Makes torch.empty / empty_like return poisoned memory (NaN, or -7 for integers) while the test runs, so
    that an output element a kernel forgets to write shows up."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan") if t.dtype.is_floating_point else (True if t.dtype == torch.bool else -7))

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(real_empty_like(*a, **k)))


def pytest_configure(config):
    # The interpreter evaluates log(0) of masked-off lanes in numpy; the kernels discard those values.
    config.addinivalue_line("filterwarnings", "ignore:divide by zero encountered in log:RuntimeWarning")
