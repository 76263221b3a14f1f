"""A text corpus of any size, read as a stream of records in bounded memory.

Sources: plain text (one document per line, or per file), JSON Lines (`.jsonl`, `.ndjson`, `.json`: one object per
line, the document under a text field), Parquet (`.parquet`, the column of that field), and folders that Hugging
Face `datasets` wrote with `save_to_disk` (their Arrow files). Text and JSON Lines may be compressed (`.gz`,
`.bz2`, `.xz`, `.zst`). With no path, the help topics that ship with Python (one document per topic).

A *record* is the text of one document, or of one piece of it: text is cut into pieces of at most `PIECE_BYTES`
(at a line end, else at a space, else at a character boundary) so that no line or file, however long, is held
whole. Records are numbered per source from 0 (`ordinal`), so a reader can restart at any record; each source
ends with an empty record that carries its count of skipped bad lines.
"""
from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import lzma
import os
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

PIECE_BYTES = 1 << 20
BUILTIN = "<python help topics>"
_COMPRESSIONS = {".gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"), ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile,
                 ".zst": None}
_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}


class CorpusError(ValueError):
    """Unusable corpus input; the message names the file (and line or byte offset) and the problem."""


@dataclass(frozen=True)
class Source:
    """One input: `path` ("<python help topics>" for the built-in corpus), its `kind` ("text", "jsonl",
    "parquet", "arrow" or "builtin"), its `compression` (a suffix such as ".gz", or "") and its size on disk."""
    path: str
    kind: str
    compression: str
    size: int


class Record(NamedTuple):
    text: str
    starts_document: bool  # False for the second and later pieces of one document, and for end markers
    source: int            # index of the source in the list read
    ordinal: int           # the record's number within its source
    bad_lines: int         # lines skipped as not UTF-8 in this source so far (the source's total on its end marker)

    @property
    def is_end(self) -> bool:
        """The empty record that ends each source."""
        return not self.text and not self.starts_document


# ------------------------------------------------------------------------------------------------------ the sources

def find_sources(paths: Sequence[str] | None) -> list[Source]:
    """The sources `--corpus` names: files, every file below a folder (hidden ones skipped; a `datasets` folder
    gives its Arrow files), or a glob's matches, sorted within each argument so the order is the same on every
    machine. None or [] is the built-in corpus."""
    if not paths:
        from pydoc_data import topics

        return [Source(BUILTIN, "builtin", "", sum(len(text.encode()) for text in topics.topics.values()))]
    files = []
    for path in paths:
        if os.path.isdir(path):
            matches = _dataset_files(path)
            if matches is None:
                matches = sorted(os.path.join(root, name) for root, dirs, names in os.walk(path)
                                 for name in names if not name.startswith("."))
            empty_reason = "a folder without files"
        elif glob.has_magic(path):
            matches = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            empty_reason = "a pattern that matches no file"
        elif os.path.isfile(path):
            matches, empty_reason = [path], ""
        else:
            raise CorpusError(f"--corpus: no such file or folder: {path}")
        if not matches:
            raise CorpusError(f"--corpus: {path} is {empty_reason}")
        files.extend(matches)
    return [_source(f) for f in files]


def _source(path: str) -> Source:
    stem, compression = os.path.splitext(path)
    if compression not in _COMPRESSIONS:
        stem, compression = path, ""
    kind = _KINDS.get(os.path.splitext(stem)[1].lower(), "text")
    if compression and kind in ("parquet", "arrow"):
        raise CorpusError(f"--corpus: {path}: a {kind} file compressed as a whole cannot be streamed; "
                          f"decompress it ({kind} compresses its columns itself)")
    return Source(path, kind, compression, os.path.getsize(path))


def _dataset_files(folder: str) -> list[str] | None:
    """The Arrow files of a `datasets` folder written by `save_to_disk` (a Dataset, or every split of a
    DatasetDict in its listed order); None for any other folder."""
    try:
        with open(os.path.join(folder, "dataset_dict.json")) as f:
            splits = json.load(f)["splits"]
        return [p for split in splits for p in _dataset_files(os.path.join(folder, split)) or []]
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as e:
        raise CorpusError(f"--corpus: {folder}/dataset_dict.json is unreadable ({e})") from None
    try:
        with open(os.path.join(folder, "state.json")) as f:
            return [os.path.join(folder, entry["filename"]) for entry in json.load(f)["_data_files"]]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise CorpusError(f"--corpus: {folder}/state.json is unreadable ({e})") from None


# ----------------------------------------------------------------------------------------------------- the reading

class CorpusReader:
    """Iterates the records of `sources` from record `start = (source index, ordinal)` on; `bytes_read` is how
    many bytes of the sources (as stored, compressed or not) have been consumed, for progress.

    document_per: "line" (each non-blank line a document) or "file" (each text file one document); JSON Lines,
    Parquet and Arrow always give one document per row. text_field: the JSON key or column of the text.
    skip_bad_lines: skip (and count) lines that are not UTF-8 instead of raising CorpusError."""

    def __init__(self, sources: Sequence[Source], *, document_per: str = "line", text_field: str = "text",
                 skip_bad_lines: bool = False, start: tuple[int, int] = (0, 0)):
        if document_per not in ("line", "file"):
            raise CorpusError(f"--documents must be 'line' or 'file', got {document_per!r}")
        self.sources, self.document_per, self.text_field = list(sources), document_per, text_field
        self.skip_bad_lines, self.start = skip_bad_lines, start
        self.bytes_read = sum(s.size for s in self.sources[:start[0]])

    def __iter__(self) -> Iterator[Record]:
        first_source, first_ordinal = self.start
        for index in range(first_source, len(self.sources)):
            source, skip = self.sources[index], first_ordinal if index == first_source else 0
            done_before = self.bytes_read
            counter = _BadLines()
            ordinal = 0
            for text, starts in self._documents(source, counter, lambda raw: done_before + raw):
                if ordinal >= skip:
                    yield Record(text, starts, index, ordinal, counter.count)
                ordinal += 1
            if ordinal >= skip:
                yield Record("", False, index, ordinal, counter.count)
            self.bytes_read = done_before + source.size

    def _documents(self, source: Source, counter, progress) -> Iterator[tuple[str, bool]]:
        if source.kind == "builtin":
            from pydoc_data import topics

            yield from ((topics.topics[name], True) for name in sorted(topics.topics))
            return
        if source.kind in ("parquet", "arrow"):
            yield from ((text, True) for text in self._columns(source))
            return
        with open(source.path, "rb") as raw:
            stream = raw if not source.compression else _decompressed(raw, source)
            mode = "row" if source.kind == "jsonl" else self.document_per
            lines = _pieces(stream, source.path, mode)
            for text, starts, line, offset in _decoded(lines, source.path, self.skip_bad_lines, counter):
                self.bytes_read = progress(raw.tell())
                if source.kind == "jsonl":
                    text = self._json_text(text, source.path, line)
                    if text is None:
                        continue
                yield text, starts

    def _json_text(self, line_text: str, path: str, line: int) -> str | None:
        if not line_text.strip():
            return None
        try:
            row = json.loads(line_text)
        except ValueError as e:
            raise CorpusError(f"--corpus: {path}, line {line}: not valid JSON ({e})") from None
        if not isinstance(row, dict) or self.text_field not in row:
            raise CorpusError(f"--corpus: {path}, line {line}: no field {self.text_field!r} "
                              "(choose it with --text-field)")
        text = row[self.text_field]
        if not isinstance(text, str):
            raise CorpusError(f"--corpus: {path}, line {line}: field {self.text_field!r} holds "
                              f"{type(text).__name__}, not text")
        return text

    def _columns(self, source: Source) -> Iterator[str]:
        try:
            import pyarrow as pa
        except ImportError:
            raise CorpusError(f"--corpus: {source.path}: reading {source.kind} needs pyarrow (pip install pyarrow, "
                              "or electra-fast[data])") from None

        try:
            if source.kind == "parquet":
                import pyarrow.parquet as pq

                parquet = pq.ParquetFile(source.path)
                if self.text_field not in parquet.schema_arrow.names:
                    raise CorpusError(f"--corpus: {source.path} has no column {self.text_field!r} (it has "
                                      f"{', '.join(parquet.schema_arrow.names)}; choose with --text-field)")
                batches = parquet.iter_batches(batch_size=1024, columns=[self.text_field])
            else:
                reader = pa.ipc.open_stream(pa.memory_map(source.path))
                if self.text_field not in reader.schema.names:
                    raise CorpusError(f"--corpus: {source.path} has no column {self.text_field!r} (it has "
                                      f"{', '.join(reader.schema.names)}; choose with --text-field)")
                batches = reader
            for batch in batches:
                column = batch.column(self.text_field)
                if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                    raise CorpusError(f"--corpus: {source.path}: column {self.text_field!r} holds "
                                      f"{column.type}, not text")
                yield from (text for text in column.to_pylist() if text)
        except (pa.ArrowException, OSError) as e:
            raise CorpusError(f"--corpus: {source.path} is not a readable {source.kind} file "
                              f"({str(e).splitlines()[0]})") from None


class _BadLines:
    def __init__(self):
        self.count = 0


def _decompressed(raw, source: Source):
    try:
        if source.compression == ".zst":
            import zstandard

            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
        return _COMPRESSIONS[source.compression](raw)
    except ImportError:
        raise CorpusError(f"--corpus: {source.path}: reading .zst needs zstandard (pip install zstandard, or "
                          "electra-fast[data])") from None


def _pieces(stream, path: str, mode: str) -> Iterator[tuple[bytes, bool, int, int]]:
    """(bytes, starts_document, line number, byte offset). mode "line": every line is a document (its line end
    dropped), cut into pieces of at most PIECE_BYTES; "row": every line whole (a JSON row); "file": the whole
    stream is one document, cut into pieces of at most PIECE_BYTES at line ends (kept)."""
    line, offset, first = 1, 0, True
    carry = b""
    per_line = mode != "file"
    try:
        while True:
            if mode == "row":
                chunk = stream.readline()
            else:
                chunk = carry + (stream.readline(PIECE_BYTES - len(carry)) if per_line else
                                 stream.read(PIECE_BYTES - len(carry)))
            if not chunk:
                return
            ends_line = chunk.endswith(b"\n")
            cut = len(chunk) if ends_line or len(chunk) < PIECE_BYTES or mode == "row" else _cut(chunk, per_line)
            piece, carry = chunk[:cut], chunk[cut:]
            if per_line:
                yield piece.rstrip(b"\r\n"), first, line, offset
                first = ends_line
            else:
                yield piece, first, line, offset
                first = False
            line += piece.count(b"\n")
            offset += len(piece)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise CorpusError(f"--corpus: {path}: cannot decompress past byte {offset} ({e})") from None
    except Exception as e:  # zstandard raises its own ZstdError
        if type(e).__name__ == "ZstdError":
            raise CorpusError(f"--corpus: {path}: cannot decompress past byte {offset} ({e})") from None
        raise


def _cut(chunk: bytes, per_line: bool) -> int:
    """Where to end a full chunk: after its last line end (file mode), else after its last space or tab, else
    before a UTF-8 character that the chunk's end would split. These are ASCII bytes, never inside a character."""
    for separator in ((b"\n", b" ", b"\t") if not per_line else (b" ", b"\t")):
        at = chunk.rfind(separator)
        if at > 0:
            return at + 1
    at = len(chunk)
    while at > len(chunk) - 4 and chunk[at - 1] & 0xC0 == 0x80:  # continuation bytes 10xxxxxx
        at -= 1
    return at - 1 if chunk[at - 1] >= 0xC0 else at  # a lead byte whose continuation lies past the chunk


def _decoded(pieces, path: str, skip_bad_lines: bool, counter: _BadLines) -> Iterator[tuple[str, bool, int, int]]:
    for piece, starts, line, offset in pieces:
        try:
            yield piece.decode("utf-8"), starts, line, offset
            continue
        except UnicodeDecodeError:
            pass
        lines, kept = piece.split(b"\n"), []
        for number, text in enumerate(lines):
            try:
                kept.append(text.decode("utf-8"))
            except UnicodeDecodeError as e:
                if not skip_bad_lines:
                    at = offset + sum(len(t) + 1 for t in lines[:number]) + e.start
                    raise CorpusError(f"--corpus: {path}, line {line + number} (byte {at}): not UTF-8 text "
                                      "(--skip-bad-lines skips such lines)") from None
                counter.count += 1
        if kept:
            yield "\n".join(kept), starts, line, offset
