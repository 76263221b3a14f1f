"""`electra-fast pretrain`: corpus, tokenizer, packing, the epoch stream, the schedule, checkpoints that survive
interruption, corruption and full disks, bad input, and two processes through torchrun. Tiny models, a few steps."""
import argparse
import errno
import json
import os
import subprocess
import sys

import pytest
import torch

from electra_fast import checkpoint, data, trainer

TINY = ["--num-layers", "1", "--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "64",
        "--embedding-size", "16", "--seq-len", "24", "--batch-size", "2", "--vocab-size", "300"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(corpus file, tokenizer folder): a few help topics, one line each, and a tokenizer trained on them."""
    root = tmp_path_factory.mktemp("corpus")
    lines = [line for doc in data.default_corpus()[:4] for line in doc.splitlines() if line.strip()][:120]
    path = root / "corpus.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    data.save_tokenizer(data.train_tokenizer(lines, 300), str(root / "tokenizer"))
    return str(path), str(root / "tokenizer")


def _run(out, corpus, *extra, tokenizer=True):
    p = argparse.ArgumentParser()
    trainer.add_arguments(p)
    path, tok = corpus
    args = ["--corpus", path, *(["--tokenizer", tok] if tokenizer else []), *TINY, "--out", str(out), *extra]
    return trainer.main(p.parse_args(args))


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

def test_default_corpus_packs_into_cls_body_sep_windows():
    documents = data.default_corpus()
    assert sum(map(len, documents)) > 100_000
    tokenizer = data.train_tokenizer(documents, 300)
    ids = data.special_ids(tokenizer)
    assert list(ids) == list(data.SPECIALS) and list(ids.values()) == [0, 1, 2, 3, 4]
    packed = data.pack(documents, tokenizer, 16)
    assert packed.shape[1] == 16 and (packed[:, 0] == ids["[CLS]"]).all() and (packed[:, -1] == ids["[SEP]"]).all()
    assert 0 <= packed.min() and packed.max() < tokenizer.get_vocab_size()
    first = tokenizer.encode(documents[0], add_special_tokens=False).ids
    assert packed[:, 1:-1].reshape(-1)[:len(first)].tolist() == first  # windows continue one another
    assert packed[:, 1:-1].reshape(-1)[len(first)] == ids["[SEP]"]  # then the document separator


def test_tokenizer_round_trips_through_its_folder(tmp_path):
    documents = data.default_corpus()
    first = data.train_tokenizer(documents, 1000)
    assert first.get_vocab_size() == 1000
    data.save_tokenizer(first, str(tmp_path))
    loaded = data.load_tokenizer(str(tmp_path))
    text = "Lambda expressions are used to create anonymous functions."
    assert loaded.encode(text).ids == first.encode(text).ids
    assert loaded.encode(text).ids[0] == 2 and loaded.encode(text).ids[-1] == 3  # [CLS] ... [SEP]
    os.remove(tmp_path / "tokenizer.json")  # a BERT-style folder: vocab.txt only
    assert data.load_tokenizer(str(tmp_path)).encode(text).ids == first.encode(text).ids
    transformers = pytest.importorskip("transformers")
    data.save_tokenizer(first, str(tmp_path))
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path))(text)["input_ids"] == first.encode(text).ids


def test_corpus_from_files_folders_and_globs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("one\n\ntwo\n")
    (tmp_path / "a" / "y.txt").write_text("three four\n")
    (tmp_path / "a" / ".hidden").write_text("never\n")
    (tmp_path / "z.md").write_text("five\nsix\n")
    assert data.read_documents([str(tmp_path / "a")]) == ["one", "two", "three four"]
    assert data.read_documents([str(tmp_path / "*.md"), str(tmp_path / "a" / "y.txt")]) == ["five", "six",
                                                                                            "three four"]
    assert data.read_documents([str(tmp_path / "a")], document_per="file") == ["one\n\ntwo\n", "three four\n"]


def test_batches_visit_each_sequence_once_per_epoch_and_split_ranks():
    sequences = torch.arange(11)[:, None]  # 11 sequences: one is left out of each epoch for 2 ranks
    epochs = []
    for epoch in range(2):
        shards = []
        for rank in range(2):
            stream = data.batches(sequences, batch_size=5, seed=7, rank=rank, world_size=2, start=5 * epoch)
            shards.append(next(stream).view(-1))
        epochs.append(torch.cat(shards))
        assert len(set(epochs[-1].tolist())) == 10  # without replacement, ranks disjoint
    assert epochs[0].tolist() != epochs[1].tolist()
    whole = data.batches(sequences, batch_size=3, seed=7, rank=1, world_size=2)
    flat = torch.cat([next(whole).view(-1) for _ in range(4)])
    resumed = data.batches(sequences, batch_size=3, seed=7, rank=1, world_size=2, start=3)
    assert torch.equal(torch.cat([next(resumed).view(-1) for _ in range(3)]), flat[3:])  # spans the epoch end


def test_schedule_warms_up_then_decays_to_zero_and_decay_skips_norms_and_biases():
    lrs = [trainer.lr_multiplier(s, warmup=4, total=20) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0 and lrs[20] == 0.0
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))
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
    real_write = trainer._Log.write

    def interrupt_at_step_5(self, record):
        real_write(self, record)
        if record["step"] == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer._Log, "write", interrupt_at_step_5)
    assert _run(tmp_path / "b", corpus, "--steps", "6", "--save-every", "2", "--grad-accum", "2") == 130
    assert checkpoint.latest(tmp_path / "b").endswith("step-00000004")
    monkeypatch.setattr(trainer._Log, "write", real_write)
    assert _run(tmp_path / "b", corpus, "--steps", "6", "--save-every", "2", "--grad-accum", "2", "--resume") == 0

    a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 7))
    for key in trainer.METRICS + ("lr",):
        assert [r[key] for r in a] == [r[key] for r in b], key
    from safetensors.torch import load_file

    weights = [load_file(os.path.join(checkpoint.latest(out), checkpoint.WEIGHTS)) for out in (tmp_path / "a", tmp_path / "b")]
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
    from electra_fast import ElectraPretrainer
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
    (["--corpus", "{empty}"], "the corpus is empty"),
    (["--tokenizer", "{garbage}"], "--tokenizer: cannot read the tokenizer"),
    (["--seq-len", "600"], "--seq-len 600 exceeds the model's 512 positions"),
    (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs needs a CUDA device, got cpu"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_the_checkpoint(trained, corpus, tmp_path, capsys, bad, message):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "tokenizer.json").write_text('{"model": ')
    bad = [b.format(empty=tmp_path / "empty.txt", garbage=tmp_path / "garbage") for b in bad]
    before = _files(trained)
    p = argparse.ArgumentParser()
    trainer.add_arguments(p)
    args = p.parse_args(["--corpus", corpus[0], *TINY, "--steps", "6", "--out", str(trained), "--resume", *bad])
    assert trainer.main(args) == 2
    _refused(capsys, message)
    assert _files(trained) == before


# ------------------------------------------------------------------------------------------------ several processes

def test_two_processes_through_torchrun(tmp_path, corpus):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "electra_fast", "pretrain",
           "--corpus", corpus[0], *TINY, "--steps", "2", "--out", str(tmp_path / "ddp")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert checkpoint.latest(tmp_path / "ddp").endswith("step-00000002")
    assert "step 2: loss" in run.stdout
    assert [r["step"] for r in _log(tmp_path / "ddp")] == [1, 2]
