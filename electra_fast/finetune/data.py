"""Fine-tuning data: readers for the three tasks' files, and their encoding into model inputs.

- Classification and regression: CSV, TSV (GLUE's files as they are: tab-separated, no quoting) or JSON Lines;
  one or two text columns and a label column. A row whose field count differs from the header's is an error, or,
  on request, skipped and counted (GLUE's QQP has such rows: a TSV without quoting cannot hold a tab or a line
  break inside a text). Labels that are all numbers, one of them written with a decimal
  point or an exponent (STS-B's "3.800"), make the task a regression.
- Token classification: CoNLL-2003-style files: one token per line with its BIO (IOB2) tag in chosen
  whitespace-separated columns, a blank line between sentences, `-DOCSTART-` lines skipped. A word's tag goes
  on its first sub-token; the other sub-tokens are ignored (-100).
- Question answering: SQuAD v1.1 and v2.0 JSON. Question + context are cut into windows of the context that
  overlap by `doc_stride` tokens; a training window's label is the answer's first and last token, or [CLS] (0)
  when the question has no answer or the answer is not inside the window. Predictions are mapped back to the
  original context through the tokenizer's character offsets.

Every reader raises FinetuneDataError naming the file and line of bad input.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Sequence

from ..errors import BadInput

IGNORE = -100  # label of positions that carry no loss (transformers' and torch's ignore_index)


class FinetuneDataError(BadInput):
    """Unusable fine-tuning input; the message names the file (and line) and the problem."""


# ------------------------------------------------------------------------------------------------------ tables

@dataclass
class TextExample:
    texts: tuple[str, ...]   # one text, or a pair
    label: str               # as written; numbers from JSON as JSON writes them ("1", "3.8")
    line: int


def table_format(path: str) -> str:
    """'csv', 'tsv' or 'jsonl', from the file name's extension (.csv; .tsv or .txt; .jsonl, .json or .ndjson)."""
    extension = os.path.splitext(path)[1].lower()
    formats = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
    if extension not in formats:
        raise FinetuneDataError(f"{path}: unknown table format {extension!r} (expected .csv, .tsv or .jsonl)")
    return formats[extension]


def _open(path: str, **kwargs):
    try:  # utf-8-sig: a leading byte-order mark (as some Windows tools write) is not part of the first column's name
        return open(path, encoding="utf-8-sig", **kwargs)
    except OSError as e:
        raise FinetuneDataError(f"{path}: cannot read ({e.strerror or e})") from None


def _not_utf8(path: str, line: int) -> FinetuneDataError:
    return FinetuneDataError(f"{path} line {line}: not UTF-8 text")


def _rows(path: str, kind: str, header: bool, skipped: list[int] | None = None):
    """(line number, {column: value}) of each non-blank record; columns are header names, or "0", "1", ... when
    `header` is False. Raises FinetuneDataError for a malformed line, and for a field count that differs unless
    `skipped` is a list: then such a row's line number is appended to it and the row left out."""
    if kind == "jsonl":
        with _open(path) as f:
            number = 0
            try:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise FinetuneDataError(f"{path} line {number}: malformed JSON ({e.msg})") from None
                    if not isinstance(record, dict):
                        raise FinetuneDataError(f"{path} line {number}: expected a JSON object, got "
                                                f"{type(record).__name__}")
                    yield number, {k: v if isinstance(v, str) else json.dumps(v) for k, v in record.items()}
            except UnicodeDecodeError:
                raise _not_utf8(path, number + 1) from None
        return
    csv.field_size_limit(sys.maxsize if sys.maxsize < 2**63 else 2**31 - 1)
    options = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if kind == "tsv" else dict(strict=True)
    with _open(path, newline="") as f:
        reader = csv.reader(f, **options)
        names = None
        try:
            for fields in reader:
                if not fields or fields == [""]:
                    continue
                if names is None and header:
                    names = fields
                    continue
                if names is None:
                    names = [str(i) for i in range(len(fields))]
                if len(fields) != len(names):
                    if skipped is not None:
                        skipped.append(reader.line_num)
                        continue
                    raise FinetuneDataError(f"{path} line {reader.line_num}: {len(fields)} fields, expected "
                                            f"{len(names)} ({'the header' if header else 'the first line'}'s)")
                yield reader.line_num, dict(zip(names, fields, strict=True))
        except csv.Error as e:
            raise FinetuneDataError(f"{path} line {reader.line_num}: malformed {kind.upper()} ({e})") from None
        except UnicodeDecodeError:
            raise _not_utf8(path, reader.line_num + 1) from None


def first_fields(path: str) -> list[str]:
    """The tab-separated fields of a file's first line (a TSV's header), without reading the rest."""
    with _open(path, newline="") as f:
        try:
            return f.readline().rstrip("\r\n").split("\t")
        except UnicodeDecodeError:
            raise _not_utf8(path, 1) from None


def read_table(path: str, text_columns: Sequence[str], label_column: str, *, header: bool = True,
               skipped: list[int] | None = None) -> list[TextExample]:
    """The examples of a CSV / TSV / JSON Lines file. Columns are names from the header (JSON keys), or 0-based
    indices when `header` is False. `skipped`: see `_rows` (rows of a wrong field count are left out and their
    line numbers appended, instead of an error)."""
    if len(text_columns) not in (1, 2):
        raise FinetuneDataError(f"--text-columns: one column, or two for pairs, got {len(text_columns)}")
    examples = []
    for line, row in _rows(path, table_format(path), header, skipped):
        missing = [c for c in (*text_columns, label_column) if c not in row]
        if missing:
            raise FinetuneDataError(f"{path} line {line}: no column {missing[0]!r} (columns: {', '.join(row)})")
        label = row[label_column].strip()
        if not label or label == "null":
            raise FinetuneDataError(f"{path} line {line}: empty label in column {label_column!r}")
        examples.append(TextExample(tuple(row[c] for c in text_columns), label, line))
    if not examples:
        raise FinetuneDataError(f"{path}: no examples (the file is empty)")
    return examples


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def is_number(label: str) -> bool:
    return bool(_NUMBER.fullmatch(label))


def is_regression(labels: Sequence[str]) -> bool:
    """True when every label is a number and one is written as a float (a decimal point or an exponent)."""
    return (all(is_number(label) for label in labels)
            and any(not label.lstrip("+-").isdigit() for label in labels))


def check_labels(labelled: Sequence[tuple[str, int]], known: Sequence[str], path: str) -> None:
    """Raises FinetuneDataError at the first (label, line) of `path` whose label is not in `known` (the training
    file's labels)."""
    allowed = set(known)
    for label, line in labelled:
        if label not in allowed:
            raise FinetuneDataError(f"{path} line {line}: label {label!r} never occurs in the training file")


# ------------------------------------------------------------------------------------------------------- CoNLL

@dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    lines: list[int]   # of each token


_TAG = re.compile(r"O|[BI]-\S+")


def read_conll(path: str, *, token_column: int = 0, tag_column: int = -1) -> list[Sentence]:
    """The sentences of a CoNLL-2003-style file (columns separated by whitespace; 0-based indices, negative from
    the end). Tags must be O, B-TYPE or I-TYPE."""
    sentences, current = [], None
    with _open(path) as f:
        number = 0
        try:
            for number, line in enumerate(f, 1):
                fields = line.split()
                if not fields or fields[0] == "-DOCSTART-":
                    current = None
                    continue
                try:
                    if len(fields) < 2:
                        raise IndexError
                    word, tag = fields[token_column], fields[tag_column]
                except IndexError:
                    raise FinetuneDataError(f"{path} line {number}: {len(fields)} column(s), but --token-column is "
                                            f"{token_column} and --tag-column {tag_column}") from None
                if not _TAG.fullmatch(tag):
                    raise FinetuneDataError(f"{path} line {number}: tag {tag!r} is not BIO (O, B-TYPE or I-TYPE)")
                if current is None:
                    current = Sentence([], [], [])
                    sentences.append(current)
                current.words.append(word)
                current.tags.append(tag)
                current.lines.append(number)
        except UnicodeDecodeError:
            raise _not_utf8(path, number + 1) from None
    if not sentences:
        raise FinetuneDataError(f"{path}: no sentences (the file is empty)")
    return sentences


# ------------------------------------------------------------------------------------------------------- SQuAD

@dataclass
class Question:
    qid: str
    question: str
    context: str
    answers: list[tuple[str, int]]   # (text, character offset in context); empty: no answer (v2.0)
    line: int


class _Lines:
    """The line of each question id in the file's text, found by scanning forward from the previous one (ids come
    in file order), so that locating every id costs one pass, not one pass each."""

    def __init__(self, raw: str):
        self.raw, self.at, self.line = raw, 0, 1

    def of(self, needle: str) -> int:
        at = self.raw.find(needle, self.at)
        if at < 0:  # out of order: count from the start
            at = self.raw.find(needle)
            return self.raw.count("\n", 0, at) + 1 if at >= 0 else 1
        self.line += self.raw.count("\n", self.at, at)
        self.at = at
        return self.line


def read_squad(path: str) -> tuple[list[Question], bool]:
    """The questions of a SQuAD v1.1 / v2.0 file and whether it is v2.0 (a question marked is_impossible, or
    version "v2.0"). Checks that each answer's text is at its offset in the context."""
    with _open(path) as f:
        try:
            raw = f.read()
        except UnicodeDecodeError:
            raise FinetuneDataError(f"{path}: not UTF-8 text") from None
    if not raw.strip():
        raise FinetuneDataError(f"{path}: the file is empty")
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as e:
        raise FinetuneDataError(f"{path} line {e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise FinetuneDataError(f"{path} line 1: not SQuAD JSON (no 'data' list)")
    questions, v2 = [], str(document.get("version", "")).startswith("v2")
    lines = _Lines(raw)
    try:
        for article in document["data"]:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    qid = str(qa["id"])
                    line = lines.of(json.dumps(qid))
                    impossible = bool(qa.get("is_impossible", False))
                    v2 = v2 or "is_impossible" in qa
                    answers = [] if impossible else [(a["text"], int(a["answer_start"])) for a in qa["answers"]]
                    for text, start in answers:
                        if context[start:start + len(text)] != text:
                            raise FinetuneDataError(f"{path} line {line}: question {qid!r}: the answer {text!r} is "
                                                    f"not at offset {start} of its context")
                    questions.append(Question(qid, qa["question"], context, answers, line))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, FinetuneDataError):
            raise
        where = lines.of(json.dumps(qid)) if "qid" in locals() else 1
        raise FinetuneDataError(f"{path} line {where}: not SQuAD JSON (missing or wrong field: {e})") from None
    if not questions:
        raise FinetuneDataError(f"{path}: no questions (the file is empty)")
    no_answer = [q for q in questions if not q.answers]
    if no_answer and not v2:
        raise FinetuneDataError(f"{path} line {no_answer[0].line}: question {no_answer[0].qid!r} has no answer, "
                                "but the file is not SQuAD v2.0 (no is_impossible)")
    return questions, v2


# ---------------------------------------------------------------------------------------------------- encoding
# Features are dicts of Python lists: input_ids, token_type_ids, and the task's labels; `collate` pads a batch.

def encode_texts(tokenizer, examples: Sequence[TextExample], max_length: int) -> tuple[list[dict], int]:
    """(features with input_ids and token_type_ids cut to max_length, how many texts were cut)."""
    columns = list(zip(*(e.texts for e in examples), strict=True))
    whole = tokenizer(*columns, truncation=False)["input_ids"]
    cut = tokenizer(*columns, truncation=True, max_length=max_length, return_token_type_ids=True)
    features = [{"input_ids": ids, "token_type_ids": types}
                for ids, types in zip(cut["input_ids"], cut["token_type_ids"], strict=True)]
    return features, sum(len(ids) > max_length for ids in whole)


def encode_sentences(tokenizer, sentences: Sequence[Sentence], tag_ids: dict[str, int] | None,
                     max_length: int) -> tuple[list[dict], int]:
    """(features, how many sentences were cut). Each feature has `first_token` [words]: the position of each
    word's first sub-token, -1 for a word cut off; with tag_ids also `labels`, the tag id there and -100
    elsewhere."""
    words = [s.words for s in sentences]
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                        return_token_type_ids=True)
    features, cut = [], 0
    for i, sentence in enumerate(sentences):
        first_token = [-1] * len(sentence.words)
        for position, word in enumerate(encoded.word_ids(i)):
            if word is not None and first_token[word] < 0:
                first_token[word] = position
        cut += any(p < 0 for p in first_token)
        feature = {"input_ids": encoded["input_ids"][i], "token_type_ids": encoded["token_type_ids"][i],
                   "first_token": first_token}
        if tag_ids is not None:
            labels = [IGNORE] * len(feature["input_ids"])
            for tag, position in zip(sentence.tags, first_token, strict=True):
                if position >= 0:
                    labels[position] = tag_ids[tag]
            feature["labels"] = labels
        features.append(feature)
    return features, cut


def encode_questions(tokenizer, questions: Sequence[Question], *, max_length: int, doc_stride: int,
                     max_query_length: int = 64) -> tuple[list[dict], int]:
    """(windows, how many questions needed more than one). Each window has input_ids, token_type_ids,
    `example` (its question's index), `offsets` (each token's (start, end) characters in the context, None
    outside the context) and start_positions / end_positions: the first answer's first and last token when the
    window holds all of it, else 0 ([CLS]). Questions longer than max_query_length tokens are cut."""
    texts = []
    for q in questions:
        offsets = tokenizer(q.question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        texts.append(q.question[:offsets[max_query_length - 1][1]] if len(offsets) > max_query_length else q.question)
    try:
        encoded = tokenizer(texts, [q.context for q in questions], truncation="only_second", max_length=max_length,
                            stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                            return_token_type_ids=True)
    except Exception as e:  # the tokenizer refuses a stride that leaves no room to advance
        raise FinetuneDataError(f"--doc-stride {doc_stride} / --max-length {max_length}: cannot cut the contexts "
                                f"into windows ({str(e).splitlines()[0]})") from None
    windows, per_question = [], [0] * len(questions)
    for w, example in enumerate(encoded["overflow_to_sample_mapping"]):
        per_question[example] += 1
        sequence = encoded.sequence_ids(w)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(encoded["offset_mapping"][w], sequence, strict=True)]
        start = end = 0
        answers = questions[example].answers
        if answers:
            text, first_char = answers[0]
            last_char = first_char + len(text)  # exclusive
            inside = [i for i, o in enumerate(offsets) if o is not None]
            if offsets[inside[0]][0] <= first_char and offsets[inside[-1]][1] >= last_char:
                start = next(i for i in inside if offsets[i][1] > first_char)
                end = next(i for i in reversed(inside) if offsets[i][0] < last_char)
        windows.append({"input_ids": encoded["input_ids"][w], "token_type_ids": encoded["token_type_ids"][w],
                        "example": example, "offsets": offsets, "start_positions": start, "end_positions": end})
    return windows, sum(n > 1 for n in per_question)


def best_answers(questions: Sequence[Question], windows: Sequence[dict], start_logits, end_logits, *,
                 v2: bool, n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """question id -> predicted answer text, cut from the original context through the offsets.

    For each window the n_best start and end tokens inside the context form candidate spans (end ≥ start,
    at most max_answer_length tokens), scored start logit + end logit; the best over a question's windows wins.
    For v2.0 the answer is "" (no answer) when the lowest [CLS] score of its windows beats the best span.
    `start_logits` / `end_logits`: one float sequence per window."""
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for window, starts, ends in zip(windows, start_logits, end_logits, strict=True):
        example, offsets = window["example"], window["offsets"]
        null[example] = min(null.get(example, float("inf")), starts[0] + ends[0])
        context = [i for i, o in enumerate(offsets) if o is not None]
        top_starts = sorted(context, key=lambda i: -starts[i])[:n_best]
        top_ends = sorted(context, key=lambda i: -ends[i])[:n_best]
        for s in top_starts:
            for e in top_ends:
                if s <= e < s + max_answer_length:
                    score = starts[s] + ends[e]
                    if example not in best or score > best[example][0]:
                        best[example] = (score, questions[example].context[offsets[s][0]:offsets[e][1]])
    answers = {}
    for example, q in enumerate(questions):
        score, text = best.get(example, (float("-inf"), ""))
        answers[q.qid] = "" if v2 and null.get(example, float("-inf")) > score else text
    return answers


def collate(features: Sequence[dict], pad_id: int, label_keys: Sequence[str]) -> dict:
    """A padded batch of int64 tensors [B, T]: input_ids (pad_id), attention_mask, token_type_ids, and each key
    of `label_keys` present in the features ([B, T] padded with -100 for per-token lists, [B] for scalars)."""
    import torch

    width = max(len(f["input_ids"]) for f in features)

    def pad(key, value):
        return torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features], dtype=torch.int64)

    batch = {"input_ids": pad("input_ids", pad_id), "token_type_ids": pad("token_type_ids", 0),
             "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                             for f in features], dtype=torch.int64)}
    for key in label_keys:
        if key in features[0]:
            first = features[0][key]
            batch[key] = (pad(key, IGNORE) if isinstance(first, list)
                          else torch.tensor([f[key] for f in features],
                                            dtype=torch.float32 if isinstance(first, float) else torch.int64))
    return batch
