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

from ..errors import BadInput

PIECE_BYTES = 1 << 20
MAX_ROW_BYTES = 1 << 26  # a JSON Lines row is parsed whole; longer rows are refused rather than held
BUILTIN = "<python help topics>"
_COMPRESSIONS = {".gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"), ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile,
                 ".zst": None}
_ARCHIVES = (".tar", ".tgz", ".zip", ".7z")
_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}


class CorpusError(BadInput):
    """Unusable corpus input; the message names the file (and line or byte offset) and the problem."""


@dataclass(frozen=True)
class Source:
    """One input: `path` (absolute; "<python help topics>" for the built-in corpus), its `kind` ("text", "jsonl",
    "parquet", "arrow" or "builtin"), its `compression` (a suffix such as ".gz", or ""), its size on disk and
    modification time (ns), by which a changed file is told apart."""
    path: str
    kind: str
    compression: str
    size: int
    modified: int = 0


class Record(NamedTuple):
    text: str
    starts_document: bool  # False for the second and later pieces of one document, and for end markers
    source: int            # index of the source in the list read
    ordinal: int           # the record's number within its source
    bad_lines: int         # lines skipped as not UTF-8 in this source so far (the source's total on its end marker)
    end: bool = False      # the empty record that ends each source


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
            matches = _folder_files(path)
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


def _folder_files(folder: str) -> list[str]:
    """Every file below `folder` in sorted order, hidden files and folders skipped; a `datasets` folder inside
    contributes its Arrow files."""
    dataset = _dataset_files(folder)
    if dataset is not None:
        return dataset
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith("."):
            continue
        found.extend(_folder_files(path) if os.path.isdir(path) else [path] if os.path.isfile(path) else [])
    return found


def _source(path: str) -> Source:
    stem, compression = os.path.splitext(path)
    compression = compression.lower()
    if compression not in _COMPRESSIONS:
        stem, compression = path, ""
    if stem.lower().endswith(_ARCHIVES) or path.lower().endswith(_ARCHIVES):
        raise CorpusError(f"--corpus: {path} is an archive; unpack it and pass its files or folder")
    kind = _KINDS.get(os.path.splitext(stem)[1].lower(), "text")
    if compression and kind in ("parquet", "arrow"):
        raise CorpusError(f"--corpus: {path}: a {kind} file compressed as a whole cannot be streamed; "
                          f"decompress it ({kind} compresses its columns itself)")
    stat = os.stat(path)
    return Source(os.path.realpath(path), kind, compression, stat.st_size, stat.st_mtime_ns)


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
            for text, starts in self._documents(source, counter, lambda raw, base=done_before: base + raw, skip):
                if ordinal >= skip:
                    yield Record(text, starts, index, ordinal, counter.count)
                ordinal += 1
            if ordinal >= skip:
                yield Record("", False, index, ordinal, counter.count, end=True)
            self.bytes_read = done_before + source.size

    def _documents(self, source: Source, counter, progress, skip: int) -> Iterator[tuple[str | None, bool]]:
        """(text, starts_document) of each record of one source; the first `skip` records may come as
        (None, ...) unparsed, as a restart only counts them."""
        if source.kind == "builtin":
            from pydoc_data import topics

            yield from ((topics.topics[name], True) for name in sorted(topics.topics))
            return
        if source.kind in ("parquet", "arrow"):
            yield from ((text, True) for text in self._columns(source, skip))
            return
        with open(source.path, "rb") as raw:
            stream = raw if not source.compression else _decompressed(raw, source)
            mode = "row" if source.kind == "jsonl" else self.document_per
            lines = _pieces(stream, source.path, mode)
            counted = 0
            decoded = _decoded(lines, source.path, self.skip_bad_lines, counter, per_line=mode != "file")
            for text, starts, line in decoded:
                self.bytes_read = progress(raw.tell())
                if source.kind == "jsonl":
                    if not text.strip():
                        continue
                    text = None if counted < skip else self._json_text(text, source.path, line)
                counted += 1
                yield text, starts

    def _json_text(self, line_text: str, path: str, line: int) -> str:
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

    def _columns(self, source: Source, skip: int) -> Iterator[str | None]:
        """The text of every row ("" for a null), batches wholly before `skip` counted without being read."""
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
            rows = 0
            for batch in batches:
                column = batch.column(self.text_field)
                if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                    raise CorpusError(f"--corpus: {source.path}: column {self.text_field!r} holds "
                                      f"{column.type}, not text")
                rows += batch.num_rows
                if rows <= skip:
                    yield from (None for _ in range(batch.num_rows))
                else:
                    yield from (text or "" for text in column.to_pylist())
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
                chunk = stream.readline(MAX_ROW_BYTES + 1)
                if len(chunk) > MAX_ROW_BYTES:
                    raise CorpusError(f"--corpus: {path}, line {line}: a row longer than {MAX_ROW_BYTES:,} bytes "
                                      "(JSON Lines holds one document per line)")
            else:
                chunk = carry + (stream.readline(PIECE_BYTES - len(carry)) if per_line else
                                 stream.read(PIECE_BYTES - len(carry)))
            if not chunk:
                return
            ends_line = chunk.endswith(b"\n")
            cut = len(chunk) if ends_line or len(chunk) < PIECE_BYTES or mode == "row" else _cut(chunk, per_line)
            piece, carry = chunk[:cut], chunk[cut:]
            text = piece.rstrip(b"\r\n") if per_line else piece
            if text:  # an empty line, or a line end read apart from its line, is no piece
                yield text, first, line, offset
            first = ends_line if per_line else False
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


def _decoded(pieces, path: str, skip_bad_lines: bool, counter: _BadLines,
             per_line: bool) -> Iterator[tuple[str, bool, int]]:
    """(text, starts_document, line number) of the non-empty pieces, decoded from UTF-8. A line that is not UTF-8
    raises CorpusError naming its line and byte, or with skip_bad_lines is counted and skipped: per line, the rest
    of that line with it (pieces of it already given stay); in a whole file, the bad lines of the piece, a piece
    left empty handing its start of document to the next."""
    dropping_line = pending_start = False
    for piece, starts, line, offset in pieces:
        if dropping_line and not starts:
            continue
        dropping_line, starts = False, starts or pending_start
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            lines, kept = piece.split(b"\n"), []
            for number, part in enumerate(lines):
                try:
                    kept.append(part.decode("utf-8"))
                except UnicodeDecodeError as bad:
                    if not skip_bad_lines:
                        at = offset + sum(len(t) + 1 for t in lines[:number]) + bad.start
                        raise CorpusError(f"--corpus: {path}, line {line + number} (byte {at}): not UTF-8 text "
                                          "(--skip-bad-lines skips such lines)") from None
                    counter.count += 1
            dropping_line = per_line
            text = "" if per_line else "\n".join(kept)
        pending_start = starts and not text and not per_line
        if text:
            yield text, starts, line
