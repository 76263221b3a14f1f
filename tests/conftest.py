"""Shared fixtures. On a machine without CUDA the Triton kernels run through the interpreter: TRITON_INTERPRET
must be set before triton (and electra_fast) is imported, hence here."""
import os
import signal
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import electra_fast  # noqa: E402
from electra_fast.ops.settings import TRITON_INTERPRET  # noqa: E402


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
    if config.getoption("shard", None):
        config.pluginmanager.register(_Shard(config.getoption("shard")), "electra_fast_shard")
    if (config.getoption("per_test_timeout", None) or 0) < 0:
        raise pytest.UsageError(f"--per-test-timeout must be >= 0 seconds (0: none), got "
                                f"{config.getoption('per_test_timeout'):g}")


# The `gpu` marker, a per-test timeout, failures reported as they happen and shards: what `bench/gpu_check.py`
# runs a CUDA machine's test phase with (`pytest -m gpu --per-test-timeout S --shard K/N`). No plugin is needed:
# a lent GPU machine may have pytest alone.


def pytest_addoption(parser):
    parser.addoption("--per-test-timeout", type=float, default=None, metavar="S",
                     help="fail a test whose setup, call or teardown runs longer than S seconds (SIGALRM, so "
                          "POSIX only; 0: none) and go on with the next test")
    parser.addoption("--shard", default=None, metavar="K/N",
                     help="run only the K-th (1..N) of N contiguous parts of the selected tests, so that N processes "
                          "compile the Triton kernels in parallel")


class _Shard:
    """Keeps the K-th of N contiguous parts of the selected tests. trylast: after -m and -k have deselected (tests
    next to each other compile the same kernels, so contiguous parts share less work than interleaved ones)."""

    def __init__(self, spec: str):
        try:
            self.k, self.n = (int(part) for part in spec.split("/"))
        except ValueError:
            raise pytest.UsageError(f"--shard must be K/N, got {spec!r}") from None
        if not 1 <= self.k <= self.n:
            raise pytest.UsageError(f"--shard K/N needs 1 <= K <= N, got {spec!r}")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        first, end = (self.k - 1) * len(items) // self.n, self.k * len(items) // self.n
        config.hook.pytest_deselected(items=items[:first] + items[end:])
        items[:] = items[first:end]


class PerTestTimeout(BaseException):
    """Raised inside a test that runs past --per-test-timeout. A BaseException, so that a test's or a library's
    `except Exception` cannot swallow it; pytest reports it as the test's failure and continues."""


def _under_alarm(item, when: str):
    """A hookwrapper body: arms SIGALRM for --per-test-timeout seconds around one phase of a test."""
    seconds = item.config.getoption("per_test_timeout")
    if not seconds:
        yield
        return

    def expire(signum, frame):
        raise PerTestTimeout(f"{when} ran past --per-test-timeout {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _under_alarm(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _under_alarm(item, "test")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield from _under_alarm(item, "teardown")


def pytest_collection_modifyitems(config, items):
    """Marks `gpu` every test run with the Triton backend through the `target` fixture: on a CUDA machine these are
    the tests of the kernels on the GPU (the `cpp` ones run on the CPU wherever they are). Tests that use CUDA
    otherwise carry `@pytest.mark.gpu` themselves."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("target", ("",))[0] == "triton":
            item.add_marker(pytest.mark.gpu)


def pytest_runtest_logreport(report):
    """One line per failure the moment it happens, flushed, so that a run stopped at its time budget still names
    every failure so far (pytest's own summary comes only at the end)."""
    if not report.failed:
        return
    crash = getattr(report.longrepr, "reprcrash", None)
    reason = (getattr(crash, "message", None) or str(report.longrepr)).strip().splitlines()
    phase = "" if report.when == "call" else f" (in {report.when})"
    sys.stdout.write(f"\nFAILED NOW {report.nodeid}{phase}: {reason[0][:300] if reason else '?'}\n")
    sys.stdout.flush()
