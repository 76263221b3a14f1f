"""`electra-fast check` catches what it exists to catch, from a truth that never runs through the ops, and a
kernel that cannot launch is a FAIL row with its reason, not a crash. Each limit is shown to fail a deliberately
wrong kernel (monkeypatched at a backend's or a kernel module's seam) that the right kernel passes, on small
shapes."""
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import electra_fast
from electra_fast.ops import numerics as check
from electra_fast.ops import reference
from electra_fast.ops.backends import cpp_backend
from electra_fast.ops.settings import TRITON_INTERPRET

CPU = torch.device("cpu")
N, H, V = 300, 32, 3001  # the head's small shape: V not a multiple of any block, 20 % of rows ignored
QUANTITIES = ("loss", "row losses", "d hidden", "d weight", "d bias", "samples = reference")


def _verdicts(results, label="t"):
    """quantity -> verdict of head_checks' rows."""
    return {r.check[len(f"head {label} "):]: r.verdict for r in results}


@pytest.fixture
def small_cli(monkeypatch):
    """The whole check at small shapes: two head shapes, a small vocabulary, fewer sampler rows."""
    monkeypatch.setattr(check, "HEAD_SHAPES", (("Small", 90, 16), ("Base", 70, 24)))
    monkeypatch.setattr(check, "VOCAB", 1500)
    monkeypatch.setattr(check, "SAMPLER_ROWS", 5000)


@pytest.fixture
def triton_device():
    """The triton backend selected, on the device where it runs here: CUDA, or the CPU under the interpreter."""
    pytest.importorskip("triton")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not TRITON_INTERPRET:
        pytest.skip("triton runs CPU tensors only under TRITON_INTERPRET=1")
    with electra_fast.use_backend("triton"):
        yield device


def test_check_passes_on_the_cpu(small_cli, capsys):
    assert check.main("cpu") == 0
    out = capsys.readouterr().out
    assert "0 failed, 2 skipped" in out and "head Base* 70x24 d weight" in out and "* on the CPU" in out
    assert "n/a (CPU)" in out and "SKIP  CUDA only" in out and "loss scale of 2^16" in out
    for dtype in ("float32", "bfloat16", "float16"):
        assert f"sampler chi-square p                         {dtype}" in out


def test_limits_come_from_rounding_and_stay_within_the_spec():
    bf16, fp16 = check.head_limits(torch.bfloat16), check.head_limits(torch.float16)
    assert bf16["loss"] == fp16["loss"] == bf16["row losses"] == check.LOSS_LIMIT == 2e-6
    assert fp16["d hidden"] == fp16["d weight"] == fp16["d bias"] == 4 * 2.0**-11
    assert bf16["d hidden"] == 1e-2  # 4 x 2^-8 = 1.6e-2, capped at contract §4's tolerance
    f32 = check.head_limits(torch.float32)
    assert (f32["loss"], f32["d weight"]) == (2e-6, 1e-5)
    # Set and restored by hand: torch's cuBLAS settings object refuses the delattr that newer pytest's monkeypatch
    # undoes with.
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert set(check.head_limits(torch.float32).values()) == {5e-4}
        assert check.head_limits(torch.bfloat16)["loss"] == 2e-6  # bf16 products are exact in TF32's 10 bits
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_cpp_head_passes_every_limit(dtype):
    results = check.head_checks(CPU, dtype, "t", N, H, vocab=V)
    assert [r.check for r in results] == [f"head t {q}" for q in QUANTITIES]
    assert all(r.verdict == "PASS" for r in results), results
    limits = check.head_limits(dtype)
    assert all(r.limit == limits[q] for r, q in zip(results[:5], QUANTITIES[:5], strict=True))


def test_a_wrong_gradient_fails_against_the_independent_truth(monkeypatch):
    real = electra_fast.generator_loss_and_sample

    def perturbed_d_hidden(hidden, *args, **kwargs):
        loss, sampled, predicted = real(hidden, *args, **kwargs)
        nudge = 1e-4 * hidden.float().sum()  # same loss value, d hidden off by 1e-4 everywhere
        return loss + nudge - nudge.detach(), sampled, predicted

    monkeypatch.setattr(electra_fast, "generator_loss_and_sample", perturbed_d_hidden)
    verdicts = _verdicts(check.head_checks(CPU, torch.float32, "t", N, H, vocab=V))
    assert verdicts.pop("d hidden") == "FAIL"
    assert set(verdicts.values()) == {"PASS"}


def test_a_float16_gradient_that_underflowed_fails(monkeypatch):
    # What an unscaled float16 gradient tile looks like at real shapes (entries ~1 / (V N) < 6e-8): zero. Eager's
    # float16 gradient underflows the same way, so a limit that added eager's error passed this kernel.
    real, upstream = cpp_backend.generator_loss_and_sample_backward, []

    def zero_in_float16(grad_loss, hidden, weight, bias, *args):
        upstream.append(float(grad_loss))
        grads = real(grad_loss, hidden, weight, bias, *args)
        return tuple(None if g is None else g.zero_() if hidden.dtype == torch.float16 else g for g in grads)

    monkeypatch.setattr(cpp_backend, "generator_loss_and_sample_backward", zero_in_float16)
    verdicts = _verdicts(check.head_checks(CPU, torch.float16, "t", N, H, vocab=V))
    assert [verdicts[q] for q in ("d hidden", "d weight", "d bias")] == ["FAIL"] * 3
    assert [verdicts[q] for q in ("loss", "row losses", "samples = reference")] == ["PASS"] * 3
    assert upstream == [2.0**16]  # the check's loss scale reaches the backward, as a GradScaler's does


def test_a_float16_gradient_a_few_roundoffs_off_fails(monkeypatch):
    # Within contract §4's 1e-2, 8 float16 roundoffs off (a tile rounded twice over, a half-precision accumulator):
    # the derived 4 u limit catches it.
    real = cpp_backend.generator_loss_and_sample_backward

    def off_by_8u(grad_loss, hidden, weight, bias, *args):
        dh, dw, db = real(grad_loss, hidden, weight, bias, *args)
        noise = torch.Generator().manual_seed(0)
        dh = dh * (1 + 8 * 2.0**-11 * torch.randn(dh.shape, generator=noise))
        return dh, dw, db

    monkeypatch.setattr(cpp_backend, "generator_loss_and_sample_backward", off_by_8u)
    results = {r.check: r for r in check.head_checks(CPU, torch.float16, "t", N, H, vocab=V)}
    wrong = results["head t d hidden"]
    assert wrong.verdict == "FAIL" and wrong.value < 1e-2  # what contract §4's tolerance alone let pass


def test_a_bfloat16_loss_from_bfloat16_logits_fails(monkeypatch):
    # The loss folded from logits rounded to bfloat16 (eager's F.linear in bf16), where the head keeps float32
    # logits: ~1e-3 off per row. The limit that added eager's bf16 error (~1e-3) passed it.
    real = cpp_backend.generator_loss_and_sample

    def loss_from_rounded_logits(hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index,
                                 reduction, grads):
        out = list(real(hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index, reduction,
                        grads))
        if hidden.dtype == torch.bfloat16:
            logits = F.linear(hidden.float(), weight.float(), bias.float()).bfloat16().float()
            per_row = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
            out[0] = reference.reduce_rows(per_row, targets != ignore_index, reduction)
        return tuple(out)

    monkeypatch.setattr(cpp_backend, "generator_loss_and_sample", loss_from_rounded_logits)
    wrong = _verdicts(check.head_checks(CPU, torch.bfloat16, "t", N, H, vocab=V))
    assert (wrong.pop("loss"), wrong.pop("row losses")) == ("FAIL", "FAIL")
    assert set(wrong.values()) == {"PASS"}
    assert set(_verdicts(check.head_checks(CPU, torch.float32, "t", N, H, vocab=V)).values()) == {"PASS"}


@pytest.mark.gpu
@pytest.mark.parametrize("bug", [None, "row losses 5e-6 high", "losses of float16-rounded logits"])
def test_a_float32_loss_a_few_millionths_off_fails(triton_device, monkeypatch, bug):
    # The Triton head's fold, wrong in its row losses only (its statistics, and so the gradients and the samples,
    # stay right): 5e-6 high, within the old float32 limit of 1e-5 and the contract's; or folded from the float32 logits
    # rounded to float16, as a head that keeps half-precision logits would.
    from electra_fast.kernels import generator_loss_and_sample

    real = generator_loss_and_sample.fold_rows

    def wrong_fold(logits, bias, targets, **kwargs):
        stats, row_loss, predicted, chunk_lse = real(logits, bias, targets, **kwargs)
        if bug == "row losses 5e-6 high":
            row_loss.mul_(1 + 5e-6)
        elif bug is not None:
            rounded = real(logits.half().float(), bias, targets, **{**kwargs, "out": None})
            row_loss.copy_(rounded[1])
        return stats, row_loss, predicted, chunk_lse

    monkeypatch.setattr(generator_loss_and_sample, "fold_rows", wrong_fold)
    results = {r.check[len("head t "):]: r for r in check.head_checks(triton_device, torch.float32, "t", 160, 16,
                                                                      vocab=1100)}
    losses = [results.pop(q) for q in ("loss", "row losses")]
    assert {r.verdict for r in results.values()} == {"PASS"}, results
    assert all(r.limit == check.LOSS_LIMIT == 2e-6 for r in losses)
    if bug is None:
        assert [r.verdict for r in losses] == ["PASS", "PASS"], losses
    else:
        assert [r.verdict for r in losses] == ["FAIL", "FAIL"], losses
    if bug == "row losses 5e-6 high":
        assert all(r.value < 1e-5 for r in losses), losses  # what the old limit let pass


def test_the_chunked_budget_gives_several_chunks_and_a_shorter_last():
    from electra_fast.kernels.configs import head_chunk_rows

    for n, vocab in ((256, 30522), (2458, 30522), (19660, 30522), (300, 3001), (97, 1031)):
        for itemsizes in ((0, 4), (0, 2)):
            budget = check.chunked_budget(n, vocab, itemsizes)
            edges = check.chunk_edges(n, vocab, budget, itemsizes)
            for itemsize in itemsizes:
                size = head_chunk_rows(n, vocab, itemsize, budget)
                assert -(-n // size) >= check.HEAD_CHUNKS and n % size, (n, vocab, itemsize, size)
                starts = range(0, n, size)
                assert set(starts) | {min(r0 + size, n) - 1 for r0 in starts} <= set(edges)


def _sampler_calls(monkeypatch, wrong=None):
    """Records (row_offset, rows) of every `sample` call of the GPU head; `wrong(row_offset, rows, first_rows)`
    gives the row_offset passed on instead (the right one when None)."""
    from electra_fast.kernels import generator_loss_and_sample

    real, calls = generator_loss_and_sample.sample, []

    def recorded(logits, *args, row_offset=0, **kwargs):
        calls.append((row_offset, logits.shape[0]))
        if wrong is not None:
            row_offset = wrong(row_offset, logits.shape[0], calls[0][1])
        return real(logits, *args, row_offset=row_offset, **kwargs)

    monkeypatch.setattr(generator_loss_and_sample, "sample", recorded)
    return calls


@pytest.mark.gpu
def test_samples_are_compared_in_every_row_chunk(triton_device, monkeypatch):
    calls = _sampler_calls(monkeypatch)
    n, vocab = 160, 1100
    results = check.head_checks(triton_device, torch.bfloat16, "t", n, 16, vocab=vocab)
    assert all(r.verdict == "PASS" for r in results), results
    # Two forwards (the mean loss's, writing bf16 gradient tiles, then the per-row losses'), each in row-chunks
    # whose first and last rows are among those the check compares.
    restarts = [i for i, (r0, _) in enumerate(calls) if r0 == 0]
    assert len(restarts) == 2
    compared = set(check.chunk_edges(n, vocab, check.chunked_budget(n, vocab, (0, 2)), (0, 2)))
    for forward in (calls[:restarts[1]], calls[restarts[1]:]):
        assert len(forward) >= check.HEAD_CHUNKS and forward[-1][1] < forward[0][1]
        assert [r0 for r0, _ in forward] == [sum(rows for _, rows in forward[:i]) for i in range(len(forward))]
        assert sum(rows for _, rows in forward) == n
        assert {r0 for r0, _ in forward} | {r0 + rows - 1 for r0, rows in forward} <= compared


@pytest.mark.gpu
@pytest.mark.parametrize("bug", ["row_offset ignored", "last chunk off by one"])
def test_a_sampler_wrong_in_some_row_chunks_fails(triton_device, monkeypatch, bug):
    if bug == "row_offset ignored":  # every chunk draws the first chunk's noise
        _sampler_calls(monkeypatch, lambda r0, rows, first: 0)
    else:  # only the last, shorter chunk's rows take the next row's noise
        _sampler_calls(monkeypatch, lambda r0, rows, first: r0 + 1 if rows < first else r0)
    wrong = _verdicts(check.head_checks(triton_device, torch.float32, "t", 160, 16, vocab=1100))
    assert wrong.pop("samples = reference") == "FAIL"
    assert set(wrong.values()) == {"PASS"}


def test_reference_samples_are_the_reference_sampler_from_any_row():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(40, 300, generator=g, dtype=torch.float64) * 2
    logits[3, :200] = float("-inf")
    logits[5, 7] = float("nan")
    targets = torch.randint(0, 300, (40,), generator=g)
    targets[::4] = -100
    for kwargs in ({}, dict(temperature=0.7, disallow_correct=True)):
        want = reference.sample_from_logits(logits, targets, torch.tensor(9), **kwargs)
        assert torch.equal(check.reference_samples(logits, targets, 9, **kwargs), want)
        later = torch.arange(17, 40)
        got = check.reference_samples(logits[later], targets[later], 9, rows=later, **kwargs)
        assert torch.equal(got, want[later])
        shifted = check.reference_samples(logits[later], targets[later], 9, rows=later - 1, **kwargs)
        assert not torch.equal(shifted, want[later])  # a row's noise is its own


def test_the_sampler_statistics_run_in_every_dtype():
    results = check.sampler_checks(CPU, rows=6000)
    assert [(r.check, r.dtype) for r in results] == [
        (f"sampler {what}", dtype) for dtype in ("float32", "bfloat16", "float16")
        for what in ("chi-square p", "zero-prob draws")]
    assert all(r.verdict == "PASS" for r in results), results


def test_the_half_precision_logits_round_visibly():
    # The check's half-precision logits sit where the dtype's spacing is 0.5 to 1: the right draws fail against
    # the softmax of the logits before rounding, so a sampler that does not draw from the rounded ones is seen.
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(0)
        rounded = check.sampler_logits(dtype)
        exact = check.sampler_logits(torch.float32) + check.LOGIT_OFFSET[dtype]
        assert not torch.equal(rounded.float(), exact)
        probs = torch.softmax(rounded.double() / check.SAMPLER_TEMPERATURE, 0)
        draws = torch.multinomial(probs, 6000, replacement=True)
        assert check.chi_square_pvalue(draws, probs) > 1e-3
        assert check.chi_square_pvalue(draws, torch.softmax(exact.double() / check.SAMPLER_TEMPERATURE, 0)) < 1e-3


def test_a_sampler_that_rounds_in_the_input_dtype_fails(monkeypatch):
    # Temperature applied in the logits' own dtype before the kernel (z = logits / T rounded to bf16/fp16): the
    # float32 statistics cannot see it, the half-precision ones do.
    real = cpp_backend.sample_logits

    def divided_in_dtype(logits, targets, seed, temperature, *args):
        if logits.dtype != torch.float32:
            logits, temperature = (logits / temperature).to(logits.dtype), 1.0
        return real(logits, targets, seed, temperature, *args)

    monkeypatch.setattr(cpp_backend, "sample_logits", divided_in_dtype)
    verdicts = {(r.check, r.dtype): r.verdict for r in check.sampler_checks(CPU, rows=6000)}
    assert verdicts.pop(("sampler chi-square p", "bfloat16")) == "FAIL"
    assert verdicts.pop(("sampler chi-square p", "float16")) == "FAIL"
    assert set(verdicts.values()) == {"PASS"}


WIDE = dict(boundary=2**14, vocab=300, rows_past=16)  # the N x V >= 2^31 case with its boundary at 2^14


def test_rows_past_the_boundary_are_compared():
    results = check.wide_logits_checks(CPU, **WIDE)
    assert [r.check.split(": ")[1] for r in results] == ["row losses", "d logits", "d logits softmax part",
                                                         "argmax", "samples"]
    assert all(r.verdict == "PASS" for r in results), results
    assert (2**14 // 300 + 16) * 300 > 2**14 and "17 rows compared" in results[-1].note


def test_offsets_that_wrap_at_the_boundary_fail(monkeypatch):
    # A kernel whose element offsets wrap at the boundary (int32 at 2^31): rows past it read rows before it.
    boundary = WIDE["boundary"]

    def wrapped(logits):
        flat = logits.reshape(-1)
        return flat[torch.arange(flat.numel()) % boundary].view(logits.shape)

    real_forward, real_backward = cpp_backend.sample_logits, cpp_backend.sample_logits_backward
    monkeypatch.setattr(cpp_backend, "sample_logits", lambda logits, *a: real_forward(wrapped(logits), *a))
    monkeypatch.setattr(cpp_backend, "sample_logits_backward",
                        lambda g, logits, *a: real_backward(g, wrapped(logits), *a))
    results = check.wide_logits_checks(CPU, **WIDE)
    assert [r.verdict for r in results] == ["FAIL"] * 5, results


def test_a_softmax_part_too_large_past_the_boundary_fails(monkeypatch):
    # d logits whose softmax part is 15 % too large (the one-hot right). At BERT's vocabulary the one-hot dominates
    # the whole gradient's norm, which moves by well under its limit: only the softmax part's own row sees it.
    real = cpp_backend.sample_logits_backward

    def softmax_too_large(grad_loss, logits, targets, stats, ignore_index, reduction):
        grad = real(grad_loss, logits, targets, stats, ignore_index, reduction)
        scale = grad_loss.float() * (targets != ignore_index)  # reduction "none": d loss / d row loss per row
        return grad + 0.15 * scale[:, None] * torch.softmax(logits.float(), -1)

    monkeypatch.setattr(cpp_backend, "sample_logits_backward", softmax_too_large)
    results = {r.check.split(": ")[1]: r for r in check.wide_logits_checks(CPU, boundary=2**20, vocab=30522,
                                                                           rows_past=16)}
    assert results.pop("d logits softmax part").verdict == "FAIL"
    assert results["d logits"].value < results["d logits"].limit  # the whole gradient cannot see it
    assert {r.verdict for r in results.values()} == {"PASS"}, results


def test_the_wide_case_is_a_skip_where_it_cannot_run(monkeypatch):
    (cpu,) = check.wide_checks(CPU)
    assert cpu.verdict == "SKIP" and cpu.note.startswith("CUDA only") and not cpu.passed
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 << 30, 80 << 30))
    (small,) = check.wide_checks(torch.device("cuda", 0))
    assert small.verdict == "SKIP" and "needs 16.0 GiB free on the GPU, 4.0 GiB free" in small.note


def test_the_cublas_probe_is_a_row(monkeypatch):
    from electra_fast.kernels import generator_loss_and_sample

    (cpu,) = check.cublas_checks(CPU)
    assert (cpu.value, cpu.verdict) == ("n/a (CPU)", "SKIP")
    answers = {torch.bfloat16: (True, False), torch.float16: (True, True)}
    monkeypatch.setattr(generator_loss_and_sample, "_float32_out", lambda device, dtype: answers[dtype])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for capability, verdict in (((9, 0), "FAIL"), ((7, 5), "SKIP")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, capability=capability: capability)
        rows = {(r.check, r.dtype): r for r in check.cublas_checks(torch.device("cuda", 0))}
        assert [(r.value, r.verdict) for r in rows.values()] == [("yes", "PASS"), ("no", verdict), ("yes", "PASS"),
                                                                ("yes", "PASS")]
        refused = rows[("cuBLAS addmm -> float32 in place", "bfloat16")]
        assert "slow path: d weight accumulates through a float32 [V, H] temporary" in refused.note


def test_a_kernel_that_cannot_launch_is_a_fail_row(small_cli, monkeypatch, capsys):
    def out_of_resources(*args, **kwargs):
        raise RuntimeError("out of resource: shared memory, Required: 245760, Hardware limit: 232448\nmore")

    monkeypatch.setattr(electra_fast, "generator_loss_and_sample", out_of_resources)
    monkeypatch.setattr(check, "HEAD_SHAPES", (("Small", 64, 16),))
    results = check.run_checks("cpu")
    heads = [r for r in results if r.check.startswith("head")]
    assert [r.dtype for r in heads] == ["float32", "bfloat16", "float16"]
    assert all(r.verdict == "FAIL" and r.note.startswith("RuntimeError: out of resource") for r in heads)
    assert all(r.verdict != "FAIL" for r in results if not r.check.startswith("head"))  # the table went on
    assert check.main("cpu") == 1
    out = capsys.readouterr().out
    assert "FAIL  RuntimeError: out of resource: shared memory" in out and "3 failed, 2 skipped" in out


def test_check_and_bench_parse_without_the_data_and_pretraining_packages(tmp_path):
    # `electra-fast check` on a machine without safetensors or tokenizers (a module set to None in sys.modules
    # fails to import): the parser of check and bench, and `check --help`, import neither.
    code = textwrap.dedent("""
        import sys
        sys.modules["safetensors"] = None
        sys.modules["tokenizers"] = None
        from electra_fast import cli
        try:
            cli.main(["check", "--help"])
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        args = cli.build_parser(["check", "--device", "cpu"]).parse_args(["check", "--device", "cpu"])
        assert (args.command, args.device, args.fn) == ("check", "cpu", cli.check), args
        args = cli.build_parser(["bench", "--quiet"]).parse_args(["bench", "--quiet"])
        assert (args.command, args.quiet, args.fn) == ("bench", True, cli.bench), args
        import electra_fast.ops.numerics  # what `check` runs
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage: electra-fast check [-h] [--device DEVICE]" in done.stdout
    # The packages are really blocked: the checkpoints' module, which imports safetensors, fails on it.
    done = subprocess.run([sys.executable, "-c", code.split("from electra_fast import cli")[0] +
                           "import electra_fast.pretraining.checkpoint"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0 and "safetensors" in done.stderr, done.stderr[-3000:]
