"""Test helpers: float64 truth, relative errors and the near-tie-aware sample comparison of SPEC §3."""
import torch

from electra_fast import reference


def rel_err(got: torch.Tensor, truth: torch.Tensor) -> float:
    """||got - truth|| / ||truth|| in float64 (0 when both are 0)."""
    got, truth = got.detach().double(), truth.detach().double()
    denom = truth.norm()
    diff = (got - truth).norm()
    return float(diff) if denom == 0 else float(diff / denom)


def sampler_keys(logits: torch.Tensor, targets, seed: int, temperature: float, disallow_correct: bool,
                 ignore_index: int = -100):
    """The two stages' keys per row in float64: chunk keys [N, C] and id keys [N, C * 128]."""
    n, v = logits.shape
    z = (logits.double() / temperature).nan_to_num(nan=float("-inf"))
    rows = torch.arange(n)
    if disallow_correct and targets is not None:
        valid = targets != ignore_index
        z[rows[valid], targets[valid]] = float("-inf")
    c = -(-v // 128)
    padded = torch.nn.functional.pad(z, (0, c * 128 - v), value=float("-inf"))
    chunk_lse = padded.view(n, c, 128).logsumexp(-1)
    s = torch.tensor(seed)
    g0 = reference.gumbel_noise(s, rows[:, None], 0, torch.arange(c)[None, :]).double()
    g1 = reference.gumbel_noise(s, rows[:, None], 1, torch.arange(c * 128)[None, :]).double()
    return chunk_lse + g0, padded + g1


def assert_samples_match(got, want, logits, targets=None, *, seed, temperature=1.0, disallow_correct=False,
                         ignore_index=-100, rel=1e-5):
    """Samples must be equal except at near-ties (SPEC §3): where they differ, the two candidates' keys at the
    stage that separated them must agree within `rel`."""
    got, want = got.cpu(), want.cpu()
    differ = (got != want).nonzero().flatten()
    if len(differ) == 0:
        return
    chunk_keys, id_keys = sampler_keys(logits.cpu(), None if targets is None else targets.cpu(), seed, temperature,
                                       disallow_correct, ignore_index)
    for r in differ.tolist():
        a, b = int(got[r]), int(want[r])
        if a // 128 != b // 128:
            ka, kb = chunk_keys[r, a // 128], chunk_keys[r, b // 128]
        else:
            ka, kb = id_keys[r, a], id_keys[r, b]
        assert abs(ka - kb) <= rel * max(1.0, abs(kb)), f"row {r}: sampled {a}, reference {b} (keys {ka}, {kb})"


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
