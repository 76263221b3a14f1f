"""Pretraining data: text from files, folders or globs (or the help topics that ship with Python), a WordPiece
tokenizer (trained with Hugging Face `tokenizers`, or loaded), the corpus packed into fixed-length sequences, and
an endless stream of batches that visits every sequence once per epoch in a seeded order, split between ranks."""
from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Iterator, Sequence

import torch

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class DataError(ValueError):
    """Unusable input data (corpus or tokenizer); the message names the argument and the problem."""


# ----------------------------------------------------------------------------------------------------------- corpus

def default_corpus() -> list[str]:
    """The English help topics of `pydoc_data.topics` (about 0.5 MB), one document per topic."""
    from pydoc_data import topics

    return [topics.topics[name] for name in sorted(topics.topics)]


def corpus_files(paths: Sequence[str]) -> list[str]:
    """The files that `--corpus` names: a file, every file below a folder (hidden ones skipped), or a glob's
    matches. Sorted within each argument, so the order is the same on every machine."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            matches = sorted(os.path.join(root, name) for root, dirs, names in os.walk(path)
                             for name in names if not name.startswith("."))
            empty_reason = "a folder without files"
        elif glob.has_magic(path):
            matches = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            empty_reason = "a pattern that matches no file"
        elif os.path.isfile(path):
            matches, empty_reason = [path], ""
        else:
            raise DataError(f"--corpus: no such file or folder: {path}")
        if not matches:
            raise DataError(f"--corpus: {path} is {empty_reason}")
        found.extend(matches)
    return found


def read_documents(paths: Sequence[str] | None, *, document_per: str = "line") -> list[str]:
    """The corpus as documents: one per non-blank line (`document_per="line"`) or one per file ("file"); the
    default corpus when `paths` is None or empty. Raises DataError for unreadable or empty input."""
    if not paths:
        return default_corpus()
    documents = []
    for path in corpus_files(paths):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"--corpus: cannot read {path} as UTF-8 text ({e})") from None
        if document_per == "file":
            documents.append(text)
        else:
            documents.extend(text.splitlines())
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise DataError(f"--corpus: no text in {' '.join(paths)} (the corpus is empty)")
    return documents


# -------------------------------------------------------------------------------------------------------- tokenizer

def train_tokenizer(documents: Sequence[str], vocab_size: int):
    """A lower-casing BERT-style WordPiece tokenizer with the specials [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4.

    The trainer breaks ties between equally frequent pairs in hash order, so two trainings on one corpus may
    differ: a run saves its tokenizer, and `--tokenizer` reuses one."""
    from tokenizers import Tokenizer, models, trainers

    tokenizer = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")))
    tokenizer.train_from_iterator(documents, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                       special_tokens=list(SPECIALS),
                                                                       show_progress=False))
    return _bert_pipeline(tokenizer)  # now that [CLS] and [SEP] have ids


def _bert_pipeline(tokenizer):
    """BERT's normaliser, pre-tokeniser and decoder, and [CLS] ... [SEP] around encoded text."""
    from tokenizers import decoders, normalizers, pre_tokenizers, processors

    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls is not None and sep is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer


def load_tokenizer(directory: str):
    """A tokenizer from `directory`: its `tokenizer.json`, or else a BERT-style `vocab.txt` (e.g. BERT's own)."""
    from tokenizers import Tokenizer, models

    json_path, vocab_path = os.path.join(directory, "tokenizer.json"), os.path.join(directory, "vocab.txt")
    try:
        if os.path.isfile(json_path):
            tokenizer = Tokenizer.from_file(json_path)
        elif os.path.isfile(vocab_path):
            tokenizer = _bert_pipeline(Tokenizer(models.WordPiece.from_file(vocab_path, unk_token="[UNK]")))
        else:
            raise DataError(f"--tokenizer: {directory} holds neither tokenizer.json nor vocab.txt")
    except DataError:
        raise
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise DataError(f"--tokenizer: cannot read the tokenizer in {directory} ({str(e).splitlines()[0]})") from None
    missing = [s for s in SPECIALS if tokenizer.token_to_id(s) is None]
    if missing:
        raise DataError(f"--tokenizer: the tokenizer in {directory} lacks the special tokens {' '.join(missing)}")
    return tokenizer


def special_ids(tokenizer) -> dict[str, int]:
    """{"[PAD]": id, ...} for the five specials."""
    return {s: tokenizer.token_to_id(s) for s in SPECIALS}


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary in id order: equal fingerprints encode text the same way."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def save_tokenizer(tokenizer, directory: str) -> None:
    """`tokenizer.json`, `vocab.txt` and a `tokenizer_config.json` that lets transformers' AutoTokenizer load
    it as an ElectraTokenizerFast."""
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.writelines(token + "\n" for token, _ in vocab)
    config = {"tokenizer_class": "ElectraTokenizerFast", "do_lower_case": True, "unk_token": "[UNK]",
              "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


# ---------------------------------------------------------------------------------------------------------- packing

def pack(documents: Sequence[str], tokenizer, seq_len: int) -> torch.Tensor:
    """The documents as int64 [num_sequences, seq_len]: their tokens, one document after the other with [SEP]
    between documents, cut into windows of seq_len - 2 tokens, each written [CLS] window [SEP]; the last
    window is padded with [PAD]."""
    if seq_len < 3:
        raise DataError(f"--seq-len must be at least 3 ([CLS], a token, [SEP]), got {seq_len}")
    ids = special_ids(tokenizer)
    stream = []
    for encoding in tokenizer.encode_batch(list(documents), add_special_tokens=False):
        if encoding.ids:
            stream.extend(([ids["[SEP]"]] if stream else []) + encoding.ids)
    if not stream:
        raise DataError("--corpus: the corpus has no tokens")
    body = seq_len - 2
    n = -(-len(stream) // body)
    tokens = torch.full((n * body,), ids["[PAD]"], dtype=torch.int64)
    tokens[:len(stream)] = torch.tensor(stream, dtype=torch.int64)
    windows = tokens.view(n, body)
    cls = torch.full((n, 1), ids["[CLS]"], dtype=torch.int64)
    sep = torch.full((n, 1), ids["[SEP]"], dtype=torch.int64)
    return torch.cat([cls, windows, sep], dim=1)


def batches(sequences: torch.Tensor, *, batch_size: int, seed: int, rank: int, world_size: int,
            start: int = 0) -> Iterator[torch.Tensor]:
    """An endless stream of [batch_size, T] batches for one rank, from its `start`-th sequence on.

    Epoch e orders all sequences by a permutation drawn from seed and e (each sequence once per epoch); rank r
    takes every world_size-th of that order from r (its shard, len // world_size sequences, so ranks stay in
    step). The rank's stream is its shards of epoch 0, 1, ... one after the other; a batch may span two epochs.
    """
    per_rank = len(sequences) // world_size
    if per_rank == 0:
        raise DataError(f"--corpus packs into {len(sequences)} sequences, fewer than the {world_size} processes")
    epoch, offset = divmod(start, per_rank)
    shard = _shard(len(sequences), seed, epoch, rank, world_size)
    while True:
        taken = []
        need = batch_size
        while need:
            piece = shard[offset:offset + need]
            taken.append(piece)
            need -= len(piece)
            offset += len(piece)
            if offset == per_rank:
                epoch, offset = epoch + 1, 0
                shard = _shard(len(sequences), seed, epoch, rank, world_size)
        yield sequences[torch.cat(taken)]


def _shard(n: int, seed: int, epoch: int, rank: int, world_size: int) -> torch.Tensor:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[rank::world_size][:n // world_size]
