"""The discriminator's metrics as Google's ELECTRA reports them: AUC, precision, recall and accuracy, with
"replaced" the positive class and a logit above 0 the prediction "replaced".

In training they come from a fixed-bin histogram of the logits per class, summed on the device over micro-batches
and processes (no host sync inside the step, static shapes under torch.compile and CUDA graphs). In validation
they are exact, over every scored token."""
import math

import torch

# Bin b holds the logits in (LOW + b * WIDTH, LOW + (b + 1) * WIDTH] (edges as float32 computes them); 0 is an
# edge, so precision and recall from the histogram equal the exact ones, and the AUC is off by at most
# half the share of (replaced, real) pairs that fall in one bin. The two end bins also take everything beyond
# them: a logit past +-32 is a probability within 1e-14 of 0 or 1.
BINS = 32768
LOW, HIGH = -32.0, 32.0
WIDTH = (HIGH - LOW) / BINS


def logit_histogram(logits: torch.Tensor, is_replaced: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """int64 [2, BINS]: how many of the tokens with weight != 0 fall in each bin, row 0 the real tokens, row 1
    the replaced ones; a NaN logit is not counted (the loss shows it). logits: float [B, T] (any float dtype);
    is_replaced, weight: [B, T] bool or integer."""
    logits = logits.detach().float()
    finite = logits.nan_to_num(nan=0.0).clamp(LOW, HIGH)  # no NaN or inf reaches the integer conversion
    bins = (torch.ceil((finite - LOW) / WIDTH) - 1).clamp(0, BINS - 1).long()
    # Rounding must not move a logit across 0 (|logit| below float32's step at 32 would land on the wrong side).
    bins = torch.where(logits > 0, bins.clamp_min(BINS // 2), bins.clamp_max(BINS // 2 - 1))
    index = (bins + BINS * is_replaced.long()).reshape(-1)
    counted = ((weight != 0) & ~logits.isnan()).reshape(-1).long()
    return torch.zeros(2 * BINS, dtype=torch.long, device=logits.device).scatter_add_(0, index, counted).view(2, BINS)


def from_histogram(histogram: torch.Tensor) -> dict[str, float]:
    """AUC, precision and recall of a `logit_histogram` (or a sum of them). A metric whose denominator is 0 (no
    replaced token, say) is NaN. (The accuracy is a share of each batch's tokens, ElectraOutput.disc_accuracy.)"""
    real, replaced = histogram.double().cpu()
    positives, negatives = replaced.sum().item(), real.sum().item()
    # P(replaced scores above real) + half P(same bin): each replaced token against the real tokens below it.
    real_below = torch.cumsum(real, 0) - real
    auc = _ratio(((real_below + 0.5 * real) * replaced).sum().item(), positives * negatives)
    above = BINS // 2  # the first bin above 0
    true_positive, false_positive = replaced[above:].sum().item(), real[above:].sum().item()
    return {"auc": auc, "precision": _ratio(true_positive, true_positive + false_positive),
            "recall": _ratio(true_positive, positives)}


def exact(logits: torch.Tensor, is_replaced: torch.Tensor) -> dict[str, float]:
    """The same metrics from every scored token, in float64: logits float [n], is_replaced bool [n]. The AUC is
    the Mann-Whitney statistic with tied logits counted as half; NaN when a logit is NaN."""
    logits, is_replaced = logits.detach().double().cpu().reshape(-1), is_replaced.detach().bool().cpu().reshape(-1)
    if logits.isnan().any():
        return dict.fromkeys(("auc", "precision", "recall", "accuracy"), math.nan)
    positives = is_replaced.sum().item()
    negatives = is_replaced.numel() - positives
    ordered, order = torch.sort(logits, stable=True)
    _, counts = torch.unique_consecutive(ordered, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    tied_rank = torch.repeat_interleave(ends - (counts - 1) / 2, counts)  # 1-based average rank of each tie group
    rank_sum = tied_rank[is_replaced[order]].sum().item()
    auc = _ratio(rank_sum - positives * (positives + 1) / 2, positives * negatives)
    predicted = logits > 0
    true_positive = (predicted & is_replaced).sum().item()
    correct = (predicted == is_replaced).sum().item()
    return {"auc": auc, "precision": _ratio(true_positive, predicted.sum().item()),
            "recall": _ratio(true_positive, positives), "accuracy": _ratio(correct, is_replaced.numel())}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan
