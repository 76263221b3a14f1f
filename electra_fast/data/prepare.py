"""Preparing a corpus: a corpus of any size into memory-mapped token shards, in bounded memory, on every core.
`prepare_corpus(PrepareConfig)` is electra_fast.prepare (and `electra-fast prepare`, electra_fast.data.cli, behind
its flags); `prepare(paths, out, ...)` does the work with plain arguments (`pretrain --corpus` calls it too).

    DATA/.lock               held by the run that writes DATA (electra_fast.locking); a second one is refused
    DATA/tokenizer/          the tokenizer (trained on a streamed sample of the corpus, or the one given): the same
                             ids for the same corpus and settings on every run
                             (electra_fast.data.shards.train_tokenizer)
    DATA/shard-NNNNN.bin     token ids, little-endian, in the narrowest unsigned type the vocabulary allows;
                             the shards one after the other are the corpus's token stream: each document's
                             tokens, with [SEP] between documents
    DATA/progress.json       while unfinished: the shards done and the record where the next one starts
    DATA/index.json          written last: format, tokenizer fingerprint and the version of `tokenizers` that
                             trained it, dtype, every shard's tokens and sha256, documents, sources and their sizes

The main process reads records (electra_fast.data.corpus) in batches of about BATCH_BYTES of text and keeps at most
2 x workers batches in flight to worker processes, which tokenize them (`tokenizers`, one thread each); it
writes their tokens in corpus order. Each shard is written under a temporary name, flushed and renamed, then
progress.json is replaced; a shard ends at the first record boundary past `shard_tokens` tokens, so a rerun
on an unfinished DATA restarts at the record after the last shard and writes the same bytes as a run left alone.
The bytes depend on the corpus and the settings only, never on --workers.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import re
import time
from collections import deque
from typing import Sequence

import numpy as np

from .. import locking
from ..files import differences, write_file, write_folder
from . import corpus
from . import shards as data
from .config import DEFAULT_SHARD_TOKENS, DEFAULT_TOKENIZER_SAMPLE, PrepareConfig, PreparedData
from .corpus import CorpusReader, Source
from .shards import FORMAT, INDEX, PROGRESS, TOKENIZER, DataError

BATCH_BYTES = 1 << 20


def prepare_corpus(config: PrepareConfig) -> PreparedData:
    """`electra-fast prepare` as a function (electra_fast.prepare): checks the config, then prepares the corpus into
    config.out (continuing an unfinished run there, reusing a finished one with the same settings). Raises
    BadInput (DataError, CorpusError) for bad input and locking.FolderInUse while another process writes
    config.out; an interruption (KeyboardInterrupt) leaves whole shards that the same call continues from."""
    config.check()
    index = prepare(config.corpus, config.out, tokenizer_dir=config.tokenizer, vocab_size=config.vocab_size,
                    tokenizer_sample=config.tokenizer_sample, workers=config.workers,
                    shard_tokens=config.shard_tokens, document_per=config.documents, text_field=config.text_field,
                    skip_bad_lines=config.skip_bad_lines, progress=not config.quiet)
    return PreparedData(folder=config.out, tokens=index["tokens"], documents=index["documents"],
                        shards=len(index["shards"]), bad_lines=index["bad_lines"], index=index)


def prepare(paths: Sequence[str] | None, out: str, *, tokenizer_dir: str | None = None, vocab_size: int = 8000,
            tokenizer_sample: int = DEFAULT_TOKENIZER_SAMPLE, workers: int | None = None,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, document_per: str = "line", text_field: str = "text",
            skip_bad_lines: bool = False, progress: bool = True) -> dict:
    """Prepares the corpus at `paths` (None: the built-in one) into the folder `out`, continuing an unfinished
    run there; returns the index. Holds the lock of `out` throughout (locking.FolderInUse if another process
    holds it). Raises DataError or CorpusError for bad input, before anything is written where it can."""
    sources = corpus.find_sources(paths)
    with locking.exclusive(out):
        reading = dict(document_per=document_per, text_field=text_field, skip_bad_lines=skip_bad_lines)
        tokenizer, saved = _tokenizer(out, sources, tokenizer_dir, vocab_size, tokenizer_sample, reading)
        trained_now = not (tokenizer_dir or saved)
        settings = {"sources": [[s.path, s.size, s.modified] for s in sources], "documents": document_per,
                    "text_field": text_field, "skip_bad_lines": skip_bad_lines,
                    "tokenizer": data.tokenizer_fingerprint(tokenizer), "shard_tokens": shard_tokens,
                    "tokenizer_trained_with": None if tokenizer_dir else {"vocab_size": vocab_size,
                                                                          "sample_bytes": tokenizer_sample}}
        index = _read_json(os.path.join(out, INDEX))
        if index is not None:
            _same_settings(out, index["settings"], settings)
            return index
        state = _read_json(os.path.join(out, PROGRESS))
        if state is not None:
            _same_settings(out, state["settings"], settings)
        else:
            state = {"format": FORMAT, "settings": settings, "shards": [], "next": [0, 0], "documents": 0,
                     "tokens": 0, "pending_document": False, "bad_lines": 0,
                     "tokenizer_trainer": _trainer() if trained_now else None}
        _remove_unrecorded_shards(out, len(state["shards"]))

        def first_write():  # the tokenizer appears only once there are tokens to write, with the settings
            if not saved:
                write_folder(os.path.join(out, TOKENIZER), lambda f: data.save_tokenizer(tokenizer, f))
            _write_json(os.path.join(out, PROGRESS), state)

        dtype = next(t for t in (np.uint8, np.uint16, np.uint32)
                     if tokenizer.get_vocab_size() <= np.iinfo(t).max + 1)
        writer = _ShardWriter(out, state, dtype, shard_tokens, data.special_ids(tokenizer)["[SEP]"], first_write)
        reader = CorpusReader(sources, start=tuple(state["next"]), **reading)
        try:
            _tokenize(reader, tokenizer, writer, workers or os.cpu_count() or 1, progress,
                      sum(s.size for s in sources))
            writer.finish()
        except BaseException:
            writer.abandon()
            raise
        if writer.state["tokens"] == 0:
            raise DataError(f"--corpus: no text in {' '.join(paths or [corpus.BUILTIN])} (the corpus is empty)")
        index = {"format": FORMAT, "tokenizer": settings["tokenizer"],
                 # Not a setting: a rerun reuses DATA's tokenizer, whatever version of the trainer it finds.
                 "tokenizer_trainer": writer.state.get("tokenizer_trainer"), "vocab_size": tokenizer.get_vocab_size(),
                 "dtype": np.dtype(dtype).name, "specials": data.special_ids(tokenizer),
                 "tokens": writer.state["tokens"], "documents": writer.state["documents"],
                 "bad_lines": writer.state["bad_lines"], "shards": writer.state["shards"],
                 "sources": [{"path": s.path, "bytes": s.size} for s in sources], "settings": settings}
        _write_json(os.path.join(out, INDEX), index)
        os.remove(os.path.join(out, PROGRESS))
        return index


# -------------------------------------------------------------------------------------------------------- tokenizer

def _tokenizer(out: str, sources: list[Source], tokenizer_dir, vocab_size: int, sample_bytes: int, reading: dict):
    """(tokenizer, whether DATA holds it already): --tokenizer DIR (which must agree with a tokenizer DATA already
    has), else DATA's own, else one trained on a sample of `sample_bytes` of text, every source giving its share
    by size."""
    saved = os.path.join(out, TOKENIZER)
    existing = data.load_tokenizer(saved) if os.path.isdir(saved) else None
    if tokenizer_dir:
        tokenizer = data.load_tokenizer(tokenizer_dir)
        if existing is not None and data.tokenizer_fingerprint(existing) != data.tokenizer_fingerprint(tokenizer):
            raise DataError(f"--tokenizer: {tokenizer_dir} (fingerprint {data.tokenizer_fingerprint(tokenizer)}) is "
                            f"not the tokenizer of {out} ({data.tokenizer_fingerprint(existing)})")
    elif existing is not None:
        return existing, True
    else:
        tokenizer = data.train_tokenizer(_Sample(sources, sample_bytes, reading), vocab_size)
        if tokenizer.get_vocab_size() <= len(data.SPECIALS):
            raise DataError(f"--corpus: no text in {' '.join(s.path for s in sources)} (the corpus is empty)")
    return tokenizer, existing is not None


class _Sample:
    """Texts from the start of every source, each source contributing `budget` x its share of the total size; each
    iteration reads them again from the start (the tokenizer trainer reads them twice)."""

    def __init__(self, sources: list[Source], budget: int, reading: dict):
        self.sources, self.budget, self.reading = sources, budget, reading

    def __iter__(self):
        total = sum(s.size for s in self.sources) or 1
        for source in self.sources:
            share = self.budget if source.kind == "builtin" else self.budget * source.size / total
            taken = 0
            for record in CorpusReader([source], **self.reading):
                if taken >= share:
                    break
                taken += len(record.text)
                yield record.text


def _trainer() -> str:
    """The library and version that train tokenizers, as the index records it."""
    import tokenizers

    return f"tokenizers {tokenizers.__version__}"


# ------------------------------------------------------------------------------------------------------- tokenizing

_worker_tokenizer = None


def _start_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    from tokenizers import Tokenizer

    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def _encode(texts: list[str], dtype) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [records] token counts, dtype [tokens] the ids of every record one after the other)."""
    encode = getattr(_worker_tokenizer, "encode_batch_fast", _worker_tokenizer.encode_batch)
    ids = [e.ids for e in encode(texts, add_special_tokens=False)]
    counts = np.fromiter(map(len, ids), np.int64, len(ids))
    return counts, np.fromiter(itertools.chain.from_iterable(ids), dtype, int(counts.sum()))


def _batches(reader: CorpusReader):
    """Lists of records holding about BATCH_BYTES of text each."""
    batch, size = [], 0
    for record in reader:
        batch.append(record)
        size += len(record.text)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _tokenize(reader: CorpusReader, tokenizer, writer: "_ShardWriter", workers: int, progress: bool,
              total_bytes: int) -> None:
    """Sends batches to `workers` processes, at most 2 x workers in flight, and writes the results in order."""
    from tqdm import tqdm

    # Each worker tokenizes on one thread: parallelism comes from the processes. Set before the fork, so that the
    # children neither spawn thread pools nor warn that the parent used one.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    try:
        pool = context.Pool(workers, _start_worker, (tokenizer.to_str(),))
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    began, tokens_before, bytes_before = time.perf_counter(), writer.state["tokens"], reader.bytes_read
    bar = tqdm(total=total_bytes, initial=reader.bytes_read, unit="B", unit_scale=True, desc="prepare",
               disable=not progress, smoothing=0.1)
    try:
        pending = deque()
        batches = _batches(reader)
        while True:
            while len(pending) < 2 * workers:
                batch = next(batches, None)
                if batch is None:
                    break
                pending.append((batch, pool.apply_async(_encode, ([r.text for r in batch], writer.dtype))))
            if not pending:
                break
            batch, result = pending.popleft()
            writer.write(batch, *result.get())
            if progress:
                seconds = time.perf_counter() - began
                bar.update(reader.bytes_read - bar.n)
                bar.set_postfix(tokens=f"{writer.state['tokens']:,}",
                                MB_s=f"{(reader.bytes_read - bytes_before) / 1e6 / seconds:.2f}",
                                tok_s=f"{(writer.state['tokens'] - tokens_before) / seconds:,.0f}")
    finally:
        bar.close()
        pool.terminate()
        pool.join()


# ---------------------------------------------------------------------------------------------------------- writing

class _ShardWriter:
    """Appends records' tokens to the current shard, with [SEP] before each document but the first that has
    tokens; closes the shard at the first record boundary past `shard_tokens` and records progress."""

    def __init__(self, out: str, state: dict, dtype, shard_tokens: int, sep_id: int, first_write):
        self.out, self.state, self.dtype, self.shard_tokens = out, state, dtype, shard_tokens
        self.first_write = first_write
        self.sep = np.array([sep_id], dtype)
        self.file = self.digest = None
        self.in_shard = 0

    def write(self, batch: list, counts: np.ndarray, ids: np.ndarray) -> None:
        """Appends a batch of records (corpus.Record) given their token counts and ids (as _encode returns)."""
        state, pieces, at = self.state, [], 0
        for record, n in zip(batch, counts.tolist(), strict=True):
            tokens, at = ids[at:at + n], at + n
            if record.starts_document:
                state["pending_document"] = True
            elif record.end:
                state["bad_lines"] += record.bad_lines
            if n:
                if state["pending_document"]:
                    if state["tokens"]:
                        pieces.append(self.sep)
                        self.in_shard, state["tokens"] = self.in_shard + 1, state["tokens"] + 1
                    state["documents"] += 1
                    state["pending_document"] = False
                pieces.append(tokens)
                self.in_shard, state["tokens"] = self.in_shard + n, state["tokens"] + n
            if self.in_shard >= self.shard_tokens:
                self._append(pieces)
                pieces = []
                self._close(next_record=[record.source, record.ordinal + 1])
        self._append(pieces)

    def _append(self, pieces: list) -> None:
        if not pieces:
            return
        if self.file is None:
            if self.first_write is not None:
                self.first_write()
                self.first_write = None
            self.file = open(self._path(len(self.state["shards"]), temporary=True), "wb")
            self.digest = hashlib.sha256()
        block = np.concatenate(pieces).astype(np.dtype(self.dtype).newbyteorder("<"), copy=False).tobytes()
        self.file.write(block)
        self.digest.update(block)

    def _close(self, next_record: list) -> None:
        """Renames the current shard into place and records it, with the record where the next shard starts."""
        number = len(self.state["shards"])
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self._path(number, temporary=True), self._path(number))
        self.state["shards"].append({"file": os.path.basename(self._path(number)), "tokens": self.in_shard,
                                     "sha256": self.digest.hexdigest()})
        self.state["next"] = next_record
        _write_json(os.path.join(self.out, PROGRESS), self.state)
        self.file = self.digest = None
        self.in_shard = 0

    def abandon(self) -> None:
        """Removes the shard being written (an interrupted or failed run keeps only whole, recorded shards)."""
        if self.file is not None:
            self.file.close()
            os.remove(self._path(len(self.state["shards"]), temporary=True))
            self.file = None

    def finish(self) -> None:
        if self.file is not None:
            self._close(next_record=[len(self.state["settings"]["sources"]), 0])

    def _path(self, number: int, temporary: bool = False) -> str:
        name = f"shard-{number:05d}.bin"
        return os.path.join(self.out, f".{name}.partial" if temporary else name)


def _remove_unrecorded_shards(out: str, recorded: int) -> None:
    """Shards past the recorded ones (renamed just before an interruption) and temporary files are redone."""
    for name in os.listdir(out):
        number = re.fullmatch(r"shard-(\d+)\.bin", name)
        if name.endswith(".partial") or (number and int(number.group(1)) >= recorded):
            os.remove(os.path.join(out, name))


# ------------------------------------------------------------------------------------------------------------ files

def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            found = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise DataError(f"{path} is unreadable ({e})") from None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise DataError(f"{path} has format {found.get('format') if isinstance(found, dict) else None!r}; this "
                        f"version of electra-fast reads {FORMAT!r}")
    missing = {"settings", "shards"} - set(found)
    if missing:
        raise DataError(f"{path} is unreadable (it lacks {', '.join(sorted(missing))})")
    return found


def _write_json(path: str, value: dict) -> None:
    write_file(path, json.dumps(value, indent=1))


def _same_settings(out: str, saved: dict, current: dict) -> None:
    changed = differences(saved, current)
    if changed:
        raise DataError(f"--out {out} holds data prepared otherwise ({'; '.join(changed)}); choose another folder "
                        "or delete it")
