"""The fine-tuning metrics: hand-worked cases, then agreement with scikit-learn, SciPy and seqeval on random ones."""
import random

import pytest

from electra_fast.finetune import metrics


def test_classification_metrics_by_hand():
    gold = list("aabbbc")
    predicted = list("abbbcc")
    # a: tp 1 of 1 predicted, 2 gold -> F1 2/3; b: 2 of 3, 3 -> 2/3; c: 1 of 2, 1 -> 2/3
    assert metrics.accuracy(gold, predicted) == pytest.approx(4 / 6)
    assert metrics.macro_f1(gold, predicted) == pytest.approx(2 / 3)
    # n = 6, correct 4, true counts (2, 3, 1), predicted (1, 3, 2): (24 - 13) / sqrt(22 * 22)
    assert metrics.matthews_correlation(gold, predicted) == pytest.approx(0.5)
    gold, predicted = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]   # tp 2, fp 1, fn 1, tn 1
    assert metrics.f1_of_label(gold, predicted, 1) == pytest.approx(2 / 3)
    assert metrics.matthews_correlation(gold, predicted) == pytest.approx((2 * 1 - 1 * 1) / (3 * 3 * 2 * 2) ** 0.5)
    assert metrics.matthews_correlation([0, 1, 0], [1, 1, 1]) == 0.0   # a constant prediction
    scores = metrics.classification_metrics(["0", "1", "1"], ["1", "1", "1"], ["0", "1"])
    assert scores["f1"] == pytest.approx(0.8) and scores["accuracy"] == pytest.approx(2 / 3)


def test_correlations_by_hand():
    # deviations (-1.5, -.5, .5, 1.5) and (-3, -1, 0, 4): 11 / sqrt(5 * 26)
    assert metrics.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / 130 ** 0.5)
    # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5)
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / 10 ** 0.5)
    assert metrics.spearman([1, 2, 3], [10, 20, 1000]) == pytest.approx(1.0)
    assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_entities_are_read_as_conlleval_reads_them():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "O", "B-MISC"]
    assert metrics.entities(tags) == {("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("ORG", 6, 6), ("MISC", 8, 8)}
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-MISC"]]
    # exact spans: PER 0-1 is predicted 0-0 (wrong); LOC and ORG right; MISC spurious -> 2 of 4 predicted, 2 of 3
    scores = metrics.entity_metrics(gold, predicted)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(4 / 7) and scores["token_accuracy"] == pytest.approx(4 / 6)


def test_squad_metrics_by_hand():
    assert metrics.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert metrics.normalize_answer("an apple; a theory") == "apple theory"
    assert metrics.exact_match("the Eiffel Tower", "Eiffel tower.") == 1.0
    # "cat sat on mat" against "cat on mat": 3 common, precision 1, recall 3/4
    assert metrics.token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    gold = {"q1": ["Denver Broncos", "The Denver Broncos"], "q2": [], "q3": ["1990"], "q4": []}
    predicted = {"q1": "Broncos", "q2": "", "q3": "in 1990", "q4": "Denver"}
    scores = metrics.squad_metrics(gold, predicted)
    # q1: EM 0, F1 2/3; q2: no answer, right: 1, 1; q3: EM 0, F1 2/3; q4: an answer where there is none: 0, 0
    assert scores["exact_match"] == pytest.approx(100 * 1 / 4)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 1 + 2 / 3 + 0) / 4)
    assert scores["HasAns_f1"] == pytest.approx(100 * 2 / 3) and scores["HasAns_exact_match"] == 0
    assert scores["NoAns_exact_match"] == pytest.approx(50) and scores["NoAns_total"] == 2
    only_answers = metrics.squad_metrics({"q1": ["1990"]}, {})   # a missing prediction is no answer
    assert only_answers["f1"] == 0 and "HasAns_f1" not in only_answers


@pytest.mark.parametrize("seed", range(5))
def test_classification_and_correlations_agree_with_scikit_learn_and_scipy(seed):
    sklearn = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(seed)
    n, k = rng.randint(2, 60), rng.randint(2, 5)
    gold = [rng.randrange(k) for _ in range(n)]
    predicted = [g if rng.random() < 0.5 else rng.randrange(k) for g in gold]
    assert metrics.accuracy(gold, predicted) == pytest.approx(sklearn.accuracy_score(gold, predicted))
    assert metrics.macro_f1(gold, predicted) == pytest.approx(
        sklearn.f1_score(gold, predicted, average="macro", zero_division=0))
    assert metrics.f1_of_label(gold, predicted, 1) == pytest.approx(
        sklearn.f1_score(gold, predicted, labels=[1], average="macro", zero_division=0))
    assert metrics.matthews_correlation(gold, predicted) == pytest.approx(sklearn.matthews_corrcoef(gold, predicted))
    x = [rng.choice([rng.random(), 0.5, 1.0]) for _ in range(n)]   # with ties
    y = [v + rng.gauss(0, 0.3) if rng.random() < 0.8 else rng.random() for v in x]
    if len(set(x)) > 1:
        assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-9)
        assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_entity_scores_agree_with_seqeval(seed):
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = random.Random(seed)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]   # I- after O or another type included

    def sentence(n):
        return [rng.choice(tags) for _ in range(n)]

    gold = [sentence(rng.randint(1, 12)) for _ in range(30)]
    predicted = [[t if rng.random() < 0.6 else rng.choice(tags) for t in s] for s in gold]
    ours = metrics.entity_metrics(gold, predicted)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, predicted))
    assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, predicted))
    assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, predicted))
    assert ours["token_accuracy"] == pytest.approx(seqeval.accuracy_score(gold, predicted))
