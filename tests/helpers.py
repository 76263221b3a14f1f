"""Test helpers: relative error, the near-tie-aware sample comparison of SPEC §3, fresh head inputs, an
interrupted pretraining run."""
import contextlib

import torch

from electra_fast.check import relative_error as rel_err, sample_mismatches  # noqa: F401


def assert_samples_match(got, want, logits, targets=None, **kwargs):
    """Samples must be equal except at near-ties (see electra_fast.check.sample_mismatches)."""
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


@contextlib.contextmanager
def interrupted_at_step(monkeypatch, step: int):
    """Inside the block, `electra-fast pretrain` stops as at Ctrl-C right after logging `step`."""
    from electra_fast import trainer

    real_write = trainer._Log.write

    def interrupt(self, record):
        real_write(self, record)
        if record["step"] == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer._Log, "write", interrupt)
    try:
        yield
    finally:
        monkeypatch.setattr(trainer._Log, "write", real_write)
