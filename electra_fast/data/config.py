"""The options of `electra-fast prepare` as a dataclass, PrepareConfig: its fields are the command's flags
(`--vocab-size` is `vocab_size`) with the same defaults and help, and the command builds its parser from them.
`pretrain --corpus` prepares a corpus with the same options (CorpusOptions, which PretrainConfig extends).

    electra_fast.prepare(PrepareConfig(corpus=["wiki/"], out="data/wiki", vocab_size=30522))
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import at_least, check_ranges
from ..options import check_fields, option
from .shards import SPECIALS

DEFAULT_SHARD_TOKENS = 1 << 26
DEFAULT_TOKENIZER_SAMPLE = 100_000_000


def byte_count(text: str) -> int:
    """A number of bytes written as on the command line: 100000, 100K, 2.5M, 1G (powers of ten). Raises
    ValueError for anything else."""
    scale = {"K": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9}.get(text[-1:].upper(), 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except (ValueError, OverflowError):  # OverflowError: inf
        raise ValueError(f"not a finite number of bytes: {text!r}") from None


@dataclass(kw_only=True)
class CorpusOptions:
    """How a corpus is read and tokenized: the options that `prepare` and `pretrain --corpus` share."""
    corpus: list[str] | None = option(
        None, "files, folders (every file below; a `datasets` save_to_disk folder) or globs: text, JSON Lines or "
              "Parquet, text and JSON Lines optionally .gz/.bz2/.xz/.zst (default: Python's pydoc help topics)",
        nargs="+", metavar="PATH")
    documents: str = option("line", "text files: one document per non-blank line (default) or per file",
                            choices=("line", "file"))
    text_field: str = option("text", "the JSON Lines key or Parquet/Arrow column of the text")
    skip_bad_lines: bool = option(False, "skip and count lines that are not UTF-8", action="store_true")
    tokenizer: str | None = option(None, "use this tokenizer (tokenizer.json or a BERT vocab.txt) instead of "
                                         "training one", metavar="DIR")
    vocab_size: int = option(8000, "size of the tokenizer trained on the corpus", type=int)
    tokenizer_sample: int = option(
        DEFAULT_TOKENIZER_SAMPLE, "bytes of text to train the tokenizer on, taken from every source in proportion "
                                  "to its size (default 100M; suffixes K, M, G)",
        type=byte_count, value_type=int, metavar="BYTES")
    workers: int | None = option(None, "tokenizing processes (default: every core)", type=int)
    shard_tokens: int = option(DEFAULT_SHARD_TOKENS, f"tokens per shard (default {DEFAULT_SHARD_TOKENS:,})",
                               type=int)

    def check(self) -> None:
        """Raises BadInput naming (as its flag) the first option whose value has the wrong type or lies outside its
        range."""
        check_fields(self)
        check_ranges(self, [("vocab_size", lambda n: n > len(SPECIALS), f"more than the {len(SPECIALS)} special "
                                                                         "tokens"),
                            at_least("tokenizer_sample", 1), at_least("workers", 1), at_least("shard_tokens", 1)])


@dataclass(kw_only=True)
class PrepareConfig(CorpusOptions):
    """`electra-fast prepare`: the corpus options, and where the shards go."""
    out: str = option("electra-data", "the prepared data folder")
    quiet: bool = option(False, "no progress bar", action="store_true")


@dataclass(frozen=True)
class PreparedData:
    """What electra_fast.prepare returns: the prepared `folder` (pretrain's --data, PretrainConfig.data), its
    `tokens`, `documents`, `shards` (how many), `bad_lines` (skipped as not UTF-8) and the whole `index`
    (index.json)."""
    folder: str
    tokens: int
    documents: int
    shards: int
    bad_lines: int
    index: dict
