"""bench/gpu_check.py without a GPU: its dry run end to end (every phase on the CPU with tiny sizes), and the parts
that could pass a run falsely or lose its evidence: a phase past its budget, a phase left no time, the per-test
timeout, the `gpu` marker and the shards of tests/conftest.py, the bounded logs, the budgets against the deadline."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.py")
CONFTEST = os.path.join(ROOT, "tests", "conftest.py")
MAX_FILE_BYTES = 16 << 20


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load_gpu_check()


def _budget_table(text: str) -> tuple[dict, int, int, int, int]:
    """The printed budget table: {phase: budget}, the printed sum, phases x grace, the total and the deadline."""
    table = re.search(r"^phase budgets \(s\)\n(.*?)^  -+ -+\n^  sum\s+(\d+) \+ (\d+) x (\d+) grace = (\d+) < "
                      r"deadline (\d+)$", text, re.M | re.S)
    assert table, text
    rows = dict((name, int(s)) for name, s in re.findall(r"^  (\S.*?)\s+(\d+)$", table.group(1), re.M))
    printed_sum, count, grace, with_grace, deadline = map(int, table.groups()[1:])
    return rows, printed_sum, count * grace, with_grace, deadline


def _phase(name: str, code: str, budget_s: float, **kwargs):
    return gpu_check.Phase(name, [sys.executable, "-c", textwrap.dedent(code)], budget_s, f"{name}.log", **kwargs)


def _files(folder):
    return {name: os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)}


def test_dry_run_passes_every_phase_into_a_small_out_folder(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    rows, printed_sum, grace, with_grace, deadline = _budget_table(done.stdout)
    names = [p.name for p in gpu_check.plan(dry_run=True)]
    assert list(rows) == names and "head LLM-like bf16" in names and "step Small bf16" in names
    assert sum(rows.values()) == printed_sum and printed_sum + grace == with_grace < deadline
    assert deadline == gpu_check.DEADLINE_S["dry-run"]
    files = _files(out)
    assert {"summary.txt", "gpu_check.json", "tests.log", "check.log", "benchmarks.log"} <= set(files)
    assert len(files) <= 8 and all(0 < size < MAX_FILE_BYTES for size in files.values()), files
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["verdict"] == "PASS"
    assert [(p["name"], p["status"]) for p in results["phases"]] == [(name, "pass") for name in names]
    assert set(results["reports"]) == set(gpu_check.BENCHMARKS)
    for name, report in results["reports"].items():
        tables = {r["table"] for r in report["rows"] if r["variant"] == "electra-fast"}
        assert ("step" if name.startswith("step") else "head fwd+bwd") in tables, (name, tables)
    assert "passed" in results["phases"][0]["detail"]
    summary = (out / "summary.txt").read_text()
    assert summary.rstrip().endswith("VERDICT: PASS") and summary.count(" PASS ") == len(names)
    assert "PASSED" in (out / "tests.log").read_text() and "PASS" in (out / "check.log").read_text()


def test_the_gpu_budgets_add_up_to_less_than_the_deadline_within_eight_minutes():
    phases = gpu_check.plan(dry_run=False)
    rows, printed_sum, grace, with_grace, deadline = _budget_table(
        gpu_check.budget_table(phases, gpu_check.DEADLINE_S["gpu"]))
    assert sum(rows.values()) == printed_sum and printed_sum + grace == with_grace < deadline <= 480
    assert [p.name for p in phases][:2] == ["tests", "check"] and len(phases) == 2 + len(gpu_check.BENCHMARKS)


def test_budgets_over_the_deadline_are_refused():
    phases = [_phase("a", "pass", 100), _phase("b", "pass", 100)]
    with pytest.raises(ValueError, match="less than the deadline"):
        gpu_check.budget_table(phases, 200)


def _gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_phase_past_its_budget_fails_is_stopped_politely_with_its_group_and_its_log_survives(tmp_path):
    log = tmp_path / "hangs.log"
    hangs = _phase("hangs", f"""
        import signal, subprocess, sys, time
        def on_sigint(signum, frame):  # pytest prints its summary here
            print("got SIGINT", flush=True)
            sys.exit(130)
        signal.signal(signal.SIGINT, on_sigint)
        ignores_sigint = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(300)"
        grandchild = subprocess.Popen([sys.executable, "-c", ignores_sigint])
        print("grandchild", grandchild.pid, flush=True)
        seen, waited = False, 0.0
        while not seen and waited < 5:  # the line above is in the log while this phase still runs
            time.sleep(0.1)
            waited += 0.1
            seen = f"\\ngrandchild {{grandchild.pid}}\\n" in open({str(log)!r}).read()
        print("streamed:", seen, flush=True)
        time.sleep(300)
        """, budget_s=8)
    code = gpu_check.run_all([hangs], time.monotonic() + 60, str(tmp_path), {"mode": "test"})
    assert code == 1
    results = json.loads((tmp_path / gpu_check.RESULTS).read_text())
    assert results["phases"][0]["status"] == "timeout" and results["verdict"].startswith("FAIL")
    assert "FAIL (timeout)" in (tmp_path / gpu_check.SUMMARY).read_text()
    text = log.read_text()  # its first line is the command, this code: the phase's output is matched whole lines
    assert re.search(r"^streamed: True$", text, re.M) and re.search(r"^got SIGINT$", text, re.M), text
    grandchild = int(re.search(r"^grandchild (\d+)$", text, re.M).group(1))
    waited = 0.0
    while not _gone_or_zombie(grandchild) and waited < 10:
        time.sleep(0.1)
        waited += 0.1
    assert _gone_or_zombie(grandchild), "the phase's process group outlived it"


def test_a_phase_left_no_time_fails_the_run_and_the_results_are_written_after_each_phase(tmp_path, monkeypatch,
                                                                                            capsys):
    monkeypatch.setattr(gpu_check, "MIN_PHASE_S", 5)
    monkeypatch.setattr(gpu_check, "GRACE_S", 1)
    # The first phase reads the results file while it runs: itself "running", the next "pending"; it fails if not.
    first = _phase("first", f"""
        import json, time
        phases = json.load(open({str(tmp_path / gpu_check.RESULTS)!r}))["phases"]
        assert [p["status"] for p in phases] == ["running", "pending"], phases
        time.sleep(3)
        """, budget_s=30)
    second = _phase("second", "print('second ran')", budget_s=30)
    # first: 7.5 s left (>= 5), takes >= 3 s; second: <= 4.5 s left, under MIN_PHASE_S: not started.
    code = gpu_check.run_all([first, second], time.monotonic() + 8.5, str(tmp_path), {"mode": "test"})
    assert code == 1
    results = json.loads((tmp_path / gpu_check.RESULTS).read_text())
    assert [p["status"] for p in results["phases"]] == ["pass", "out of time"]
    assert results["verdict"] == "FAIL: 1 of 2 phases (second out of time)"
    summary = (tmp_path / gpu_check.SUMMARY).read_text()
    assert re.search(r"^second\s+FAIL \(out of time\)", summary, re.M)
    assert "second: FAIL, out of time" in capsys.readouterr().out
    assert not (tmp_path / "second.log").exists()


def test_a_benchmark_that_does_not_apply_to_the_card_is_na_not_a_failure(tmp_path):
    report = gpu_check.REPORT
    na = _phase("na", f"open({report!r}, 'w').write('{{\"not_applicable\": \"no bfloat16\"}}')", 30, report=report)
    code = gpu_check.run_all([na], time.monotonic() + 60, str(tmp_path), {"mode": "test"})
    results = json.loads((tmp_path / gpu_check.RESULTS).read_text())
    assert code == 0 and results["phases"][0]["status"] == "n/a" and results["phases"][0]["detail"] == "no bfloat16"
    assert not (tmp_path / report).exists()  # read back and removed: the out folder keeps its few files


def _pytest_in(folder, *args, timeout=200):
    shutil.copy(CONFTEST, folder / "conftest.py")
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: the CUDA paths\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=folder,
                          capture_output=True, text=True, timeout=timeout)


def test_per_test_timeout_fails_a_sleeping_test_at_once_and_the_run_goes_on(tmp_path):
    (tmp_path / "test_sleepy.py").write_text(textwrap.dedent("""
        import time

        def test_sleeps():
            time.sleep(60)

        def test_sleeps_under_a_broad_except():
            try:
                time.sleep(60)
            except Exception:
                pass

        def test_after():
            pass
        """))
    done = _pytest_in(tmp_path, "-v", "--per-test-timeout", "2", "test_sleepy.py")
    out = done.stdout
    assert done.returncode == 1, out
    assert re.search(r"2 failed, 1 passed", out), out
    for name in ("test_sleeps", "test_sleeps_under_a_broad_except"):
        line = re.search(rf"^FAILED NOW test_sleepy.py::{name}: (.*)$", out, re.M)
        assert line and "PerTestTimeout: test ran past --per-test-timeout 2 s" in line.group(1), out
    # each failure is named when it happens, before the next test runs (not only in the summary at the end)
    assert out.index("FAILED NOW test_sleepy.py::test_sleeps:") < out.index("test_sleepy.py::test_after PASSED")


def test_gpu_marks_the_triton_target_tests_and_the_marked_ones(tmp_path):
    pytest.importorskip("triton")
    (tmp_path / "test_marks.py").write_text(textwrap.dedent("""
        import pytest

        def test_kernel(target):
            pass

        def test_plain():
            pass

        @pytest.mark.gpu
        def test_marked():
            pass
        """))
    done = _pytest_in(tmp_path, "-m", "gpu", "--collect-only", "-q", "test_marks.py")
    selected = sorted(line for line in done.stdout.splitlines() if line.startswith("test_marks.py::"))
    assert selected == ["test_marks.py::test_kernel[triton]", "test_marks.py::test_marked"], done.stdout


def test_shards_split_the_selected_tests_into_contiguous_parts(tmp_path):
    (tmp_path / "test_five.py").write_text("".join(f"def test_{i}():\n    pass\n\n" for i in range(5)))
    parts = []
    for k in (1, 2):
        done = _pytest_in(tmp_path, "--collect-only", "-q", f"--shard={k}/2", "-k", "not test_0", "test_five.py")
        parts.append([line.split("::")[1] for line in done.stdout.splitlines() if line.startswith("test_five.py::")])
    assert parts == [["test_1", "test_2"], ["test_3", "test_4"]]  # after -k's deselection
    done = _pytest_in(tmp_path, "--collect-only", "--shard=3/2", "test_five.py")
    assert done.returncode != 0 and "--shard K/N needs 1 <= K <= N, got '3/2'" in done.stderr


def test_a_log_keeps_its_head_and_tail_under_its_bound(tmp_path):
    path = str(tmp_path / "big.log")
    log = gpu_check.BoundedLog(path, head_bytes=1000, tail_bytes=500)
    lines = [f"line {i:05d}\n".encode() for i in range(2000)]  # 22 kB
    for line in lines:
        log.write(line)
        assert os.path.getsize(path) <= 1000 + 2 * 500 + len(log.MARKER)
    log.close()
    data = open(path, "rb").read()
    assert data.startswith(b"".join(lines[:50])) and data.endswith(b"".join(lines[-40:]))
    assert gpu_check.BoundedLog.MARKER in data
