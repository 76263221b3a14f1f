"""`electra-fast prepare` and the token data `pretrain --data` reads: the same sequences as packing the corpus in
memory, every input format and compression, bounded memory, restart after a kill, the window order, bad input."""
import argparse
import bz2
import gzip
import json
import lzma
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from electra_fast.data import cli as prepare_cli
from electra_fast.data import corpus, prepare
from electra_fast.data import shards as data

from helpers import REPOSITORY

LINES = [line for record in corpus.CorpusReader(corpus.find_sources(None))
         for line in record.text.splitlines() if line.strip()][:400]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    data.save_tokenizer(data.train_tokenizer(LINES, 400), str(folder))
    return str(folder)


def packed_in_memory(documents, tokenizer, seq_len):
    """The truth: the corpus packed as pretrain did before prepare existed. Every document's tokens, [SEP]
    between documents with tokens, cut into windows of seq_len - 2 written [CLS] window [SEP], the last padded."""
    ids = data.special_ids(tokenizer)
    stream = []
    for encoding in tokenizer.encode_batch(list(documents), add_special_tokens=False):
        if encoding.ids:
            stream.extend(([ids["[SEP]"]] if stream else []) + encoding.ids)
    body = seq_len - 2
    windows = [stream[i:i + body] for i in range(0, len(stream), body)]
    windows[-1] = windows[-1] + [ids["[PAD]"]] * (body - len(windows[-1]))
    return torch.tensor([[ids["[CLS]"], *w, ids["[SEP]"]] for w in windows])


def all_sequences(folder, seq_len):
    windows = data.TokenData(str(folder)).windows(seq_len)
    return windows.sequences(np.arange(windows.count))


def run_prepare(*argv):
    p = argparse.ArgumentParser()
    prepare_cli.add_arguments(p)
    return prepare_cli.main(p.parse_args([*map(str, argv), "--quiet"]))


def one_line_error(capsys, *parts):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("electra-fast prepare: error:"), lines
    for part in parts:
        assert part in lines[0], lines[0]


# ----------------------------------------------------------------------------------------------- the same sequences

@pytest.mark.parametrize("seq_len", [7, 64])
def test_prepared_windows_equal_packing_in_memory(tmp_path, tokenizer_dir, seq_len):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(LINES[:200] + ["", "   "] + LINES[200:]) + "\n", encoding="utf-8")
    # small shards: windows cross shard boundaries; two workers: batches come back from several processes
    prepare.prepare([str(text)], str(tmp_path / "data"), tokenizer_dir=tokenizer_dir, shard_tokens=997, workers=2,
                    progress=False)
    tokenizer = data.load_tokenizer(tokenizer_dir)
    index = json.loads((tmp_path / "data" / "index.json").read_text())
    assert len(index["shards"]) > 3 and index["dtype"] == "uint16" and index["documents"] == len(LINES)
    assert torch.equal(all_sequences(tmp_path / "data", seq_len), packed_in_memory(LINES, tokenizer, seq_len))


def test_default_corpus_is_one_document_per_help_topic(tmp_path, tokenizer_dir):
    from pydoc_data import topics

    prepare.prepare(None, str(tmp_path / "data"), tokenizer_dir=tokenizer_dir, progress=False)
    documents = [topics.topics[name] for name in sorted(topics.topics)]
    expected = packed_in_memory(documents, data.load_tokenizer(tokenizer_dir), 128)
    assert torch.equal(all_sequences(tmp_path / "data", 128), expected)


def _write(path, payload: bytes):
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix)
    if path.suffix == ".zst":
        import zstandard

        payload, opener = zstandard.ZstdCompressor().compress(payload), None
    with (opener or open)(path, "wb") as f:
        f.write(payload)


@pytest.mark.parametrize("name", ["c.txt", "c.txt.gz", "c.txt.bz2", "c.txt.xz", "c.txt.zst", "c.jsonl",
                                  "c.jsonl.gz", "c.json.zst", "c.parquet", "dataset", "datasetdict"])
def test_every_format_and_compression_gives_the_same_tokens(tmp_path, tokenizer_dir, name):
    import pyarrow as pa

    documents = LINES[:150]
    path = tmp_path / name
    if name.startswith("c.txt"):
        _write(path, ("\n".join(documents) + "\n").encode())
    elif ".json" in name:
        rows = [json.dumps({"id": i, "body": d}) for i, d in enumerate(documents)]
        _write(path, ("\n".join(rows[:70] + [""] + rows[70:]) + "\n").encode())
    elif name == "c.parquet":
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": list(range(len(documents))), "body": documents}), path, row_group_size=40)
    else:  # the layout `datasets` writes with save_to_disk: Arrow IPC streams listed in state.json
        splits = {"train": documents[:100], "test": documents[100:]} if name == "datasetdict" else {"": documents}
        for split, rows in splits.items():
            folder = path / split
            folder.mkdir(parents=True)
            files = []
            for i in range(0, len(rows), 60):
                files.append(f"data-{i // 60:05d}.arrow")
                with pa.ipc.new_stream(str(folder / files[-1]), pa.schema([("body", pa.string())])) as writer:
                    writer.write_table(pa.table({"body": rows[i:i + 60]}))
            (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": f} for f in files]}))
        if name == "datasetdict":
            (path / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    prepare.prepare([str(path)], str(tmp_path / "data"), tokenizer_dir=tokenizer_dir, text_field="body",
                    progress=False)
    assert torch.equal(all_sequences(tmp_path / "data", 32), packed_in_memory(documents, data.load_tokenizer(
        tokenizer_dir), 32))


def test_long_lines_and_whole_files_are_read_in_pieces(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setattr(corpus, "PIECE_BYTES", 64)  # far below the length of these lines and files
    long_line = " ".join(LINES[:40])
    (tmp_path / "lines.txt").write_text(f"{long_line}\nshort one\n{'é' * 100}\n", encoding="utf-8")
    records = list(corpus.CorpusReader(corpus.find_sources([str(tmp_path / "lines.txt")])))
    assert max(len(r.text.encode()) for r in records) <= 64 and len(records) > 20
    documents = []
    for record in records:  # pieces join back into the lines, cut between words or else between characters
        if record.starts_document:
            documents.append("")
        documents[-1] += record.text
    assert documents == [long_line, "short one", "é" * 100]
    tokenizer = data.load_tokenizer(tokenizer_dir)
    (tmp_path / "lines.txt").write_text(f"{long_line}\nshort one\n", encoding="utf-8")
    prepare.prepare([str(tmp_path / "lines.txt")], str(tmp_path / "a"), tokenizer_dir=tokenizer_dir, progress=False)
    assert torch.equal(all_sequences(tmp_path / "a", 40), packed_in_memory([long_line, "short one"], tokenizer, 40))
    for i in range(3):
        (tmp_path / "files").mkdir(exist_ok=True)
        (tmp_path / "files" / f"{i}.txt").write_text("\n".join(LINES[i * 30:(i + 1) * 30]) + "\n", encoding="utf-8")
    prepare.prepare([str(tmp_path / "files")], str(tmp_path / "b"), tokenizer_dir=tokenizer_dir,
                    document_per="file", progress=False)
    whole_files = [(tmp_path / "files" / f"{i}.txt").read_text() for i in range(3)]
    assert torch.equal(all_sequences(tmp_path / "b", 40), packed_in_memory(whole_files, tokenizer, 40))


def test_piece_boundaries_lose_no_text_and_make_no_records_of_line_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "PIECE_BYTES", 16)
    lines = [b"a" * 16, b"x" * 15 + b"\r", b"", b"tail words here", b"\xc3\xa9" * 12, b"end"]  # 16 bytes, CR at the cut
    path = tmp_path / "edges.txt"
    path.write_bytes(b"\n".join(lines[:1] + [b"x" * 15]) + b"\r\n" + b"\n".join(lines[2:]))  # no final newline
    records = list(corpus.CorpusReader(corpus.find_sources([str(path)])))
    assert all(r.text for r in records[:-1]) and records[-1].end and not records[-1].text
    documents = []
    for record in records[:-1]:
        documents.append("") if record.starts_document else None
        documents[-1] += record.text
    assert documents == ["a" * 16, "x" * 15, "tail words here", "é" * 12, "end"]


def test_skipped_bad_lines_drop_whole_lines_count_once_and_survive_a_restart(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setattr(corpus, "PIECE_BYTES", 16)
    body = b"first doc\n" + b"\xff" * 3 + b"x" * 20 + b" more words\n" + b"bad \xff line\n" + b"a" * 16 + b"\n" + \
        b"tail words here\n"
    (tmp_path / "one.txt").write_bytes(body * 3)
    (tmp_path / "two.txt").write_bytes(b"clean line\n" + body)
    records = [r for r in corpus.CorpusReader(corpus.find_sources([str(tmp_path / "one.txt")]), skip_bad_lines=True)]
    texts = [(r.text, r.starts_document) for r in records if not r.end]
    assert texts[:3] == [("first doc", True), ("a" * 16, True), ("tail words here", True)]  # no tail of a bad line
    assert records[-1].end and records[-1].bad_lines == 6
    common = dict(tokenizer_dir=tokenizer_dir, shard_tokens=8, workers=1, skip_bad_lines=True, progress=False)
    paths = [str(tmp_path / "one.txt"), str(tmp_path / "two.txt")]
    whole = prepare.prepare(paths, str(tmp_path / "whole"), **common)
    assert whole["bad_lines"] == 8
    real_close, calls = prepare._ShardWriter._close, []

    def close_then_stop(self, next_record):
        real_close(self, next_record)
        calls.append(next_record)
        if len(calls) == 4:  # in the middle of the first file, after some of its bad lines
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare._ShardWriter, "_close", close_then_stop)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(paths, str(tmp_path / "restarted"), **common)
    assert calls[-1][0] == 0 and calls[-1][1] > 1
    monkeypatch.setattr(prepare._ShardWriter, "_close", real_close)
    assert prepare.prepare(paths, str(tmp_path / "restarted"), **common)["bad_lines"] == 8
    assert _shard_files(tmp_path / "restarted") == _shard_files(tmp_path / "whole")


def test_folders_skip_hidden_ones_take_datasets_inside_and_refuse_archives(tmp_path):
    import pyarrow as pa

    (tmp_path / "c" / ".cache").mkdir(parents=True)
    (tmp_path / "c" / ".cache" / "x.txt").write_text("hidden\n")
    (tmp_path / "c" / "a.TXT.GZ").write_bytes(gzip.compress(b"zipped\n"))
    nested = tmp_path / "c" / "b"
    nested.mkdir()
    with pa.ipc.new_stream(str(nested / "data.arrow"), pa.schema([("text", pa.string())])) as writer:
        writer.write_table(pa.table({"text": ["from arrow"]}))
    (nested / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data.arrow"}]}))
    (nested / "dataset_info.json").write_text("{}")
    sources = corpus.find_sources([str(tmp_path / "c")])
    assert [os.path.basename(s.path) for s in sources] == ["a.TXT.GZ", "data.arrow"]
    assert [r.text for r in corpus.CorpusReader(sources) if not r.end] == ["zipped", "from arrow"]
    (tmp_path / "owt.tar.xz").write_bytes(b"")
    with pytest.raises(corpus.CorpusError, match="is an archive"):
        corpus.find_sources([str(tmp_path / "owt.tar.xz")])


def test_tokenizer_is_trained_on_a_sample_from_every_source_and_ids_take_the_narrowest_dtype(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(["alpha beta gamma"] * 200), encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n".join(["zyxwv qutsr"] * 200), encoding="utf-8")
    index = prepare.prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], str(tmp_path / "data"),
                            vocab_size=200, tokenizer_sample=2000, progress=False)
    tokenizer = data.load_tokenizer(str(tmp_path / "data" / "tokenizer"))
    for word in ("alpha", "zyxwv"):  # both sources reached the sample
        assert tokenizer.token_to_id(word) is not None
    assert index["tokenizer"] == data.tokenizer_fingerprint(tokenizer) and index["dtype"] == "uint8"
    stream = np.concatenate([np.fromfile(tmp_path / "data" / s["file"], "u1") for s in index["shards"]])
    assert len(stream) == index["tokens"] and stream.max() < tokenizer.get_vocab_size()


# ------------------------------------------------------------------------------------------------ the same bytes

def test_the_trained_tokenizer_is_the_same_every_time_and_numbered_canonically():
    trained = [data.train_tokenizer(LINES, 400) for _ in range(4)]  # the trainer's hash maps differ every time
    vocabularies = [sorted(t.get_vocab().items(), key=lambda item: item[1]) for t in trained]
    assert all(v == vocabularies[0] for v in vocabularies), "the tokens, or their ids, differ between trainings"
    tokens = [token for token, _ in vocabularies[0]]
    # The truth: every word as the tokenizer's own normaliser and pre-tokeniser cut it, read in Python.
    words = [w for line in LINES for w, _ in trained[0].pre_tokenizer.pre_tokenize_str(
        trained[0].normalizer.normalize_str(line))]
    characters = sorted({c for w in words for c in w})
    inside = sorted({"##" + c for w in words for c in w[1:]})
    assert tokens[:5] == list(data.SPECIALS)
    assert tokens[5:5 + len(characters) + len(inside)] == characters + inside
    assert len(tokens) == 400 and len(set(tokens)) == 400


def _folder_bytes(folder):
    """{relative path: bytes} of every file below `folder` but its lock."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names if name != ".lock"}


def test_two_prepares_with_different_workers_write_the_same_bytes(tmp_path):
    import tokenizers

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(LINES * 3) + "\n", encoding="utf-8")
    argv = ["--corpus", str(text), "--vocab-size", "400", "--shard-tokens", "2000", "--quiet"]
    # one in a process of its own (its own hash seeds), one here; cwd: outside the checkout, see _peak_rss_mb
    subprocess.run([sys.executable, "-m", "electra_fast", "prepare", *argv, "--workers", "2", "--out",
                    str(tmp_path / "a")], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    assert run_prepare(*argv, "--workers", "1", "--out", tmp_path / "b") == 0
    a, b = _folder_bytes(tmp_path / "a"), _folder_bytes(tmp_path / "b")
    assert len([n for n in a if n.startswith("shard-")]) > 3 and "tokenizer/vocab.txt" in a
    assert a.keys() == b.keys() and all(a[name] == b[name] for name in a), [n for n in a if a[n] != b.get(n)]
    assert json.loads(a["index.json"])["tokenizer_trainer"] == f"tokenizers {tokenizers.__version__}"


def test_two_pretrain_runs_on_one_corpus_give_the_same_weights(tmp_path):
    from electra_fast.pretraining import cli as pretrain_cli

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    argv = ["--corpus", str(text), "--vocab-size", "300", "--num-layers", "1", "--hidden-size", "32", "--num-heads",
            "2", "--intermediate-size", "64", "--embedding-size", "16", "--seq-len", "16", "--batch-size", "2",
            "--steps", "3", "--seed", "3"]
    # Both on one thread, so that their floating-point sums are the same.
    subprocess.run([sys.executable, "-m", "electra_fast", "pretrain", *argv, "--out", str(tmp_path / "a")],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    p = argparse.ArgumentParser()
    pretrain_cli.add_arguments(p)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert pretrain_cli.main(p.parse_args([*argv, "--out", str(tmp_path / "b")])) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = (_folder_bytes(tmp_path / run) for run in "ab")
    for name in ("data/tokenizer/vocab.txt", "data/index.json", "discriminator/model.safetensors"):
        assert a[name] == b[name], name


# ---------------------------------------------------------------------------------------------------------- memory

def _peak_rss_mb(corpus_path, out, tokenizer_dir):
    """Peak resident memory (MB) of the largest process of a prepare run, with 64 KiB batches and one worker."""
    code = ("from electra_fast.data import prepare, corpus; prepare.BATCH_BYTES = 1 << 16; "
            "corpus.PIECE_BYTES = 1 << 16; "
            f"prepare.prepare([{str(corpus_path)!r}], {str(out)!r}, tokenizer_dir={tokenizer_dir!r}, workers=1, "
            f"shard_tokens=1 << 20, progress=False)")
    script = (f"import resource, subprocess, sys\n"
              f"subprocess.run([sys.executable, '-c', {code!r}], check=True)\n"
              f"print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    # cwd: outside the checkout, whose source folder would shadow the installed package (no extension, no kernels)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(out))
    assert run.returncode == 0, run.stderr[-2000:]
    return int(run.stdout.split()[-1]) / 1024


def test_memory_does_not_grow_with_the_corpus(tmp_path, tokenizer_dir):
    line = "\n".join(LINES).encode() + b"\n"
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_bytes(line * ((1 << 20) // len(line) + 1))  # 1 MB
    large.write_bytes(line * ((10 << 20) // len(line) + 1))  # 10 MB: 150 times the batch
    peaks = [_peak_rss_mb(path, tmp_path / path.stem, tokenizer_dir) for path in (small, large)]
    # The text alone of the large corpus is 9 MB more; its token ids as Python ints some 80 MB more.
    assert peaks[1] - peaks[0] < 4, peaks


# ------------------------------------------------------------------------------------------- interrupted and rerun

def _shard_files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))
            if name.startswith("shard-") or name == "index.json"}


def test_rerun_after_sigkill_continues_and_writes_identical_bytes(tmp_path, tokenizer_dir):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(LINES * 25) + "\n", encoding="utf-8")
    argv = ["--corpus", text, "--tokenizer", tokenizer_dir, "--shard-tokens", "20000", "--workers", "1", "--quiet"]
    assert run_prepare(*argv, "--out", tmp_path / "whole") == 0
    whole = _shard_files(tmp_path / "whole")
    assert len(whole) > 5

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "electra_fast", "prepare", *map(str, argv), "--out", str(killed)],
                               stderr=subprocess.DEVNULL, cwd=tmp_path)  # outside the checkout: see _peak_rss_mb
    deadline = time.monotonic() + 120
    while not (killed / "shard-00001.bin").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "index.json").exists(), "prepare finished before it could be killed"
    with pytest.raises(data.DataError, match="unfinished"):
        data.TokenData(str(killed))
    assert run_prepare(*argv, "--out", killed) == 0
    assert _shard_files(killed) == whole
    assert not [n for n in os.listdir(killed) if n.endswith(".partial") or n == "progress.json"]


def test_interruption_at_any_shard_then_rerun_gives_the_same_data(tmp_path, tokenizer_dir, monkeypatch):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(LINES * 4) + "\n", encoding="utf-8")
    common = dict(tokenizer_dir=tokenizer_dir, shard_tokens=3000, workers=1, progress=False)
    prepare.prepare([str(text)], str(tmp_path / "whole"), **common)
    whole = _shard_files(tmp_path / "whole")
    real_close = prepare._ShardWriter._close
    for stop_at in (1, 2, len(whole) - 2):
        calls = []

        def close_then_stop(self, next_record, calls=calls, stop_at=stop_at):
            real_close(self, next_record)
            calls.append(1)
            if len(calls) == stop_at:
                raise KeyboardInterrupt

        monkeypatch.setattr(prepare._ShardWriter, "_close", close_then_stop)
        out = tmp_path / f"stopped-{stop_at}"
        with pytest.raises(KeyboardInterrupt):
            prepare.prepare([str(text)], str(out), **common)
        monkeypatch.setattr(prepare._ShardWriter, "_close", real_close)
        prepare.prepare([str(text)], str(out), **common)
        assert _shard_files(out) == whole, stop_at


def test_a_different_corpus_or_tokenizer_is_refused_on_a_prepared_folder(tmp_path, tokenizer_dir, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(LINES[:50]) + "\n", encoding="utf-8")
    assert run_prepare("--corpus", text, "--tokenizer", tokenizer_dir, "--out", tmp_path / "data") == 0
    capsys.readouterr()
    before = _shard_files(tmp_path / "data")
    text.write_text("\n".join(LINES[:60]) + "\n", encoding="utf-8")
    assert run_prepare("--corpus", text, "--tokenizer", tokenizer_dir, "--out", tmp_path / "data") == 2
    one_line_error(capsys, "prepared otherwise", "sources")
    other = tmp_path / "other-tokenizer"
    data.save_tokenizer(data.train_tokenizer(LINES, 300), str(other))
    assert run_prepare("--corpus", text, "--tokenizer", other, "--out", tmp_path / "data") == 2
    one_line_error(capsys, "--tokenizer", "fingerprint", data.tokenizer_fingerprint(data.load_tokenizer(str(other))))
    assert _shard_files(tmp_path / "data") == before


# -------------------------------------------------------------------------------------------------------- bad input

def test_bad_utf8_names_file_line_and_byte_or_is_skipped_and_counted(tmp_path, tokenizer_dir, capsys):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"good line one\nsecond \xff\xfe line\ngood line three\n")
    assert run_prepare("--corpus", path, "--tokenizer", tokenizer_dir, "--out", tmp_path / "a") == 2
    one_line_error(capsys, str(path), "line 2", "byte 21", "not UTF-8", "--skip-bad-lines")
    assert not (tmp_path / "a" / "index.json").exists()
    assert run_prepare("--corpus", path, "--tokenizer", tokenizer_dir, "--out", tmp_path / "b",
                       "--skip-bad-lines") == 0
    assert "1 lines skipped as not UTF-8" in capsys.readouterr().out
    tokenizer = data.load_tokenizer(tokenizer_dir)
    assert torch.equal(all_sequences(tmp_path / "b", 16),
                       packed_in_memory(["good line one", "good line three"], tokenizer, 16))


def test_bad_input_past_the_first_shards_leaves_only_whole_recorded_shards(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setattr(prepare, "BATCH_BYTES", 256)  # shards are written before the reader reaches the bad line
    path = tmp_path / "late.txt"
    path.write_bytes(("\n".join(LINES) + "\n").encode() + b"bad \xff\n" + b"more text\n")
    with pytest.raises(corpus.CorpusError, match=f"line {len(LINES) + 1}"):
        prepare.prepare([str(path)], str(tmp_path / "data"), tokenizer_dir=tokenizer_dir, shard_tokens=500, workers=1,
                        progress=False)
    names = sorted(os.listdir(tmp_path / "data"))
    progress = json.loads((tmp_path / "data" / "progress.json").read_text())
    assert [n for n in names if n.startswith("shard-")] == [s["file"] for s in progress["shards"]] != []
    assert not [n for n in names if n.endswith(".partial")] and "index.json" not in names


@pytest.mark.parametrize("case, message", [
    ("empty", "the corpus is empty"),
    ("missing", "no such file or folder"),
    ("jsonl-field", "line 2: no field 'text'"),
    ("jsonl-malformed", "line 3: not valid JSON"),
    ("parquet-column", "has no column 'text'"),
    ("parquet-gz", "compressed as a whole"),
])
def test_bad_corpus_is_one_line_exit_2_and_writes_no_data(tmp_path, tokenizer_dir, capsys, case, message):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / {"empty": "e.txt", "missing": "nothing.txt", "jsonl-field": "f.jsonl",
                       "jsonl-malformed": "m.jsonl", "parquet-column": "p.parquet", "parquet-gz": "p.parquet.gz"}[case]
    if case == "empty":
        path.write_text("\n   \n\n")
    elif case == "jsonl-field":
        path.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    elif case == "jsonl-malformed":
        path.write_text('{"text": "fine"}\n\n{"text": "cut\n')
    elif case.startswith("parquet"):
        pq.write_table(pa.table({"body": ["a", "b"]}), path)
    for tokenizer in ([], ["--tokenizer", tokenizer_dir]):
        out = tmp_path / f"out{len(tokenizer)}"
        assert run_prepare("--corpus", path, *tokenizer, "--out", out) == 2
        one_line_error(capsys, message, *([] if case == "empty" else [str(path)]))
        assert not out.exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--vocab-size", "3", "--vocab-size must be more than the 5 special tokens, got 3"),
    ("--workers", "0", "--workers must be at least 1, got 0"),
    ("--shard-tokens", "-5", "--shard-tokens must be at least 1, got -5"),
    ("--tokenizer-sample", "0", "--tokenizer-sample must be at least 1, got 0"),
])
def test_flags_out_of_range_are_one_line_exit_2(tmp_path, capsys, flag, value, message):
    assert run_prepare(flag, value, "--out", tmp_path / "data") == 2
    one_line_error(capsys, message)
    assert not (tmp_path / "data").exists()


def test_damaged_data_is_refused_naming_the_shard(tmp_path, tokenizer_dir):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    prepare.prepare([str(text)], str(tmp_path / "data"), tokenizer_dir=tokenizer_dir, shard_tokens=2000,
                    progress=False)
    shard = tmp_path / "data" / "shard-00001.bin"
    original = shard.read_bytes()
    shard.write_bytes(original[:-2])
    with pytest.raises(data.DataError, match="shard-00001.bin is truncated or changed"):
        data.TokenData(str(tmp_path / "data"))
    shard.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    tokens = data.TokenData(str(tmp_path / "data"))  # same size: only the checksum can tell
    tokens.verify()
    assert tokens.corrupt_shards() == ["shard-00001.bin is corrupt (its sha256 differs from the index's)"]
    halves = [data.TokenData(str(tmp_path / "data")) for _ in range(2)]
    for part, half in enumerate(halves):  # two processes, each its share of the shards
        half.verify(part, 2)
    assert [len(half.corrupt_shards()) for half in halves] == [0, 1]
    shard.write_bytes(original)
    index = json.loads((tmp_path / "data" / "index.json").read_text())
    (tmp_path / "data" / "index.json").write_text(json.dumps({**index, "format": "electra-fast-tokens/99"}))
    with pytest.raises(data.DataError, match="format 'electra-fast-tokens/99'"):
        data.TokenData(str(tmp_path / "data"))


def test_the_data_benchmark_runs_at_small_sizes(tmp_path):
    script = os.path.join(REPOSITORY, "bench", "data_scale.py")
    run = subprocess.run([sys.executable, script, "--sizes", "150K", "300K", "--throughput-size", "100K", "--repeats",
                          "1", "--json", str(tmp_path / "out.json")], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)  # outside the checkout: see _peak_rss_mb
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "out.json").read_text())
    assert [row["size"] for row in report["sizes"]] == ["150K", "300K"]
    assert report["throughput"]["mb_per_s"]["prepare"] > 0 and report["batch"]["loop_wait_us_median"] > 0
    assert "of tokenizers" in run.stdout and "| 300K |" in run.stdout


# ------------------------------------------------------------------------------------------------------ the order

@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 64, 100, 1031, 65537])
def test_keyed_permutation_is_a_bijection_that_depends_on_its_key(n):
    positions = np.arange(n)
    first = data.keyed_permutation(positions, n, (1, 2))
    assert np.array_equal(np.sort(first), positions)
    if n > 5:
        assert not np.array_equal(first, data.keyed_permutation(positions, n, (1, 3)))
        assert not np.array_equal(first, positions)


def test_keyed_permutation_looks_uniform():
    # Where position 0 lands, over many keys, is spread evenly over [0, n) (chi-square, p > 0.001).
    from scipy.stats import chisquare

    n = 20
    landed = [int(data.keyed_permutation(np.array([0]), n, (key,))[0]) for key in range(4000)]
    assert chisquare(np.bincount(landed, minlength=n)).pvalue > 1e-3


def test_epochs_visit_every_training_window_once_ranks_disjoint_and_resume_exactly(tmp_path, tokenizer_dir):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    prepare.prepare([str(text)], str(tmp_path / "data"), tokenizer_dir=tokenizer_dir, progress=False)
    tokens = data.TokenData(str(tmp_path / "data"))
    windows = tokens.windows(24, valid_sequences=13)
    windows.sequences = lambda numbers: torch.as_tensor(numbers)  # batches of window numbers, to follow the order
    per_rank = windows.training // 3
    seen = [next(windows.batches(batch_size=per_rank, seed=5, rank=rank, world_size=3)).tolist() for rank in range(3)]
    valid = set(windows.validation().tolist())
    assert len(valid) == 13 and len(set(sum(seen, []))) == 3 * per_rank  # ranks disjoint, no repeat
    assert not valid & set(sum(seen, [])) and valid | set(sum(seen, [])) <= set(range(windows.count))
    assert set(windows.validation(1, 2).tolist()) | set(windows.validation(0, 2).tolist()) == valid
    assert valid == set(tokens.windows(24, valid_sequences=13).validation().tolist())  # the same for every run
    whole = windows.batches(batch_size=7, seed=5, rank=1, world_size=3)
    flat = torch.cat([next(whole) for _ in range(2 * per_rank // 7 + 1)])  # spans the end of epoch 0
    resumed = windows.batches(batch_size=7, seed=5, rank=1, world_size=3, start=14)
    again = torch.cat([next(resumed) for _ in range(2 * per_rank // 7 - 1)])
    assert torch.equal(again, flat[14:14 + len(again)])
    assert not torch.equal(flat[:7], flat[per_rank:per_rank + 7])  # epoch 1 has its own order
    assert not torch.equal(flat[:7], next(windows.batches(batch_size=7, seed=6, rank=1, world_size=3)))


def test_closing_the_prefetched_stream_waits_for_its_thread():
    # A producer left running at exit aborts the process when it is inside torch; close must join it.
    made = []

    def slow():
        for i in range(100):
            time.sleep(0.2)
            made.append(i)
            yield torch.full((2,), i)

    stream = data.prefetched(slow(), depth=1)
    assert next(stream).tolist() == [0, 0] and next(stream).tolist() == [1, 1]  # the same batches, in order
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "batches"]
    assert len(made) <= 4  # it stopped: at most the batch in hand when closed, and one queued
