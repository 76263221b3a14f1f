"""Pretraining data as `pretrain` reads it: the tokenizer (a WordPiece trained with Hugging Face `tokenizers`, or
loaded), and the token shards that `prepare` wrote, memory-mapped: the token stream cut into windows of
`seq_len - 2` tokens, each written [CLS] window [SEP], a held-out validation split, and an endless stream of
batches that visits every training window once per epoch in a seeded order, each rank its own share. Orders
are keyed permutations computed per index (no array per window, let alone per token), so memory and the time
to the first batch do not grow with the corpus."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import queue
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..errors import BadInput

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The same roles as RoBERTa / XLM-R tokenizers spell them: a tokenizer may use either spelling for each role.
_SPELLINGS = {"[PAD]": ("[PAD]", "<pad>"), "[UNK]": ("[UNK]", "<unk>"), "[CLS]": ("[CLS]", "<s>"),
              "[SEP]": ("[SEP]", "</s>"), "[MASK]": ("[MASK]", "<mask>")}
# A prepared data folder (electra_fast.data.prepare writes it): its format version and file names.
FORMAT = "electra-fast-tokens/1"
INDEX, PROGRESS, TOKENIZER = "index.json", "progress.json", "tokenizer"


class DataError(BadInput):
    """Unusable input data (corpus or tokenizer); the message names the argument and the problem."""


# -------------------------------------------------------------------------------------------------------- tokenizer

def train_tokenizer(documents: Iterable[str], vocab_size: int):
    """A lower-casing BERT-style WordPiece tokenizer with the specials [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4,
    the same, ids included, for the same documents on every run and machine with one version of `tokenizers`.

    `documents` is read twice (a list, or an iterable whose every iteration starts from the beginning). The
    trainer numbers each symbol seen inside a word ("##e") when it first meets it in a hash map whose order a
    per-process random seed sets, and breaks ties between equally frequent pairs by those numbers: alone it gives
    different vocabularies (different tokens, not only ids) for one corpus. So a first pass that stops before any
    merge collects the symbols, and the second trains with them numbered up front: after the specials, every
    character in code point order, then every "##" symbol in code point order. Merged tokens follow in the order
    the trainer merged them."""
    from tokenizers import Tokenizer, models, trainers

    def model_vocab(size: int, numbered_first: list[str]) -> dict[str, int]:
        tokenizer = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")))
        tokenizer.train_from_iterator(documents, trainers.WordPieceTrainer(vocab_size=size,
                                                                           special_tokens=numbered_first,
                                                                           show_progress=False))
        return tokenizer.get_vocab(with_added_tokens=False)

    symbols = set(model_vocab(0, list(SPECIALS))) - set(SPECIALS)  # vocab_size 0: no merge
    characters = sorted(s for s in symbols if len(s) == 1)
    vocab = model_vocab(vocab_size, [*SPECIALS, *characters, *sorted(symbols - set(characters))])
    # Built afresh so that only the five specials are added tokens (the trainer adds everything numbered first).
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.add_special_tokens(list(SPECIALS))
    return _bert_pipeline(tokenizer)


def _bert_pipeline(tokenizer):
    """BERT's normaliser, pre-tokeniser and decoder, and [CLS] ... [SEP] around encoded text."""
    from tokenizers import decoders, normalizers, pre_tokenizers, processors

    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls is not None and sep is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
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
    missing = [" or ".join(_SPELLINGS[s]) for s in SPECIALS if _special_token(tokenizer, s) is None]
    if missing:
        raise DataError(f"--tokenizer: the tokenizer in {directory} lacks the special tokens {', '.join(missing)}")
    return tokenizer


def _special_token(tokenizer, role: str) -> str | None:
    """The token that plays `role` ("[PAD]", ...) in this tokenizer: BERT's spelling or RoBERTa's; None if neither."""
    return next((token for token in _SPELLINGS[role] if tokenizer.token_to_id(token) is not None), None)


def special_ids(tokenizer) -> dict[str, int]:
    """{"[PAD]": id, ...} for the five specials, keyed by role whichever spelling the tokenizer uses ("<pad>" is
    "[PAD]", "<s>" "[CLS]", "</s>" "[SEP]", ...)."""
    return {role: tokenizer.token_to_id(_special_token(tokenizer, role)) for role in SPECIALS}


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary in id order: equal fingerprints encode text the same way."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def save_tokenizer(tokenizer, directory: str) -> None:
    """`tokenizer.json`, `vocab.txt` and a `tokenizer_config.json` that lets transformers' AutoTokenizer load
    it: as an ElectraTokenizerFast when it is WordPiece, else as the generic fast tokenizer, with its own
    spelling of the specials."""
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.writelines(token + "\n" for token, _ in vocab)
    word_piece = type(tokenizer.model).__name__ == "WordPiece"
    config = {"tokenizer_class": "ElectraTokenizerFast" if word_piece else "PreTrainedTokenizerFast",
              **({"do_lower_case": True} if word_piece else {}),
              **{f"{role[1:-1].lower()}_token": _special_token(tokenizer, role) for role in SPECIALS}}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


# ------------------------------------------------------------------------------------------------------ token data

class TokenData:
    """A folder that `electra-fast prepare` finished: its index, tokenizer and memory-mapped shards.

    Opening it reads the index and checks each shard's size (no token is read); `verify()` starts checking the
    shards' sha256 in a background thread, and `raise_if_corrupt()` reports what it found."""

    def __init__(self, folder: str):
        self.folder = folder
        path = os.path.join(folder, INDEX)
        if not os.path.isfile(path):
            unfinished = os.path.isfile(os.path.join(folder, PROGRESS))
            raise DataError(f"--data {folder}: " + ("unfinished (prepare stopped before its end); run the same "
                                                     "`electra-fast prepare` again to finish it" if unfinished else
                                                     f"no {INDEX}; prepare it with `electra-fast prepare --out "
                                                     f"{folder}`"))
        try:
            with open(path) as f:
                index = json.load(f)
            version = index.get("format")
        except (OSError, ValueError, AttributeError) as e:
            raise DataError(f"--data {folder}: {INDEX} is unreadable ({e})") from None
        if version != FORMAT:
            raise DataError(f"--data {folder}: {INDEX} has format {version!r}; this version of electra-fast reads "
                            f"{FORMAT!r} (prepare the corpus again)")
        try:
            shards, dtype = index["shards"], np.dtype(index["dtype"]).newbyteorder("<")
            self.specials = {name: int(index["specials"][name]) for name in SPECIALS}
            if not all(isinstance(s, dict) and {"file", "tokens", "sha256"} <= set(s) for s in shards):
                raise KeyError("shards")
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"--data {folder}: {INDEX} is unreadable (bad or missing {e})") from None
        self.index, self.tokenizer_dir = index, os.path.join(folder, TOKENIZER)
        self.maps = []
        for shard in shards:
            shard_path = os.path.join(folder, shard["file"])
            expected = shard["tokens"] * dtype.itemsize
            size = os.path.getsize(shard_path) if os.path.isfile(shard_path) else None
            if size != expected:
                raise DataError(f"--data {folder}: shard {shard['file']} is "
                                + ("missing" if size is None else f"truncated or changed ({size} bytes, "
                                   f"{expected} written)"))
            self.maps.append(np.memmap(shard_path, dtype=dtype, mode="r") if expected else np.empty(0, dtype))
        self.ends = np.cumsum([s["tokens"] for s in shards], dtype=np.int64)
        self.tokens = int(self.ends[-1]) if len(self.ends) else 0
        self.fingerprint = hashlib.sha256(json.dumps([[s["tokens"], s["sha256"]] for s in shards]).encode()
                                          ).hexdigest()[:16]
        self._corrupt, self._verifier = [], None

    def verify(self, part: int = 0, parts: int = 1) -> None:
        """Starts checking the sha256 of every `parts`-th shard from `part` (a process's share) in a background
        thread, once."""
        if self._verifier is None:
            mine = self.index["shards"][part::parts]
            self._verifier = threading.Thread(target=self._hash_shards, args=(mine,), daemon=True,
                                              name="shard-sha256")
            self._verifier.start()

    def _hash_shards(self, shards: list) -> None:
        for shard in shards:
            digest = hashlib.sha256()
            try:
                with open(os.path.join(self.folder, shard["file"]), "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
            except OSError as e:
                self._corrupt.append(f"{shard['file']} is unreadable ({e.strerror or e})")
                continue
            if digest.hexdigest() != shard["sha256"]:
                self._corrupt.append(f"{shard['file']} is corrupt (its sha256 differs from the index's)")

    def corrupt_shards(self) -> list[str]:
        """Waits for the background check, then returns what it found wrong, one line per shard."""
        if self._verifier is not None:
            self._verifier.join()
        return list(self._corrupt)

    def windows(self, seq_len: int, valid_sequences: int = 0) -> "Windows":
        return Windows(self, seq_len, valid_sequences)

    def stream(self, begin: np.ndarray, length: int, fill: int) -> np.ndarray:
        """int64 [len(begin), length]: the token stream from each position in `begin` on, `fill` past its end."""
        out = np.full((len(begin), length), fill, np.int64)
        end = np.minimum(begin + length, self.tokens)
        first = np.searchsorted(self.ends, begin, side="right")
        last = np.searchsorted(self.ends, np.maximum(end - 1, begin), side="right")
        starts = self.ends - np.array([s["tokens"] for s in self.index["shards"]], np.int64)
        whole = (first == last) & (end - begin == length)
        for shard in np.unique(first[whole]):  # the usual case: every token in one shard, gathered at once
            rows = np.flatnonzero(whole & (first == shard))
            local = begin[rows, None] - starts[shard] + np.arange(length)
            out[rows] = self.maps[shard][local]
        for row in np.flatnonzero(~whole):  # windows across a shard boundary or at the stream's end
            at = int(begin[row])
            while at < end[row]:
                shard = int(np.searchsorted(self.ends, at, side="right"))
                upto = min(int(end[row]), int(self.ends[shard]))
                out[row, at - begin[row]:upto - begin[row]] = self.maps[shard][at - starts[shard]:upto - starts[shard]]
                at = upto
        return out


class Windows:
    """The token stream cut into windows of seq_len - 2 tokens (the last padded with [PAD]), each written
    [CLS] window [SEP]. `valid_sequences` windows, chosen by a fixed keyed permutation (the same for every
    --seed), are held out for validation; the rest are the training windows."""

    def __init__(self, data: TokenData, seq_len: int, valid_sequences: int):
        if seq_len < 3:
            raise DataError(f"--seq-len must be at least 3 ([CLS], a token, [SEP]), got {seq_len}")
        self.data, self.seq_len, self.body = data, seq_len, seq_len - 2
        self.count = -(-data.tokens // self.body)
        if not 0 <= valid_sequences < self.count:
            raise DataError(f"the validation split ({valid_sequences} sequences) must leave training sequences: "
                            f"the data holds {self.count} of --seq-len {seq_len}")
        self.valid, self.training = valid_sequences, self.count - valid_sequences

    def sequences(self, windows: np.ndarray) -> torch.Tensor:
        """int64 [len(windows), seq_len]: the windows of these numbers, written [CLS] window [SEP]."""
        ids = self.data.specials
        out = np.empty((len(windows), self.seq_len), np.int64)
        out[:, 0], out[:, -1] = ids["[CLS]"], ids["[SEP]"]
        out[:, 1:-1] = self.data.stream(np.asarray(windows, np.int64) * self.body, self.body, ids["[PAD]"])
        return torch.from_numpy(out)

    def _split(self, positions: np.ndarray) -> np.ndarray:
        return keyed_permutation(positions, self.count, (0x5E1EC7,))

    def validation(self, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """The window numbers of the validation split that `rank` evaluates."""
        return self._split(np.arange(rank, self.valid, world_size, dtype=np.int64))

    def batches(self, *, batch_size: int, seed: int, rank: int, world_size: int,
                start: int = 0) -> Iterator[torch.Tensor]:
        """An endless stream of int64 [batch_size, seq_len] training batches for one rank, from its `start`-th
        sequence on.

        Epoch e orders the training windows by a permutation keyed by (seed, e); rank r takes every world_size-th
        of that order from r (its share, training // world_size windows, so ranks stay in step). The rank's
        stream is its shares of epoch 0, 1, ... one after the other; a batch may span two epochs."""
        per_rank = self.training // world_size
        if per_rank == 0:
            raise DataError(f"the data holds {self.training} training sequences of --seq-len {self.seq_len}, fewer "
                            f"than the {world_size} processes")
        position = start
        while True:
            epoch, taken = np.divmod(np.arange(position, position + batch_size, dtype=np.int64), per_rank)
            order = np.empty_like(taken)
            for e in np.unique(epoch):
                chosen = epoch == e
                order[chosen] = keyed_permutation(rank + taken[chosen] * world_size, self.training, (seed, int(e)))
            yield self.sequences(self._split(self.valid + order))
            position += batch_size


def prefetched(batches: Iterator[torch.Tensor], depth: int = 2) -> Iterator[torch.Tensor]:
    """The same batches, made up to `depth` ahead by a background thread, so the training loop does not wait for
    the permutation and the gather (numpy releases the interpreter lock while it copies, and the loop while it
    waits for the device). Closing the generator stops the thread and waits for it: a daemon thread still inside
    torch when the interpreter exits aborts the process ("terminate called without an active exception")."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for batch in batches:
                if not hand_over(batch):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            hand_over(e)

    producer = threading.Thread(target=produce, daemon=True, name="batches")
    producer.start()
    try:
        while True:
            batch = ready.get()
            if isinstance(batch, BaseException):
                raise batch
            yield batch
    finally:  # closed or collected: the producer stops and lets go of the data
        stop.set()
        producer.join()


_ROUNDS = 4


def keyed_permutation(positions: np.ndarray, n: int, key: Sequence[int]) -> np.ndarray:
    """int64: the images of `positions` (each in [0, n)) under a pseudorandom bijection of [0, n) chosen by `key`.

    A 4-round Feistel network on the smallest even number of bits that holds n - 1, cycle-walked back into
    [0, n) (a bijection of the larger range, applied again until the image falls inside, is one of [0, n)).
    Each image costs a few integer operations and no table, so shuffling n windows needs no memory of size n."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    round_keys = _round_keys((*key, n))

    def feistel(x):
        left, right = x >> shift, x & mask
        for round_key in round_keys:
            left, right = right, left ^ (_mix(right ^ round_key) & mask)
        return (left << shift) | right

    x = feistel(np.asarray(positions, dtype=np.uint64))
    outside = x >= np.uint64(n)
    while outside.any():
        x[outside] = feistel(x[outside])
        outside = x >= np.uint64(n)
    return x.astype(np.int64)


@functools.lru_cache(maxsize=64)
def _round_keys(key: tuple) -> tuple:
    return tuple(np.random.SeedSequence(list(key)).generate_state(_ROUNDS, np.uint64))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))

