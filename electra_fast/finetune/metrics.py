"""The downstream metrics, as pure functions of Python lists (no torch).

- Classification: accuracy, F1 (binary, of one positive label; macro over labels), Matthews correlation (the
  multi-class form of Gorodkin, 2004, which is the binary MCC for two labels).
- Regression: Pearson and Spearman correlation (Spearman = Pearson of ranks, ties sharing their average rank).
- Named entities: entity-level precision, recall and F1 over exact spans, chunks read from BIO tags as conlleval
  reads them (an I- tag whose predecessor is O or of another type starts a new entity).
- SQuAD: exact match and F1 after the official normalisation, the maximum over the gold answers; for v2.0 an
  empty prediction means "no answer" and scores 1 only on a question without one.
"""
from __future__ import annotations

import collections
import math
import re
import string
from typing import Hashable, Sequence

# What each kind of task reports (classification's f1 only for two labels), the choices of FinetuneOptions.metric.
NAMES = {"classification": ("accuracy", "macro_f1", "mcc", "f1"), "regression": ("pearson", "spearman", "mse"),
         "token-classification": ("precision", "recall", "f1", "token_accuracy"),
         "question-answering": ("exact_match", "f1")}


def accuracy(gold: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold) if gold else 0.0


def _f1(true_positives: int, predicted: int, actual: int) -> tuple[float, float, float]:
    """(precision, recall, F1) from counts; 0 where a denominator is 0."""
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def f1_of_label(gold: Sequence[Hashable], predicted: Sequence[Hashable], positive: Hashable) -> float:
    """F1 of one label taken as the positive class (GLUE's F1 for MRPC and QQP: positive = 1)."""
    tp = sum(g == positive and p == positive for g, p in zip(gold, predicted, strict=True))
    return _f1(tp, sum(p == positive for p in predicted), sum(g == positive for g in gold))[2]


def macro_f1(gold: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Unweighted mean of every label's F1, over the labels present in gold or predicted."""
    labels = set(gold) | set(predicted)
    return sum(f1_of_label(gold, predicted, label) for label in labels) / len(labels) if labels else 0.0


def matthews_correlation(gold: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """(n·c − Σ_k p_k t_k) / sqrt((n² − Σ p_k²)(n² − Σ t_k²)), c correct, p_k / t_k the predicted / true counts
    of label k; 0 when either side is constant."""
    n = len(gold)
    correct = sum(g == p for g, p in zip(gold, predicted, strict=True))
    true_counts, predicted_counts = collections.Counter(gold), collections.Counter(predicted)
    labels = set(true_counts) | set(predicted_counts)
    covariance = n * correct - sum(true_counts[k] * predicted_counts[k] for k in labels)
    spread_predicted = n * n - sum(v * v for v in predicted_counts.values())
    spread_true = n * n - sum(v * v for v in true_counts.values())
    if spread_predicted == 0 or spread_true == 0:
        return 0.0
    return covariance / math.sqrt(spread_predicted * spread_true)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; 0 when either side is constant."""
    n = len(x)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    dx, dy = [v - mean_x for v in x], [v - mean_y for v in y]
    spread = math.sqrt(sum(v * v for v in dx) * sum(v * v for v in dy))
    return sum(a * b for a, b in zip(dx, dy, strict=True)) / spread if spread else 0.0


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(_ranks(x), _ranks(y))


def classification_metrics(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict:
    """accuracy, macro_f1, mcc; with two labels also f1 of the label that sorts last (GLUE's "1")."""
    scores = {"accuracy": accuracy(gold, predicted), "macro_f1": macro_f1(gold, predicted),
              "mcc": matthews_correlation(gold, predicted)}
    if len(labels) == 2:
        scores["f1"] = f1_of_label(gold, predicted, sorted(labels)[-1])
    return scores


def regression_metrics(gold: Sequence[float], predicted: Sequence[float]) -> dict:
    return {"pearson": pearson(gold, predicted), "spearman": spearman(gold, predicted),
            "mse": sum((g - p) ** 2 for g, p in zip(gold, predicted, strict=True)) / len(gold)}


# ---------------------------------------------------------------------------------------------------- entities

def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entities of one sentence's BIO tags as (type, first, last) token indices, read as conlleval reads
    them: B-X starts an entity; I-X continues the open entity of type X, or starts one when there is none (after
    O, or after another type); O closes it."""
    found, open_type, open_start = set(), None, 0
    for i, tag in enumerate(tags):
        prefix, _, kind = tag.partition("-")
        continues = prefix == "I" and kind == open_type
        if open_type is not None and not continues:
            found.add((open_type, open_start, i - 1))
            open_type = None
        if prefix in ("B", "I") and not continues:
            open_type, open_start = kind, i
    if open_type is not None:
        found.add((open_type, open_start, len(tags) - 1))
    return found


def entity_metrics(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision, recall and F1 (exact type and span) over sentences of BIO tags, and the share of
    tokens tagged right."""
    tp = n_predicted = n_gold = right = tokens = 0
    for gold_tags, predicted_tags in zip(gold, predicted, strict=True):
        gold_entities, predicted_entities = entities(gold_tags), entities(predicted_tags)
        tp += len(gold_entities & predicted_entities)
        n_predicted += len(predicted_entities)
        n_gold += len(gold_entities)
        right += sum(g == p for g, p in zip(gold_tags, predicted_tags, strict=True))
        tokens += len(gold_tags)
    precision, recall, f1 = _f1(tp, n_predicted, n_gold)
    return {"precision": precision, "recall": recall, "f1": f1, "token_accuracy": right / tokens if tokens else 0.0}


# ------------------------------------------------------------------------------------------------------- SQuAD

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation removed, the articles a/an/the removed, whitespace
    collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(gold: str, predicted: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(predicted))


def token_f1(gold: str, predicted: str) -> float:
    """F1 of the normalised answers' word bags; where either is empty (no answer), 1 if both are, else 0."""
    gold_tokens, predicted_tokens = normalize_answer(gold).split(), normalize_answer(predicted).split()
    if not gold_tokens or not predicted_tokens:
        return float(gold_tokens == predicted_tokens)
    common = sum((collections.Counter(gold_tokens) & collections.Counter(predicted_tokens)).values())
    return _f1(common, len(predicted_tokens), len(gold_tokens))[2]


def squad_metrics(gold_answers: dict[str, Sequence[str]], predictions: dict[str, str]) -> dict:
    """exact_match and f1 in percent over the questions of `gold_answers` (question id -> answer texts; empty
    for a question without an answer, SQuAD v2.0), each the maximum over the gold answers. A missing prediction
    counts as no answer. With both kinds of question, also the HasAns_ and NoAns_ splits."""
    exact, f1, has_answer = {}, {}, {}
    for qid, answers in gold_answers.items():
        references = [a for a in answers if normalize_answer(a)] or [""]
        predicted = predictions.get(qid, "")
        exact[qid] = max(exact_match(a, predicted) for a in references)
        f1[qid] = max(token_f1(a, predicted) for a in references)
        has_answer[qid] = references != [""]
    scores = {"exact_match": 100 * sum(exact.values()) / len(exact), "f1": 100 * sum(f1.values()) / len(f1),
              "total": len(exact)}
    for name, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [qid for qid in exact if has_answer[qid] == wanted]
        if ids and len(ids) < len(exact):
            scores[f"{name}_exact_match"] = 100 * sum(exact[q] for q in ids) / len(ids)
            scores[f"{name}_f1"] = 100 * sum(f1[q] for q in ids) / len(ids)
            scores[f"{name}_total"] = len(ids)
    return scores
