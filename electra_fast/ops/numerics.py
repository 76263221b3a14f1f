"""`electra-fast check`: contract §4's numerics on the device present, as a pass/fail table — the command a user
runs in their own GPU CI. Also home of `sample_mismatches`, the near-tie-aware comparison of samples that the
test suite uses.

The float64 truth never goes through the ops: it is `electra_fast.ops.reference` under plain autograd, in float64
on the CPU, so that no backend (whose backward runs wherever the current backend says) checks itself. Each limit
is derived from the float64 truth and the rounding of the dtypes involved (see "Limits" below); none adds eager
PyTorch's own error, which in float16 is the whole gradient.
"""
from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple, Union

import torch
import torch.nn.functional as F

import electra_fast

from ..benchmark.baselines import cublas_float32_out, cublas_probe_flagged
from ..benchmark.measure import error_summary
from ..kernels.configs import head_chunk_rows
from . import reference, settings


def relative_error(got: torch.Tensor, truth: torch.Tensor) -> float:
    """||got - truth|| / ||truth|| in float64 (the plain norm of the difference when truth is 0)."""
    got, truth = got.detach().double().cpu(), truth.detach().double().cpu()
    denom = truth.norm()
    diff = (got - truth).norm()
    return float(diff) if denom == 0 else float(diff / denom)


def sampler_keys(logits, targets, seed: int, temperature: float, disallow_correct: bool, ignore_index: int = -100,
                 rows=None):
    """The sampler's two stages' keys per row, float64: chunk keys [R, C] and id keys [R, C * 128], for logits
    [R, V] whose rows are rows `rows` [R] (int64) of the call (their noise streams; 0..R-1 when None)."""
    n, v = logits.shape
    z = (logits.double().cpu() / temperature).nan_to_num(nan=float("-inf"))
    local = torch.arange(n)
    rows = local if rows is None else torch.as_tensor(rows, dtype=torch.int64).cpu()
    if disallow_correct and targets is not None:
        targets = targets.cpu()
        valid = targets != ignore_index
        z[local[valid], targets[valid]] = float("-inf")
    c = -(-v // reference.CHUNK)
    padded = F.pad(z, (0, c * reference.CHUNK - v), value=float("-inf"))
    chunk_lse = padded.view(n, c, reference.CHUNK).logsumexp(-1)
    s = torch.tensor(seed)
    g0 = reference.gumbel_noise(s, rows[:, None], 0, torch.arange(c)[None, :]).double()
    g1 = reference.gumbel_noise(s, rows[:, None], 1, torch.arange(c * reference.CHUNK)[None, :]).double()
    return chunk_lse + g0, padded + g1


def reference_samples(logits, targets, seed: int, *, rows=None, temperature: float = 1.0,
                      disallow_correct: bool = False, ignore_index: int = -100) -> torch.Tensor:
    """contract §3's samples [R] int64 of logits [R, V] (float64 on the CPU) that are rows `rows` [R] of a call (0..R-1
    when None), from `sampler_keys`: the chunk of the largest chunk key, then the id of the largest id key in it
    (ties to the lowest index); the lowest allowed id where no key is finite. `reference.sample_from_logits` for
    rows that do not start at 0."""
    chunk_keys, id_keys = sampler_keys(logits, targets, seed, temperature, disallow_correct, ignore_index, rows)
    n = chunk_keys.shape[0]
    chunk_keys = chunk_keys.nan_to_num(nan=float("-inf"))
    chunk = chunk_keys.argmax(-1)
    ids = chunk[:, None] * reference.CHUNK + torch.arange(reference.CHUNK)[None, :]
    keys = id_keys.gather(1, ids).nan_to_num(nan=float("-inf"))
    choice = ids.gather(1, keys.argmax(-1, keepdim=True)).squeeze(1)
    ok = (chunk_keys.amax(-1) > float("-inf")) & (keys.amax(-1) > float("-inf"))
    excluded = torch.full((n,), -1, dtype=torch.int64)
    if disallow_correct and targets is not None:
        excluded = torch.where(targets.cpu() != ignore_index, targets.cpu(), excluded)
    return torch.where(ok, choice, (excluded == 0).to(torch.int64))


def sample_mismatches(got, want, logits, targets=None, *, seed: int, temperature: float = 1.0,
                      disallow_correct: bool = False, ignore_index: int = -100, rel: float = 1e-5,
                      rows=None) -> list:
    """Rows where two samplers disagree beyond a near-tie (contract §3): where the samples differ, the keys of the two
    candidates at the stage that separated them must agree within `rel`. logits [R, V] are rows `rows` [R] of the
    call (0..R-1 when None). Returns [(row, got, want)], row counted within `logits`."""
    got, want = got.cpu(), want.cpu()
    differ = (got != want).nonzero().flatten().tolist()
    if not differ:
        return []
    chunk_keys, id_keys = sampler_keys(logits, targets, seed, temperature, disallow_correct, ignore_index, rows)
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
# The head takes its rows in chunks whose float32 logits fit the logits budget, and a row's noise depends on its
# index in the call (each chunk gets its row offset). The check sets the budget so that the head runs at least
# HEAD_CHUNKS chunks, the last shorter than the others, and compares the samples of the first and last row of
# every chunk, plus SAMPLE_SPREAD rows spread over the whole range.
HEAD_CHUNKS = 5
SAMPLE_SPREAD = 64
TRUTH_BLOCK_ROWS = 1024  # rows of float64 logits the truth holds at once ([1024, 30522] float64: 250 MB)

# Limits. Each is the float64 truth's distance that the dtypes' rounding allows, with a stated margin, and never
# more than contract §4's tolerance (float32 1e-5, 5e-4 under TF32; bf16/fp16 1e-2). Eager PyTorch's own error is not
# added: in float16 it is the whole gradient (an unscaled float16 gradient underflows), so adding it let any
# float16 gradient pass.
#
# Losses, every input dtype: the head's logits are float32 (a bf16/fp16 product of two inputs is exact in float32,
# and the H products accumulate in float32), each off by about u32 sqrt(H) |logit| (u32 = 2^-24, rounding errors
# adding like a random walk): ~5e-6 at H = 768 and logits of scale 3. The fold's sum of exponentials over V in
# float32 adds ~u32 (log2(tile) + tiles) ~ 3e-6 to the log-sum-exp, the mean over N rows ~u32 log2(N). A per-row
# loss is ~10, so the relative error is <~ 1e-6 (measured ~1e-7); LOSS_LIMIT = 2e-6. Logits rounded to bfloat16
# (u = 2^-8) would be off by ~1e-2 each: ~1e-3 relative per row, 500 x the limit. Float32 under TF32 (inputs
# rounded to 10 bits) keeps the contract's 5e-4.
LOSS_LIMIT = 2e-6
# Gradients, bf16/fp16 inputs: the GPU head writes d loss / d logits (softmax - onehot) x row scale as a tile in
# the input dtype (each entry off by <= u, the unit roundoff: bf16 2^-8, fp16 2^-11; the Triton interpreter
# truncates bf16: <= 2u), the GEMMs accumulate that tile in float32 (~sqrt(V) u32 ~ 1e-5, negligible), and each
# gradient comes back in its input's dtype (<= u more). The tile's rounding errors are independent over the V
# (d hidden) or N (d weight, d bias) terms of each sum, so they add <~ u to the norm: <~ 2u in all (3u
# truncating), measured 0.4u (float32 tile) to 1.1u (interpreter). GRAD_ROUNDOFFS = 4: fp16 2.0e-3; bf16's 1.6e-2
# is capped at the contract's 1e-2. Float32 keeps the contract's 1e-5 (sums of V float32 terms: ~sqrt(V) u32 ~ 1e-5;
# 5e-4 under TF32).
GRAD_ROUNDOFFS = 4
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
# Float16 gradients run under a loss scale, as users train in float16 (torch.amp.GradScaler's initial scale):
# the loss times 2^16 before backward, the gradients divided by 2^16 after (exact: a power of two). Unscaled,
# the gradient tile's entries (softmax / N ~ 1 / (V N) ~ 1e-8 here) fall below float16's smallest subnormal
# (6e-8) and flush to zero.
LOSS_SCALE = {torch.float16: 2.0**16}

# The sampler's statistics (contract §4): ROWS rows of the same VOCAB logits, every 7th of probability 0, in each
# dtype the device takes. Half-precision logits sit near LOGIT_OFFSET, where the dtype's spacing is 0.5 to 1, so
# its rounding changes the distribution visibly: the truth is the softmax of the logits as rounded to the dtype,
# and a sampler that rounds them otherwise (or reads them as another dtype) fails the chi-square.
SAMPLER_ROWS, SAMPLER_VOCAB, SAMPLER_TEMPERATURE = 20000, 1031, 0.8
LOGIT_OFFSET = {torch.float32: 0.0, torch.bfloat16: 128.0, torch.float16: 1024.0}
P_VALUE_LIMIT = 1e-3

# One case where N x V >= 2^31 (int32 element offsets would wrap): sample_logits forward and backward over [N, V]
# bfloat16 logits with WIDE_ROWS_PAST rows past element 2^31, those rows compared with a float64 truth computed
# for them alone. CUDA only (the CPU's time and memory are not the check's to spend); skipped, and shown as SKIP,
# where the GPU has too little free memory.
WIDE_BOUNDARY = 2**31
WIDE_ROWS_PAST = 64


# Printed under the table.
FOOTNOTES = (
    "Limits: relative error to the float64 truth of the inputs as rounded to their dtype; eager PyTorch's own error "
    "is not added.",
    f"  losses {LOSS_LIMIT:g} in every dtype (the logits are float32); gradients {GRAD_ROUNDOFFS} x the dtype's unit "
    "roundoff (bf16 2^-8, fp16 2^-11), at most contract §4's 1e-2; float32 gradients contract §4's 1e-5; every float32 "
    "limit 5e-4 under TF32.",
    "  float16 gradients under a loss scale of 2^16, as torch.amp.GradScaler trains: the loss x 2^16 before backward, "
    "the gradients / 2^16 after (unscaled, they underflow to zero).",
    f"Samples: the first and last row of each of the head's row-chunks (at least {HEAD_CHUNKS}, the last shorter: "
    "the check sets the logits budget), and rows spread over all.",
    "SKIP: not run here, for the reason given; neither a pass nor a failure.",
)


class CheckResult(NamedTuple):
    check: str
    dtype: str
    value: Union[float, str]
    limit: Union[float, str]
    passed: bool
    note: str = ""
    skipped: bool = False  # not run here (the note says why): shown as SKIP, neither a pass nor a failure

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _tolerance(dtype) -> float:
    """contract §4: float32 1e-5 (5e-4 where TF32 is allowed), bf16/fp16 1e-2."""
    if dtype == torch.float32:
        return 5e-4 if torch.backends.cuda.matmul.allow_tf32 else 1e-5
    return 1e-2


def head_limits(dtype) -> dict:
    """quantity -> the limit of its relative error to the float64 truth for head inputs of `dtype` (see "Limits"
    above): "loss" and "row losses", "d hidden", "d weight", "d bias"."""
    spec = _tolerance(dtype)
    if dtype == torch.float32:
        loss = spec if torch.backends.cuda.matmul.allow_tf32 else min(LOSS_LIMIT, spec)
        return {"loss": loss, "row losses": loss, "d hidden": spec, "d weight": spec, "d bias": spec}
    grad = min(GRAD_ROUNDOFFS * UNIT_ROUNDOFF[dtype], spec)
    return {"loss": LOSS_LIMIT, "row losses": LOSS_LIMIT, "d hidden": grad, "d weight": grad, "d bias": grad}


def device_dtypes(device: torch.device) -> list:
    """The float dtypes the head takes on `device`: bfloat16 on CUDA only where the card has it."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return [torch.float32, torch.float16]
    return [torch.float32, torch.bfloat16, torch.float16]


@contextlib.contextmanager
def logits_budget(num_bytes: int):
    """The head's logits budget (`electra_fast.set_logits_budget`) set to num_bytes inside the block, restored
    after it."""
    previous = settings.logits_budget()
    electra_fast.set_logits_budget(num_bytes)
    try:
        yield
    finally:
        electra_fast.set_logits_budget(previous)


def chunked_budget(n: int, vocab: int, grad_itemsizes, chunks: int = HEAD_CHUNKS) -> int:
    """A logits budget in bytes under which the head (kernels/configs.py head_chunk_rows, asked as it is) takes n
    rows in at least `chunks` row-chunks with a last one shorter than the others, for each gradient tile size in
    `grad_itemsizes` it may write in its forward (bytes per logit, 0 where it writes none). Where no budget gives
    a shorter last chunk (n too small), one that gives `chunks` chunks."""
    first = max(1, n // chunks)
    for rows in range(first, 0, -1):
        budget = rows * vocab * 4
        sizes = [head_chunk_rows(n, vocab, itemsize, budget) for itemsize in grad_itemsizes]
        if all(-(-n // size) >= chunks and n % size for size in sizes):
            return budget
    return first * vocab * 4


def chunk_edges(n: int, vocab: int, budget: int, grad_itemsizes) -> list:
    """The first and last row of every row-chunk the head takes under `budget` (kernels/configs.py
    head_chunk_rows), for each gradient tile size it may write in its forward (0 where it writes none)."""
    edges = set()
    for itemsize in grad_itemsizes:
        rows = head_chunk_rows(n, vocab, itemsize, budget)
        for r0 in range(0, n, rows):
            edges.update((r0, min(r0 + rows, n) - 1))
    return sorted(edges)


def head_truth(hidden, weight, bias, targets, d_hidden_rows):
    """The head's float64 truth on the CPU: loss (mean over non-ignored rows), the per-row losses [N] (0 where
    ignored), d weight [V, H] and d bias [V] over all rows, d hidden on the rows `d_hidden_rows` [R] only.
    `reference` functions under plain autograd, in blocks of TRUTH_BLOCK_ROWS rows so that the whole [N, V] logits
    never exist at once."""
    h, w, b = (t.detach().cpu().double() for t in (hidden, weight, bias))
    w.requires_grad_()
    b.requires_grad_()
    targets = targets.cpu()
    n_valid = int((targets != IGNORE).sum().clamp_min(1))

    def row_losses(h_rows, t_rows, w, b):
        return reference.cross_entropy(reference.head_logits(h_rows, w, b), t_rows, IGNORE, "none")

    loss, d_weight, d_bias = torch.zeros((), dtype=torch.float64), torch.zeros_like(w), torch.zeros_like(b)
    per_row = []
    for r0 in range(0, h.shape[0], TRUTH_BLOCK_ROWS):
        rows = row_losses(h[r0:r0 + TRUTH_BLOCK_ROWS], targets[r0:r0 + TRUTH_BLOCK_ROWS], w, b)
        part = rows.sum() / n_valid
        gw, gb = torch.autograd.grad(part, (w, b))
        loss, d_weight, d_bias = loss + part.detach(), d_weight + gw, d_bias + gb
        per_row.append(rows.detach())
    h_rows = h[d_hidden_rows].requires_grad_()
    part = row_losses(h_rows, targets[d_hidden_rows], w.detach(), b.detach()).sum() / n_valid
    (d_hidden,) = torch.autograd.grad(part, h_rows)
    return loss, torch.cat(per_row), d_hidden, d_weight, d_bias


def _head_inputs(n: int, h: int, v: int, g: torch.Generator):
    """hidden [n, h], weight [v, h], bias [v] in float32 (logits of std ~3: neither flat nor one-hot), targets
    [n] with every 5th row ignored."""
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 3 / h**0.5
    bias = torch.randn(v, generator=g) * 0.1
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::5] = IGNORE
    return hidden, weight, bias, targets


def head_checks(device: torch.device, dtype, label: str, n: int, h: int, *, vocab: int = VOCAB,
                chunks: int = HEAD_CHUNKS) -> list[CheckResult]:
    """The fused head forward + backward at n x h x vocab in `dtype` against the float64 truth (of the inputs as
    rounded to `dtype`), under a logits budget that makes the head take `chunks` row-chunks or more, the last
    shorter:
    the mean loss and the per-row losses (reduction "none"), d weight and d bias whole, d hidden on D_HIDDEN_ROWS
    rows, each within `head_limits(dtype)` (float16 gradients under LOSS_SCALE); and the samples of the first and
    last row of every row-chunk (and SAMPLE_SPREAD more) against the reference sampler's."""
    name = _name(dtype)
    inputs = _head_inputs(n, h, vocab, torch.Generator().manual_seed(n * h))
    targets = inputs[3].to(device)
    leaves = [t.to(device, dtype).requires_grad_() for t in inputs[:3]]
    itemsizes = (0, dtype.itemsize)  # the forward writes a gradient tile in the input dtype, or none (float16)
    budget = chunked_budget(n, vocab, itemsizes, chunks)
    scale = LOSS_SCALE.get(dtype, 1.0)
    with logits_budget(budget):
        loss, sampled, _ = electra_fast.generator_loss_and_sample(*leaves, targets, seed=SEED)
        grads = [g.double() / scale for g in torch.autograd.grad(loss * scale, leaves)]
        with torch.no_grad():
            row_losses, _, _ = electra_fast.generator_loss_and_sample(*(t.detach() for t in leaves), targets,
                                                                      seed=SEED, reduction="none")
    rows = torch.linspace(0, n - 1, min(n, D_HIDDEN_ROWS)).round().long().unique()  # first and last row included
    got = {"loss": loss, "row losses": row_losses, "d hidden": grads[0][rows.to(device)], "d weight": grads[1],
           "d bias": grads[2]}
    t_loss, t_rows, t_hidden, t_weight, t_bias = head_truth(*leaves, targets, rows)
    truth = {"loss": t_loss, "row losses": t_rows, "d hidden": t_hidden, "d weight": t_weight, "d bias": t_bias}
    limits = head_limits(dtype)
    note = f"loss x 2^{int(scale).bit_length() - 1}" if scale != 1.0 else ""
    results = []
    for quantity in ("loss", "row losses", "d hidden", "d weight", "d bias"):
        err, limit = relative_error(got[quantity], truth[quantity]), limits[quantity]
        results.append(CheckResult(f"head {label} {quantity}", name, err, limit, err <= limit,
                                   note if quantity.startswith("d ") else ""))
    edges = chunk_edges(n, vocab, budget, itemsizes)
    spread = torch.linspace(0, n - 1, min(n, SAMPLE_SPREAD)).round().long()
    sample_rows = torch.cat([torch.tensor(edges, dtype=torch.int64), spread]).unique()
    logits = reference.head_logits(*(t.detach().cpu().double() for t in (leaves[0][sample_rows.to(device)],
                                                                          leaves[1], leaves[2])))
    want = reference_samples(logits, None, SEED, rows=sample_rows)
    bad = len(sample_mismatches(sampled[sample_rows.to(device)], want, logits, seed=SEED, rows=sample_rows))
    chunking = " or ".join(f"{-(-n // size)} x {size}" for size in
                           dict.fromkeys(head_chunk_rows(n, vocab, i, budget) for i in itemsizes))
    results.append(CheckResult(f"head {label} samples = reference", name, bad, 0, bad == 0,
                               f"{len(sample_rows)} rows; row-chunks {chunking}, last shorter"))
    return results


def sampler_logits(dtype, vocab: int = SAMPLER_VOCAB, seed: int = 1) -> torch.Tensor:
    """One row of logits [vocab] in `dtype` for the statistical check: std 1.5 about LOGIT_OFFSET[dtype], every
    7th id -inf (probability 0)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(vocab, generator=g) * 1.5 + LOGIT_OFFSET[dtype]
    base[::7] = float("-inf")
    return base.to(dtype)


def sampler_checks(device: torch.device, *, rows: int = SAMPLER_ROWS, vocab: int = SAMPLER_VOCAB,
                   dtypes=None) -> list[CheckResult]:
    """The sampler's distribution over `rows` rows with the same logits (contract §4) in each dtype (those the device
    takes when None): chi-square against the softmax of the logits as rounded to the dtype, and no draw of an id
    of probability 0."""
    results = []
    for dtype in dtypes or device_dtypes(device):
        row = sampler_logits(dtype, vocab)
        _, sampled, _ = electra_fast.sample_logits(row.expand(rows, vocab).to(device),
                                                   temperature=SAMPLER_TEMPERATURE, seed=3)
        p = chi_square_pvalue(sampled, torch.softmax(row.double() / SAMPLER_TEMPERATURE, 0))
        zero_drawn = int((sampled.cpu() % 7 == 0).sum())
        results += [CheckResult("sampler chi-square p", _name(dtype), p, P_VALUE_LIMIT, p > P_VALUE_LIMIT),
                    CheckResult("sampler zero-prob draws", _name(dtype), zero_drawn, 0, zero_drawn == 0)]
    return results


def wide_logits_bytes(boundary: int = WIDE_BOUNDARY, vocab: int = VOCAB, rows_past: int = WIDE_ROWS_PAST) -> int:
    """Device memory the N x V >= boundary case holds at its peak: the bfloat16 logits, the float32 gradient the
    backend writes and its bfloat16 copy."""
    return (boundary // vocab + rows_past) * vocab * (2 + 4 + 2)


def wide_logits_checks(device: torch.device, *, boundary: int = WIDE_BOUNDARY, vocab: int = VOCAB,
                       rows_past: int = WIDE_ROWS_PAST) -> list[CheckResult]:
    """sample_logits forward (per-row losses, argmax, samples) and backward over bfloat16 logits [N, vocab] with
    N = boundary // vocab + rows_past, so that the rows from boundary // vocab on hold elements at flat offsets
    >= boundary (2^31: past int32). Those rows, and the one before them, against a float64 truth computed for them
    alone."""
    n = boundary // vocab + rows_past
    first_past = boundary // vocab  # the row holding element `boundary`
    g = torch.Generator(device).manual_seed(5)
    logits = torch.empty(n, vocab, dtype=torch.bfloat16, device=device)
    block = max(1, (64 << 20) // vocab)  # rows of float32 noise at a time
    for r0 in range(0, n, block):
        rows = min(block, n - r0)
        logits[r0:r0 + rows] = torch.randn(rows, vocab, generator=g, device=device).mul_(2)
    targets = torch.randint(0, vocab, (n,), generator=g, device=device)
    targets[::5] = IGNORE
    leaf = logits.requires_grad_()
    row_losses, sampled, predicted = electra_fast.sample_logits(leaf, targets, seed=SEED, reduction="none")
    (d_logits,) = torch.autograd.grad(row_losses.sum(), leaf)
    rows = torch.arange(first_past - 1, n)
    z = logits.detach()[rows.to(device)].double().cpu()
    t = targets[rows.to(device)].cpu()
    valid = t != IGNORE
    t_losses = reference.cross_entropy(z, t, IGNORE, "none")
    t_grad = torch.softmax(z, -1)
    t_grad[valid, t[valid]] -= 1
    t_grad[~valid] = 0
    # The softmax part of d logits: the entries off each valid row's target, where the gradient is the row's scale
    # times its softmax (the truth's there; 0 on ignored rows). d logits whole is dominated by its one-hot (a -1 per
    # valid row, against a softmax of norm ~(e^(std^2) / V)^(1/2) ~ 0.04 at std 2 and V 30,522), so a softmax part
    # 15 % off moves it by ~0.6 %, inside its limit. At a target, p - 1 rounded to bfloat16 is off by up to u / 2
    # (all of p where p < u / 2), not within u of p: those entries are left to the whole-gradient row.
    off_target = torch.ones_like(t_grad, dtype=torch.bool)
    off_target[valid.nonzero().flatten(), t[valid]] = False
    got_grad = d_logits[rows.to(device)].double().cpu()
    label = f"{n}x{vocab} rows past 2^{boundary.bit_length() - 1}:"
    results = []
    # Row losses: float32 folds of exact (bfloat16) logits, LOSS_LIMIT. d logits: a float32 softmax - onehot
    # returned in bfloat16, one rounding (<= u): 2u. Its softmax part: each entry a float32 softmax rounded once
    # to bfloat16 (<= u; <= 2u where the Triton interpreter truncates), errors that add like the entries: 2u.
    for quantity, value, truth, limit in (
            ("row losses", row_losses[rows.to(device)], t_losses, LOSS_LIMIT),
            ("d logits", got_grad, t_grad, 2 * UNIT_ROUNDOFF[torch.bfloat16]),
            ("d logits softmax part", got_grad * off_target, t_grad * off_target, 2 * UNIT_ROUNDOFF[torch.bfloat16])):
        err = relative_error(value, truth)
        results.append(CheckResult(f"{label} {quantity}", "bfloat16", err, limit, err <= limit,
                                   "entries off the targets" if quantity.endswith("part") else ""))
    wrong = int((predicted[rows.to(device)].cpu() != reference.predicted_ids(z)).sum())
    results.append(CheckResult(f"{label} argmax", "bfloat16", wrong, 0, wrong == 0))
    want = reference_samples(z, None, SEED, rows=rows)
    bad = len(sample_mismatches(sampled[rows.to(device)], want, z, seed=SEED, rows=rows))
    results.append(CheckResult(f"{label} samples", "bfloat16", bad, 0, bad == 0,
                               f"{n} x {vocab}: {n * vocab:,} elements, {len(rows)} rows compared"))
    return results


def wide_checks(device: torch.device) -> list[CheckResult]:
    """`wide_logits_checks` where it can run: on CUDA with the memory for it; else one SKIP row saying why."""
    need = wide_logits_bytes()
    label = f"N*V >= 2^{WIDE_BOUNDARY.bit_length() - 1} ({WIDE_BOUNDARY // VOCAB + WIDE_ROWS_PAST} x {VOCAB})"
    if device.type != "cuda":
        why = f"CUDA only: {need / 2**30:.0f} GiB of logits and gradients, beyond a CPU check's time"
        return [CheckResult(label, "bfloat16", "-", "-", False, why, skipped=True)]
    free, _ = torch.cuda.mem_get_info(device)
    if free < need + (1 << 30):
        why = f"needs {need / 2**30:.1f} GiB free on the GPU, {free / 2**30:.1f} GiB free"
        return [CheckResult(label, "bfloat16", "-", "-", False, why, skipped=True)]
    return wide_logits_checks(device)


def cublas_checks(device: torch.device) -> list[CheckResult]:
    """The head's cuBLAS probe for each half dtype the device takes: whether cuBLAS multiplies it into float32
    (mm) and accumulates such a product into float32 in place (addmm). A "no" sends the head down a slower path
    that uses more memory: a FAIL on sm_80 or newer, a SKIP (information) on older cards; n/a on the CPU."""
    if device.type != "cuda":
        return [CheckResult("cuBLAS half mm/addmm -> float32", "-", "n/a (CPU)", "-", False,
                            "the CPU head multiplies in float32 through the CPU BLAS", skipped=True)]
    flagged = cublas_probe_flagged(device)
    results = []
    for dtype in device_dtypes(device)[1:]:
        mm, addmm = cublas_float32_out(device, dtype)
        for what, ok, slow in (("mm -> float32", mm, "the head upcasts weight to a float32 [V, H] copy"),
                               ("addmm -> float32 in place", addmm,
                                "d weight accumulates through a float32 [V, H] temporary per row-chunk")):
            note = "" if ok else f"slow path: {slow}" + ("" if flagged else " (informational before sm_80)")
            results.append(CheckResult(f"cuBLAS {what}", _name(dtype), "yes" if ok else "no", "yes", ok, note,
                                       skipped=not ok and not flagged))
    return results


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
    """Every check on `device` with its current backend. On the CPU each head shape keeps CPU_ROWS rows, and the
    N x V >= 2^31 case is skipped."""
    dev = torch.device(device)
    results = _guarded("cuBLAS probe", "-", lambda: cublas_checks(dev))
    for label, n, h in HEAD_SHAPES:
        if dev.type != "cuda":
            label, n = f"{label}*", min(n, CPU_ROWS)
        label = f"{label} {n}x{h}"
        for dtype in device_dtypes(dev):
            results += _guarded(f"head {label} fwd+bwd", _name(dtype),
                                functools.partial(head_checks, dev, dtype, label, n, h, vocab=VOCAB))
    sampler = lambda dev: sampler_checks(dev, rows=SAMPLER_ROWS, vocab=SAMPLER_VOCAB)  # noqa: E731
    for check, dtype, run in (("sampler", "-", sampler), ("N*V >= 2^31", "bfloat16", wide_checks),
                              ("rtd_loss fwd+bwd", "float32", rtd_checks), ("replace_", "int64", replace_checks)):
        results += _guarded(check, dtype, functools.partial(run, dev))
    return results


def _cell(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return f"{value:.3g}"


def main(device: str) -> int:
    results = run_checks(device)
    backend = electra_fast.get_backend()
    print(f"electra-fast check on {device} (backend {backend}), torch {torch.__version__}")
    print(f"{'check':<44} {'dtype':<9} {'value':>10} {'limit':>10}  result")
    for r in results:
        note = f"  {r.note}" if r.note else ""
        print(f"{r.check:<44} {r.dtype:<9} {_cell(r.value):>10} {_cell(r.limit):>10}  {r.verdict}{note}")
    if torch.device(device).type != "cuda":
        print(f"* on the CPU: the first {CPU_ROWS} rows of the shape")
    for line in FOOTNOTES:
        print(line)
    failed = sum(r.verdict == "FAIL" for r in results)
    skipped = sum(r.skipped for r in results)
    print(f"{len(results) - failed - skipped} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0
