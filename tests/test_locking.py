"""One writer per folder (electra_fast.locking): a second `pretrain`, `prepare` or `finetune` on a folder in use
exits 2 with one line and writes nothing while the first ends as it would have alone; a SIGKILLed holder (and
its lingering forked children) leaves no stale lock; readers of one DATA run at once; under torchrun no rank waits
on a refused one. The first process of each pair is stopped at a chosen point, with its lock held, until the test
releases it."""
import argparse
import dataclasses
import errno
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from electra_fast import locking
from electra_fast.cli import main as cli_main
from electra_fast.data import prepare
from electra_fast.finetune import cli as finetune_cli
from electra_fast.finetune import finetune
from electra_fast.pretraining import checkpoint
from electra_fast.pretraining import cli as pretrain_cli

MODEL = ["--num-layers", "1", "--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "64",
         "--embedding-size", "16", "--seq-len", "16", "--batch-size", "2", "--steps", "4", "--save-every", "2",
         "--valid-sequences", "2"]
# The subprocesses and this one compute on one thread, so that their floating-point sums are the same.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}

_PAUSED = '''
import os, sys, time
from electra_fast import cli

def pause():
    open(sys.argv[1], "w").close()
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.01)
{patch}
sys.exit(cli.main(sys.argv[3:]))
'''
AFTER_LOGGING_STEP = '''
from electra_fast.pretraining import loop
write = loop._Log.write
def paused_write(self, record):
    write(self, record)
    if record["step"] == {step}:
        pause()
loop._Log.write = paused_write
'''
AFTER_THE_FIRST_SHARD = '''
from electra_fast.data import prepare
close = prepare._ShardWriter._close
def paused_close(self, next_record):
    close(self, next_record)
    pause()  # at every shard, but only the first waits: the release stays
prepare._ShardWriter._close = paused_close
'''
BEFORE_TRAINING = '''
from electra_fast.finetune import train
train_one = train.train_one
def paused_train_one(*args, **kwargs):
    pause()
    return train_one(*args, **kwargs)
train.train_one = paused_train_one
'''


class Paused:
    """`electra-fast ARGV` in a process of its own, stopped where `patch` calls pause() (its lock held) until
    release(). Killed on leaving the `with` block if it still runs."""

    def __init__(self, folder, patch: str, argv: list):
        self.go, ready = folder / "go", folder / "ready"
        self.log = folder / "stderr.txt"
        with open(self.log, "w") as err:
            # cwd: outside the checkout, whose source folder would shadow the installed package
            self.process = subprocess.Popen([sys.executable, "-c", _PAUSED.format(patch=patch), str(ready),
                                             str(self.go), *map(str, argv)], stdout=subprocess.DEVNULL,
                                            stderr=err, cwd=folder, env=ONE_THREAD)
        while not ready.exists():
            assert self.process.poll() is None, f"ended before its pause: {self.log.read_text()[-3000:]}"
            time.sleep(0.01)

    def release(self) -> int:
        self.go.touch()
        return self.process.wait(timeout=300)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small prepared DATA (its own tokenizer) and the corpus it came from."""
    from pydoc_data import topics

    root = tmp_path_factory.mktemp("prepared")
    lines = [line for name in sorted(topics.topics)[:6] for line in topics.topics[name].splitlines() if line.strip()]
    (root / "corpus.txt").write_text("\n".join(lines[:300]) + "\n", encoding="utf-8")
    prepare.prepare([str(root / "corpus.txt")], str(root / "data"), vocab_size=300, shard_tokens=1500, workers=1,
                    progress=False)
    return root


def pretrain(*argv) -> int:
    p = argparse.ArgumentParser()
    pretrain_cli.add_arguments(p)
    return pretrain_cli.main(p.parse_args(list(map(str, argv))))


def weights(out) -> bytes:
    return (out / "discriminator" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def alone(prepared, tmp_path_factory):
    """The output folder of a pretraining run on `prepared` that nothing disturbed."""
    out = tmp_path_factory.mktemp("alone") / "run"
    assert pretrain("--data", prepared / "data", *MODEL, "--out", out) == 0
    return out


def snapshot(folder) -> dict:
    """{relative path: bytes} of every file below `folder`."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def refused(capsys, command: str, folder, holder: int):
    """The one line of a command refused because `holder` locks `folder`."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0] == (f"electra-fast {command}: error: {folder} is locked by another electra-fast process (pid "
                        f"{holder} on host {socket.gethostname()}) that is writing to it; wait for it to end, or "
                        "choose another folder")


# ------------------------------------------------------------------------------------------------------- the lock

def test_the_lock_refuses_a_second_holder_records_the_first_and_cleans_up_after_itself(tmp_path, capsys):
    folder = tmp_path / "new" / "out"
    with locking.exclusive(str(folder)):
        assert json.loads((folder / locking.LOCK).read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(locking.FolderInUse, match=re.escape(f"{folder} is locked by another electra-fast "
                                                                f"process (pid {os.getpid()} on host ")):
            with locking.exclusive(str(folder)):
                pass
    assert not (tmp_path / "new").exists()  # made for the lock and left empty: removed, with its parent
    with locking.exclusive(str(folder)):
        (folder / "result").write_text("kept")
    assert sorted(os.listdir(folder)) == [locking.LOCK, "result"]
    with locking.exclusive(str(folder)):  # free again, and the file stays where it was
        pass
    assert sorted(os.listdir(folder)) == [locking.LOCK, "result"]
    assert capsys.readouterr().err == ""


def test_a_filesystem_without_locks_is_warned_about_and_not_refused(tmp_path, monkeypatch, capsys):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(locking.fcntl, "flock", no_locks)
    with locking.exclusive(str(tmp_path / "out")):
        (tmp_path / "out" / "result").write_text("written")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the filesystem of {tmp_path / 'out'} does not support locks" in err


def test_a_killed_holder_leaves_no_lock_even_while_its_forked_children_live(tmp_path):
    folder = tmp_path / "out"
    script = (f"import multiprocessing, sys, time\nfrom electra_fast import locking\n"
              f"with locking.exclusive({str(folder)!r}):\n"
              f"    child = multiprocessing.get_context('fork').Process(target=time.sleep, args=(120,))\n"
              f"    child.start()\n    print(child.pid, flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(locking.FolderInUse):
            with locking.exclusive(str(folder)):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the child lives on, its copy of the lock closed
        with locking.exclusive(str(folder)):
            pass
    finally:
        holder.kill()
        holder.wait()
        os.kill(child, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------- the commands

def test_a_second_pretrain_on_one_out_exits_2_and_the_first_ends_as_alone(tmp_path, prepared, alone, capsys):
    out = tmp_path / "run"
    with Paused(tmp_path, AFTER_LOGGING_STEP.format(step=1), ["pretrain", "--data", prepared / "data", *MODEL,
                                                               "--out", out]) as first:
        before = snapshot(out)
        assert pretrain("--data", prepared / "data", *MODEL, "--out", out) == 2
        refused(capsys, "pretrain", out, first.process.pid)
        assert snapshot(out) == before
        assert first.release() == 0, first.log.read_text()[-3000:]
    assert weights(out) == weights(alone)


def test_two_runs_read_one_data_at_once(tmp_path, prepared, alone):
    data_before = snapshot(prepared / "data")
    with Paused(tmp_path, AFTER_LOGGING_STEP.format(step=1), ["pretrain", "--data", prepared / "data", *MODEL,
                                                               "--out", tmp_path / "one"]) as first:
        assert pretrain("--data", prepared / "data", *MODEL, "--out", tmp_path / "two") == 0
        assert first.release() == 0, first.log.read_text()[-3000:]
    assert weights(tmp_path / "one") == weights(tmp_path / "two") == weights(alone)
    assert snapshot(prepared / "data") == data_before


def test_resume_after_a_sigkill_of_the_holder_starts_at_once(tmp_path, prepared, alone):
    out = tmp_path / "run"
    argv = ["--data", prepared / "data", *MODEL, "--save-every", "1", "--out", out]
    with Paused(tmp_path, AFTER_LOGGING_STEP.format(step=3), ["pretrain", *argv]) as first:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
    assert checkpoint.latest(str(out)).endswith("step-00000002")
    assert pretrain(*argv, "--resume") == 0
    assert weights(out) == weights(alone)


def test_a_second_prepare_on_one_data_exits_2_and_the_first_ends_as_alone(tmp_path, prepared, capsys):
    argv = ["--corpus", prepared / "corpus.txt", "--tokenizer", prepared / "data" / "tokenizer", "--shard-tokens",
            "1500", "--workers", "1", "--quiet"]
    out = tmp_path / "data"
    with Paused(tmp_path, AFTER_THE_FIRST_SHARD, ["prepare", *argv, "--out", out]) as first:
        before = snapshot(out)
        assert cli_main(["prepare", *map(str, argv), "--out", str(out)]) == 2
        refused(capsys, "prepare", out, first.process.pid)
        assert snapshot(out) == before
        assert first.release() == 0, first.log.read_text()[-3000:]
    assert cli_main(["prepare", *map(str, argv), "--out", str(tmp_path / "alone")]) == 0
    mine = {k: v for k, v in snapshot(out).items() if k != locking.LOCK}
    assert mine == {k: v for k, v in snapshot(tmp_path / "alone").items() if k != locking.LOCK}


def test_a_second_finetune_on_one_out_exits_2_and_the_first_ends_as_alone(tmp_path, alone, capsys):
    pytest.importorskip("transformers")
    rows = [(f"{'red' if i % 2 else 'blue'} house number {i}", i % 2) for i in range(16)]
    (tmp_path / "task.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    argv = ["finetune", "--model", alone / "discriminator", "--task", "classification", "--train",
            tmp_path / "task.tsv", "--validation", tmp_path / "task.tsv", "--text-columns", "sentence", "--epochs",
            "1", "--batch-size", "8", "--max-length", "16", "--quiet"]
    out = tmp_path / "finetuned"
    with Paused(tmp_path, BEFORE_TRAINING, [*argv, "--out", out]) as first:
        before = snapshot(out)
        assert cli_main([*map(str, argv), "--out", str(out)]) == 2
        refused(capsys, "finetune", out, first.process.pid)
        assert snapshot(out) == before
        assert first.release() == 0, first.log.read_text()[-3000:]
    # Alone, through the library: FinetuneOptions' default log is the sys.stderr of its import, which pytest's
    # capture of an earlier test may have closed.
    p = argparse.ArgumentParser()
    finetune_cli.add_arguments(p)
    options = finetune_cli.options_from(p.parse_args([*map(str, argv[1:]), "--out", str(tmp_path / "alone")]))
    finetune(dataclasses.replace(options, log=io.StringIO()))
    assert (out / "model" / "model.safetensors").read_bytes() == \
        (tmp_path / "alone" / "model" / "model.safetensors").read_bytes()
    assert json.loads((out / "metrics.json").read_text())["runs"] == \
        json.loads((tmp_path / "alone" / "metrics.json").read_text())["runs"]


def test_under_torchrun_a_refusal_stops_every_rank(tmp_path, prepared):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path / "run"
    with locking.exclusive(str(out)):
        before = snapshot(out)
        # --standalone: a free port of its own, never one a concurrent run holds.
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "electra_fast", "pretrain", "--data", str(prepared / "data"), *map(str, MODEL),
                              "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                             env=ONE_THREAD)
        assert run.returncode != 0
        # rank 0 found the lock; rank 1, which takes none, stopped with its refusal instead of waiting for it
        assert run.stderr.count(f"error: {out} is locked by another electra-fast process (pid {os.getpid()}") == 2, \
            run.stderr[-3000:]
        assert snapshot(out) == before


def test_glue_refuses_an_out_that_another_process_writes(tmp_path, capsys):
    """The suite's OUT takes the lock too: held here (as another writer would hold it), the suite exits 2 in one
    line and writes nothing (no glue.json, no task folder)."""
    out = tmp_path / "suite"
    with locking.exclusive(str(out)):
        status = cli_main(["glue", "--data-dir", str(tmp_path / "absent"), "--model", str(tmp_path / "absent"),
                           "--out", str(out)])
        error = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(error) == 1 and "locked by another electra-fast process" in error[0]
        assert sorted(p.name for p in out.iterdir()) == [locking.LOCK]
