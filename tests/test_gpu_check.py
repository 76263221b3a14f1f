"""bench/gpu_check.py without a GPU: its dry run end to end (every phase on the CPU with tiny sizes), and the parts
that could pass a run falsely or lose its evidence: a phase past its budget, a phase left no time, a phase missing
a package, the time phases lend the later ones, the selection of the gpu tests past modules that fail to import, a
benchmark stopped in its compile, the per-test timeout, the `gpu` marker and the shards of tests/conftest.py, the
bounded logs and their readers, the budgets against the deadline."""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
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
    assert "no compile row" not in summary  # every benchmark's second pass, with torch.compile, ended
    tests_log = (out / "tests.log").read_text()
    assert "PASSED" in tests_log and "PASS" in (out / "check.log").read_text()
    # The dry run collected the real selection of tests/, every module imported, and ran its modules' part of it.
    selected = re.search(r"^\[select\] selected (\d+) gpu tests in (\d+) files; running (\d+) \(the dry run's: "
                         r"test_rtd_loss.py\) in 2 shards$", tests_log, re.M)
    assert selected, tests_log[:3000]
    total, files, ran = map(int, selected.groups())
    assert total > ran > 0 and files > 1 and "(collection)" not in tests_log
    assert re.search(rf"^shards: {ran} passed;", tests_log, re.M), tests_log[-3000:]
    assert results["environment"]["missing"] == "none"


def test_the_gpu_budgets_add_up_to_less_than_the_deadline_within_eight_minutes():
    phases = gpu_check.plan(dry_run=False)
    rows, printed_sum, grace, with_grace, deadline = _budget_table(
        gpu_check.budget_table(phases, gpu_check.DEADLINE_S["gpu"]))
    assert sum(rows.values()) == printed_sum and printed_sum + grace == with_grace < deadline <= 480
    assert [p.name for p in phases][:2] == ["tests", "check"] and len(phases) == 2 + len(gpu_check.BENCHMARKS)


def test_a_phase_may_use_what_the_earlier_ones_left_but_never_the_later_ones_budgets(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "GRACE_S", 1)
    monkeypatch.setattr(gpu_check, "MIN_PHASE_S", 2)
    phases = [_phase("quick", "pass", 10),  # leaves ~10 s unused
              _phase("slow", "import time; time.sleep(5)", 3),  # past its budget, within what "quick" left
              _phase("hangs", "import time; time.sleep(300)", 3),  # stopped: it may not take what "last" needs
              _phase("last", "print('last ran')", 4)]
    deadline_s = sum(p.budget_s + 1 for p in phases) + 1
    started = time.monotonic()
    code = gpu_check.run_all(phases, started + deadline_s, str(tmp_path), {"mode": "test"})
    results = json.loads((tmp_path / gpu_check.RESULTS).read_text())["phases"]
    assert code == 1 and [p["status"] for p in results] == ["pass", "pass", "timeout", "pass"], results
    assert results[2]["seconds"] > 3 + 4  # its budget and most of what the first two left
    assert time.monotonic() - started < deadline_s + 2
    assert "last ran" in (tmp_path / "last.log").read_text()


def test_a_missing_package_fails_its_phase_up_front_by_name(tmp_path, capsys):
    needy = _phase("needy", "print('ran')", 30)
    needy.needs = ("torch", "no_such_package_for_gpu_check")
    fine = _phase("fine", "print('ran')", 30)
    assert gpu_check.missing_packages([needy, fine])[0] == {"no_such_package_for_gpu_check": ["needy"]}
    code = gpu_check.run_all([needy, fine], time.monotonic() + 60, str(tmp_path), {"mode": "test"})
    results = json.loads((tmp_path / gpu_check.RESULTS).read_text())
    assert code == 1 and [p["status"] for p in results["phases"]] == ["missing", "pass"]
    assert results["phases"][0]["failures"] == ["missing Python package 'no_such_package_for_gpu_check': this "
                                                "phase needs it"]
    assert re.search(r"^needy\s+FAIL \(missing pkg\)\s+0\s+30  not run: no Python package "
                     r"no_such_package_for_gpu_check$", (tmp_path / gpu_check.SUMMARY).read_text(), re.M)
    assert not (tmp_path / "needy.log").exists()  # not started
    assert "needy: FAIL, missing Python package no_such_package_for_gpu_check" in capsys.readouterr().out
    assert gpu_check.package_present("json") and not gpu_check.package_present("no_such_package_for_gpu_check")


def _tests_tree(root):
    """A checkout's tests/ in miniature: a module that cannot import (a package this machine lacks), gpu tests in
    a subfolder, a module without any."""
    (root / "tests" / "ops").mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: the CUDA paths\n")
    (root / "tests" / "pretrain").mkdir()
    shutil.copy(CONFTEST, root / "tests" / "conftest.py")
    (root / "tests" / "test_needs_seqeval.py").write_text(textwrap.dedent("""
        import pytest
        import no_such_package_for_gpu_check

        @pytest.mark.gpu
        def test_hidden():
            pass
        """))
    (root / "tests" / "ops" / "test_kernels.py").write_text(textwrap.dedent("""
        import pytest

        def test_kernel(target):
            pass

        @pytest.mark.gpu
        def test_marked():
            pass

        @pytest.mark.gpu
        def test_marked_too():
            pass

        def test_plain():
            pass
        """))
    (root / "tests" / "pretrain" / "test_loop.py").write_text("def test_loop():\n    pass\n")


def test_a_module_that_cannot_import_is_named_and_the_gpu_tests_still_run(tmp_path):
    pytest.importorskip("triton")
    tree, out = tmp_path / "checkout", tmp_path / "out"
    _tests_tree(tree)
    out.mkdir()
    (tests,) = [p for p in gpu_check.plan(dry_run=False) if p.name == "tests"]
    tests.argv += ["--test-shards", "2", "--tests-dir", "tests"]  # the last --test-shards wins: 2 on this CPU
    tests.cwd, tests.budget_s = str(tree), 200
    code = gpu_check.run_all([tests], time.monotonic() + 250, str(out), {"mode": "test"})
    (result,) = json.loads((out / gpu_check.RESULTS).read_text())["phases"]
    log = (out / "tests.log").read_text()
    assert code == 1 and result["status"] == "fail", log[-3000:]
    assert result["failures"] == ["[select] FAILED NOW tests/test_needs_seqeval.py (collection): "
                                  "ModuleNotFoundError: No module named 'no_such_package_for_gpu_check'"], log
    assert "[select] selected 3 gpu tests in 1 files; running 3 in 2 shards" in log
    assert re.search(r"^shards: 3 passed; 1/2 exit 0: .*; 2/2 exit 0: ", log, re.M), log[-3000:]
    for name in ("test_kernel[triton]", "test_marked", "test_marked_too"):
        assert re.search(rf"^\[\d/2\] tests/ops/test_kernels.py::{re.escape(name)} PASSED", log, re.M), log


def test_no_gpu_test_fails_and_one_takes_one_shard(tmp_path):
    (tmp_path / "tests").mkdir()
    shutil.copy(CONFTEST, tmp_path / "tests" / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: the CUDA paths\n")
    (tmp_path / "tests" / "test_cpu.py").write_text("import pytest\n\ndef test_cpu():\n    pass\n")
    argv = [sys.executable, SCRIPT, "--test-shards", "4", "--tests-dir", "tests"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert done.returncode == 1 and "[select] FAILED NOW tests: no test marked gpu selected" in done.stdout
    # one gpu test: one shard (an empty shard is a failure: pytest's "no tests ran")
    (tmp_path / "tests" / "test_cpu.py").write_text("import pytest\n\n@pytest.mark.gpu\ndef test_gpu():\n    pass\n")
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "running 1 in 1 shards" in done.stdout and re.search(r"^shards: 1 passed; 1/1 exit 0", done.stdout, re.M)


def test_shards_that_pass_fewer_tests_than_were_selected_fail(tmp_path):
    # A conftest that drops tests only where --shard is given: the shards pass, having run fewer than selected.
    (tmp_path / "tests" / "sub").mkdir(parents=True)
    shutil.copy(CONFTEST, tmp_path / "tests" / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: the CUDA paths\n")
    (tmp_path / "tests" / "sub" / "conftest.py").write_text(textwrap.dedent("""
        def pytest_collection_modifyitems(config, items):
            if config.getoption("shard"):
                items[:] = items[:1]
        """))
    (tmp_path / "tests" / "sub" / "test_two.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.gpu
        def test_one():
            pass

        @pytest.mark.gpu
        def test_two():
            pass
        """))
    done = subprocess.run([sys.executable, SCRIPT, "--test-shards", "1", "--tests-dir", "tests"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=200)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "[select] FAILED NOW the shards ran 1 of the 2 tests selected" in done.stdout


def test_a_benchmark_stopped_in_its_compile_keeps_electra_fast_rows(tmp_path):
    # torch.compile that never finishes compiling: the second pass of the head part hangs; the first pass, without
    # the compile baseline, was saved.
    child = _phase("head Small bf16", f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("gpu_check", {SCRIPT!r})
        gpu_check = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = gpu_check
        spec.loader.exec_module(gpu_check)

        def compiles_forever(model=None, **kwargs):
            def compiled(*args, **kwargs):
                print("compiling", flush=True)
                time.sleep(600)
            return compiled

        gpu_check.eager_compile = compiles_forever
        sys.exit(gpu_check.benchmark_child("head Small bf16", {gpu_check.REPORT!r}, dry_run=True))
        """, budget_s=20, report=gpu_check.REPORT)
    code = gpu_check.run_all([child], time.monotonic() + 60, str(tmp_path), {"mode": "test"})
    results = json.loads((tmp_path / gpu_check.RESULTS).read_text())
    assert code == 1 and results["phases"][0]["status"] == "timeout"
    assert "compiling" in (tmp_path / "head Small bf16.log").read_text()
    report = results["reports"]["head Small bf16"]
    variants = {(r["table"], r["variant"]) for r in report["rows"]}
    assert {("head fwd+bwd", "electra-fast"), ("head fwd+bwd", "eager"), ("head fwd", "electra-fast")} <= variants
    assert not any(variant == "compile" for _, variant in variants)
    assert report["notes"]["compile_pending"] == ["head fwd", "head fwd+bwd"]
    summary = (tmp_path / gpu_check.SUMMARY).read_text()
    assert re.search(r"^head Small bf16\s+head fwd\+bwd\s+electra-fast\s+[0-9.]+ ", summary, re.M), summary
    assert "no compile row in head fwd, head fwd+bwd: stopped before torch.compile's pass ended" in summary


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


def test_a_phase_ends_with_its_reader_even_when_a_stray_process_holds_its_output(tmp_path):
    # The phase starts a process in a session of its own (out of its group: the stop does not reach it) that keeps
    # printing to the phase's output. The next phase writes the same log: no reader of the first may be left.
    log = tmp_path / "shared.log"
    stray = _phase("stray", """
        import subprocess, sys
        ticks = "import time\\nfor i in range(600):\\n    print('tick', i, flush=True)\\n    time.sleep(0.05)"
        child = subprocess.Popen([sys.executable, "-c", ticks], start_new_session=True)
        print("stray", child.pid, flush=True)
        """, budget_s=30)
    stray.log = next_phase_log = log.name
    pid = None
    try:
        gpu_check.run_phase(stray, 30, str(tmp_path))
        pid = int(re.search(r"^stray (\d+)$", log.read_text(), re.M).group(1))
        assert not [t for t in threading.enumerate() if t.name.startswith("gpu_check reader")]
        size = log.stat().st_size
        time.sleep(0.5)
        assert log.stat().st_size == size  # nothing read after the phase returned
        following = _phase("next", "print('next phase')", budget_s=30)
        following.log = next_phase_log
        assert gpu_check.run_phase(following, 30, str(tmp_path))["status"] == "pass"
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert "(a process outside the phase's group still held its output: no longer read)" in text
    assert re.search(r"^===== stray: pass in .*\n(.*\n)*^next phase\n===== next: pass in ", text, re.M), text[-2000:]


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
