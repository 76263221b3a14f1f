"""The benchmark harness and the CLI on tiny shapes (times are never asserted)."""
import json
import sys
import types

import pytest
import torch

import electra_fast
from electra_fast import benchmark, cli
from electra_fast.benchmark import runner

TINY = dict(preset="small", batch_size=2, seq_len=16, num_layers=1, head_rows=32, vocab_size=500, warmup=1,
            repeats=1, memory=False, parts=("head", "ops", "step"))


def test_run_reports_every_variant_with_ratios():
    report = benchmark.run(benchmark.Config(**TINY), progress=False)
    tables = {}
    for row in report["rows"]:
        tables.setdefault(row["table"], set()).add(row["variant"])
        assert row["ms"] > 0
    assert {"eager", "compile", "electra-fast"} <= tables["head fwd+bwd"]
    assert tables["step"] >= {"eager-full", "eager", "compile", "electra-fast"}
    assert {"sample_logits", "replace_", "rtd_loss fwd+bwd"} <= set(tables)
    step = {r["variant"]: r for r in report["rows"] if r["table"] == "step"}
    assert step["electra-fast"]["tokens_per_s"] == pytest.approx(32 / (step["electra-fast"]["ms"] / 1e3))
    assert step["electra-fast"]["ratios"]["vs eager"] == pytest.approx(step["eager"]["ms"] / step["electra-fast"]["ms"])
    assert 0 < report["notes"]["fused_share_of_eager_step"]
    assert report["notes"]["head_gemm_floor_ms"] > 0
    assert report["notes"]["cublas mm -> float32"] == report["notes"]["cublas addmm -> float32 in place"] == "n/a (CPU)"
    text = benchmark.format_table(report)
    assert "electra-fast" in text and "tokens/s" in text and "cublas mm -> float32: n/a (CPU)" in text


def test_the_cublas_probe_answer_is_a_note(monkeypatch):
    from electra_fast.benchmark import baselines as heads
    from electra_fast.kernels import generator_loss_and_sample

    cuda = torch.device("cuda", 0)
    assert heads.cublas_probe_notes(cuda, torch.float32) == dict.fromkeys(
        ("cublas mm -> float32", "cublas addmm -> float32 in place"), "n/a (float32 inputs)")
    monkeypatch.setattr(generator_loss_and_sample, "_float32_out", lambda device, dtype: (True, False))
    for capability, loud in (((9, 0), True), ((7, 5), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, capability=capability: capability)
        notes = heads.cublas_probe_notes(cuda, torch.bfloat16)
        assert (notes["cublas mm -> float32"], notes["cublas addmm -> float32 in place"]) == ("yes", "no")
        assert ("WARNING" in notes) == loud
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    notes = {**heads.cublas_probe_notes(cuda, torch.bfloat16), "head_gemm_floor_ms": 1.5}
    config = dict(preset="small", batch_size=1, seq_len=1, head_rows=1, dtype="bfloat16", repeats=1, warmup=1)
    text = benchmark.format_table({"environment": {"device": "cuda"}, "config": config, "rows": [], "notes": notes})
    assert "WARNING: cuBLAS refused addmm -> float32 in place for bfloat16 on this sm_80+ GPU" in text
    assert "head_gemm_floor_ms: 1.500" in text


def test_recommended_steps_run():
    report = benchmark.run(benchmark.Config(**{**TINY, "parts": ("recommended",)}), progress=False)
    variants = {r["variant"] for r in report["rows"]}
    assert {"electra-fast", "electra-fast +compile"} <= variants
    try:
        import transformers  # noqa: F401
    except ImportError:
        return
    assert {"hf eager-full", "hf electra-fast"} <= variants
    fused = next(r for r in report["rows"] if r["variant"] == "hf electra-fast")
    assert fused["ratios"]["vs hf eager-full"] > 0


def test_one_graph_steps_run(monkeypatch):
    # Graph capture as the benchmark does it, without Inductor's code generation (minutes on two cores).
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: real_compile(
        model, fullgraph=kwargs.get("fullgraph", False), backend="aot_eager"))
    report = benchmark.run(benchmark.Config(**{**TINY, "parts": ("graph",)}), progress=False)
    rows = {r["variant"]: r for r in report["rows"]}
    assert {"electra-fast", "electra-fast +compile encoders", "electra-fast fullgraph"} <= set(rows)
    assert ("electra-fast cuda-graphs" in rows) == (report["config"]["device"] == "cuda")
    assert all(r["tokens_per_s"] > 0 and r["table"] == "one-graph step" for r in rows.values())
    notes = report["notes"]
    assert (notes["step_graphs"], notes["step_graph_breaks"]) == (1, 0)
    assert notes["first_call_s encoders"] > 0 and notes["first_call_s fullgraph"] > 0
    assert electra_fast.ops.settings.value_checks()


def test_variants_train_the_same_models_on_the_same_batch():
    variants = benchmark.step_variants(benchmark.Config(**TINY))
    assert set(variants) == {"eager-full", "eager", "compile", "electra-fast"}
    for fn in variants.values():
        fn()  # one full step each: forward, backward, AdamW


def test_eager_and_eager_full_compute_the_same_loss():
    cfg = benchmark.Config(**TINY)
    torch.manual_seed(0)
    pretrainer = electra_fast.ElectraPretrainer.from_preset(
        "small", vocab_size=500, mask_token_id=103, special_token_ids=(101, 102), num_layers=1, dropout=0.0)
    ids, mask = benchmark.step_inputs(cfg, torch.device("cpu"))
    losses = []
    for full_logits in (False, True):
        torch.manual_seed(3)  # same masking, same noise
        losses.append(benchmark.EagerStep(pretrainer, full_logits=full_logits)(ids, mask))
    assert torch.allclose(*losses, rtol=1e-5)


def test_peak_memory_probe_in_a_subprocess():
    mb = benchmark.probe_memory(benchmark.Config(**TINY), "head fwd+bwd", "electra-fast")
    assert mb is not None and mb >= 0


def test_cli_writes_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    argv = ["bench", "--preset", "small", "--batch-size", "2", "--seq-len", "16", "--num-layers", "1",
            "--head-rows", "32", "--vocab-size", "500", "--warmup", "1", "--repeats", "1", "--no-memory",
            "--parts", "head", "--quiet", "--json", str(out), "--plot", str(png)]
    pytest.importorskip("matplotlib")
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["environment"]["torch"] == torch.__version__
    assert png.stat().st_size > 1000
    assert "head fwd+bwd" in capsys.readouterr().out


def test_plot_without_matplotlib_fails_before_any_timing(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError

    def timing_started(*args, **kwargs):
        raise AssertionError("the benchmark ran before --plot was checked")

    monkeypatch.setattr(benchmark, "run", timing_started)
    argv = ["bench", "--quiet", "--json", str(tmp_path / "out.json"), "--plot", str(tmp_path / "out.png")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and "electra-fast[plot]" in err
    assert not (tmp_path / "out.json").exists()


def test_bad_configuration_is_an_error_naming_the_argument(capsys):
    with pytest.raises(ValueError, match="batch_size"):
        benchmark.Config(batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        benchmark.Config(dtype="float64")
    with pytest.raises(ValueError, match="parts"):
        benchmark.Config(parts=("head", "heads"))
    assert cli.main(["bench", "--seq-len", "0", "--quiet"]) == 2
    assert "seq_len" in capsys.readouterr().err


def test_defaults_follow_the_device(monkeypatch):
    cpu = benchmark.Config(device="cpu")
    assert (cpu.batch_size, cpu.seq_len, cpu.dtype) == (8, 128, "float32")
    for supported, dtype in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, supported=supported, **k: supported)
        cuda = benchmark.Config(device="cuda")
        assert (cuda.batch_size, cuda.seq_len, cuda.dtype) == (128, 128, dtype)
    explicit = benchmark.Config(device="cuda:0", batch_size=4, dtype="float16")
    assert (explicit.batch_size, explicit.dtype) == (4, "float16")
    assert benchmark.Config(preset="base").hidden_size == 768
    assert benchmark.Config(preset="base", head_hidden=4096).hidden_size == 4096


def test_peers_run_in_exact_mode(monkeypatch):
    calls = []
    fake = types.ModuleType("cut_cross_entropy")
    fake.linear_cross_entropy = lambda h, w, t, impl: calls.append(impl)
    monkeypatch.setitem(sys.modules, "cut_cross_entropy", fake)
    monkeypatch.setitem(sys.modules, "liger_kernel", None)
    for device, dtype, want in (("cuda", torch.bfloat16, "cce_exact"), ("cpu", torch.float32, "torch_compile")):
        peers = benchmark.head_peers(torch.device(device), dtype)
        assert set(peers) == {"cce (loss only)"}
        peers["cce (loss only)"](None, None, None, None)
        assert calls[-1] == want
    assert benchmark.head_peers(torch.device("cuda"), torch.float32) == {}  # CCE's Triton path: bf16/fp16 only


def test_a_variant_that_cannot_run_is_reported_not_fatal(monkeypatch):
    def with_a_broken_variant(cfg, **kwargs):
        variants = benchmark.head_variants(cfg, **kwargs)

        def broken():
            raise RuntimeError("out of resource: shared memory, Required: 245760\nHardware limit: 232448")
        return {**variants, "broken": broken}

    monkeypatch.setattr(runner, "head_variants", with_a_broken_variant)
    report = benchmark.run(benchmark.Config(**{**TINY, "parts": ("head",)}), progress=False)
    failed = {(f["table"], f["variant"]) for f in report["failed"]}
    assert failed == {("head fwd", "broken"), ("head fwd+bwd", "broken")}
    assert report["failed"][0]["error"] == "RuntimeError: out of resource: shared memory, Required: 245760"
    assert {r["variant"] for r in report["rows"]} == {"eager", "compile", "electra-fast"}
    assert "FAILED head fwd+bwd / broken: RuntimeError" in benchmark.format_table(report)
    with pytest.raises(RuntimeError, match="out of resource"):  # without somewhere to record it, it propagates
        benchmark.time_variants(with_a_broken_variant(benchmark.Config(**TINY)), torch.device("cpu"), 1, 1)
