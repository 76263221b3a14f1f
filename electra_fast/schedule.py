"""ELECTRA's learning-rate schedule, for pretraining (electra_fast.pretraining.loop) and fine-tuning
(electra_fast.finetune.train) alike: a linear warm-up, then a linear decay to 0."""


def lr_multiplier(step: int, *, warmup: int, total: int) -> float:
    """The factor of the peak learning rate at optimizer step `step` (0-based): (step + 1) / warmup during warm-up,
    then linear decay that would reach 0 at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))
