"""The performance model read from the compiled kernels (electra_fast.ops.perf_model): no shipped kernel spills or
passes its register limit on sm_80 or sm_90; the SASS classifier and loop finder on code whose instruction mix is
known; the prediction arithmetic on hand-computed cases.

Compiling needs Triton's NVIDIA backend and its tools, and the real compiler, not the interpreter this session
runs under: those tests run a fresh process, and skip where the tools are absent (e.g. off Linux)."""
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from electra_fast.ops import perf_model

from helpers import REPOSITORY

_ROOT = REPOSITORY  # the checkout: its electra_fast first
_ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _run(args, cwd=_ROOT, timeout=1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_ENV, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tools():
    """Skips where Triton's NVIDIA backend or its cuobjdump / nvdisasm cannot run."""
    pytest.importorskip("triton.backends.nvidia")
    run = _run(["-c", "from electra_fast.ops import perf_model; print(perf_model.tools_missing() or '')"])
    if run.returncode != 0 or run.stdout.strip():
        pytest.skip(f"no Triton NVIDIA tools here: {run.stdout.strip() or run.stderr[-500:]}")


@pytest.fixture(scope="module")
def report(tools, tmp_path_factory):
    """What `python -m electra_fast.ops.perf_model --json` writes: every shipped launch and every launch of the
    traced heads, compiled for sm_80 and sm_90, and the predictions."""
    path = tmp_path_factory.mktemp("perf_model") / "report.json"
    run = _run(["-m", "electra_fast.ops.perf_model", "--json", str(path)])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "predicted from the compiled code" in run.stdout
    with open(path) as f:
        return json.load(f)


def _over_limits(rows):
    return [f"{r['where']}: {r['label']} sm_{r['arch']}: {r['registers']} registers (limit {r['register_limit']}), "
            f"{r['stack_bytes']} B stack, {r['local_bytes']} B local, {r['spill_instructions']} LDL/STL"
            for r in rows
            if r["register_limit"] is None or r["registers"] > r["register_limit"]
            or r["stack_bytes"] or r["local_bytes"] or r["spill_instructions"]]


def test_every_kernel_compiles_without_spills_within_its_register_limit(report):
    rows = [r for r in report["kernels"] if r["kernel"] != "_fold_rows_kernel"]
    assert {"_sample_kernel", "_softmax_grad_kernel", "_rtd_kernel", "_replace_kernel"} <= {r["kernel"] for r in rows}
    assert {r["arch"] for r in rows} == {80, 90}
    assert _over_limits(rows) == []


def test_the_fold_compiles_without_spills_within_128_registers(report):
    rows = [r for r in report["kernels"] if r["kernel"] == "_fold_rows_kernel"]
    assert rows and perf_model.REGISTER_LIMITS["_fold_rows_kernel"] == 128
    assert _over_limits(rows) == []


def test_the_head_training_passes_issue_at_most_25_instructions_per_logit(report):
    # The bf16 training path's two passes over each logit (the fold, then the gradient tile with d bias's column
    # sums), as the head launches them at the README's shapes: at 25 or fewer they stream at memory speed.
    for arch in (80, 90):
        for where in ("head Small/Base", "head LLM-like"):
            rows = [r for r in report["kernels"] if r["where"] == where and r["arch"] == arch]
            fold = [r for r in rows if r["kernel"] == "_fold_rows_kernel"]
            grad = [r for r in rows if r["kernel"] == "_softmax_grad_kernel" and "MASKED=False" in r["label"]]
            assert len(fold) == 1 and len(grad) == 1, [r["label"] for r in rows]
            per_logit = fold[0]["per_element"]["total"] + grad[0]["per_element"]["total"]
            assert per_logit <= 25, (where, arch, per_logit)


def test_the_prediction_covers_every_shape_and_card_with_the_head_gemms(report):
    predictions = report["predictions"]
    assert {(p["shape"], p["card"]) for p in predictions} == {
        (s, c) for s in perf_model.HEAD_SHAPES for c in perf_model.CARDS}
    for p in predictions:
        n, h, v = p["N"], p["H"], p["V"]
        assert p["gemm_flops"] == 6 * n * h * v  # the three products, whatever the chunking
        starts = [r0 for r0, _ in p["chunks"]]
        assert starts == sorted(starts) and sum(rows for _, rows in p["chunks"]) == n
        assert all(a + rows == b for (a, rows), (b, _) in itertools.pairwise(p["chunks"]))
        assert p["launches"]["GEMMs"] == 3 * len(p["chunks"])
        assert math.isclose(p["total_s"], sum(p["seconds"].values()), rel_tol=1e-12)
        assert p["total_s"] > p["gemm_only_s"] > 0 and math.isclose(p["ratio"], p["total_s"] / p["gemm_only_s"])
        for part in ("fold", "sampler"):
            assert p["seconds"][part] > 0, (p["shape"], p["card"], part)


_TINY_KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n), mask=offsets < n)


@triton.jit
def exp_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offsets, tl.exp(tl.load(x_ptr + offsets, mask=offsets < n)), mask=offsets < n)


@triton.jit
def row_sum_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    total = tl.zeros([BLOCK], tl.float32)
    for k in range(0, n, BLOCK):
        offsets = k + tl.arange(0, BLOCK)
        total += tl.load(x_ptr + row * n + offsets, mask=offsets < n, other=0.0)
    tl.store(y_ptr + row, tl.sum(total, axis=0))
'''

_ANALYSE = '''
import json, sys
import torch
import tiny_kernels
from electra_fast.ops import launch_limits, perf_model

x, y = (torch.empty(4096, device="meta") for _ in range(2))  # 16-byte aligned pointers, n a multiple of 16
out = {}
for name in ("copy_kernel", "exp_kernel", "row_sum_kernel"):
    launch = launch_limits.specialise(getattr(tiny_kernels, name), (x, y, 4096), {"BLOCK": 1024, "num_warps": 4})
    for arch in (80, 90):
        stats = perf_model.analyse(launch, arch)
        out[f"{name} {arch}"] = {**stats._asdict(), "per_element": perf_model.per_element(stats, 1024),
                                 "roles": perf_model.loop_roles(stats)}
json.dump(out, sys.stdout)
'''


@pytest.fixture(scope="module")
def tiny(tools, tmp_path_factory):
    """perf_model.analyse of three small kernels whose instruction mix is known, on sm_80 and sm_90."""
    folder = tmp_path_factory.mktemp("tiny_kernels")
    (folder / "tiny_kernels.py").write_text(_TINY_KERNELS)
    run = _run(["-c", _ANALYSE], cwd=folder, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize("arch", [80, 90])
def test_an_exponential_per_element_is_one_mufu_ex2(tiny, arch):
    stats = tiny[f"exp_kernel {arch}"]
    assert any(m.startswith("MUFU.EX2") for m in stats["mnemonics"]), stats["mnemonics"]
    assert stats["per_element"]["mufu"] == 1.0  # 1,024 exponentials by 4 warps of 32 lanes: 8 per thread
    assert stats["loops"] == [] and stats["spill_instructions"] == 0


@pytest.mark.parametrize("arch", [80, 90])
def test_a_copy_is_loads_and_stores_of_16_byte_vectors_and_no_mufu(tiny, arch):
    stats = tiny[f"copy_kernel {arch}"]
    assert stats["static"]["mufu"] == 0 and stats["static"]["float"] == 0
    assert stats["mnemonics"].get("LDG.E.128") == 2 and stats["mnemonics"].get("STG.E.128") == 2, stats["mnemonics"]
    assert stats["per_element"]["ld/st"] == 0.5  # (2 loads + 2 stores) x 128 threads / 1,024 elements
    assert stats["loops"] == [] and stats["registers"] > 0 and stats["ctas_per_sm"] >= 1


@pytest.mark.parametrize("arch", [80, 90])
def test_a_loop_is_found_and_named_by_its_for_statement(tiny, arch):
    stats = tiny[f"row_sum_kernel {arch}"]
    (loop,) = stats["loops"]
    assert loop["variable"] == "k" and loop["source"].startswith("tiny_kernels.py:")
    assert loop["loads_global"] and loop["ld/st"] >= 1 and loop["total"] < stats["static"]["total"]
    assert stats["roles"] == ["unknown"]  # KERNEL_MODELS does not describe it
    assert any(m.startswith("SHFL") for m in stats["mnemonics"])  # the final tl.sum across lanes


def test_opcode_classes():
    expected = {"FFMA": "float", "FMNMX.NAN": "float", "FSETP.GEU.AND": "float", "FSEL": "float",
                "MUFU.EX2": "mufu", "MUFU.LG2": "mufu", "F2FP.BF16.F32.PACK_AB": "convert", "I2F.S64": "convert",
                "IADD3": "int", "IMAD.WIDE.U32": "int", "LOP3.LUT": "int", "ISETP.GE.AND": "int", "SHF.R.U32.HI": "int",
                "LDG.E.128": "ld/st", "STG.E": "ld/st", "LDS.U": "ld/st", "STS.128": "ld/st", "LDL.LU": "ld/st",
                "STL": "ld/st", "BAR.SYNC.DEFER_BLOCKING": "bar", "SHFL.BFLY": "shfl", "BRA": "other",
                "EXIT": "other", "S2R": "other", "ULDC.64": "other", "MOV": "other", "NEWOP.X": "other"}
    assert {m: perf_model.opcode_class(m) for m in expected} == expected


def test_parse_sass_finds_the_innermost_loops_and_names_them(tmp_path):
    source = tmp_path / "k.py"
    source.write_text("a = 1\nfor outer in range(3):\n    for inner in range(4):\n        pass\n")
    at = f'\t//## File "{source}", line'
    sass = textwrap.dedent(f"""\
        .text.k:
                /*0000*/                   S2R R0, SR_TID.X ;
        .L_x_0:
        {at} 2
                /*0010*/                   IADD3 R1, R1, 0x1, RZ ;
        .L_x_1:
        {at} 4
                /*0020*/                   LDG.E R2, desc[UR4][R4.64] ;
                /*0030*/                   FFMA R3, R2, R2, R3 ;
        {at} 3
                /*0040*/              @!P0 BRA `(.L_x_1) ;
                /*0050*/                   ISETP.NE.AND P1, PT, R1, 0x3, PT ;
        {at} 2
                /*0060*/               @P1 BRA `(.L_x_0) ;
                /*0070*/                   EXIT ;
        .L_x_2:
                /*0080*/                   BRA `(.L_x_2);
                /*0090*/                   NOP;
        .L_x_3:
        """)
    instructions, labels = perf_model.parse_sass(sass)
    assert [i.mnemonic for i in instructions][-2:] == ["EXIT", "BRA"]  # the padding NOP dropped
    code = perf_model.executed(instructions, labels)
    assert [i.mnemonic for i in code][-1] == "EXIT"  # the closing self-branch dropped
    (loop,) = perf_model.find_loops(code, labels)
    assert (loop.first, loop.last, loop.variable, loop.source) == (0x20, 0x40, "inner", "k.py:3")
    body = [i for i in code if loop.first <= i.address <= loop.last]
    assert perf_model.class_counts(body) == {"float": 1, "mufu": 0, "convert": 0, "int": 0, "ld/st": 1, "bar": 0,
                                             "shfl": 0, "other": 1, "total": 3}


def test_occupancy_from_registers_threads_and_shared_memory():
    # 168 registers: 5,376 a warp; a sub-partition's 16,384 hold 3 warps, 12 per SM: 3 CTAs of 4 warps.
    assert perf_model.ctas_per_sm(168, 4, 0, 90) == (3, "registers")
    # 201 rounds up to 208 (6,656 a warp): 2 a sub-partition, 8 per SM, 2 CTAs; 128: 4 CTAs.
    assert perf_model.ctas_per_sm(201, 4, 0, 90) == (2, "registers")
    assert perf_model.ctas_per_sm(128, 4, 1024, 80) == (4, "registers")
    # Registers are split between the 4 sub-partitions: 96 (3,072 a warp) fit 5 warps in each, 20 in all, not
    # the 21 that 65,536 / 3,072 would give.
    assert perf_model.ctas_per_sm(96, 1, 0, 90) == (20, "registers")
    # 24 registers: threads limit first, 2,048 / 128 = 16 CTAs.
    assert perf_model.ctas_per_sm(24, 4, 0, 90) == (16, "threads")
    # 100,000 B of shared memory (+ 1 KB reserved): one CTA in sm_80's 164 KB, two in sm_90's 228 KB.
    assert perf_model.ctas_per_sm(32, 4, 100_000, 80) == (1, "shared")
    assert perf_model.ctas_per_sm(32, 4, 100_000, 90) == (2, "shared")
    # 1 warp of 16 registers: 32 CTAs at most.
    assert perf_model.ctas_per_sm(16, 1, 0, 80) == (32, "CTAs")
    with pytest.raises(ValueError, match="registers"):
        perf_model.ctas_per_sm(0, 4, 0, 90)


def test_issue_and_gemm_times_by_hand():
    card = perf_model.Card(arch=90, sms=100, clock_hz=2e9, bandwidth=2e12, bf16_flops=1e15, l2_bytes=1 << 20)
    # 250 CTAs over 100 SMs: the busiest runs 3, 2 at a time (8 warps, all 4 schedulers busy): 3 x 4 warps x
    # 1,000 instructions / (4 x 2e9 per second) = 1.5 us.
    assert math.isclose(perf_model.issue_time(1000, 4, 250, 2, card), 1.5e-6)
    # One CTA of one warp: one scheduler, 1,000 cycles.
    assert math.isclose(perf_model.issue_time(1000, 1, 1, 8, card), 0.5e-6)
    # 6e12 flops at 70% of 1e15: 8.571 ms, over 1 GB at 90% of 2 TB/s (0.556 ms); plus the launch.
    flop_time = 6e12 / (perf_model.GEMM_EFFICIENCY * 1e15)
    assert flop_time > 1e9 / (perf_model.MEMORY_EFFICIENCY * 2e12)
    assert math.isclose(perf_model.gemm_time(6e12, 1e9, card), flop_time + perf_model.LAUNCH_OVERHEAD_S)
    # A memory-bound GEMM (K small): its bytes.
    assert math.isclose(perf_model.gemm_time(1e9, 1e10, card),
                        1e10 / (perf_model.MEMORY_EFFICIENCY * 2e12) + perf_model.LAUNCH_OVERHEAD_S)


def test_a_trace_of_torch_ops_is_predicted_by_hand():
    meta = torch.device("meta")
    a, b = torch.empty(256, 64, dtype=torch.bfloat16, device=meta), torch.empty(64, 512, dtype=torch.bfloat16,
                                                                                   device=meta)
    acc, x = torch.empty(1000, device=meta), torch.empty(1000, device=meta)
    events = []
    with perf_model._recorder(events):
        product = torch.mm(a, b)  # a GEMM: 2 x 256 x 64 x 512 flops; reads a and b, writes 256 x 512 bf16
        acc.add_(x)  # reads acc and x, writes acc
        acc.copy_(x)  # reads x, writes acc
        product.t()  # a view: no kernel
        torch.empty(5, device=meta)  # an allocation: no kernel
    assert [(e["kind"], e["bytes"], e["flops"]) for e in events] == [
        ("gemm", 256 * 64 * 2 + 64 * 512 * 2 + 256 * 512 * 2, 2 * 256 * 64 * 512),
        ("pass", 3 * 4000, 0), ("pass", 2 * 4000, 0)]
    trace = perf_model.HeadTrace((256, 64, 512), "H100", torch.bfloat16, 1 << 20, [(0, 256)], events)
    predicted = perf_model.predict(trace)
    h100, overhead = perf_model.CARDS["H100"], perf_model.LAUNCH_OVERHEAD_S
    stream = h100.bandwidth * perf_model.MEMORY_EFFICIENCY
    gemm = max(2 * 256 * 64 * 512 / (989e12 * perf_model.GEMM_EFFICIENCY), 360_448 / stream) + overhead
    other = 12_000 / stream + 8_000 / stream + 2 * overhead
    assert math.isclose(predicted["seconds"]["GEMMs"], gemm) and math.isclose(predicted["seconds"]["other"], other)
    assert math.isclose(predicted["total_s"], gemm + other)
    floor = 6 * 256 * 64 * 512 / (989e12 * perf_model.GEMM_EFFICIENCY)
    assert math.isclose(predicted["gemm_only_s"], floor) and math.isclose(predicted["ratio"], (gemm + other) / floor)
    assert predicted["launches"] == {"GEMMs": 1, "other": 2}


def test_a_kernels_bytes_count_a_second_pass_unless_its_rows_fit_in_l2(monkeypatch):
    meta = torch.device("meta")
    logits, grad = torch.empty(64, 4096, device=meta), torch.empty(64, 4096, dtype=torch.bfloat16, device=meta)
    per_row = torch.empty(64, device=meta)
    args = {"x_ptr": logits, "g_ptr": grad, "s_ptr": per_row, "dummy_ptr": per_row, "V": 4096, "part": 1.0}
    monkeypatch.setitem(perf_model.KERNEL_MODELS, "_test_kernel", perf_model.KernelModel(
        "logit", "x_ptr", ("BLOCK_N", "BLOCK_V"), {"i": lambda a, c: a["V"] // c["BLOCK_V"]}, ("rare",),
        coverage=lambda a, c, grid: a["part"]))
    counts = dict.fromkeys((*perf_model.CLASSES, "total"), 1)
    loops = [{"variable": "i", "loads_global": True, **counts}, {"variable": "i", "loads_global": True, **counts},
             {"variable": "rare", "loads_global": True, **counts}]
    stats = perf_model.KernelStats("_test_kernel", "test", 90, 4, 64, 0, 0, 0, 0, 2, "registers", counts, loops,
                                   counts, {})
    constexprs, grid = {"BLOCK_N": 4, "BLOCK_V": 1024}, (16,)  # 16 CTAs of 4 rows, all resident at once
    once = logits.numel() * 4 + grad.numel() * 2 + 64 * 4  # the dummy pointer counted once
    big = perf_model.Card(90, 132, 2e9, 3e12, 1e15, l2_bytes=64 << 20)
    fits = big._replace(l2_bytes=1 << 20)  # the CTAs walk the whole 1 MiB of logits at once
    small = big._replace(l2_bytes=1 << 10)
    assert perf_model.triton_bytes(stats, args, constexprs, grid, big) == once
    assert perf_model.triton_bytes(stats, args, constexprs, grid, fits) == once
    assert perf_model.triton_bytes(stats, args, constexprs, grid, small) == once + logits.numel() * 4
    # A launch covering half the columns moves half the [rows, V] tensors, the per-row ones whole.
    half = perf_model.triton_bytes(stats, {**args, "part": 0.5}, constexprs, grid, big)
    assert half == (logits.numel() * 4 + grad.numel() * 2) // 2 + 64 * 4
    # Warp instructions: outside once, each hot body V / BLOCK_V = 4 times, the rare loop never.
    assert perf_model.instructions_per_warp(stats, args, constexprs) == 1 + 2 * 4


def test_an_unnamed_loop_is_refused_in_a_prediction(monkeypatch):
    monkeypatch.setitem(perf_model.KERNEL_MODELS, "_test_kernel", perf_model.KernelModel(
        "logit", None, ("BLOCK",), {"i": lambda a, c: 1}))
    counts = dict.fromkeys((*perf_model.CLASSES, "total"), 1)
    stats = perf_model.KernelStats("_test_kernel", "test", 90, 4, 64, 0, 0, 0, 0, 2, "registers", counts,
                                   [{"variable": "j", "source": "k.py:7", "loads_global": False, **counts}], counts,
                                   {})
    with pytest.raises(RuntimeError, match=r"loop over `j` \(k.py:7\)"):
        perf_model.instructions_per_warp(stats, {}, {"BLOCK": 1})
