"""`electra-fast pretrain`: the corpus that ships with Python, checkpoints, and a resume that draws what the
uninterrupted run drew."""
import argparse

import torch

from electra_fast import trainer


def _args(out, steps, resume=False):
    p = argparse.ArgumentParser()
    trainer.add_arguments(p)
    return p.parse_args(["--num-layers", "1", "--steps", str(steps), "--batch-size", "2", "--seq-len", "32",
                         "--vocab-size", "500", "--save-every", "2", "--out", str(out)] + (["--resume"] if resume else []))


def test_default_corpus_and_tokenizer():
    text = trainer.default_corpus()
    assert len(text) > 100_000
    vocab = trainer.build_vocab(text, 300)
    data = trainer.encode(text, vocab, 16)
    assert data.shape[1] == 16 and (data[:, 0] == trainer.CLS).all() and (data[:, -1] == trainer.SEP).all()
    assert data.max() < 300


def test_resume_matches_uninterrupted_run(tmp_path):
    trainer.main(_args(tmp_path / "a", 4))
    trainer.main(_args(tmp_path / "b", 2))
    trainer.main(_args(tmp_path / "b", 4, resume=True))
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], atol=1e-6), key
    assert (tmp_path / "a" / "discriminator" / "discriminator.pt").exists()


def test_two_processes_through_torchrun(tmp_path):
    import subprocess
    import sys

    if not torch.distributed.is_available():
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "electra_fast.cli",
           "pretrain", "--num-layers", "1", "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--vocab-size",
           "300", "--out", str(tmp_path / "ddp")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "ddp" / "checkpoint.pt").exists()
    assert "step 2: loss" in run.stdout


def test_step_seeds_differ_by_rank_and_step():
    seeds = {trainer.step_seed(0, step, rank) for step in range(50) for rank in range(8)}
    assert len(seeds) == 400
