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
