"""`electra-fast check`: SPEC §4's numerics on the device present, as a pass/fail table — the command a user
runs in their own GPU CI. Also home of `sample_mismatches`, the near-tie-aware comparison of samples that the
test suite uses."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import electra_fast
from . import reference


def relative_error(got: torch.Tensor, truth: torch.Tensor) -> float:
    """||got - truth|| / ||truth|| in float64 (the plain norm of the difference when truth is 0)."""
    got, truth = got.detach().double().cpu(), truth.detach().double().cpu()
    denom = truth.norm()
    diff = (got - truth).norm()
    return float(diff) if denom == 0 else float(diff / denom)


def sampler_keys(logits, targets, seed: int, temperature: float, disallow_correct: bool, ignore_index: int = -100):
    """The sampler's two stages' keys per row, float64: chunk keys [N, C] and id keys [N, C * 128]."""
    n, v = logits.shape
    z = (logits.double().cpu() / temperature).nan_to_num(nan=float("-inf"))
    rows = torch.arange(n)
    if disallow_correct and targets is not None:
        targets = targets.cpu()
        valid = targets != ignore_index
        z[rows[valid], targets[valid]] = float("-inf")
    c = -(-v // reference.CHUNK)
    padded = F.pad(z, (0, c * reference.CHUNK - v), value=float("-inf"))
    chunk_lse = padded.view(n, c, reference.CHUNK).logsumexp(-1)
    s = torch.tensor(seed)
    g0 = reference.gumbel_noise(s, rows[:, None], 0, torch.arange(c)[None, :]).double()
    g1 = reference.gumbel_noise(s, rows[:, None], 1, torch.arange(c * reference.CHUNK)[None, :]).double()
    return chunk_lse + g0, padded + g1


def sample_mismatches(got, want, logits, targets=None, *, seed: int, temperature: float = 1.0,
                      disallow_correct: bool = False, ignore_index: int = -100, rel: float = 1e-5) -> list:
    """Rows where two samplers disagree beyond a near-tie (SPEC §3): where the samples differ, the keys of the two
    candidates at the stage that separated them must agree within `rel`. Returns [(row, got, want)]."""
    got, want = got.cpu(), want.cpu()
    differ = (got != want).nonzero().flatten().tolist()
    if not differ:
        return []
    chunk_keys, id_keys = sampler_keys(logits, targets, seed, temperature, disallow_correct, ignore_index)
    bad = []
    for r in differ:
        a, b = int(got[r]), int(want[r])
        if a // reference.CHUNK != b // reference.CHUNK:
            ka, kb = chunk_keys[r, a // reference.CHUNK], chunk_keys[r, b // reference.CHUNK]
        else:
            ka, kb = id_keys[r, a], id_keys[r, b]
        if not abs(ka - kb) <= rel * max(1.0, abs(kb)):
            bad.append((r, a, b))
    return bad


def chi_square_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square test of sample counts against probs, bins with expected count < 5 pooled."""
    counts = torch.bincount(samples.cpu(), minlength=probs.numel()).double()
    expected = probs.double().cpu() * samples.numel()
    keep = expected >= 5
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
    wanted = torch.cat([expected[keep], expected[~keep].sum()[None]])
    if wanted[-1] < 5:
        observed, wanted = observed[:-1], wanted[:-1]
        top = wanted.argmax()
        observed[top] += counts[~keep].sum()
        wanted[top] += expected[~keep].sum()
    stat = ((observed - wanted) ** 2 / wanted).sum()
    dof = max(len(wanted) - 1, 1)
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


def _tolerance(dtype) -> float:
    if dtype == torch.float32:
        return 5e-4 if torch.backends.cuda.matmul.allow_tf32 else 1e-5
    return 1e-2


def run_checks(device: str) -> list[tuple[str, str, float, float, bool]]:
    """(check, dtype, value, limit, passed) for every check on `device` with its default backend."""
    dev = torch.device(device)
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    results = []
    g = torch.Generator().manual_seed(0)
    n, h, v = 203, 64, 30522
    for dtype in dtypes:
        name = str(dtype).replace("torch.", "")
        hidden = torch.randn(n, h, generator=g)
        weight = torch.randn(v, h, generator=g) * 3 / h**0.5
        bias = torch.randn(v, generator=g) * 0.1
        targets = torch.randint(0, v, (n,), generator=g)
        targets[::5] = -100
        leaves = [t.to(dev, dtype).requires_grad_() for t in (hidden, weight, bias)]
        loss, sampled, _ = electra_fast.generator_loss_and_sample(*leaves, targets.to(dev), seed=7)
        grads = torch.autograd.grad(loss, leaves)
        truth = [t.detach().cpu().double().requires_grad_() for t in leaves]
        logits = reference.head_logits(*truth)
        t_loss = reference.cross_entropy(logits, targets, -100, "mean")
        t_grads = torch.autograd.grad(t_loss, truth)
        limit = _tolerance(dtype)
        if dtype != torch.float32:  # no further from the truth than eager PyTorch in that dtype, plus tolerance
            eager = [t.detach().clone().requires_grad_() for t in leaves]
            e_loss = F.cross_entropy(F.linear(*eager).float(), targets.to(dev))
            e_grads = torch.autograd.grad(e_loss, eager)
        err = relative_error(loss, t_loss)
        lim = limit + (relative_error(e_loss, t_loss) if dtype != torch.float32 else 0)
        results.append(("head loss", name, err, lim, err <= lim))
        for label, gr, tg, i in zip(("d hidden", "d weight", "d bias"), grads, t_grads, range(3)):
            err = relative_error(gr, tg)
            lim = limit + (relative_error(e_grads[i], tg) if dtype != torch.float32 else 0)
            results.append((f"head {label}", name, err, lim, err <= lim))
        with electra_fast.use_backend("reference"):
            _, want, _ = electra_fast.sample_logits(logits.detach(), seed=7)
        bad = len(sample_mismatches(sampled, want, logits.detach(), seed=7))
        results.append(("head samples = reference", name, bad, 0, bad == 0))

    # The sampler's distribution: many rows with the same logits.
    rows, vocab = 20000, 1031
    base = torch.randn(vocab, generator=g) * 1.5
    base[::7] = float("-inf")
    _, sampled, _ = electra_fast.sample_logits(base.expand(rows, vocab).to(dev), temperature=0.8, seed=3)
    p = chi_square_pvalue(sampled, torch.softmax(base.double() / 0.8, 0))
    results.append(("sampler chi-square p", "float32", p, 1e-3, p > 1e-3))
    zero_drawn = int((sampled.cpu() % 7 == 0).sum())
    results.append(("sampler zero-prob draws", "float32", zero_drawn, 0, zero_drawn == 0))

    # RTD loss and REPLACE.
    x = torch.randn(16, 128, generator=g)
    labels = torch.rand(16, 128, generator=g) < 0.15
    mask = torch.rand(16, 128, generator=g) < 0.9
    xd = x.to(dev).requires_grad_()
    loss = electra_fast.rtd_loss(xd, labels.to(dev), mask.to(dev))
    (grad,) = torch.autograd.grad(loss, xd)
    xt = x.double().requires_grad_()
    t_loss = reference.rtd_loss(xt, labels, mask)
    (t_grad,) = torch.autograd.grad(t_loss, xt)
    err = max(relative_error(loss, t_loss), relative_error(grad, t_grad))
    results.append(("rtd_loss fwd+bwd", "float32", err, 1e-5, err <= 1e-5))
    ids = torch.randint(0, 1000, (16, 128), generator=g)
    positions = torch.randperm(16 * 128, generator=g)[:300].sort().values
    new = torch.randint(0, 1000, (300,), generator=g)
    want_ids = ids.clone()
    want = reference.replace_(want_ids, positions, new)
    got_ids = ids.to(dev)
    got = electra_fast.replace_(got_ids, positions.to(dev), new.to(dev))
    wrong = int((got.cpu() != want).sum() + (got_ids.cpu() != want_ids).sum())
    results.append(("replace_", "int64", wrong, 0, wrong == 0))
    return results


def main(device: str) -> int:
    results = run_checks(device)
    backend = electra_fast.get_backend()
    print(f"electra-fast check on {device} (backend {backend}), torch {torch.__version__}")
    print(f"{'check':<28} {'dtype':<9} {'value':>12} {'limit':>12}  result")
    for name, dtype, value, limit, passed in results:
        print(f"{name:<28} {dtype:<9} {value:>12.3g} {limit:>12.3g}  {'PASS' if passed else 'FAIL'}")
    failed = sum(not r[-1] for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0
