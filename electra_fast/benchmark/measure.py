"""Timing and memory measurement (contract §5).

Every variant of one table is called round-robin, one call (on CUDA one `triton.testing.do_bench`) per variant
per round, so that drift hits all alike; a figure is the median over rounds. Peak memory: CUDA's
max_memory_allocated per variant; on the CPU the max RSS of a subprocess that runs that variant alone, minus its
RSS before the variant ran.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

import torch

CUDA_ROUND_MS = 25  # do_bench's repetition time per round: several calls of a head, at least one of a step


def error_summary(error: BaseException, width: int = 160) -> str:
    """`Type: first line of the message`, cut to `width` characters: one table cell."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= width else text[:width - 3] + "..."


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timer_of(device: torch.device):
    """fn -> seconds of one timed measurement: on CUDA do_bench's median of CUDA-event times (L2 flushed
    between calls); elsewhere, or without Triton, one call timed by the host clock."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
        if do_bench is not None:
            return lambda fn: do_bench(fn, warmup=1, rep=CUDA_ROUND_MS, return_mode="median") / 1e3

    def host_clock(fn):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    return host_clock


def time_variants(variants: dict, device: torch.device, warmup: int, repeats: int, progress=None,
                  failed: dict | None = None) -> dict:
    """Median seconds per call of each variant (name -> zero-argument callable), after `warmup` calls of each,
    over `repeats` interleaved rounds. A variant that raises during warm-up is left out of the timing and
    recorded in `failed` (name -> one-line reason) when given; without `failed` the error propagates."""
    runnable = {}
    for name, fn in variants.items():
        try:
            for _ in range(warmup):
                fn()
        except Exception as error:  # noqa: BLE001 - a kernel that cannot launch is a result, not a crash
            if failed is None:
                raise
            failed[name] = error_summary(error)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # what the failed call allocated
            continue
        runnable[name] = fn
    timed = _timer_of(device)
    times = {name: [] for name in runnable}
    for _ in range(repeats):
        for name, fn in runnable.items():
            times[name].append(timed(fn))
            if progress is not None:
                progress.update(1)
    return {name: statistics.median(ts) for name, ts in times.items()}


def gemm_flops_per_second(device: torch.device, dtype: torch.dtype, size: int = 8192) -> float:
    """The card's measured matrix-product rate: a [size, size] @ [size, size] torch.mm in `dtype` (float32 uses
    TF32 exactly when torch allows it, as the head's products do)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(device, dtype) for _ in range(2))
    seconds = time_variants({"mm": lambda: torch.mm(a, b)}, device, warmup=2, repeats=3)["mm"]
    return 2 * size**3 / seconds


# --------------------------------------------------------------------------------------------------------
# Memory


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Resets the kernel's high-water mark of this process's RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn, device: torch.device) -> float:
    """Extra peak memory of one call of fn: the CUDA allocator's peak over what was allocated before; on the
    CPU the growth of this process's peak RSS over its RSS before the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _reset_peak_rss()
    before = _status_mb("VmRSS")
    fn()
    return max(0.0, _status_mb("VmHWM") - before)


def probe_memory(cfg, table: str, variant: str) -> float | None:
    """Runs one variant of a table alone in a fresh process (`python -m electra_fast.benchmark`); returns its
    extra peak RSS in MB, or None where the subprocess failed."""
    payload = json.dumps({"config": asdict(cfg), "table": table, "variant": variant})
    # A fixed mmap threshold makes glibc return every large block to the OS when freed, so that the peak RSS
    # of the measured call is not hidden by memory the warm-up call left in the heap.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    try:
        out = subprocess.run([sys.executable, "-m", "electra_fast.benchmark", payload], capture_output=True,
                             text=True, timeout=900, check=True, env=env,
                             cwd=tempfile.gettempdir())  # not a source checkout, which `-m` would import
    except (subprocess.SubprocessError, OSError):
        return None
    return float(out.stdout.strip().splitlines()[-1])
