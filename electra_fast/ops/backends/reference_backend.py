"""The `reference` backend: the definitions of `electra_fast.ops.reference` and their gradients written out. Runs
on any device, keeps float64, and materialises the [N, V] logits."""
from __future__ import annotations

import torch

from .. import reference
from ..reference import compute_dtype

GRADS_IN_FORWARD = False  # the definition: gradients by recomputation in the backward


def generator_loss_and_sample(hidden, weight, bias, targets, seed, temperature, disallow_correct, ignore_index,
                              reduction, grads):
    logits = reference.head_logits(hidden, weight, bias)
    loss, sampled, predicted, stats = sample_logits(logits, targets, seed, temperature, disallow_correct,
                                                     ignore_index, reduction)
    return loss, sampled, predicted, stats, None, None, None


def sample_logits(logits, targets, seed, temperature, disallow_correct, ignore_index, reduction):
    loss, sampled, predicted = reference.sample_logits(
        logits, targets, seed, temperature=temperature, disallow_correct=disallow_correct,
        ignore_index=ignore_index, reduction=reduction)
    z = logits.to(torch.float32)
    row_max = z.amax(dim=-1)
    return loss, sampled, predicted, torch.stack([row_max, torch.logsumexp(z, dim=-1) - row_max], dim=1)


def generator_loss_and_sample_backward(grad_loss, hidden, weight, bias, targets, stats, ignore_index, reduction):
    dtype = compute_dtype(hidden, weight, bias)
    g = reference.cross_entropy_grad(reference.head_logits(hidden, weight, bias), targets, grad_loss,
                                     ignore_index, reduction)
    db = None if bias is None else g.sum(0)
    return g @ weight.to(dtype), g.T @ hidden.to(dtype), db


def sample_logits_backward(grad_loss, logits, targets, stats, ignore_index, reduction):
    return reference.cross_entropy_grad(logits.to(compute_dtype(logits)), targets, grad_loss, ignore_index,
                                        reduction)


def replace_(input_ids, positions, sampled, valid):
    return reference.replace_(input_ids, positions, sampled, valid)


def rtd_loss(logits, is_replaced, attention_mask, reduction):
    return (reference.rtd_loss(logits, is_replaced, attention_mask, reduction),
            reference.rtd_loss_grad(logits, is_replaced, attention_mask, reduction))
