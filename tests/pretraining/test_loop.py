"""`electra-fast pretrain`: the tokenizer, the schedule, validation, checkpoints that survive interruption (SIGKILL
too), corruption and full disks, extending a run, bad input, log lines that average the steps between them without
the steps waiting for the device, and two processes through torchrun. Tiny models, a few steps. The data it reads
(prepare, the window order) is tested in test_prepare.py."""
import argparse
import errno
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from electra_fast.data import shards
from electra_fast.pretraining import checkpoint
from electra_fast.pretraining import cli as pretrain_cli
from electra_fast.pretraining import loop as trainer
from electra_fast.pretraining.objectives import ElectraPretrainer

from helpers import interrupted_at_step

TINY = ["--num-layers", "1", "--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "64",
        "--embedding-size", "16", "--seq-len", "24", "--batch-size", "2", "--vocab-size", "300"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(corpus file, tokenizer folder): a few help topics, one line each, and a tokenizer trained on them."""
    root = tmp_path_factory.mktemp("corpus")
    from pydoc_data import topics

    lines = [line for name in sorted(topics.topics)[:4] for line in topics.topics[name].splitlines()
             if line.strip()][:120]
    path = root / "corpus.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    shards.save_tokenizer(shards.train_tokenizer(lines, 300), str(root / "tokenizer"))
    return str(path), str(root / "tokenizer")


def _run(out, corpus, *extra, tokenizer=True):
    p = argparse.ArgumentParser()
    pretrain_cli.add_arguments(p)
    path, tok = corpus
    args = ["--corpus", path, *(["--tokenizer", tok] if tokenizer else []), *TINY, "--out", str(out), *extra]
    return pretrain_cli.main(p.parse_args(args))


def _log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _files(out):
    """{relative path: bytes} of everything under out/checkpoints and out/latest."""
    found = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, out)
            if rel == "latest" or rel.startswith("checkpoints"):
                found[rel] = open(path, "rb").read()
    return found


# ------------------------------------------------------------------------------------------------------------- data

def test_tokenizer_round_trips_through_its_folder(tmp_path):
    from pydoc_data import topics

    documents = list(topics.topics.values())
    first = shards.train_tokenizer(documents, 1000)
    assert first.get_vocab_size() == 1000
    shards.save_tokenizer(first, str(tmp_path))
    loaded = shards.load_tokenizer(str(tmp_path))
    text = "Lambda expressions are used to create anonymous functions."
    assert loaded.encode(text).ids == first.encode(text).ids
    assert loaded.encode(text).ids[0] == 2 and loaded.encode(text).ids[-1] == 3  # [CLS] ... [SEP]
    os.remove(tmp_path / "tokenizer.json")  # a BERT-style folder: vocab.txt only
    assert shards.load_tokenizer(str(tmp_path)).encode(text).ids == first.encode(text).ids
    transformers = pytest.importorskip("transformers")
    shards.save_tokenizer(first, str(tmp_path))
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path))(text)["input_ids"] == first.encode(text).ids


def test_corpus_from_files_folders_and_globs(tmp_path):
    from electra_fast.data import corpus

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("one\n\ntwo\n")
    (tmp_path / "a" / "y.txt").write_text("three four\n")
    (tmp_path / "a" / ".hidden").write_text("never\n")
    (tmp_path / "z.md").write_text("five\nsix\n")

    def documents(paths, **reading):
        return [r.text for r in corpus.CorpusReader(corpus.find_sources(paths), **reading) if r.text.strip()]

    assert documents([str(tmp_path / "a")]) == ["one", "two", "three four"]
    assert documents([str(tmp_path / "*.md"), str(tmp_path / "a" / "y.txt")]) == ["five", "six", "three four"]
    assert documents([str(tmp_path / "a")], document_per="file") == ["one\n\ntwo\n", "three four\n"]


def test_schedule_warms_up_then_decays_to_zero_and_decay_skips_norms_and_biases():
    lrs = [trainer.lr_multiplier(s, warmup=4, total=20) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0 and lrs[20] == 0.0
    assert all(a > b for a, b in itertools.pairwise(lrs[4:]))
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    decayed, plain = trainer._adamw(model, 1e-3, 0.01).param_groups
    assert decayed["weight_decay"] == 0.01 and [p.shape for p in decayed["params"]] == [(3, 3)]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3


def test_step_seeds_differ_by_rank_and_step():
    seeds = {trainer.step_seed(0, step, rank) for step in range(50) for rank in range(8)}
    assert len(seeds) == 400


# ------------------------------------------------------------------------------------------------------ checkpoints

def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, corpus, monkeypatch):
    assert _run(tmp_path / "a", corpus, "--steps", "6", "--save-every", "2", "--grad-accum", "2") == 0
    with interrupted_at_step(monkeypatch, 5):
        assert _run(tmp_path / "b", corpus, "--steps", "6", "--save-every", "2", "--grad-accum", "2") == 130
    assert checkpoint.latest(tmp_path / "b").endswith("step-00000004")
    assert _run(tmp_path / "b", corpus, "--steps", "6", "--save-every", "2", "--grad-accum", "2", "--resume") == 0

    a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 7))
    for key in ElectraPretrainer.metric_names() + ("lr",):
        assert json.dumps([r[key] for r in a]) == json.dumps([r[key] for r in b]), key  # NaN-safe
    from safetensors.torch import load_file

    weights = [load_file(os.path.join(checkpoint.latest(out), checkpoint.WEIGHTS))
               for out in (tmp_path / "a", tmp_path / "b")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["step-00000004", "step-00000006"]  # --keep 2
    assert (tmp_path / "a" / "discriminator" / "model.safetensors").exists()
    assert (tmp_path / "a" / "discriminator" / "tokenizer.json").exists()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "a" / "loss.png").stat().st_size > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """A finished 4-step run (checkpoints at steps 2 and 4), its tokenizer trained by the command itself."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert _run(out, corpus, "--steps", "4", "--save-every", "2", tokenizer=False) == 0
    return out


def _refused(capsys, *message):
    """The command printed one line of error (besides its progress bar) containing each part of `message`."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("pretrain:")]
    assert len(lines) == 1 and lines[0].startswith("electra-fast pretrain: error:"), lines
    err = lines[0]
    for part in message:
        assert part in err, err


def test_checkpoint_of_another_configuration_is_refused(trained, corpus, capsys):
    before = _files(trained)
    assert _run(trained, corpus, "--steps", "4", "--lr", "1e-3", "--resume", tokenizer=False) == 2
    _refused(capsys, "another configuration", "lr: 0.0005 in the checkpoint, 0.001 now")
    assert _run(trained, corpus, "--steps", "4", tokenizer=False) == 2  # a fresh run would overwrite it
    _refused(capsys, "already holds a checkpoint", "--resume")
    assert _files(trained) == before


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_damaged_checkpoint_is_refused_and_the_previous_one_still_loads(tmp_path, trained, corpus, capsys, damage):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    newest = checkpoint.latest(out)
    if damage == "truncated":
        weights = os.path.join(newest, checkpoint.WEIGHTS)
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) // 2)
        expected = ("corrupt", "model.safetensors")
    else:
        os.remove(os.path.join(newest, checkpoint.MANIFEST))
        expected = ("not an electra-fast checkpoint",)
    before = _files(out)
    assert _run(out, corpus, "--steps", "6", "--resume", tokenizer=False) == 2
    _refused(capsys, *expected)
    assert _files(out) == before
    # the previous checkpoint loads
    config = checkpoint.read_manifest(os.path.join(out, "checkpoints", "step-00000002"))["config"]
    model = _model_of(config)
    state = checkpoint.load(os.path.join(out, "checkpoints", "step-00000002"), model, config, torch.device("cpu"))
    assert state["step"] == 2 and state["sequences_consumed"] == 4 and "optimizer" in state


def _model_of(config):
    from electra_fast.models import Discriminator, EncoderConfig, Generator

    gen, disc = (EncoderConfig(**config["model"][k]) for k in ("generator", "discriminator"))
    return ElectraPretrainer(Generator(gen), Discriminator(disc), mask_token_id=4, vocab_size=disc.vocab_size)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, corpus, monkeypatch, capsys):
    real_save_model, calls = checkpoint.save_model, []

    def disk_full_on_second_save(model, path):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real_save_model(model, path)

    monkeypatch.setattr(checkpoint, "save_model", disk_full_on_second_save)
    out = tmp_path / "run"
    assert _run(out, corpus, "--steps", "4", "--save-every", "2") == 2
    _refused(capsys, "step 4", "No space left on device", "previous checkpoint is kept")
    assert checkpoint.latest(out).endswith("step-00000002")
    assert os.listdir(out / "checkpoints") == ["step-00000002"]  # the partial folder is gone
    monkeypatch.setattr(checkpoint, "save_model", real_save_model)
    assert _run(out, corpus, "--steps", "4", "--save-every", "2", "--resume") == 0
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]


@pytest.mark.parametrize("bad, message", [
    (["--corpus", "missing.txt"], "--corpus: no such file or folder: missing.txt"),
    (["--corpus", "{empty}"], "holds data prepared otherwise (sources"),
    (["--tokenizer", "{garbage}"], "--tokenizer: cannot read the tokenizer"),
    (["--seq-len", "600"], "--seq-len 600 exceeds the model's 512 positions"),
    (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    (["--vocab-size", "3"], "--vocab-size must be more than the 5 special tokens, got 3"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--steps", "3"], "--steps 3 is below the 4 steps of the run"),
    (["--valid-fraction", "1.5"], "--valid-fraction must be in [0, 1), got 1.5"),
    (["--eval-every", "-1"], "--eval-every must be at least 0, got -1"),
    (["--log-every", "0"], "--log-every must be at least 1, got 0"),
    (["--hidden-size", "33"], "--hidden-size 33 must be a multiple of --num-heads 2"),
    (["--max-flops", "-1"], "--max-flops must be a finite number > 0"),
    (["--max-flops", "10"], "--max-flops 10 pays for no step"),
    (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs needs a CUDA device, got cpu"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_the_checkpoint(trained, corpus, tmp_path, capsys, bad, message):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "tokenizer.json").write_text('{"model": ')
    bad = [b.format(empty=tmp_path / "empty.txt", garbage=tmp_path / "garbage") for b in bad]
    before = _files(trained)
    p = argparse.ArgumentParser()
    pretrain_cli.add_arguments(p)
    args = p.parse_args(["--corpus", corpus[0], *TINY, "--steps", "6", "--out", str(trained), "--resume", *bad])
    assert pretrain_cli.main(args) == 2
    _refused(capsys, message)
    assert _files(trained) == before


def _final_weights(out):
    from safetensors.torch import load_file

    return load_file(os.path.join(checkpoint.latest(out), checkpoint.WEIGHTS))


def test_run_killed_at_random_moments_resumes_bit_identical(tmp_path, corpus):
    """SIGKILL twice, the first as soon as a random checkpoint exists, the second at a random moment after another,
    then --resume: the run ends as one left alone."""
    argv = [sys.executable, "-m", "electra_fast", "pretrain", "--corpus", corpus[0], "--tokenizer", corpus[1], *TINY,
            "--steps", "12", "--save-every", "1", "--valid-sequences", "3", "--eval-every", "3"]
    # cwd: outside the checkout, whose source folder would shadow the installed package (no extension, no kernels)
    subprocess.run([*argv, "--out", str(tmp_path / "alone")], check=True, capture_output=True, timeout=300,
                   cwd=tmp_path)
    out, rng, killed_at = tmp_path / "killed", np.random.default_rng(), []

    def checkpointed_step():
        latest = checkpoint.latest(out)
        return int(latest.rsplit("-", 1)[1]) if latest else 0

    for kill, target in enumerate(sorted(rng.choice(np.arange(2, 8), size=2, replace=False))):
        process = subprocess.Popen([*argv, "--out", str(out), "--resume"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, cwd=tmp_path)
        deadline = time.monotonic() + 120
        while checkpointed_step() < target and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.002)
        if kill:  # the second anywhere in the next steps, or in the middle of writing a checkpoint
            time.sleep(rng.uniform(0, 0.2))
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at.append(checkpointed_step())
    assert killed_at[0] < 12, "the first kill came after the run had ended"
    subprocess.run([*argv, "--out", str(out), "--resume"], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    alone, resumed = _final_weights(tmp_path / "alone"), _final_weights(out)
    assert alone.keys() == resumed.keys() and all(torch.equal(alone[k], resumed[k]) for k in alone)

    def without_speed(log):
        return [{k: v for k, v in record.items() if k != "tokens_per_s"} for record in log]

    assert without_speed(_log(out)) == without_speed(_log(tmp_path / "alone"))


def test_extending_a_run_recomputes_the_decay_and_says_so(tmp_path, trained, corpus, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    assert _run(out, corpus, "--steps", "7", "--resume", tokenizer=False) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("--resume:")]
    assert err == ["--resume: extending the run from 4 to 7 steps; the learning rate now decays to 0 at step 7"]
    log = _log(out)
    assert [r["step"] for r in log] == list(range(1, 8))
    warmup = 1  # the 4-step run's default, kept
    assert [r["lr"] for r in log[4:]] == pytest.approx(
        [5e-4 * trainer.lr_multiplier(s, warmup=warmup, total=7) for s in range(4, 7)], rel=1e-12)
    assert checkpoint.read_manifest(checkpoint.latest(out))["config"]["steps"] == 7


def test_a_steps_discriminator_metrics_are_those_of_all_its_micro_batches_together(tmp_path, corpus, monkeypatch):
    sklearn = pytest.importorskip("sklearn.metrics")
    from electra_fast.ops import api

    seen = []
    rtd_loss = api.rtd_loss

    def spy(logits, is_replaced, weight):
        seen.append((logits.detach().reshape(-1).double(), is_replaced.reshape(-1), weight.reshape(-1) != 0))
        return rtd_loss(logits, is_replaced, weight)

    monkeypatch.setattr(api, "rtd_loss", spy)
    assert _run(tmp_path, corpus, "--steps", "1", "--grad-accum", "3", "--eval-every", "0") == 0
    [record] = _log(tmp_path)
    assert len(seen) == 3
    logits = torch.cat([x[w] for x, _, w in seen]).numpy()
    labels = torch.cat([y[w] for _, y, w in seen]).numpy()
    assert abs(record["disc_auc"] - sklearn.roc_auc_score(labels, logits)) <= 0.005
    assert record["disc_recall"] == pytest.approx(sklearn.recall_score(labels, logits > 0), abs=1e-12)
    assert record["disc_precision"] == pytest.approx(
        sklearn.precision_score(labels, logits > 0, zero_division=float("nan")), abs=1e-12, nan_ok=True)
    per_batch = [((x[w] > 0) == y[w]).double().mean().item() for x, y, w in seen]
    assert record["disc_accuracy"] == pytest.approx(sum(per_batch) / 3, abs=1e-6)


def test_validation_is_logged_repeatable_and_leaves_training_unchanged(tmp_path, corpus):
    assert _run(tmp_path / "a", corpus, "--steps", "4", "--valid-sequences", "5", "--eval-every", "2") == 0
    assert _run(tmp_path / "b", corpus, "--steps", "4", "--valid-sequences", "5", "--eval-every", "0") == 0
    a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [sorted(k for k in r if k.startswith("valid_")) for r in a] == [[], [f"valid_{m}" for m in sorted(
        ElectraPretrainer.metric_names())], [], [f"valid_{m}" for m in sorted(ElectraPretrainer.metric_names())]]
    assert not any(k.startswith("valid_") for r in b for k in r)
    for key in ElectraPretrainer.metric_names():
        assert json.dumps([r[key] for r in a]) == json.dumps([r[key] for r in b]), key  # NaN-safe
    assert a[1]["valid_mlm_loss"] != a[3]["valid_mlm_loss"]  # the model changed between the two validations
    assert _run(tmp_path / "c", corpus, "--steps", "2", "--valid-sequences", "5", "--eval-every", "2") == 0
    assert _log(tmp_path / "c")[1]["valid_mlm_loss"] == a[1]["valid_mlm_loss"]


def test_flops_are_logged_bound_the_run_and_mark_exports(tmp_path, corpus, capsys):
    from electra_fast.models import EncoderConfig
    from electra_fast.pretraining import flops

    assert _run(tmp_path / "a", corpus, "--steps", "2") == 0
    config = checkpoint.read_manifest(checkpoint.latest(tmp_path / "a"))["config"]["model"]
    per_step = 2 * flops.electra_train_flops(EncoderConfig(**config["generator"]),
                                             EncoderConfig(**config["discriminator"]), 24, masked_fraction=0.15)
    assert [(r["flops"], r["total_flops"]) for r in _log(tmp_path / "a")] == [(per_step, per_step),
                                                                             (per_step, 2 * per_step)]
    assert [r["tokens"] for r in _log(tmp_path / "a")] == [2 * 24, 4 * 24]  # positions trained on: batch 2 x 24
    capsys.readouterr()
    milestones = [per_step / 2, per_step * 0.75, 2 * per_step, 9 * per_step]  # two in step 1, one past the end
    assert _run(tmp_path / "b", corpus, "--max-flops", str(3.5 * per_step), "--export-at-flops",
                *map(str, milestones), "--save-every", "10") == 0
    err = capsys.readouterr().err
    assert f"3 steps of {per_step:.3g} FLOPs" in err and f"{9 * per_step:g} lie past the run's" in err
    assert [r["step"] for r in _log(tmp_path / "b")] == [1, 2, 3]
    for milestone, step in zip(milestones[:3], (1, 1, 2), strict=True):  # the fourth lies past the end
        exported = json.loads((tmp_path / "b" / "exports" / f"flops-{milestone:g}" / "config.json").read_text())
        assert (exported["pretraining_step"], exported["pretraining_flops"]) == (step, step * per_step)
    assert len(os.listdir(tmp_path / "b" / "exports")) == 3
    final = json.loads((tmp_path / "b" / "discriminator" / "config.json").read_text())
    assert final["pretraining_flops"] == 3 * per_step
    # Both runs in one figure against FLOPs: `electra-fast plot` reads what pretrain logged.
    from electra_fast.cli import main as cli_main

    figure = tmp_path / "runs.png"
    assert cli_main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--x", "flops", "--metrics", "loss",
                     "disc_accuracy", "--out", str(figure)]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluation_leaves_the_random_state_and_the_mode_as_it_found_them(tmp_path, corpus):
    from electra_fast.data import prepare

    prepare.prepare([corpus[0]], str(tmp_path / "data"), tokenizer_dir=corpus[1], progress=False)
    windows = shards.TokenData(str(tmp_path / "data")).windows(24, valid_sequences=5)
    model = ElectraPretrainer.from_preset("small", vocab_size=300, mask_token_id=4, num_layers=1, hidden_size=32,
                                          num_heads=2, intermediate_size=64, embedding_size=16)
    torch.manual_seed(3)
    torch.rand(1)
    before = torch.get_rng_state()
    metrics = trainer._evaluate(model, windows, 2, False, 0, trainer._Distributed("cpu"))
    assert torch.equal(torch.get_rng_state(), before) and model.training
    assert set(metrics) == set(ElectraPretrainer.metric_names()) and metrics == trainer._evaluate(
        model, windows, 2, False, 0, trainer._Distributed("cpu"))  # a fixed seed: the same masks every time


def test_pretrain_on_prepared_data_refuses_bad_data(tmp_path, corpus, capsys):
    from electra_fast.data import prepare

    folder = tmp_path / "data"
    prepare.prepare([corpus[0]], str(folder), tokenizer_dir=corpus[1], shard_tokens=500, progress=False)
    p = argparse.ArgumentParser()
    pretrain_cli.add_arguments(p)

    def pretrain(*extra):
        return pretrain_cli.main(p.parse_args(["--data", str(folder), *TINY, "--steps", "2", "--out",
                                          str(tmp_path / "run"), *extra]))

    other = tmp_path / "other-tokenizer"
    shards.save_tokenizer(shards.train_tokenizer(["some other text entirely"] * 20, 200), str(other))
    assert pretrain("--tokenizer", str(other)) == 2
    _refused(capsys, "--tokenizer", shards.tokenizer_fingerprint(shards.load_tokenizer(str(other))),
             shards.tokenizer_fingerprint(shards.load_tokenizer(corpus[1])))
    assert pretrain("--corpus", corpus[0]) == 2
    _refused(capsys, "--data and --corpus")
    shard = folder / "shard-00001.bin"
    original = shard.read_bytes()
    shard.write_bytes(original[:7] + bytes([original[7] ^ 4]) + original[8:])
    assert pretrain() == 2
    _refused(capsys, "shard-00001.bin is corrupt")
    assert checkpoint.latest(tmp_path / "run") is None
    shard.write_bytes(original)
    os.remove(folder / "index.json")
    assert pretrain() == 2
    _refused(capsys, "no index.json")
    assert pretrain("--data", str(tmp_path / "missing")) == 2
    _refused(capsys, "missing")


# ---------------------------------------------------------------------------------------------------------- logging

# Tensor methods that read a value on the host: on a GPU each waits for all the work queued before it.
_HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")
# Where the model's forward (DDP's too), its backward and the optimizer run: their reads are not the loop's (the
# ops' value checks, which settings.set_value_checks turns off; the optimizer's step counts, which live on the CPU).
_NOT_THE_LOOP = tuple(os.path.join("torch", *part.split("/"), "")
                      for part in ("nn/modules", "nn/parallel", "autograd", "optim"))


def _steps_seen(monkeypatch) -> dict:
    """{"step": the 1-based step the loop is training}, kept up to date through trainer.step_seed, which the loop
    calls first in each step."""
    current = {"step": None}
    real_step_seed = trainer.step_seed

    def step_seed(base, step, rank):
        current["step"] = step + 1
        return real_step_seed(base, step, rank)

    monkeypatch.setattr(trainer, "step_seed", step_seed)
    return current


def _loop_host_reads(monkeypatch) -> dict:
    """{step: [(what, function)]} filled as `electra-fast pretrain` runs in this process: every host read the
    training loop makes (in the code of trainer._pretrain and what it calls, not inside the model's forward or
    backward or the optimizer), and every blocking copy to a device that electra-fast's own code in the loop asks
    for (on a GPU it waits like a read; torch's `.to(device)` of a tensor already there is no copy), by the step
    in which it happened. The thread that prepares the batches is not the loop."""
    import threading

    loop_thread, current, reads = threading.get_ident(), _steps_seen(monkeypatch), {}
    package = os.path.join(os.path.dirname(trainer.__file__), "")

    def made_by_the_loop(own_code_only: bool):
        """The name of the function that called the spied method if the loop made the call, else None."""
        frame = sys._getframe(3)  # above this function, record and the spy: the caller of the spied method
        caller = frame.f_code.co_name
        if own_code_only and not frame.f_code.co_filename.startswith(package):
            return None
        while frame is not None:
            if frame.f_code is trainer._pretrain.__code__:
                return caller
            if any(part in frame.f_code.co_filename for part in _NOT_THE_LOOP):
                return None
            frame = frame.f_back
        return None

    def record(what, own_code_only=False):
        if threading.get_ident() == loop_thread and current["step"] is not None:
            caller = made_by_the_loop(own_code_only)
            if caller is not None:
                reads.setdefault(current["step"], []).append((what, caller))

    def spy(name, real):
        def spied(*args, **kwargs):
            record(name)
            return real(*args, **kwargs)
        return spied

    for name in _HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.cuda, "synchronize", spy("torch.cuda.synchronize", torch.cuda.synchronize))
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        to_a_device = any(isinstance(a, (torch.device, str)) for a in args) or "device" in kwargs
        if to_a_device and not kwargs.get("non_blocking", any(a is True for a in args)):
            record("blocking to(device)", own_code_only=True)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    return reads


def test_the_loop_waits_for_the_device_only_at_the_steps_it_logs(tmp_path, corpus, monkeypatch):
    """Steps 1, 2, 4 and 5 write no line and read nothing on the host: on a GPU they queue their work and go on."""
    reads = _loop_host_reads(monkeypatch)
    assert _run(tmp_path, corpus, "--steps", "7", "--log-every", "3", "--grad-accum", "2", "--save-every", "100",
                "--eval-every", "0") == 0
    assert sorted(reads) == [3, 6, 7], reads  # no read in the other steps, some in each logged one
    assert [r["step"] for r in _log(tmp_path)] == [3, 6, 7]  # every 3 steps, and the last


def test_a_line_averages_the_steps_since_the_previous_one_and_a_resume_keeps_them(tmp_path, corpus, monkeypatch):
    """Lines every 4 steps, and at the checkpoints (every 5), the validations (every 6) and the last step (9):
    each metric is the mean over the steps since the previous line of what lines at every step log, the
    discriminator's AUC, precision and recall are those of all their micro-batches' tokens together, the other
    fields are those of the line's step; a run interrupted after step 6 resumes at step 5 to the same lines."""
    from electra_fast.ops import api
    from electra_fast.pretraining import rtd_metrics

    flags = ["--steps", "9", "--grad-accum", "2", "--save-every", "5", "--valid-sequences", "3", "--eval-every", "6"]
    assert _run(tmp_path / "every", corpus, *flags, "--log-every", "1") == 0
    current, scored = _steps_seen(monkeypatch), {}
    real_rtd_loss = api.rtd_loss

    def rtd_loss(logits, is_replaced, weight):
        if torch.is_grad_enabled():  # a training step's micro-batch, not validation
            counted = weight.reshape(-1) != 0
            scored.setdefault(current["step"], []).append(
                (logits.detach().reshape(-1)[counted].clone(), is_replaced.reshape(-1)[counted].bool()))
        return real_rtd_loss(logits, is_replaced, weight)

    monkeypatch.setattr(api, "rtd_loss", rtd_loss)
    assert _run(tmp_path / "windows", corpus, *flags, "--log-every", "4") == 0
    monkeypatch.setattr(api, "rtd_loss", real_rtd_loss)

    every, windows = {r["step"]: r for r in _log(tmp_path / "every")}, _log(tmp_path / "windows")
    assert [r["step"] for r in windows] == [4, 5, 6, 8, 9]
    first = 1
    for record in windows:
        steps = range(first, record["step"] + 1)
        first = record["step"] + 1
        same_step = every[record["step"]]
        assert record.keys() == same_step.keys()  # valid_* at 6 and 9 only
        for key in ("lr", "tokens", "flops", "total_flops", *(k for k in record if k.startswith("valid_"))):
            assert json.dumps(record[key]) == json.dumps(same_step[key]), (record["step"], key)  # NaN-safe
        for key in (*ElectraPretrainer.averaged_fields(), "grad_norm"):
            mean = sum(every[s][key] for s in steps) / len(steps)
            assert record[key] == pytest.approx(mean, rel=1e-12, abs=1e-15), (record["step"], key)
        assert math.isfinite(record["tokens_per_s"]) and record["tokens_per_s"] > 0
        # The discriminator's metrics of the window's tokens pooled: the AUC of their one histogram (how training
        # measures it, test_rtd_metrics.py checks it against the exact one), the precision and the recall in
        # float64 (0 is an edge of the bins: they are exact), a logit above 0 the prediction "replaced".
        batches = [batch for s in steps for batch in scored[s]]
        assert len(batches) == 2 * len(steps)  # --grad-accum 2
        logits = torch.cat([x for x, _ in batches])
        replaced = torch.cat([y for _, y in batches])
        pooled = rtd_metrics.logit_histogram(logits, replaced, torch.ones_like(replaced))
        assert record["disc_auc"] == pytest.approx(rtd_metrics.from_histogram(pooled)["auc"], abs=1e-12)
        predicted = logits.double() > 0
        true_positives = (predicted & replaced).sum().item()
        assert record["disc_recall"] == pytest.approx(true_positives / replaced.sum().item(), abs=1e-12)
        precision = true_positives / predicted.sum().item() if predicted.any() else math.nan
        assert record["disc_precision"] == pytest.approx(precision, abs=1e-12, nan_ok=True)

    out = tmp_path / "resumed"
    with interrupted_at_step(monkeypatch, 6):
        assert _run(out, corpus, *flags, "--log-every", "4") == 130
    assert checkpoint.latest(out).endswith("step-00000005")
    assert _run(out, corpus, *flags, "--log-every", "4", "--resume") == 0

    def without_speed(log):
        return [{k: v for k, v in record.items() if k != "tokens_per_s"} for record in log]

    assert json.dumps(without_speed(_log(out))) == json.dumps(without_speed(windows))  # NaN-safe


# ------------------------------------------------------------------------------------------------ several processes

def test_two_processes_through_torchrun(tmp_path, corpus):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    # --standalone: a free port of its own, never one a concurrent run holds.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "electra_fast",
           "pretrain", "--corpus", corpus[0], *TINY, "--steps", "2", "--out", str(tmp_path / "ddp")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert checkpoint.latest(tmp_path / "ddp").endswith("step-00000002")
    assert "step 2: loss" in run.stdout
    log = _log(tmp_path / "ddp")
    assert [r["step"] for r in log] == [1, 2]
    # Counts summed over the processes; validation over both shares (one may be empty), on every rank.
    assert all(0 <= log[-1][k] <= 1 for k in ("disc_auc", "disc_recall", "valid_disc_auc", "valid_disc_recall"))


def test_mlm_objective_counts_its_own_flops_logs_its_metrics_and_resumes_only_as_mlm(tmp_path, corpus, capsys):
    from electra_fast.models import EncoderConfig
    from electra_fast.pretraining import flops

    assert _run(tmp_path, corpus, "--objective", "mlm", "--steps", "2") == 0
    config = checkpoint.read_manifest(checkpoint.latest(tmp_path))["config"]
    assert config["objective"] == "mlm" and set(config["model"]) == {"encoder"}
    assert config["model"]["encoder"]["hidden_size"] == 32  # TINY's discriminator width, not its generator's
    per_step = 2 * flops.encoder_train_flops(EncoderConfig(**config["model"]["encoder"]), 24, masked_fraction=0.15)
    log = _log(tmp_path)
    assert [r["flops"] for r in log] == [per_step, per_step]
    assert {"loss", "mlm_loss", "mlm_accuracy"} <= set(log[-1]) and "rtd_loss" not in log[-1]
    exported = json.loads((tmp_path / "discriminator" / "config.json").read_text())
    assert exported["architectures"] == ["ElectraForMaskedLM"] and exported["pretraining_flops"] == 2 * per_step
    capsys.readouterr()
    assert _run(tmp_path, corpus, "--objective", "electra", "--steps", "3", "--resume") == 2
    assert "objective" in capsys.readouterr().err


def test_built_in_pair_takes_embedding_sharing_none_and_resumes_only_so(tmp_path, corpus, capsys):
    from safetensors.torch import load_file

    assert _run(tmp_path, corpus, "--embedding-sharing", "none", "--steps", "2") == 0
    latest = checkpoint.latest(tmp_path)
    assert checkpoint.read_manifest(latest)["config"]["model"]["embedding_sharing"] == "none"
    weights = load_file(os.path.join(latest, "model.safetensors"))
    gen, disc = (weights[f"{m}.encoder.embeddings.word.weight"] for m in ("generator", "discriminator"))
    assert gen.shape == disc.shape and not torch.equal(gen, disc)  # two matrices, each trained by its own loss
    capsys.readouterr()
    assert _run(tmp_path, corpus, "--steps", "3", "--resume") == 2
    assert "embedding_sharing" in capsys.readouterr().err


def test_tensorboard_events_hold_every_logged_scalar_and_a_resume_purges_dropped_steps(tmp_path, corpus,
                                                                                       monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from helpers import interrupted_at_step

    out = tmp_path / "run"
    with interrupted_at_step(monkeypatch, 3):
        assert _run(out, corpus, "--steps", "4", "--save-every", "2", "--eval-every", "2", "--tensorboard") == 130
    assert _run(out, corpus, "--steps", "4", "--save-every", "2", "--eval-every", "2", "--tensorboard",
                "--resume") == 0
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    log = _log(out)
    assert all(r["grad_norm"] > 0 for r in log)
    for name in ("loss", "rtd_loss", "disc_accuracy", "lr", "grad_norm", "total_flops", "tokens"):
        assert [(e.step, e.value) for e in events.Scalars(f"train/{name}")] == \
            [(r["step"], pytest.approx(r[name], rel=1e-6)) for r in log], name
    assert [e.step for e in events.Scalars("valid/loss")] == [2, 4]
    assert events.Scalars("valid/loss")[-1].value == pytest.approx(log[-1]["valid_loss"], rel=1e-6)


def test_tensorboard_without_the_package_fails_fast_in_one_line(tmp_path, corpus, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert _run(tmp_path / "run", corpus, "--tensorboard") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "--tensorboard needs the tensorboard package: pip install 'electra-fast[tensorboard]'")
    assert not (tmp_path / "run").exists()
