"""Pretraining as a Python function: `electra_fast.pretrain(PretrainConfig(...))` from `python -c` pretrains and
exports what the command does (the same weights, bit for bit, and the same log), returns the log's last lines
as its metrics, lets an interruption propagate after naming the checkpoint, and writes checkpoints that the
command resumes, in the format of the checkpoints written before the function existed."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import electra_fast
from electra_fast import PretrainConfig
from electra_fast.pretraining import checkpoint

from helpers import interrupted_at_step

TINY = dict(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, embedding_size=16, seq_len=24,
            batch_size=2, vocab_size=300)
# The keys of a checkpoint's manifest and of its "config" record as the code before PretrainConfig wrote them: a
# compatibility fixture. --resume compares the config record key by key, so a checkpoint written before resumes
# only while these stay ("objective" is written only when not "electra").
MANIFEST_KEYS = ["config", "files", "format", "step"]
CONFIG_KEYS = ["batch_size", "data", "grad_accum", "lr", "model", "processes", "seed", "seq_len", "steps", "tokenizer",
               "valid_sequences", "warmup_steps", "weight_decay"]
ENCODER_KEYS = ["dropout", "embedding_size", "hidden_size", "intermediate_size", "layer_norm_eps",
                "max_position_embeddings", "num_heads", "num_layers", "type_vocab_size", "vocab_size"]
# Both runs on one thread, so that their floating-point sums are the same.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pydoc_data import topics

    lines = [line for name in sorted(topics.topics)[:4] for line in topics.topics[name].splitlines()
             if line.strip()][:120]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return str(path)


def _log(out) -> list:
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _without_speed(log: list) -> list:
    return [{k: v for k, v in record.items() if k != "tokens_per_s"} for record in log]


def _training(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("valid_")}


def _validation(record: dict) -> dict:
    return {k[len("valid_"):]: v for k, v in record.items() if k.startswith("valid_")}


def _same(a, b) -> bool:
    """Equal, NaN included (a precision with no positive prediction is NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _config_arguments(config: PretrainConfig) -> str:
    """`config` as the arguments of PretrainConfig(...) in Python source."""
    return ", ".join(f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config)
                     if getattr(config, f.name) != f.default)


def test_python_c_pretrains_and_exports_what_the_command_does(tmp_path, corpus):
    from helpers import command_line_of

    config = PretrainConfig(corpus=[corpus], steps=3, valid_sequences=4, eval_every=2, seed=3, **TINY)
    command = subprocess.run([sys.executable, "-m", "electra_fast", "pretrain",
                              *command_line_of(dataclasses.replace(config, out=str(tmp_path / "command")))],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path, env=ONE_THREAD)
    assert command.returncode == 0, command.stderr[-3000:]
    code = ("import dataclasses, json, electra_fast; "
            f"r = electra_fast.pretrain(electra_fast.PretrainConfig({_config_arguments(config)}, "
            f"out={str(tmp_path / 'function')!r})); print(r.export); print(json.dumps(dataclasses.asdict(r)))")
    function = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env=ONE_THREAD)
    assert function.returncode == 0, function.stderr[-3000:]
    *_, export, result = function.stdout.strip().splitlines()
    result = json.loads(result)
    assert export == result["export"] == str(tmp_path / "function" / "discriminator")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        assert os.path.isfile(os.path.join(export, name)), name
    assert json.loads((tmp_path / "function" / "discriminator" / "config.json").read_text())["pretraining_step"] == 3
    # the same run: weights bit for bit, the same log but for the speed
    for run in ("command", "function"):
        assert (tmp_path / run / "discriminator" / "model.safetensors").is_file()
    assert (tmp_path / "command" / "discriminator" / "model.safetensors").read_bytes() == \
        (tmp_path / "function" / "discriminator" / "model.safetensors").read_bytes()
    log = _log(tmp_path / "function")
    assert _same(_without_speed(_log(tmp_path / "command")), _without_speed(log))
    # the result: the last line's training fields, the last validation, the run's speed
    assert [r["step"] for r in log] == [1, 2, 3] and result["steps"] == 3
    assert _same(result["metrics"], _training(log[-1])) and _same(result["valid_metrics"], _validation(log[-1]))
    assert set(result["valid_metrics"]) == set(electra_fast.ElectraPretrainer.metric_names())
    assert result["tokens_per_s"] > 0 and result["out"] == str(tmp_path / "function")
    assert result["checkpoint"].endswith(os.path.join("checkpoints", "step-00000003"))


def test_an_interruption_propagates_and_the_same_config_with_resume_continues(tmp_path, corpus, monkeypatch,
                                                                              capsys):
    config = PretrainConfig(corpus=[corpus], out=str(tmp_path / "run"), steps=4, save_every=2, valid_sequences=4,
                            eval_every=3, **TINY)
    with interrupted_at_step(monkeypatch, 3):
        with pytest.raises(KeyboardInterrupt):
            electra_fast.pretrain(config)
    assert "interrupted at step 2; the latest checkpoint is" in capsys.readouterr().err
    assert checkpoint.latest(tmp_path / "run").endswith("step-00000002")
    # nothing trained: a run resumed at its end returns what its log holds
    result = electra_fast.pretrain(dataclasses.replace(config, resume=True))
    log = _log(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2, 3, 4] and result.steps == 4
    assert _same(result.metrics, _training(log[-1])) and _same(result.valid_metrics, _validation(log[-1]))
    assert log[-1]["valid_loss"] != log[2]["valid_loss"]  # validated at steps 3 and 4 (the last)
    assert result.tokens_per_s > 0
    again = electra_fast.pretrain(dataclasses.replace(config, resume=True))
    assert again.tokens_per_s is None and again.steps == 4
    assert _same(again.metrics, result.metrics) and _same(again.valid_metrics, result.valid_metrics)
    # a log whose last line did not validate: the result's validation is the last line that did
    with open(tmp_path / "run" / "log.jsonl", "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in log[:2] + [log[2], _training(log[3])])
    kept = electra_fast.pretrain(dataclasses.replace(config, resume=True))
    assert _same(kept.valid_metrics, _validation(log[2])) and _same(kept.metrics, _training(log[3]))


def test_max_flops_sets_the_steps_of_the_result_and_leaves_the_config(tmp_path, corpus):
    config = PretrainConfig(corpus=[corpus], out=str(tmp_path / "run"), max_flops=1.0, **TINY)
    with pytest.raises(electra_fast.errors.BadInput, match="--max-flops 1 pays for no step") as caught:
        electra_fast.pretrain(config)
    assert caught.value.field == "max_flops"
    one_step = electra_fast.pretrain(PretrainConfig(corpus=[corpus], out=str(tmp_path / "one"), steps=1, **TINY))
    per_step = one_step.metrics["flops"]
    result = electra_fast.pretrain(dataclasses.replace(config, max_flops=2.5 * per_step))
    assert result.steps == 2 and result.metrics["step"] == 2 and result.metrics["total_flops"] == 2 * per_step
    assert config.steps == 200 and config.max_flops == 1.0  # the caller's config is not changed


def test_checkpoints_keep_the_format_that_earlier_checkpoints_have_and_the_command_resumes_them(tmp_path, corpus):
    from electra_fast.cli import main as cli_main

    result = electra_fast.pretrain(PretrainConfig(corpus=[corpus], out=str(tmp_path / "run"), steps=2, **TINY))
    manifest = checkpoint.read_manifest(result.checkpoint)
    assert sorted(manifest) == MANIFEST_KEYS and manifest["format"] == "electra-fast-checkpoint/1"
    assert sorted(manifest["config"]) == CONFIG_KEYS
    assert sorted(manifest["config"]["model"]) == ["discriminator", "generator"]
    assert all(sorted(manifest["config"]["model"][m]) == ENCODER_KEYS for m in ("discriminator", "generator"))
    assert sorted(manifest["files"]) == ["model.safetensors", "training_state.pt"]
    state = torch.load(os.path.join(result.checkpoint, "training_state.pt"), weights_only=True)
    assert sorted(state) == ["optimizer", "rng", "scheduler", "sequences_consumed"]
    mlm = electra_fast.pretrain(PretrainConfig(corpus=[corpus], out=str(tmp_path / "mlm"), steps=1, objective="mlm",
                                               **TINY))
    assert sorted(checkpoint.read_manifest(mlm.checkpoint)["config"]) == sorted(CONFIG_KEYS + ["objective"])
    # the command continues the function's run (extended to 3 steps)
    argv = ["pretrain", "--corpus", corpus, "--out", str(tmp_path / "run"), "--steps", "3", "--resume"]
    for name, value in TINY.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    assert cli_main(argv) == 0
    assert [r["step"] for r in _log(tmp_path / "run")] == [1, 2, 3]


def test_an_interruption_while_the_corpus_is_prepared_is_named_and_propagates(tmp_path, corpus, monkeypatch, capsys):
    from electra_fast.data import prepare

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "prepare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        electra_fast.pretrain(PretrainConfig(corpus=[corpus], out=str(tmp_path / "run"), steps=2, **TINY))
    assert f"interrupted; the latest checkpoint in {tmp_path / 'run'} is none yet (continue with --resume" in \
        capsys.readouterr().err


def test_data_and_a_checkpoint_written_before_the_function_existed_resume_bit_for_bit(tmp_path, one_thread):
    """written_before/: `prepare` and 2 steps of `pretrain --data` as the code before this API wrote them (its
    README). The function continues that run to step 3; its weights and log are those of 3 uninterrupted steps of
    today's code on the same data."""
    shutil.copytree(os.path.join(os.path.dirname(__file__), "written_before"), tmp_path / "before")
    same = dict(data=str(tmp_path / "before" / "data"), steps=3, seq_len=24, batch_size=2, valid_sequences=4,
                num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, embedding_size=16)
    resumed = electra_fast.pretrain(PretrainConfig(out=str(tmp_path / "before" / "run"), resume=True, **same))
    fresh = electra_fast.pretrain(PretrainConfig(out=str(tmp_path / "fresh"), **same))
    assert resumed.steps == fresh.steps == 3 and resumed.checkpoint.endswith("step-00000003")
    from safetensors.torch import load_file

    before, now = (load_file(os.path.join(r.checkpoint, checkpoint.WEIGHTS)) for r in (resumed, fresh))
    assert before.keys() == now.keys() and all(torch.equal(before[k], now[k]) for k in now)
    # the same training lines; the run of 2 steps validated at its last step, as every run does
    resumed_log, fresh_log = (_without_speed(_log(run)) for run in (tmp_path / "before" / "run", tmp_path / "fresh"))
    assert _same([_training(r) for r in resumed_log], [_training(r) for r in fresh_log])
    assert _same(resumed_log[-1], fresh_log[-1]) and "valid_loss" in resumed_log[1]
