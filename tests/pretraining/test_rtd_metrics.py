"""The discriminator's metrics (electra_fast.pretraining.rtd_metrics) against scikit-learn's."""
import math

import pytest
import torch

from electra_fast.pretraining import rtd_metrics

sklearn = pytest.importorskip("sklearn.metrics")


def _scores(n, separation, spread, seed, replaced_share=0.15):
    """float32 logits [n] and bool labels [n]: real tokens around -1, replaced ones `separation` higher."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(n, generator=g) < replaced_share
    logits = -1.0 + separation * labels.double() + spread * torch.randn(n, generator=g, dtype=torch.float64)
    return logits.float(), labels


def _sklearn(logits, labels):
    y, s = labels.numpy(), logits.double().numpy()
    predicted = s > 0
    return {"auc": sklearn.roc_auc_score(y, s),
            "precision": sklearn.precision_score(y, predicted, zero_division=math.nan),
            "recall": sklearn.recall_score(y, predicted), "accuracy": sklearn.accuracy_score(y, predicted)}


def _histogram(logits, labels):
    return rtd_metrics.logit_histogram(logits, labels, torch.ones_like(labels))


CASES = [(20_000, 0.0, 1.0), (20_000, 0.3, 1.0), (20_000, 1.5, 1.0), (20_000, 5.0, 2.0), (5_001, 0.02, 0.05),
         (7_777, 8.0, 25.0)]  # the last: a fifth of the logits beyond the histogram's range


@pytest.mark.parametrize("n, separation, spread", CASES)
def test_exact_metrics_equal_sklearns(n, separation, spread):
    logits, labels = _scores(n, separation, spread, seed=n)
    if separation < 0.1:  # also ties, and logits exactly 0
        logits = (logits * 20).round() / 20 + 1
    ours, truth = rtd_metrics.exact(logits, labels), _sklearn(logits, labels)
    for name in truth:
        assert ours[name] == pytest.approx(truth[name], abs=1e-12, nan_ok=True), name


@pytest.mark.parametrize("n, separation, spread", CASES)
def test_histogram_auc_is_within_0_005_of_sklearns_and_the_rest_exact(n, separation, spread):
    logits, labels = _scores(n, separation, spread, seed=n + 1)
    ours, truth = rtd_metrics.from_histogram(_histogram(logits, labels)), _sklearn(logits, labels)
    assert abs(ours["auc"] - truth["auc"]) <= 0.005
    for name in ("precision", "recall"):
        assert ours[name] == pytest.approx(truth[name], abs=1e-12, nan_ok=True), name


def test_the_histogram_bins_are_half_open_intervals_and_zero_an_edge():
    # Logits inside bins (a quarter-width from each edge, so float32 rounding cannot move them), at edges, at
    # and around 0, and beyond the range.
    g = torch.Generator().manual_seed(0)
    chosen = torch.randint(0, rtd_metrics.BINS, (3000,), generator=g)
    inside = rtd_metrics.LOW + (chosen + 0.25 + 0.5 * torch.rand(3000, generator=g, dtype=torch.float64)) \
        * rtd_metrics.WIDTH
    edges = torch.tensor([-1e-30, 0.0, 1e-30, 1e-7, -1e-7, rtd_metrics.WIDTH, -90.0, 90.0, 32.0, -32.0],
                         dtype=torch.float64)
    logits = torch.cat([inside, edges])
    labels = torch.rand(len(logits), generator=g) < 0.3
    interior = torch.linspace(rtd_metrics.LOW, rtd_metrics.HIGH, rtd_metrics.BINS + 1, dtype=torch.float64)[1:-1]
    expected_bin = torch.bucketize(logits, interior)  # bin i holds (edge i, edge i + 1]
    expected = torch.zeros(2, rtd_metrics.BINS, dtype=torch.long)
    expected.index_put_((labels.long(), expected_bin), torch.ones_like(expected_bin), accumulate=True)
    histogram = _histogram(logits.float(), labels)
    assert torch.equal(histogram, expected)
    halves = _histogram(logits[:1500].float(), labels[:1500]) + _histogram(logits[1500:].float(), labels[1500:])
    assert torch.equal(halves, histogram)  # counts add up over micro-batches and processes
    ignored = rtd_metrics.logit_histogram(logits.float(), labels, torch.arange(len(logits)) % 2)
    assert ignored.sum() == len(logits) // 2  # weight 0 is not counted
    for name in ("precision", "recall"):  # the edge cases land on the right side of 0
        assert rtd_metrics.from_histogram(histogram)[name] == pytest.approx(
            rtd_metrics.exact(logits, labels)[name], abs=1e-12)


def test_a_missing_class_gives_nan_not_a_number_that_looks_real():
    logits, labels = _scores(100, 1.0, 1.0, seed=3, replaced_share=0.0)
    assert (logits > 0).any() and not labels.any()
    for metrics in (rtd_metrics.exact(logits, labels), rtd_metrics.from_histogram(_histogram(logits, labels))):
        assert math.isnan(metrics["auc"]) and math.isnan(metrics["recall"])
        assert metrics["precision"] == 0.0  # every token predicted replaced is real
    assert rtd_metrics.exact(logits, labels)["accuracy"] == pytest.approx((logits <= 0).double().mean().item())


def test_nan_logits_are_left_out_of_the_histogram_and_make_the_exact_metrics_nan():
    logits = torch.tensor([[float("nan"), 1.0, -1.0, float("inf"), -float("inf")]])
    labels = torch.tensor([[True, True, False, True, False]])
    weight = torch.tensor([[0, 1, 1, 1, 1]])
    histogram = rtd_metrics.logit_histogram(logits, labels, weight)
    assert histogram.sum() == 4 and histogram[1, -1] == 1 and histogram[0, 0] == 1  # inf in the end bins
    assert rtd_metrics.from_histogram(rtd_metrics.logit_histogram(logits, labels, torch.ones_like(weight)))[
        "auc"] == 1.0  # the NaN token, counted nowhere
    assert all(math.isnan(v) for v in rtd_metrics.exact(logits, labels).values())
