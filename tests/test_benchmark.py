"""The benchmark harness and the CLI on tiny shapes (times are never asserted), and `electra-fast check`."""
import json

import pytest
import torch

from electra_fast import benchmark, check, cli

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
    text = benchmark.format_table(report)
    assert "electra-fast" in text and "tokens/s" in text


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


def test_variants_train_the_same_models_on_the_same_batch():
    variants = benchmark.step_variants(benchmark.Config(**TINY))
    assert set(variants) == {"eager-full", "eager", "compile", "electra-fast"}
    for fn in variants.values():
        fn()  # one full step each: forward, backward, AdamW


def test_eager_and_eager_full_compute_the_same_loss():
    cfg = benchmark.Config(**TINY)
    torch.manual_seed(0)
    pretrainer = benchmark.electra_fast.ElectraPretrainer.from_preset(
        "small", vocab_size=500, mask_token_id=103, special_token_ids=(101, 102), num_layers=1, dropout=0.0)
    ids, mask = benchmark.step_inputs(cfg, torch.device("cpu"))
    losses = []
    for full_logits in (False, True):
        torch.manual_seed(3)  # same masking, same noise
        losses.append(benchmark.EagerStep(pretrainer, full_logits=full_logits)(ids, mask))
    assert torch.allclose(*losses, rtol=1e-5)


def test_peak_memory_probe_in_a_subprocess():
    mb = benchmark._probe_memory(benchmark.Config(**TINY), "head fwd+bwd", "electra-fast")
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


def test_check_passes_on_the_cpu(capsys):
    assert check.main("cpu") == 0
    assert "0 failed" in capsys.readouterr().out
