"""Test helpers: relative error, the near-tie-aware sample comparison of contract §3, fresh head inputs, a padded
batch of sequences, an interrupted pretraining run."""
import contextlib
import os

import torch

from electra_fast.ops.numerics import relative_error as rel_err  # noqa: F401
from electra_fast.ops.numerics import sample_mismatches

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout's root


def assert_samples_match(got, want, logits, targets=None, **kwargs):
    """Samples must be equal except at near-ties (see electra_fast.ops.numerics.sample_mismatches)."""
    bad = sample_mismatches(got, want, logits, targets, **kwargs)
    assert not bad, f"{len(bad)} rows differ beyond a near-tie, first (row, got, reference): {bad[:5]}"


def head_inputs(n, h, v, *, dtype=torch.float32, device="cpu", bias=True, ignored_every=0, scale=1.0,
                generator=None):
    """Fresh random head inputs: hidden [n, h], weight [v, h], bias [v] | None, targets [n] (every k-th ignored)."""
    hidden = torch.randn(n, h, generator=generator).to(dtype=dtype, device=device)
    weight = (torch.randn(v, h, generator=generator) * scale / h**0.5).to(dtype=dtype, device=device)
    b = (torch.randn(v, generator=generator) * 0.1).to(dtype=dtype, device=device) if bias else None
    targets = torch.randint(0, v, (n,), generator=generator)
    if ignored_every:
        targets[::ignored_every] = -100
    return hidden, weight, b, targets.to(device)


def flat_output(out) -> torch.Tensor:
    """A pretrainer's output, detached, as one float64 vector, so that two steps' outputs compare in one
    assertion: every 0-dim field, and of each [classes, bins] histogram the counts per class below and above its
    middle edge (a compiled step's logits may differ from eager's in the last bits, and a token then falls in the
    next bin; not across 0)."""
    def flat(v):
        if v.dim() == 0:
            return v.detach().double().reshape(1)
        halves = v.detach().double().view(v.shape[0], 2, -1).sum(-1)
        return halves.reshape(-1)

    return torch.cat([flat(v) for v in out])


def padded_batch(lengths, t: int, vocab: int, *, cls: int, sep: int, pad: int, seed: int = 0):
    """(ids [B, T] int64, attention_mask [B, T] int64) for rows of `lengths` (B = len(lengths)): random ids in
    [5, vocab) between [CLS] and [SEP], right-padded with `pad`."""
    b = len(lengths)
    ids = torch.randint(5, vocab, (b, t), generator=torch.Generator().manual_seed(seed))
    lengths = torch.as_tensor(lengths)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    ids[:, 0] = cls
    ids[torch.arange(b), lengths - 1] = sep
    return ids.masked_fill(mask == 0, pad), mask


def fit_fixed_batch(model, ids, mask, steps: int, lr: float = 3e-3) -> list:
    """The outputs of `steps` AdamW steps of `model` on one batch, the masking seeds alternating 0, 1."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    outputs = []
    for step in range(steps):
        torch.manual_seed(step % 2)
        out = model(ids, mask)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        outputs.append(out)
    return outputs


@contextlib.contextmanager
def interrupted_at_step(monkeypatch, step: int):
    """Inside the block, `electra-fast pretrain` stops as at Ctrl-C right after logging `step`."""
    from electra_fast.pretraining import loop

    real_write = loop._Log.write

    def interrupt(self, record):
        real_write(self, record)
        if record["step"] == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop._Log, "write", interrupt)
    try:
        yield
    finally:
        monkeypatch.setattr(loop._Log, "write", real_write)


TINY_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64)
# Every Hugging Face family electra-fast knows, DeBERTa-v2 with its three heads: legacy, legacy with an embedding
# projection, non-legacy. name -> (model_type, config fields beyond TINY_SIZES).
TINY_FAMILIES = {"bert": ("bert", {}), "roberta": ("roberta", {}), "xlm-roberta": ("xlm-roberta", {}),
                 "deberta-v3": ("deberta-v2", dict(relative_attention=True, position_biased_input=False,
                                                   pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                                                   position_buckets=16)),
                 "deberta-v2-projected": ("deberta-v2", dict(embedding_size=16)),
                 "deberta-v2-non-legacy": ("deberta-v2", dict(legacy=False)),
                 "modernbert": ("modernbert", {}), "electra": ("electra", {}), "distilbert": ("distilbert", {})}


def tiny_config(name: str, *, vocab_size: int, pad_token_id: int, **changes):
    """A tiny transformers config of TINY_FAMILIES[name], dropout off (DistilBERT's fields have other names)."""
    import transformers

    from electra_fast.hf import encoders

    family, extra = TINY_FAMILIES[name]
    if family == "distilbert":
        return transformers.DistilBertConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, dim=32, n_layers=2,
                                             n_heads=2, hidden_dim=64, max_position_embeddings=64, dropout=0.0,
                                             attention_dropout=0.0, **changes)
    return encoders.family_config(family, vocab_size=vocab_size, pad_token_id=pad_token_id, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, **{**TINY_SIZES, **extra, **changes})


def flag_actions(add_arguments) -> dict:
    """{dest: argparse action} of the flags that `add_arguments(parser)` defines (--help left out), in order."""
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return {action.dest: action for action in parser._actions if action.dest != "help"}


def command_line_of(config) -> list:
    """The command-line arguments that give each option field of `config` (a PretrainConfig, a PrepareConfig) its
    value, written as a user writes them (every field given, even at its default, except switches that are off)."""
    import dataclasses

    argv = []
    for field in dataclasses.fields(config):
        value, shape = getattr(config, field.name), field.metadata["option"]
        flag = "--" + field.name.replace("_", "-")
        if shape.get("action") == "store_true":
            argv += [flag] if value else []
        elif shape.get("action") == "boolean_optional":
            argv += [] if value is None else [flag if value else "--no-" + flag[2:]]
        elif value is None:
            continue
        elif shape.get("nargs") == "+":
            argv += [flag, *map(str, value)] if value else []
        else:
            argv += [flag, str(value)]
    return argv
