"""PretrainConfig: one list of options for the Python API and the command. Every flag of `electra-fast pretrain`
is a field and every field a flag, with the flag's default and help (those of the command before the config
existed, HEAD_FLAGS); a config goes through the command line and back unchanged; bad values raise BadInput naming
the field, before anything is written."""
import argparse
import dataclasses
import re

import pytest

import electra_fast
from electra_fast.errors import BadInput
from electra_fast.options.cli import config_from
from electra_fast.pretraining import cli as pretrain_cli
from electra_fast.pretraining.config import PretrainConfig

from helpers import command_line_of, flag_actions

# `electra-fast pretrain`'s flags and defaults as the command defined them before PretrainConfig: a compatibility
# fixture (no flag may be lost, renamed or change its default).
HEAD_FLAGS = {
    "--data": None, "--corpus": None, "--documents": "line", "--text-field": "text", "--skip-bad-lines": False,
    "--tokenizer": None, "--vocab-size": 8000, "--tokenizer-sample": 100000000, "--workers": None,
    "--shard-tokens": 67108864, "--objective": "electra", "--masking": "electra", "--preset": "small",
    "--num-layers": 2, "--hidden-size": None, "--num-heads": None, "--intermediate-size": None,
    "--embedding-size": None, "--max-positions": 512, "--discriminator": None, "--generator": None,
    "--generator-sizing": None, "--embedding-sharing": "es", "--seq-len": 128, "--batch-size": 8, "--grad-accum": 1,
    "--steps": 200, "--lr": 0.0005, "--warmup-steps": None, "--weight-decay": 0.01, "--seed": 0, "--max-flops": None,
    "--export-at-flops": (), "--valid-sequences": None, "--valid-fraction": None, "--eval-every": None,
    "--out": "electra-pretrain", "--save-every": 100, "--keep": 2, "--log-every": None, "--resume": False,
    "--device": None, "--bf16": None, "--compile": False, "--tensorboard": False, "--cuda-graphs": False}


def test_every_flag_is_a_field_with_its_default_and_help_and_every_field_a_flag():
    actions = flag_actions(pretrain_cli.add_arguments)
    fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    assert list(actions) == list(fields)  # one list, in one order (the order of --help)
    assert {action.option_strings[0]: action.default for action in actions.values()} == HEAD_FLAGS
    for name, action in actions.items():
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        assert action.default == fields[name].default, name
        help_text = fields[name].metadata["option"].get("help")
        assert (action.help and action.help.replace("%%", "%")) == help_text, name
    assert actions["bf16"].option_strings == ["--bf16", "--no-bf16"]
    # the corpus options are prepare's own, flag for flag
    from electra_fast.data import cli as prepare_cli

    shared = flag_actions(prepare_cli.add_arguments)
    for name in ("corpus", "documents", "vocab_size", "tokenizer_sample", "shard_tokens"):
        assert (shared[name].help, shared[name].default) == (actions[name].help, actions[name].default)


def test_no_flags_is_the_default_config_and_every_field_goes_through_the_command_line_and_back():
    parser = argparse.ArgumentParser()
    pretrain_cli.add_arguments(parser)
    assert config_from(parser.parse_args([]), PretrainConfig) == PretrainConfig()
    changed = PretrainConfig(
        data="shards", corpus=["a.txt", "b/"], documents="file", text_field="body", skip_bad_lines=True,
        tokenizer="tok", vocab_size=300, tokenizer_sample=12345, workers=3, shard_tokens=99, objective="mlm",
        masking="bert", preset="base", num_layers=3, hidden_size=64, num_heads=4, intermediate_size=96,
        embedding_size=32, max_positions=64, discriminator="bert", generator="roberta", generator_sizing="electra",
        embedding_sharing="none", seq_len=32, batch_size=3, grad_accum=2, steps=7, lr=1e-3, warmup_steps=2,
        weight_decay=0.1, seed=5, max_flops=1e12, export_at_flops=(1e9, 2.5e9), valid_sequences=4,
        valid_fraction=0.25, eval_every=3, out="run", save_every=5, keep=3, log_every=2, resume=True, device="cpu",
        bf16=False, compile=True, tensorboard=True, cuda_graphs=True)
    differs = [f.name for f in dataclasses.fields(PretrainConfig)
               if getattr(changed, f.name) == getattr(PretrainConfig(), f.name)]
    assert not differs, f"the round trip leaves these at their default: {differs}"
    assert config_from(parser.parse_args(command_line_of(changed)), PretrainConfig) == changed
    # the dispatcher of `electra-fast` builds the same parser
    from electra_fast import cli

    args = cli.build_parser(["pretrain"]).parse_args(["pretrain", *command_line_of(changed)])
    assert config_from(args, PretrainConfig) == changed


@pytest.mark.parametrize("changes, field, message", [
    (dict(steps=0), "steps", "--steps must be at least 1, got 0"),
    (dict(lr=-1.0), "lr", "--lr must be a finite number > 0, got -1.0"),
    (dict(lr=float("nan")), "lr", "--lr must be a finite number > 0, got nan"),
    (dict(valid_fraction=1.5), "valid_fraction", "--valid-fraction must be in [0, 1), got 1.5"),
    (dict(seed=-1), "seed", "--seed must be in [0, 2**63), got -1"),
    (dict(export_at_flops=(1e9, -1.0)), "export_at_flops", "--export-at-flops must be finite numbers > 0"),
    (dict(vocab_size=3), "vocab_size", "--vocab-size must be more than the 5 special tokens, got 3"),
    (dict(workers=0), "workers", "--workers must be at least 1, got 0"),
    (dict(steps="3"), "steps", "--steps must be an integer, got '3'"),
    (dict(lr="0.1"), "lr", "--lr must be a number, got '0.1'"),
    (dict(resume="yes"), "resume", "--resume must be True or False, got 'yes'"),
    (dict(objective="gan"), "objective", "--objective must be one of electra, electra-15, mlm, got 'gan'"),
    (dict(corpus="corpus.txt"), "corpus", "--corpus must be a list of strings, got 'corpus.txt'"),
    (dict(export_at_flops=1e9), "export_at_flops", "--export-at-flops must be a list of numbers, got 1000000000.0"),
    (dict(hidden_size=33, num_heads=2), "hidden_size", "--hidden-size 33 must be a multiple of --num-heads 2"),
    (dict(valid_sequences=3, valid_fraction=0.1), "valid_fraction", "--valid-sequences and --valid-fraction"),
    (dict(generator="bert"), "generator", "--generator needs --discriminator"),
    (dict(embedding_sharing="gdes"), "embedding_sharing", "--embedding-sharing gdes needs --discriminator"),
    (dict(objective="mlm", discriminator="bert", embedding_sharing="none"), "embedding_sharing",
     "--embedding-sharing is for the RTD objectives"),
    (dict(data="shards", corpus=["a.txt"]), "corpus", "--data and --corpus: give one of them"),
    (dict(seq_len=600), "seq_len", "--seq-len 600 exceeds the model's 512 positions"),
    (dict(device="gpu0"), "device", "--device must be a torch device (cpu, cuda, cuda:1, ...), got 'gpu0'"),
])
def test_bad_values_raise_bad_input_naming_the_field_before_anything_is_written(tmp_path, changes, field, message):
    config = PretrainConfig(out=str(tmp_path / "run"), **changes)
    with pytest.raises(BadInput, match=re.escape(message)) as caught:
        config.check()
    assert caught.value.field == field and str(caught.value).startswith("--")  # named as the flag, one line
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    with pytest.raises(BadInput, match=re.escape(message)):
        electra_fast.pretrain(config)
    assert not (tmp_path / "run").exists()


def test_the_api_leaves_the_config_as_it_was_given():
    config = PretrainConfig(max_flops=1e12, export_at_flops=(5e11,))
    before = dataclasses.replace(config)
    with pytest.raises(BadInput):  # refused early: the config is checked, not changed
        electra_fast.pretrain(dataclasses.replace(config, steps=0))
    assert config == before
    with pytest.raises(TypeError):  # keyword-only: 40 fields are not to be given in order
        PretrainConfig("run")
