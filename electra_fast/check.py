"""`electra-fast check`: SPEC §4's numerics on the device present, as a pass/fail table — the command a user
runs in their own GPU CI. Also home of `sample_mismatches`, the near-tie-aware comparison of samples that the
test suite uses.

The float64 truth never goes through the ops: it is `electra_fast.reference` under plain autograd, in float64
on the CPU, so that no backend (whose backward runs wherever the current backend says) checks itself.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

import electra_fast
from . import reference
from .benchmark.measure import error_summary


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



IGNORE = -100
SEED = 7
# (label, N masked rows, H): ELECTRA-Small's and -Base's generator heads (batch 128 x 128, 15 % masked; Clark
# et al., 2020) at BERT's vocabulary.
HEAD_SHAPES = (("Small", 2458, 128), ("Base", 19660, 768))
VOCAB = 30522
CPU_ROWS = 256  # on the CPU each head keeps this many rows: the float64 truth and fp16 GEMMs are slow there
D_HIDDEN_ROWS = 256  # d hidden is compared on this many rows spread over the whole range
SAMPLE_ROWS = 256  # samples are compared on the first rows (a row's noise depends on its index in the call)
TRUTH_BLOCK_ROWS = 1024  # rows of float64 logits the truth holds at once ([1024, 30522] float64: 250 MB)


class CheckResult(NamedTuple):
    check: str
    dtype: str
    value: float
    limit: float
    passed: bool
    note: str = ""


def _tolerance(dtype) -> float:
    """SPEC §4: float32 1e-5 (5e-4 where TF32 is allowed), bf16/fp16 1e-2."""
    if dtype == torch.float32:
        return 5e-4 if torch.backends.cuda.matmul.allow_tf32 else 1e-5
    return 1e-2


def device_dtypes(device: torch.device) -> list:
    """The float dtypes the head takes on `device`: bfloat16 on CUDA only where the card has it."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return [torch.float32, torch.float16]
    return [torch.float32, torch.bfloat16, torch.float16]


def head_truth(hidden, weight, bias, targets, d_hidden_rows):
    """The head's float64 truth on the CPU: loss (mean over non-ignored rows), d weight [V, H] and d bias [V]
    over all rows, d hidden on the rows `d_hidden_rows` [R] only. `reference` functions under plain autograd, in
    blocks of TRUTH_BLOCK_ROWS rows so that the whole [N, V] logits never exist at once."""
    h, w, b = (t.detach().cpu().double() for t in (hidden, weight, bias))
    w.requires_grad_()
    b.requires_grad_()
    targets = targets.cpu()
    n_valid = int((targets != IGNORE).sum().clamp_min(1))

    def summed_loss(h_rows, t_rows, w, b):
        return reference.cross_entropy(reference.head_logits(h_rows, w, b), t_rows, IGNORE, "sum") / n_valid

    loss, d_weight, d_bias = torch.zeros((), dtype=torch.float64), torch.zeros_like(w), torch.zeros_like(b)
    for r0 in range(0, h.shape[0], TRUTH_BLOCK_ROWS):
        part = summed_loss(h[r0:r0 + TRUTH_BLOCK_ROWS], targets[r0:r0 + TRUTH_BLOCK_ROWS], w, b)
        gw, gb = torch.autograd.grad(part, (w, b))
        loss, d_weight, d_bias = loss + part.detach(), d_weight + gw, d_bias + gb
    h_rows = h[d_hidden_rows].requires_grad_()
    (d_hidden,) = torch.autograd.grad(summed_loss(h_rows, targets[d_hidden_rows], w.detach(), b.detach()), h_rows)
    return loss, d_hidden, d_weight, d_bias


def _head_inputs(n: int, h: int, v: int, g: torch.Generator):
    """hidden [n, h], weight [v, h], bias [v] in float32 (logits of std ~3: neither flat nor one-hot), targets
    [n] with every 5th row ignored."""
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 3 / h**0.5
    bias = torch.randn(v, generator=g) * 0.1
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::5] = IGNORE
    return hidden, weight, bias, targets


def head_checks(device: torch.device, dtype, label: str, n: int, h: int, *, eager_allowance: bool) -> list[CheckResult]:
    """The fused head forward + backward at N x H x VOCAB in `dtype` against the float64 truth: loss, d weight and
    d bias whole, d hidden on D_HIDDEN_ROWS rows, within SPEC §4's tolerance (plus eager PyTorch's own error in
    the same dtype with `eager_allowance`); and the samples of the first SAMPLE_ROWS rows against the reference
    sampler's."""
    name = str(dtype).replace("torch.", "")
    inputs = _head_inputs(n, h, VOCAB, torch.Generator().manual_seed(n * h))
    targets = inputs[3].to(device)
    leaves = [t.to(device, dtype).requires_grad_() for t in inputs[:3]]
    loss, sampled, _ = electra_fast.generator_loss_and_sample(*leaves, targets, seed=SEED)
    got = [loss, *torch.autograd.grad(loss, leaves)]
    rows = torch.linspace(0, n - 1, min(n, D_HIDDEN_ROWS)).round().long().unique()  # first and last row included
    got[1] = got[1][rows.to(device)]
    truth = head_truth(*leaves, targets, rows)
    allowance = [0.0] * 4
    if eager_allowance:
        eager = [t.detach().clone().requires_grad_() for t in leaves]
        e_loss = F.cross_entropy(F.linear(*eager).float(), targets, ignore_index=IGNORE)
        e_got = [e_loss, *torch.autograd.grad(e_loss, eager)]
        e_got[1] = e_got[1][rows.to(device)]
        allowance = [relative_error(e, t) for e, t in zip(e_got, truth)]
    results = []
    for quantity, value, true_value, extra in zip(("loss", "d hidden", "d weight", "d bias"), got, truth, allowance):
        err, limit = relative_error(value, true_value), _tolerance(dtype) + extra
        results.append(CheckResult(f"head {label} {quantity}", name, err, limit, err <= limit))
    k = min(n, SAMPLE_ROWS)
    logits = reference.head_logits(*(t.detach()[:k].cpu().double() if i == 0 else t.detach().cpu().double()
                                     for i, t in enumerate(leaves)))
    want = reference.sample_from_logits(logits, None, torch.tensor(SEED))
    bad = len(sample_mismatches(sampled[:k], want, logits, seed=SEED))
    results.append(CheckResult(f"head {label} samples = reference", name, bad, 0, bad == 0))
    return results


def sampler_checks(device: torch.device) -> list[CheckResult]:
    """The sampler's distribution over many rows with the same logits (SPEC §4), and no zero-probability draw."""
    g = torch.Generator().manual_seed(1)
    rows, vocab = 20000, 1031
    base = torch.randn(vocab, generator=g) * 1.5
    base[::7] = float("-inf")
    _, sampled, _ = electra_fast.sample_logits(base.expand(rows, vocab).to(device), temperature=0.8, seed=3)
    p = chi_square_pvalue(sampled, torch.softmax(base.double() / 0.8, 0))
    zero_drawn = int((sampled.cpu() % 7 == 0).sum())
    return [CheckResult("sampler chi-square p", "float32", p, 1e-3, p > 1e-3),
            CheckResult("sampler zero-prob draws", "float32", zero_drawn, 0, zero_drawn == 0)]


def rtd_checks(device: torch.device) -> list[CheckResult]:
    """rtd_loss forward + backward against the float64 truth."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 128, generator=g)
    labels = torch.rand(16, 128, generator=g) < 0.15
    mask = torch.rand(16, 128, generator=g) < 0.9
    xd = x.to(device).requires_grad_()
    loss = electra_fast.rtd_loss(xd, labels.to(device), mask.to(device))
    (grad,) = torch.autograd.grad(loss, xd)
    xt = x.double().requires_grad_()
    t_loss = reference.rtd_loss(xt, labels, mask)
    (t_grad,) = torch.autograd.grad(t_loss, xt)
    err = max(relative_error(loss, t_loss), relative_error(grad, t_grad))
    return [CheckResult("rtd_loss fwd+bwd", "float32", err, 1e-5, err <= 1e-5)]


def replace_checks(device: torch.device) -> list[CheckResult]:
    """replace_'s written ids and is_replaced against the reference's, element by element."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 1000, (16, 128), generator=g)
    positions = torch.randperm(16 * 128, generator=g)[:300].sort().values
    new = torch.randint(0, 1000, (300,), generator=g)
    want_ids = ids.clone()
    want = reference.replace_(want_ids, positions, new)
    got_ids = ids.to(device)
    got = electra_fast.replace_(got_ids, positions.to(device), new.to(device))
    wrong = int((got.cpu() != want).sum() + (got_ids.cpu() != want_ids).sum())
    return [CheckResult("replace_", "int64", wrong, 0, wrong == 0)]


def _guarded(check: str, dtype: str, run) -> list[CheckResult]:
    """run()'s results, or one FAIL row with the one-line reason where it raised (a kernel that cannot launch,
    out of memory): the table goes on."""
    try:
        return run()
    except Exception as error:  # noqa: BLE001
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return [CheckResult(check, dtype, float("nan"), float("nan"), False, error_summary(error))]


def run_checks(device: str) -> list[CheckResult]:
    """Every check on `device` with its current backend. On the CPU each head shape keeps CPU_ROWS rows and its
    limit is SPEC §4's tolerance alone (no allowance for eager's error, whose fp16 GEMMs are slow there)."""
    dev = torch.device(device)
    on_cuda = dev.type == "cuda"
    results = []
    for label, n, h in HEAD_SHAPES:
        if not on_cuda:
            label, n = f"{label}*", min(n, CPU_ROWS)
        label = f"{label} {n}x{h}"
        for dtype in device_dtypes(dev):
            results += _guarded(f"head {label} fwd+bwd", str(dtype).replace("torch.", ""),
                                lambda: head_checks(dev, dtype, label, n, h, eager_allowance=on_cuda))
    for check, dtype, run in (("sampler", "float32", sampler_checks), ("rtd_loss fwd+bwd", "float32", rtd_checks),
                              ("replace_", "int64", replace_checks)):
        results += _guarded(check, dtype, lambda: run(dev))
    return results


def main(device: str) -> int:
    results = run_checks(device)
    backend = electra_fast.get_backend()
    print(f"electra-fast check on {device} (backend {backend}), torch {torch.__version__}")
    print(f"{'check':<40} {'dtype':<9} {'value':>10} {'limit':>10}  result")
    for r in results:
        verdict = "PASS" if r.passed else "FAIL" + (f"  {r.note}" if r.note else "")
        print(f"{r.check:<40} {r.dtype:<9} {r.value:>10.3g} {r.limit:>10.3g}  {verdict}")
    if torch.device(device).type != "cuda":
        print(f"* on the CPU: the first {CPU_ROWS} rows of the shape; limit = SPEC §4's tolerance, without eager's "
              "error")
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0
