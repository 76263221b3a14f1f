"""The whole verdict on a CUDA machine in one run of at most 8 minutes (one H100 or H200): the tests marked `gpu`
(the Triton kernels compiled on the card; four pytest processes, each test under a timeout), `electra-fast check`,
then the benchmarks: the ELECTRA-Small step at 128 x 128 in bf16, the head at Small and Base shapes in bf16 and
at Small in float32, the LLM-like head (N 8,192, H 4,096, V 128,256) in bf16. Each phase runs in its own process
group under its own time budget, so that one hang cannot eat the others; a phase that fails, runs past its
budget (plus the time the phases before it left unused) or is left no time ("out of time") fails the run, and so
does a phase whose Python packages are missing (found before any phase starts, each named).

    pip install --no-build-isolation --no-deps -e .      # a GPU machine whose Python already has torch and Triton
    python bench/gpu_check.py --out gpu_check_out         # exit 0: every phase passed
    python bench/gpu_check.py --dry-run --out dry_out     # every phase on the CPU with tiny shapes and budgets

Which tests run: a first pytest process collects every test module under tests/ (recursively, pytest's own
discovery) with `-m gpu --collect-only --continue-on-collection-errors`; the shards then run only the files that
hold a selected test. A module that fails to import (a package this machine lacks) is a failure named in the
summary, and cannot empty the phase: pytest would otherwise stop the whole collection at it. The dry run does the
same collection of the real tests/ on the CPU and runs the selected tests of DRY_RUN_MODULES (interpreted).

The out folder gets five files, each kept under 16 MiB, written as the run goes (a kill loses only what was not
yet printed): tests.log, check.log and benchmarks.log (each phase's output as it came), gpu_check.json (the
environment, every phase's status, seconds, budget and failures, every benchmark's report) and summary.txt (the
same as a table, the verdict last). The JSON and the summary are rewritten after each phase; a phase still
"running" or "pending" there means the run itself was stopped.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

STARTED = time.monotonic()  # the deadline counts from here, before torch's import

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The run stops here, counted from this script's first line. A lent GPU allows the script 480 s; the 10 s left
# cover Python's own start, the last phase's output drain (at most DRAIN_S) and the final summary. The dry run's
# budgets leave room for a CPU shared with other work (about 60 s on two cores of their own).
DEADLINE_S = {"gpu": 470, "dry-run": 300}
GRACE_S = 3  # a phase past its budget gets SIGINT (pytest writes its summary), then SIGKILL this much later
DRAIN_S = 1  # after a phase's process group ended, how long its output is still read before the reader stops
MIN_PHASE_S = 10  # a phase left less than this does not start: "out of time", a failure
# Budgets in seconds, (on the GPU, in the dry run); the benchmarks' are in BENCHMARKS. A budget is the time a phase
# is sure to get: run_all also gives it what the phases before it left unused of theirs (never the later phases'
# budgets), so a slow cold compile in a benchmark can use what the tests and the check did not need. GPU budgets,
# for one H100/H200 with 16 host cores (the host compiles Triton and Inductor kernels):
#   tests 135: the collection of every test module (~5-10 s: the modules imported once), then 4 shards of ~25 of
#     the ~100 gpu tests each: pytest's start (~8 s), the kernel variants each shard compiles one at a time
#     (~0.5 s each, ~40 a shard: ~20 s) and the tests on the card (~20 s): ~60 s expected, twice that budgeted
#     since a tests phase cut off loses the most; it comes first and has nothing earlier to borrow from.
#   check 70: Python and torch (~6 s); the float64 truth on the host CPU (Base: 19,660 x 768 x 30,522, ~3 TFLOP in
#     float64 per dtype: ~5 s on 16 cores, three dtypes); the head's kernels for three dtypes (~10-20 s where the
#     tests left them out of Triton's cache); the N*V >= 2^31 case (~5 s): ~45 s expected.
TESTS_S, CHECK_S = (135, 60), (70, 80)
PER_TEST_TIMEOUT_S = {"gpu": 90, "dry-run": 30}  # one test's setup, call or teardown (tests/conftest.py)
# pytest processes at once, each on its part of the tests: the Triton kernels compile on the host CPU, one at a
# time in a process, and a GPU machine has 16 cores. Never more shards than selected tests (an empty shard fails).
TEST_SHARDS = {"gpu": 4, "dry-run": 2}
TESTS_DIR = "tests"  # collected recursively: the layout may grow subfolders (tests/ops/, tests/pretraining/, ...)
COLLECT_TIMEOUT_S = 60  # the collection of the gpu tests, within the tests phase's budget (~10 s expected)
# The dry run runs, of the gpu tests it collected (the real selection), those of these modules (by file name,
# wherever they are under tests/): interpreted Triton takes seconds per kernel test, these take about one.
DRY_RUN_MODULES = ("test_rtd_loss.py",)
LOG_HEAD_BYTES, LOG_TAIL_BYTES = 6 << 20, 4 << 20  # a log keeps its first 6 MiB and its last 4 to 8 MiB: < 16 MiB
SUMMARY, RESULTS, REPORT = "summary.txt", "gpu_check.json", "benchmark_report.json"
SELECTION_PREFIX = "gpu-test-selection: "  # the collection child's last line: the selection as JSON

# The Python packages (import names) a phase cannot run without, looked up with importlib.util.find_spec before the
# first phase: a phase missing one fails up front with a line naming it, rather than in a traceback. (torch is not
# listed: this script imports it.) On CUDA every phase runs Triton kernels, and the tests are run by pytest; in the
# dry run the check and the benchmarks take the C++ backend, but the tests still run Triton, interpreted.
NEEDS = {"gpu": {"tests": ("pytest", "triton"), "check": ("triton",), "benchmark": ("triton",)},
         "dry-run": {"tests": ("pytest", "triton"), "check": (), "benchmark": ()}}
# Packages only some test modules use (pyproject's test and hf extras, as imported), absent from some GPU images:
# named up front, not a failure. A test that needs one skips; a test module that imports one at its top fails to
# collect, and the tests phase names it as a failure.
OPTIONAL_FOR_TESTS = ("hypothesis", "scipy", "sklearn", "matplotlib", "pyarrow", "zstandard", "seqeval",
                      "tensorboard", "transformers", "accelerate")

# name -> benchmark.Config overrides on CUDA (defaults there: batch 128 x 128, bf16), budget on the GPU, budget in
# the dry run. The child runs one part at a time, each first without its torch.compile baseline (seconds: our rows
# and eager's, saved at once), then whole with it; so a benchmark stopped at its budget keeps the parts it finished
# and electra-fast's rows of the part it was in. GPU budgets, each in a fresh process (Python, torch and the
# benchmark: ~6 s), Triton kernels mostly in the cache the tests and the check left:
#   step 100: the ops part (~5 s), the step without compile (4 models built, 3 variants timed: ~10 s), then
#     Inductor's cold compile of the ELECTRA-Small forward + backward (30-90 s on 16 cores) and the 4 variants
#     timed (~5 s): ~55-115 s. The largest budget: the largest compile.
#   head Small/Base bf16 35 each, Small fp32 30: the head without compile (~5 s), then Inductor's import (~5 s)
#     and two cold compiles of the eager head, forward (~5-10 s) and forward + backward (~10-15 s), at this
#     process's shapes (Inductor's cache is keyed on them): ~30-40 s. fp32's products take no bf16 path: 5 s less.
#   head LLM-like bf16 40: as the other heads (3 timed rounds, not 10), plus eager's ~0.1 s calls on 21 GB.
BENCHMARKS = {
    "step Small bf16": (dict(preset="small", dtype="bfloat16", parts=("ops", "step")), 100, 40),
    "head Small bf16": (dict(preset="small", head_rows=2458, dtype="bfloat16", parts=("head",)), 35, 20),
    "head Base bf16": (dict(preset="base", head_rows=19660, dtype="bfloat16", parts=("head",)), 35, 20),
    "head Small fp32": (dict(preset="small", head_rows=2458, dtype="float32", parts=("head",)), 30, 20),
    "head LLM-like bf16": (dict(head_rows=8192, head_hidden=4096, vocab_size=128256, dtype="bfloat16",
                                parts=("head",), repeats=3), 40, 20),
}
COMPILE_VARIANT = "compile"  # the torch.compile baseline's variant name in the benchmark's tables
CUDA_TIMING = dict(device="cuda", warmup=3, repeats=10)
# The dry run's sizes, over every benchmark's overrides: the same tables on the CPU in seconds, in float32 (most
# CPUs emulate bfloat16 matrix products, slowly).
DRY_RUN_SHAPES = dict(device="cpu", batch_size=1, seq_len=8, num_layers=1, head_rows=8, head_hidden=32,
                      vocab_size=128, dtype="float32", warmup=1, repeats=1, memory=False)
# Eager's extra memory at a head shape, bytes per logit: bf16 and float32 logits, their gradients, the noise
# (21 GB measured at the LLM-like shape on an H200).
EAGER_BYTES_PER_LOGIT = 24


@dataclass
class Phase:
    """One step of the run: a command run in its own process group, for at most budget_s seconds (plus what the
    phases before it left unused)."""

    name: str
    argv: list
    budget_s: float
    log: str  # file name in the out folder; the benchmarks share one
    echo: str = ""  # regex of the output lines also printed on the console; "" prints every line
    failure: str = ""  # regex of the output lines that name a failure, kept in the summary
    env: dict = field(default_factory=dict)
    cwd: str = ""  # "": the out folder, not the checkout, whose source folder `python -m` would put on sys.path
    report: str = ""  # a benchmark's report file in the out folder, read back (even partial) after the phase
    needs: tuple = ()  # import names of the Python packages the phase cannot run without (NEEDS)


def pytest_command(dry_run: bool, files: list) -> list:
    """One shard's pytest on `files`, less its --shard: the tests marked `gpu`, each under the per-test timeout,
    verbose (the log names a test that hangs), each failure printed as it happens (tests/conftest.py)."""
    mode = "dry-run" if dry_run else "gpu"
    return [sys.executable, "-m", "pytest", *files, "-m", "gpu", "-v", "-rfE",
            "-p", "no:cacheprovider", f"--per-test-timeout={PER_TEST_TIMEOUT_S[mode]}",
            # a test stuck in C code, where SIGALRM cannot stop it: its stack in the log before the kill
            "-o", f"faulthandler_timeout={PER_TEST_TIMEOUT_S[mode] + 15}"]


def plan(dry_run: bool) -> list[Phase]:
    """The phases of a run, in order: tests, check, the benchmarks; the dry run's differ only in sizes."""
    mode, which = ("dry-run", 1) if dry_run else ("gpu", 0)
    py, script, dry = sys.executable, os.path.abspath(__file__), ["--dry-run"] if dry_run else []
    interpret = {"TRITON_INTERPRET": "1"} if dry_run else {}
    needs = NEEDS[mode]
    phases = [
        Phase("tests", [py, script, "--test-shards", str(TEST_SHARDS[mode]), *dry], TESTS_S[which], "tests.log",
              echo=r"^(\[(\d+/\d+|select)\] (FAILED NOW |=+ .* in [0-9.]+s|collected |selected )|shards: )",
              failure=r"FAILED NOW ", env=interpret, cwd=REPO, needs=needs["tests"]),
        Phase("check", [py, "-m", "electra_fast.cli", "check", "--device", "cpu" if dry_run else "cuda"],
              CHECK_S[which], "check.log", failure=r"\bFAIL\b", needs=needs["check"]),
    ]
    for name, (_, *budgets_s) in BENCHMARKS.items():
        phases.append(Phase(name, [py, script, "--benchmark", name, "--report", REPORT, *dry], budgets_s[which],
                            "benchmarks.log", report=REPORT, needs=needs["benchmark"]))
    return phases


def package_present(name: str) -> bool:
    """Whether `import name` can find the package (importlib.util.find_spec), without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that fails to import; a module set to None in sys.modules
        return False


def missing_packages(phases: list[Phase]) -> tuple[dict, list]:
    """({missing package a phase needs: [the phases that need it]}, [missing packages of OPTIONAL_FOR_TESTS])."""
    needed = collections.defaultdict(list)
    for phase in phases:
        for name in phase.needs:
            if not package_present(name):
                needed[name].append(phase.name)
    return dict(needed), [name for name in OPTIONAL_FOR_TESTS if not package_present(name)]


def budget_table(phases: list[Phase], deadline_s: float) -> str:
    """The budgets, their sum with each phase's grace period, and the deadline that sum must stay under."""
    lines = ["phase budgets (s)"] + [f"  {p.name:<22} {p.budget_s:>4.0f}" for p in phases]
    total = sum(p.budget_s for p in phases) + len(phases) * GRACE_S
    lines += [f"  {'-' * 22} {'-' * 4}", f"  {'sum':<22} {sum(p.budget_s for p in phases):>4.0f} + {len(phases)} x "
              f"{GRACE_S} grace = {total:.0f} < deadline {deadline_s:.0f}"]
    lines.append("  a phase may also use what the phases before it left unused, never what those after it are budgeted")
    if total >= deadline_s:
        raise ValueError(f"the phase budgets ({total:.0f} s with grace) must add up to less than the deadline "
                         f"({deadline_s:.0f} s)")
    return "\n".join(lines)


class BoundedLog:
    """A phase's log, written line by line as the output comes and flushed, so that it survives a kill. Past
    LOG_HEAD_BYTES + 2 * LOG_TAIL_BYTES it is rewritten (atomically) as its head, a marker and its last
    LOG_TAIL_BYTES: it never exceeds 16 MiB, and the end of the output, where a hang shows, is always there."""

    MARKER = b"\n[... output left out here: this log keeps its head and its tail ...]\n"

    def __init__(self, path: str, head_bytes: int = LOG_HEAD_BYTES, tail_bytes: int = LOG_TAIL_BYTES):
        self.path, self.head_bytes, self.tail_bytes = path, head_bytes, tail_bytes
        self.file = open(path, "ab")
        self.size = self.file.tell()

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()
        self.size += len(data)
        if self.size > self.head_bytes + 2 * self.tail_bytes:
            self._keep_head_and_tail()

    def _keep_head_and_tail(self) -> None:
        self.file.close()
        with open(self.path, "rb") as f:
            head = f.read(self.head_bytes)
            f.seek(-self.tail_bytes, os.SEEK_END)
            tail = f.read()
        tail = tail[tail.find(b"\n") + 1:] or tail  # start the tail at a line
        with open(self.path + ".tmp", "wb") as f:
            f.write(head + self.MARKER + tail)
        os.replace(self.path + ".tmp", self.path)
        self.file = open(self.path, "ab")
        self.size = self.file.tell()

    def close(self) -> None:
        self.file.close()


def stop_group(proc: subprocess.Popen) -> None:
    """Stops a phase's whole process group (pytest's subprocesses, compile workers): SIGINT first, so that pytest
    prints its summary and Python children their traceback, SIGKILL to whatever is left GRACE_S later."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=GRACE_S)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_phase(phase: Phase, timeout_s: float, out_dir: str) -> dict:
    """Runs one phase for at most timeout_s seconds, its output streamed to its log (and the lines phase.echo
    matches to the console) as it comes. Returns status ("pass" / "fail" / "timeout"), seconds, detail (the
    output's last line) and failures (the lines phase.failure matches). The thread reading the output has ended
    and the log is closed when this returns, so that the next phase, which may write the same log, never races
    it: a process that left the phase's group and still holds its output is read for DRAIN_S more, then not."""
    log = BoundedLog(os.path.join(out_dir, phase.log))
    log.write(f"\n===== {phase.name} (budget {phase.budget_s:.0f} s, stops at {timeout_s:.0f} s): "
              f"{' '.join(phase.argv)}\n".encode())
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **phase.env}
    last_lines, failures = collections.deque(maxlen=5), []

    def take(raw: bytes):
        log.write(raw)
        line = raw.decode("utf-8", "replace").rstrip()
        if line.strip(" ="):
            last_lines.append(line.strip(" ="))  # pytest's summary line without its rule
        if phase.failure and re.search(phase.failure, line):
            failures.append(line)
        if re.search(phase.echo, line):
            print(f"  {line}", flush=True)

    def read_output(fd: int, stop: threading.Event):
        """Lines of the pipe `fd` to take() as they come (a line over 64 KiB in pieces), until its end or `stop`."""
        pending = b""
        while not stop.is_set():
            if not select.select([fd], [], [], 0.1)[0]:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                take(line + b"\n")
            if len(pending) >= 1 << 16:
                take(pending)
                pending = b""
        if pending:
            take(pending + b"\n")

    started = time.monotonic()
    proc = subprocess.Popen(phase.argv, cwd=phase.cwd or out_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    stop_reading = threading.Event()
    reader = threading.Thread(target=read_output, args=(proc.stdout.fileno(), stop_reading),
                              name=f"gpu_check reader: {phase.name}", daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout_s)
        status = "pass" if proc.returncode == 0 else "fail"
    except subprocess.TimeoutExpired:
        status = "timeout"
    finally:  # also on Ctrl-C or SIGTERM of this script: no phase outlives it
        stop_group(proc)
        reader.join(timeout=DRAIN_S)
        held = reader.is_alive()  # a process that left the group holds the pipe: stop reading it
        stop_reading.set()
        reader.join()
        proc.stdout.close()
    seconds = time.monotonic() - started
    detail = last_lines[-1] if last_lines else ""
    if status == "timeout":
        detail = f"stopped at {timeout_s:.0f} s; last line: {detail}"
    elif status == "fail":
        detail = f"exit {proc.returncode}: {detail}"
    if held:
        log.write(b"===== (a process outside the phase's group still held its output: no longer read)\n")
    log.write(f"===== {phase.name}: {status} in {seconds:.1f} s\n".encode())
    log.close()
    return {"status": status, "seconds": round(seconds, 1), "detail": detail[:200], "failures": failures}


# A phase's status -> its result in the summary. Only "pass" and "n/a" (the card lacks what the benchmark needs)
# pass the run; "pending" and "running" stay in the files only if the run itself was stopped.
RESULT = {"pass": "PASS", "n/a": "N/A", "fail": "FAIL", "timeout": "FAIL (timeout)",
          "out of time": "FAIL (out of time)", "missing": "FAIL (missing pkg)", "pending": "NOT RUN",
          "running": "CUT OFF"}


def verdict(results: list[dict]) -> str:
    """PASS, FAIL naming the phases that failed, or INCOMPLETE while phases are pending or running."""
    unfinished = [r["name"] for r in results if r["status"] in ("pending", "running")]
    failed = [f"{r['name']} {r['status']}" for r in results if r["status"] not in ("pass", "n/a", "pending", "running")]
    if unfinished:
        return f"INCOMPLETE: the run stopped (or is still going) before {', '.join(unfinished)} ended" + (
            f"; failed so far: {', '.join(failed)}" if failed else "")
    return f"FAIL: {len(failed)} of {len(results)} phases ({', '.join(failed)})" if failed else "PASS"


def summary_text(results: list[dict], reports: dict, header: str) -> str:
    """The phases with result, seconds and budget, the failures, the head and step rows of every benchmark,
    the verdict last."""
    lines = [header, "", f"{'phase':<22} {'result':<18} {'s':>5} {'budget':>6}  detail", "-" * 100]
    for r in results:
        lines.append(f"{r['name']:<22} {RESULT[r['status']]:<18} {r['seconds']:>5.0f} {r['budget_s']:>6.0f}  "
                     f"{r['detail'][:80]}")
    failures = [f"  {r['name']}: {f}" for r in results for f in r["failures"]]
    if failures:
        lines += ["", "failures"] + failures
    lines += ["", f"{'benchmark':<20} {'table':<13} {'variant':<28} {'ms':>9} {'vs eager':>9} {'vs compile':>10}",
              "-" * 94]
    for name, report in reports.items():
        for r in report["rows"]:
            if r["table"] in ("head fwd+bwd", "step"):
                ratios = [f"{r['ratios'][k]:.2f}x" if k in r["ratios"] else "-" for k in ("vs eager", "vs compile")]
                variant = r["variant"] + (f" [{r['note']}]" if r["note"] else "")
                lines.append(f"{name:<20} {r['table']:<13} {variant:<28} {r['ms']:>9.2f} {ratios[0]:>9} "
                             f"{ratios[1]:>10}")
        notes = report["notes"]
        if "head_gemm_floor_ms" in notes:
            rate = f" at {notes['gemm_tflops']:.0f} TFLOP/s" if "gemm_tflops" in notes else ""
            lines.append(f"{name:<20} floor {notes['head_gemm_floor_ms']:.2f} ms{rate}; electra-fast / floor "
                         f"{notes.get('head_over_floor', float('nan')):.2f}")
        if notes.get("compile_pending"):
            lines.append(f"{name:<20} no {COMPILE_VARIANT} row in {', '.join(notes['compile_pending'])}: stopped "
                         f"before torch.compile's pass ended (electra-fast's rows are from the pass without it)")
        lines += [f"{name:<20} FAILED {f['table']} / {f['variant']}: {f['error']}" for f in report["failed"]]
    lines += ["", f"VERDICT: {verdict(results)}"]
    return "\n".join(lines)


def headline(report: dict) -> str:
    """A benchmark's result in a line: electra-fast's time in its last head or step table, against eager."""
    rows = [r for r in report["rows"] if r["variant"] == "electra-fast" and r["table"] in ("head fwd+bwd", "step")]
    if not rows:
        return f"{len(report['rows'])} rows"
    r = rows[-1]
    ratio = f", {r['ratios']['vs eager']:.2f}x vs eager" if "vs eager" in r["ratios"] else ""
    return f"electra-fast {r['table']} {r['ms']:.2f} ms{ratio}"


def write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def phase_timeout_s(phases: list[Phase], index: int, elapsed_s: float, left_s: float) -> float:
    """Seconds phase `index` may run, elapsed_s seconds into the run with left_s left before the deadline (less one
    grace period): its budget plus what the phases before it left unused (the time they were budgeted with their
    grace periods, less elapsed_s), never more than left_s. The later phases keep their budgets."""
    unused_s = sum(p.budget_s + GRACE_S for p in phases[:index]) - elapsed_s
    return min(left_s, phases[index].budget_s + max(0.0, unused_s))


def run_all(phases: list[Phase], deadline_at: float, out_dir: str, environment: dict) -> int:
    """Runs the phases in order, each for at most its budget plus what the phases before it left unused, and
    never past deadline_at (a time.monotonic() time); a phase missing a package it needs fails without running.
    Rewrites the JSON and the summary after each phase. Returns the exit code: 0 when every phase passed (or was
    not applicable on this card), else 1."""
    header = "gpu_check " + " ".join(f"{k}={v}" for k, v in environment.items())
    results = [{"name": p.name, "budget_s": p.budget_s, "status": "pending", "seconds": 0.0, "detail": "",
                "failures": [], "log": p.log} for p in phases]
    reports, run_started = {}, time.monotonic()

    def save():
        write_atomically(os.path.join(out_dir, RESULTS), json.dumps(
            {"environment": environment, "verdict": verdict(results), "phases": results, "reports": reports},
            indent=1))
        write_atomically(os.path.join(out_dir, SUMMARY), summary_text(results, reports, header) + "\n")

    for index, (phase, result) in enumerate(zip(phases, results, strict=True)):
        missing = [name for name in phase.needs if not package_present(name)]
        if missing:
            result.update(status="missing", detail=f"not run: no Python package {', '.join(missing)}",
                          failures=[f"missing Python package {name!r}: this phase needs it" for name in missing])
            print(f"{phase.name}: FAIL, missing Python package {', '.join(missing)}", flush=True)
            save()
            continue
        left_s = deadline_at - time.monotonic() - GRACE_S
        if left_s < MIN_PHASE_S:
            result.update(status="out of time", detail=f"not started: {max(left_s, 0):.0f} s left of the deadline")
            print(f"{phase.name}: FAIL, out of time", flush=True)
            save()
            continue
        timeout_s = phase_timeout_s(phases, index, time.monotonic() - run_started, left_s)
        print(f"\n[{phase.name}] up to {timeout_s:.0f} s, log {os.path.join(out_dir, phase.log)}", flush=True)
        result["status"] = "running"
        save()
        report_path = os.path.join(out_dir, phase.report) if phase.report else ""
        if report_path and os.path.exists(report_path):
            os.remove(report_path)
        result.update(run_phase(phase, timeout_s, out_dir))
        if report_path and os.path.exists(report_path):
            with open(report_path) as f:
                report = json.load(f)
            os.remove(report_path)
            if "not_applicable" in report:
                result.update(status="n/a" if result["status"] == "pass" else result["status"],
                              detail=report["not_applicable"])
            else:
                reports[phase.name] = report
                result["failures"] += [f"{f['table']} / {f['variant']}: {f['error']}" for f in report["failed"]]
                if result["status"] == "pass":
                    result["detail"] = headline(report)
        print(f"[{phase.name}] {result['status']} in {result['seconds']:.0f} s", flush=True)
        save()
    print("\n" + summary_text(results, reports, header), flush=True)
    return 0 if verdict(results) == "PASS" else 1


class GpuTestCollector:
    """A pytest plugin that keeps what a `--collect-only -m gpu` session found: the selected tests (node id and
    file, in pytest's order) and the modules that failed to collect, each with its error in one line."""

    def __init__(self):
        self.tests, self.errors = [], []

    def pytest_collectreport(self, report):
        if report.failed:
            text = [line for line in str(report.longrepr).splitlines() if line.strip()]
            raised = [line[1:].strip() for line in text if line.startswith("E ")]  # pytest's exception lines
            self.errors.append({"path": report.nodeid or str(report.fspath),
                                "error": (raised or text or ["?"])[0][:300]})

    def pytest_collection_finish(self, session):
        self.tests = [{"id": item.nodeid, "file": str(getattr(item, "path", None) or item.fspath)}
                      for item in session.items]


def collect_child(tests_dir: str) -> int:
    """The tests phase's collection: pytest collects every test module under tests_dir (recursively) and selects
    the gpu tests, going on past modules that fail to import; prints pytest's per-file counts and collection
    errors, then SELECTION_PREFIX and the selection as JSON ({"exit", "tests", "errors"})."""
    # Import as the shards will, whose `python -m pytest` puts the working folder first on sys.path, not bench/.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path[0] = os.getcwd()
    import pytest

    collector = GpuTestCollector()
    code = pytest.main([tests_dir, "-m", "gpu", "--collect-only", "-qq", "-p", "no:cacheprovider",
                        "--continue-on-collection-errors"], plugins=[collector])
    print(SELECTION_PREFIX + json.dumps({"exit": int(code), "tests": collector.tests, "errors": collector.errors}),
          flush=True)
    return 0


def select_gpu_tests(tests_dir: str) -> tuple[list, list]:
    """Runs collect_child in a subprocess (at most COLLECT_TIMEOUT_S), its output printed with "[select] " in
    front. Returns (the selected tests [{"id", "file"}], failure lines: one per module that failed to collect,
    or one saying why the collection itself failed)."""
    argv = [sys.executable, os.path.abspath(__file__), "--collect-gpu-tests", tests_dir]
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=COLLECT_TIMEOUT_S)
        output, problem = done.stdout, f"the collection exited {done.returncode} without its selection"
    except subprocess.TimeoutExpired as expired:
        output, problem = expired.stdout or b"", f"the collection ran past {COLLECT_TIMEOUT_S} s"
    selection = None
    for line in output.decode("utf-8", "replace").splitlines():
        if line.startswith(SELECTION_PREFIX):
            selection = json.loads(line[len(SELECTION_PREFIX):])
        else:
            print(f"[select] {line}", flush=True)
    if selection is None:
        return [], [f"FAILED NOW {tests_dir} (collection): {problem}"]
    failures = [f"FAILED NOW {e['path']} (collection): {e['error']}" for e in selection["errors"]]
    if selection["exit"] not in (0, 1, 5) and not failures:  # 1: modules failed to collect; 5: none collected
        failures.append(f"FAILED NOW {tests_dir} (collection): pytest exited {selection['exit']}")
    return selection["tests"], failures


def tests_child(shards: int, dry_run: bool, tests_dir: str = TESTS_DIR) -> int:
    """The test phase: the gpu tests selected from every module under tests_dir (select_gpu_tests; in the dry run
    those of DRY_RUN_MODULES), run by up to `shards` pytest processes at once, each on its contiguous part of them,
    their lines relayed as they come with the shard in front, one line of every shard's result last. Returns 0
    when every module collected, tests were selected, and every shard passed and ran its part; else 1."""
    selected, failures = select_gpu_tests(tests_dir)
    files = list(dict.fromkeys(test["file"] for test in selected))
    run = files
    if dry_run:
        run = [f for f in files if os.path.basename(f) in DRY_RUN_MODULES]
    count = sum(test["file"] in run for test in selected)
    if not count:
        failures.append(f"FAILED NOW {tests_dir}: no test marked gpu selected" +
                        (f" in the dry run's modules {', '.join(DRY_RUN_MODULES)}" if dry_run and files else ""))
    for line in failures:
        print(f"[select] {line}", flush=True)
    shards = max(1, min(shards, count))
    subset = f" (the dry run's: {', '.join(DRY_RUN_MODULES)})" if dry_run else ""
    print(f"[select] selected {len(selected)} gpu tests in {len(files)} files; running {count}{subset} in "
          f"{shards} shards", flush=True)
    if not count:
        return 1
    procs = [subprocess.Popen(pytest_command(dry_run, run) + [f"--shard={k}/{shards}"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for k in range(1, shards + 1)]
    # The runner's SIGINT at the budget reaches the shards too (one process group): this process keeps relaying
    # the summaries they then print. Ignored only now, so that the shards did not inherit it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lock, last_lines = threading.Lock(), [""] * shards

    def relay(k: int, stream):
        for raw in iter(lambda: stream.readline(1 << 16), b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line.strip(" ="):
                last_lines[k - 1] = line.strip(" =")
            with lock:
                print(f"[{k}/{shards}] {line}", flush=True)

    relays = [threading.Thread(target=relay, args=(k, p.stdout)) for k, p in enumerate(procs, 1)]
    for thread in relays:
        thread.start()
    codes = [p.wait() for p in procs]
    for thread in relays:
        thread.join()
    counts = collections.Counter()
    for last in last_lines:
        counts.update({word: int(n) for n, word in
                       re.findall(r"(\d+) (failed|passed|skipped|errors?|xfailed|xpassed)\b", last)})
    ran = sum(counts.values())
    print(f"shards: {', '.join(f'{n} {word}' for word, n in counts.items()) or 'no summary'}; " + "; ".join(
        f"{k}/{shards} exit {code}: {last}"
        for k, (code, last) in enumerate(zip(codes, last_lines, strict=True), 1)), flush=True)
    if not any(codes) and ran < count:  # every shard passed, yet fewer tests ran than were selected
        failures.append(f"FAILED NOW the shards ran {ran} of the {count} tests selected")
        print(f"[select] {failures[-1]}", flush=True)
    return 0 if not any(codes) and not failures else 1


def eager_compile(model=None, **kwargs):
    """torch.compile's signature without the compilation (the dry run's)."""
    return model if model is not None else (lambda fn: fn)


@contextlib.contextmanager
def compile_baselines_left_out(tables: set):
    """Inside, benchmark.run leaves out each table's torch.compile variant (adding the table's name to `tables`)
    and torch.compile compiles nothing (its wrappers are built, then dropped): a pass that times electra-fast and
    the eager baselines in seconds, before the cold compiles."""
    from electra_fast.benchmark import runner

    real_variants_of, real_compile = runner.variants_of, torch.compile

    def variants_of(cfg, table):
        variants = real_variants_of(cfg, table)
        if COMPILE_VARIANT in variants:
            tables.add(table)
        return {name: fn for name, fn in variants.items() if name != COMPILE_VARIANT}

    runner.variants_of, torch.compile = variants_of, eager_compile
    try:
        yield
    finally:
        runner.variants_of, torch.compile = real_variants_of, real_compile


def merged_report(part_reports: list, parts: tuple) -> dict:
    """The reports of the first parts of `parts`, one per part in order, as one report."""
    report = {**part_reports[0], "rows": [], "notes": {}, "failed": []}
    for part in part_reports:
        report["rows"] += part["rows"]
        report["notes"].update(part["notes"])
        report["failed"] += part["failed"]
    report["config"] = {**report["config"], "parts": parts[:len(part_reports)]}
    return report


def benchmark_child(name: str, report_path: str, dry_run: bool) -> int:
    """One benchmark of BENCHMARKS in this process, one part at a time, each in two passes: without its
    torch.compile baseline, then whole (where it has one). Prints each pass's tables and rewrites the report so far
    to report_path after it; a part whose second pass has not ended has notes["compile_pending"] (its tables). A
    card without bfloat16, or without the memory eager needs at the LLM-like shape, makes the report
    {"not_applicable": why}."""
    from electra_fast import benchmark

    if dry_run:
        # Inductor's imports take seconds and its C++ code generation minutes on two CPU cores: the dry run, which
        # proves this script and not the benchmark, times torch.compile's variants eagerly.
        torch.compile = eager_compile
    overrides = {**CUDA_TIMING, **BENCHMARKS[name][0], **(DRY_RUN_SHAPES if dry_run else {})}
    why_not = ""
    if overrides["device"] == "cuda" and overrides["dtype"] == "bfloat16" and not torch.cuda.is_bf16_supported():
        why_not = "this card has no bfloat16"
    elif overrides["device"] == "cuda" and "LLM" in name:
        free, _ = torch.cuda.mem_get_info()
        needed = EAGER_BYTES_PER_LOGIT * overrides["head_rows"] * overrides["vocab_size"]
        if free < needed:
            why_not = f"eager needs ~{needed / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"
    if why_not:
        print(f"{name}: not applicable, {why_not}")
        write_atomically(report_path, json.dumps({"not_applicable": why_not}))
        return 0
    parts, part_reports = overrides["parts"], []
    for part in parts:
        cfg = benchmark.Config(**{**overrides, "parts": (part,)})
        pending = set()
        with compile_baselines_left_out(pending):
            first = benchmark.run(cfg, progress=False)
        print(f"{name}: {part}" + (f", without {COMPILE_VARIANT} (next: with it)" if pending else ""), flush=True)
        print(benchmark.format_table(first), flush=True)
        if pending:
            first["notes"]["compile_pending"] = sorted(pending)
        part_reports.append(first)
        write_atomically(report_path, json.dumps(merged_report(part_reports, parts)))
        if pending:
            part_reports[-1] = benchmark.run(cfg, progress=False)
            print(f"{name}: {part}, every variant", flush=True)
            print(benchmark.format_table(part_reports[-1]), flush=True)
            write_atomically(report_path, json.dumps(merged_report(part_reports, parts)))
    return 1 if any(report["failed"] for report in part_reports) else 0


def environment_of(mode: str) -> dict:
    """What the summary's first line names: mode, card, versions, commit."""
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        commit = "unknown"
    info = {"mode": mode, "device": torch.cuda.get_device_name() if mode == "gpu" else "cpu (tiny sizes, float32)",
            "torch": torch.__version__, "cuda": torch.version.cuda, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check_out", help="the folder for the logs, gpu_check.json and "
                        "summary.txt (created; those files are overwritten)")
    parser.add_argument("--dry-run", action="store_true", help="every phase on the CPU with tiny shapes and budgets")
    parser.add_argument("--test-shards", type=int, help=argparse.SUPPRESS)  # the tests phase's child
    parser.add_argument("--tests-dir", default=TESTS_DIR, help=argparse.SUPPRESS)  # its tests
    parser.add_argument("--collect-gpu-tests", metavar="DIR", help=argparse.SUPPRESS)  # its collection's child
    parser.add_argument("--benchmark", choices=list(BENCHMARKS), help=argparse.SUPPRESS)  # a benchmark's child
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collect_gpu_tests:
        return collect_child(args.collect_gpu_tests)
    if args.test_shards:
        return tests_child(args.test_shards, args.dry_run, args.tests_dir)
    if args.benchmark:
        return benchmark_child(args.benchmark, args.report, args.dry_run)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check needs a CUDA device (--dry-run walks the phases on the CPU)", file=sys.stderr)
        return 2
    mode = "dry-run" if args.dry_run else "gpu"
    phases = plan(args.dry_run)
    print(budget_table(phases, DEADLINE_S[mode]), flush=True)
    needed, optional = missing_packages(phases)
    for package, names in needed.items():
        print(f"missing Python package {package!r}: needed by {', '.join(names)}, which fail without running",
              flush=True)
    if optional:
        print(f"not installed (some tests skip without them): {', '.join(optional)}", flush=True)
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    for name in {p.log for p in phases}:
        open(os.path.join(out_dir, name), "w").close()
    environment = environment_of(mode)
    environment["missing"] = ",".join(needed) or "none"
    environment["not_installed"] = ",".join(optional) or "none"
    code = run_all(phases, STARTED + DEADLINE_S[mode], out_dir, environment)
    print(f"gpu_check finished in {time.monotonic() - STARTED:.0f} s of {DEADLINE_S[mode]}; files in {out_dir}")
    return code


if __name__ == "__main__":
    # SIGTERM (a machine handed back, a CI job cancelled) ends the run as Ctrl-C does: the phase running is
    # stopped with its group, and what was written stays.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    sys.exit(main())
