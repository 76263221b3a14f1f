"""Preparing a corpus as a Python function: `electra_fast.prepare(PrepareConfig(...))` writes what the command
writes, byte for byte, in the format folders prepared before it existed have (so they still load), and returns
the folder and its counts; PrepareConfig is the command's list of flags, and its bad values raise BadInput naming
the field before anything is written."""
import argparse
import dataclasses
import json
import os

import pytest

import electra_fast
from electra_fast.data import cli as prepare_cli
from electra_fast.data import shards
from electra_fast.errors import BadInput
from electra_fast.options.cli import config_from

from helpers import command_line_of, flag_actions

# `electra-fast prepare`'s flags and defaults before PrepareConfig, and the keys of the index.json it wrote:
# compatibility fixtures (the data of a folder prepared before must still load, and resume).
HEAD_FLAGS = {"--corpus": None, "--documents": "line", "--text-field": "text", "--skip-bad-lines": False,
              "--tokenizer": None, "--vocab-size": 8000, "--tokenizer-sample": 100000000, "--workers": None,
              "--shard-tokens": 67108864, "--out": "electra-data", "--quiet": False}
INDEX_KEYS = ["bad_lines", "documents", "dtype", "format", "settings", "shards", "sources", "specials", "tokenizer",
              "tokenizer_trainer", "tokens", "vocab_size"]
SETTINGS_KEYS = ["documents", "shard_tokens", "skip_bad_lines", "sources", "text_field", "tokenizer",
                 "tokenizer_trained_with"]


def _folder_bytes(folder) -> dict:
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


def test_every_flag_is_a_field_and_back():
    actions = flag_actions(prepare_cli.add_arguments)
    fields = {f.name: f for f in dataclasses.fields(electra_fast.PrepareConfig)}
    assert list(actions) == list(fields)
    assert {action.option_strings[0]: action.default for action in actions.values()} == HEAD_FLAGS
    for name, action in actions.items():
        assert action.help.replace("%%", "%") == fields[name].metadata["option"]["help"], name
    parser = argparse.ArgumentParser()
    prepare_cli.add_arguments(parser)
    assert config_from(parser.parse_args([]), electra_fast.PrepareConfig) == electra_fast.PrepareConfig()
    changed = electra_fast.PrepareConfig(corpus=["a.txt", "b/*.jsonl"], documents="file", text_field="body",
                                         skip_bad_lines=True, tokenizer="tok", vocab_size=300, tokenizer_sample=2500000,
                                         workers=2, shard_tokens=1000, out="data", quiet=True)
    assert all(getattr(changed, name) != field.default for name, field in fields.items())
    assert config_from(parser.parse_args(command_line_of(changed)), electra_fast.PrepareConfig) == changed
    assert parser.parse_args(["--tokenizer-sample", "2.5M"]).tokenizer_sample == 2_500_000


def test_the_function_writes_what_the_command_writes_and_returns_the_folder(tmp_path, capsys):
    from pydoc_data import topics

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(line for t in sorted(topics.topics)[:5] for line in topics.topics[t].splitlines()
                              if line.strip()) + "\n", encoding="utf-8")
    config = electra_fast.PrepareConfig(corpus=[str(text)], out=str(tmp_path / "function"), vocab_size=300,
                                        shard_tokens=2000, workers=2, quiet=True)
    prepared = electra_fast.prepare(config)
    assert isinstance(prepared, electra_fast.PreparedData) and prepared.folder == config.out
    index = json.loads((tmp_path / "function" / "index.json").read_text())
    assert prepared.index == index
    assert (prepared.tokens, prepared.documents, prepared.shards, prepared.bad_lines) == (
        index["tokens"], index["documents"], len(index["shards"]), 0)
    assert prepared.shards > 1 and prepared.tokens == shards.TokenData(config.out).tokens
    assert sorted(index) == INDEX_KEYS and sorted(index["settings"]) == SETTINGS_KEYS
    assert index["format"] == shards.FORMAT == "electra-fast-tokens/1"
    capsys.readouterr()
    assert prepare_cli.main(argparse.Namespace(**{**dataclasses.asdict(config),
                                                  "out": str(tmp_path / "command")})) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'command'}: {prepared.tokens:,} tokens")
    assert _folder_bytes(tmp_path / "function") == _folder_bytes(tmp_path / "command")
    assert electra_fast.prepare(config) == prepared  # a finished folder with the same settings is reused


@pytest.mark.parametrize("changes, field, message", [
    (dict(vocab_size=5), "vocab_size", "--vocab-size must be more than the 5 special tokens, got 5"),
    (dict(workers=0), "workers", "--workers must be at least 1, got 0"),
    (dict(shard_tokens=-5), "shard_tokens", "--shard-tokens must be at least 1, got -5"),
    (dict(tokenizer_sample="100M"), "tokenizer_sample", "--tokenizer-sample must be an integer, got '100M'"),
    (dict(documents="page"), "documents", "--documents must be one of line, file, got 'page'"),
    (dict(corpus="corpus.txt"), "corpus", "--corpus must be a list of strings, got 'corpus.txt'"),
])
def test_bad_values_raise_bad_input_naming_the_field(tmp_path, changes, field, message):
    config = electra_fast.PrepareConfig(out=str(tmp_path / "data"), **changes)
    with pytest.raises(BadInput) as caught:
        electra_fast.prepare(config)
    assert str(caught.value) == message and caught.value.field == field
    assert not (tmp_path / "data").exists()


def test_bad_files_raise_bad_input_too(tmp_path):
    from electra_fast.data.corpus import CorpusError

    with pytest.raises(CorpusError, match="--corpus: no such file or folder") as caught:
        electra_fast.prepare(electra_fast.PrepareConfig(corpus=[str(tmp_path / "missing.txt")],
                                                        out=str(tmp_path / "data")))
    assert isinstance(caught.value, BadInput)
    assert not (tmp_path / "data").exists()
