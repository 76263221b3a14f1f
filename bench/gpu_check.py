"""One prepared script for a CUDA machine, sized to finish within 6 minutes on an H100: the test suite with CUDA
(in parallel where pytest-xdist is installed) and each failure's one-line reason, `electra-fast check`, then the
benchmarks — the ELECTRA-Small step at 128 x 128 in bf16, the head at Small and Base shapes in bf16 and at
Small in float32, the LLM-like head (N 8,192, H 4,096, V 128,256) in bf16 where memory allows — and a summary
table last. Each phase runs in its own process under a time budget, so that one hang cannot eat the others.

    pip install --no-build-isolation --no-deps -e . && python bench/gpu_check.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 345  # the whole script; each phase gets at most what is left
TESTS_S, CHECK_S = 140, 100  # check: the float64 truth at Base shapes runs on the host CPU
# name -> (benchmark.Config overrides, time budget in seconds). Defaults on CUDA: batch 128 x 128, bf16.
BENCHMARKS = {
    "step Small bf16": (dict(preset="small", dtype="bfloat16", parts=("ops", "step")), 75),
    "head Small bf16": (dict(preset="small", head_rows=2458, dtype="bfloat16", parts=("head",)), 35),
    "head Base bf16": (dict(preset="base", head_rows=19660, dtype="bfloat16", parts=("head",)), 45),
    "head Small fp32": (dict(preset="small", head_rows=2458, dtype="float32", parts=("head",)), 35),
    "head LLM-like bf16": (dict(head_rows=8192, head_hidden=4096, vocab_size=128256, dtype="bfloat16",
                                parts=("head",), repeats=3), 60),
}
# Eager's extra memory at a head shape, bytes per logit: bf16 and float32 logits, their gradients, the noise
# (21 GB measured at the LLM-like shape on an H200).
EAGER_BYTES_PER_LOGIT = 24


def run_phase(cmd: list, budget_s: float, cwd: str, log_path: str | None = None) -> tuple[str, float, str]:
    """Runs cmd in `cwd`, in its own process group, for at most budget_s seconds; returns (status "ok" / "failed"
    / "timeout", seconds, output). The whole group is killed at the budget (pytest-xdist's workers included)."""
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=max(1.0, budget_s))
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = "timeout"
    if log_path:
        with open(log_path, "w") as f:
            f.write(output)
    return status, time.time() - started, output


def failures_of(junit_path: str) -> list[str]:
    """`test id: first line of the reason` for each failed or erroring test in a JUnit XML report."""
    if not os.path.exists(junit_path):
        return []
    lines = []
    for case in ElementTree.parse(junit_path).iter("testcase"):
        for problem in list(case.findall("failure")) + list(case.findall("error")):
            reason = (problem.get("message") or problem.text or "").strip().splitlines()
            lines.append(f"{case.get('classname')}::{case.get('name')}: {reason[0] if reason else '?'}")
    return lines


def tests_phase(budget_s: float, workdir: str) -> tuple[str, float, str]:
    """The test suite on CUDA; prints pytest's summary line and each failure's reason."""
    junit = os.path.join(workdir, "junit.xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "tests", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    try:
        import xdist  # noqa: F401

        cmd += ["-n", "auto", "--maxprocesses", "8"]  # more workers than that contend for the one GPU
    except ImportError:
        pass
    status, seconds, output = run_phase(cmd, budget_s, REPO, os.path.join(workdir, "pytest.log"))
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    print(f"tests: {status} in {seconds:.0f} s: {summary}")
    for line in failures_of(junit):
        print(f"  FAILED {line}")
    return status, seconds, summary


def llm_head_fits(overrides: dict) -> tuple[bool, str]:
    """Whether the free GPU memory holds eager's logits and gradients at this head shape."""
    free, _ = torch.cuda.mem_get_info()
    needed = EAGER_BYTES_PER_LOGIT * overrides["head_rows"] * overrides["vocab_size"]
    return free >= needed, f"needs ~{needed / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"


def benchmark_child(name: str, out_path: str) -> int:
    """One benchmark of BENCHMARKS in this process: prints its table, writes its report to out_path."""
    from electra_fast import benchmark

    overrides = BENCHMARKS[name][0]
    if overrides["dtype"] == "bfloat16" and not torch.cuda.is_bf16_supported():
        print(f"{name}: skipped, this card has no bfloat16")
        return 0
    if "LLM" in name:
        fits, why = llm_head_fits(overrides)
        if not fits:
            print(f"{name}: skipped, {why}")
            return 0
    cfg = benchmark.Config(**{"device": "cuda", "warmup": 3, "repeats": 10, **overrides})
    report = benchmark.run(cfg, progress=False)
    print(benchmark.format_table(report), flush=True)
    with open(out_path, "w") as f:
        json.dump(report, f)
    return 1 if report["failed"] else 0


def summary_table(phases: list, reports: dict) -> str:
    """The phases with status and time, then the head and step rows of every benchmark."""
    lines = ["", "gpu_check summary", f"{'phase':<22} {'status':<8} {'s':>5}  detail", "-" * 70]
    lines += [f"{p:<22} {status:<8} {s:>5.0f}  {detail}" for p, status, s, detail in phases]
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
        lines += [f"{name:<20} FAILED {f['table']} / {f['variant']}: {f['error']}" for f in report["failed"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write the phases and the benchmark reports here")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--benchmark", choices=list(BENCHMARKS), help=argparse.SUPPRESS)  # a phase's child
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA device", file=sys.stderr)
        return 2
    if args.benchmark:
        return benchmark_child(args.benchmark, args.out)

    started = time.time()

    def left(budget_s: float) -> float:
        return min(budget_s, DEADLINE_S - (time.time() - started))

    phases, reports = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        if not args.skip_tests:
            phases.append(("tests", *tests_phase(left(TESTS_S), workdir)))
        # Run from outside the checkout, whose source folder `-m` would import instead of the installed package.
        status, seconds, output = run_phase([sys.executable, "-m", "electra_fast.cli", "check", "--device", "cuda"],
                                            left(CHECK_S), workdir)
        print(output, flush=True)
        phases.append(("check", status, seconds, (output.strip().splitlines() or [""])[-1]))
        for name, (_, budget_s) in BENCHMARKS.items():
            if left(budget_s) < 10:
                phases.append((name, "skipped", 0.0, "out of time"))
                continue
            out_path = os.path.join(workdir, "report.json")
            if os.path.exists(out_path):
                os.remove(out_path)
            status, seconds, output = run_phase([sys.executable, os.path.abspath(__file__), "--benchmark", name,
                                                 "--out", out_path], left(budget_s), workdir)
            print(output, flush=True)
            if os.path.exists(out_path):
                with open(out_path) as f:
                    reports[name] = json.load(f)
            detail = "" if name in reports and status == "ok" else (output.strip().splitlines() or [""])[-1][:60]
            phases.append((name, status, seconds, detail))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"phases": phases, "reports": reports}, f, indent=2)
    print(summary_table(phases, reports))
    print(f"gpu_check finished in {time.time() - started:.0f} s")
    return 0 if all(status in ("ok", "skipped") for _, status, _, _ in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
