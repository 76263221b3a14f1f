"""The fused head inside Hugging Face masked LMs: `patch_masked_lm(model)` (or a family name, which patches the
class) makes `XxxForMaskedLM.forward` score the labelled positions alone.

A masked LM's head scores every position, [B, T, V] logits, when the loss needs the masked ones only (about
15%). Patched, a training forward with labels runs the encoder as before, gathers the rows whose label is not
-100, applies the family's own MLM transform to those rows only, and gives them to the fused head
(`api.generator_loss_and_sample`): the loss, the argmax and, on request, an exact sample, with no [N, V] logits.
The output has `logits=None`. Without labels, in eval mode, or with `skip_logits=False`, the original forward
runs unchanged (the same logits, bit for bit), so that `Trainer.prediction_step` and `compute_metrics` keep
working.

`num_items_in_batch` (what `transformers.Trainer` passes under gradient accumulation) divides the summed loss,
as transformers' own loss functions do, so that accumulated micro-batches give the full batch's gradient.
(transformers 5's BERT, RoBERTa, XLM-R, DeBERTa-v2, ELECTRA and DistilBERT heads take the mean of each
micro-batch instead, while Trainer, seeing `**kwargs` in their forward, no longer divides by the accumulation
steps; ModernBERT's head honours it.)

Families (by `config.model_type`): MASKED_LM_FAMILIES. `mlm_head` says where each keeps its head; it is the one
place that knows, and `electra_fast.hf.encoders` uses it too.
"""
from __future__ import annotations

import functools
import inspect
import types
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import api
from ..ops.masking import IGNORE_INDEX

MASKED_LM_FAMILIES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "modernbert", "electra", "distilbert")
_PATCH = "_electra_fast_patch"  # attribute of a patched forward: the original forward it wraps


def masked_lm_family(config) -> str:
    """config.model_type, or a ValueError naming the supported ones."""
    if config.model_type not in MASKED_LM_FAMILIES:
        raise ValueError(f"model_type must be one of {MASKED_LM_FAMILIES} (masked LMs electra-fast knows), "
                         f"got {config.model_type!r}")
    return config.model_type


def check_masked_lm(model):
    """`model` if it is the XxxForMaskedLM of a family in MASKED_LM_FAMILIES, else a TypeError (or, for another
    model type, a ValueError naming the supported ones)."""
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not hasattr(config, "model_type"):
        raise TypeError(f"model must be a Hugging Face masked LM or a family name, got {type(model).__name__}")
    cls = _masked_lm_class(masked_lm_family(config))
    if not isinstance(model, cls):
        raise TypeError(f"model must be the {config.model_type} masked LM ({cls.__name__}), got "
                        f"{type(model).__name__}")
    return model


def mlm_head(model) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear | None, torch.Tensor | None]:
    """(the family's MLM transform of hidden rows [N, H] -> [N, E], the decoder whose weight [V, E] is the output
    embedding, or None where the head multiplies by the token embedding itself, the output bias [V] or None) of
    a masked LM `model` (XxxForMaskedLM). The transform is the one the family's forward applies: RoBERTa's hard-
    codes GELU whatever `hidden_act` says; DeBERTa-v2 has a legacy head (`cls.predictions`) and a non-legacy one
    (`lm_predictions`, whose product is with the token embedding); ModernBERT's `sparse_prediction` gather is
    bypassed (ours replaces it)."""
    family = masked_lm_family(model.config)
    if family == "bert" or (family == "deberta-v2" and model.legacy):
        head = model.cls.predictions
        return head.transform, head.decoder, head.bias
    if family in ("roberta", "xlm-roberta"):
        head = model.lm_head
        return (lambda rows: head.layer_norm(F.gelu(head.dense(rows)))), head.decoder, head.bias
    if family == "deberta-v2":
        head = model.lm_predictions.lm_head
        return (lambda rows: head.LayerNorm(head.transform_act_fn(head.dense(rows)))), None, head.bias
    if family == "modernbert":
        return model.head, model.decoder, model.decoder.bias
    if family == "distilbert":
        return (lambda rows: model.vocab_layer_norm(model.activation(model.vocab_transform(rows)))), \
            model.vocab_projector, model.vocab_projector.bias
    return model.generator_predictions, model.generator_lm_head, model.generator_lm_head.bias


def output_weights(model, vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [V, E], bias [V] or None) of the head's last product; with `vocab_size` (the tokenizer's) below
    the model's V, the padded ids get bias -inf: probability 0, never predicted or sampled."""
    _, decoder, bias = mlm_head(model)
    weight = decoder.weight if decoder is not None else model.base_model.get_input_embeddings().weight
    if vocab_size is not None and vocab_size < weight.shape[0]:
        padded = torch.arange(weight.shape[0], device=weight.device) >= vocab_size
        bias = (torch.zeros_like(weight[:, 0]) if bias is None else bias).masked_fill(padded, -torch.inf)
    return weight, bias


def fused_mlm_loss(model, rows: torch.Tensor, targets: torch.Tensor, *, vocab_size: int | None = None,
                   seed=0, reduction: str = "mean"):
    """The family's MLM transform of hidden rows [N, H] (the encoder's output at the scored positions), then the
    fused head against targets [N] int64 (IGNORE_INDEX rows are left out): (loss, sampled [N], predicted [N]) as
    `api.generator_loss_and_sample` gives them."""
    transform = mlm_head(model)[0]
    weight, bias = output_weights(model, vocab_size)
    return api.generator_loss_and_sample(transform(rows), weight, bias, targets, seed=seed,
                                         ignore_index=IGNORE_INDEX, reduction=reduction)


def check_labels(labels: torch.Tensor, tokens: torch.Size) -> None:
    """A ValueError naming both shapes unless `labels` hold one label per scored token: the tokens' shape [B, T]
    or anything of B * T elements whose first dimension is B (flat [B * T] included, as the unpatched heads take
    it). A reshape alone would accept [2, 10] labels for [4, 5] tokens and score the wrong ones."""
    count = tokens.numel()
    if labels.numel() != count or (labels.dim() > 1 and labels.shape[0] != tokens[0]):
        raise ValueError(f"labels must have one label per token, shape {tuple(tokens)} (or flat [{count}]), got "
                         f"shape {tuple(labels.shape)}")


def _masked_lm_output():
    from transformers.modeling_outputs import MaskedLMOutput

    @dataclass
    class FusedMaskedLMOutput(MaskedLMOutput):
        """MaskedLMOutput of the fused head: loss, logits None, and at the labelled tokens (flat indices
        `positions` [N] int64 into labels.view(-1), ascending) the argmax `predicted` [N] and, when asked for
        with return_samples=True, an exact sample `sampled` [N] of softmax(logits)."""
        positions: Optional[torch.Tensor] = None
        predicted: Optional[torch.Tensor] = None
        sampled: Optional[torch.Tensor] = None

    return FusedMaskedLMOutput


@functools.lru_cache(maxsize=None)
def output_class():
    return _masked_lm_output()


def _argument_names(forward) -> tuple[str, ...]:
    """The names of `forward`'s positional parameters after self, in order."""
    return tuple(name for name, p in list(inspect.signature(forward).parameters.items())[1:]
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _fused_forward(original):
    """A masked LM forward that runs `original` unless it is a training forward with labels (or
    skip_logits=True), which it answers with the fused head."""
    names = _argument_names(original)
    fused_output = output_class()  # resolved here, not while torch.compile traces the forward

    @functools.wraps(original)
    def forward(self, *args, skip_logits: bool | None = None, return_samples: bool = False, seed=None, **kwargs):
        # The positional arguments given name the first parameters; the rest are left to kwargs or defaults.
        call = {**dict(zip(names, args, strict=False)), **kwargs}
        labels = call.get("labels")
        if skip_logits is None:
            skip_logits = labels is not None and (self.training or return_samples)
        if not skip_logits:
            return original(self, *args, **kwargs)
        if labels is None:
            raise ValueError("skip_logits=True needs labels: the fused head scores the labelled tokens only")
        call.pop("labels")
        num_items = call.pop("num_items_in_batch", None)
        return_dict = call.pop("return_dict", None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.base_model(**call, return_dict=True)
        hidden = outputs[0]
        check_labels(labels, hidden.shape[:-1])
        flat_labels = labels.reshape(-1).to(hidden.device)
        # A data-dependent row count: torch.compile(fullgraph=True) traces it as an unbacked size.
        positions = (flat_labels != IGNORE_INDEX).nonzero().view(-1)
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        if seed is None and not return_samples:
            seed = 0  # no sample wanted: nothing drawn, so dropout draws the masks the unpatched forward draws
        loss, sampled, predicted = fused_mlm_loss(
            self, rows, flat_labels.index_select(0, positions), vocab_size=getattr(self, "_electra_fast_vocab", None),
            seed=seed, reduction="mean" if num_items is None else "sum")
        if num_items is not None:
            loss = loss / (num_items.to(loss.device) if torch.is_tensor(num_items) else num_items)
        output = fused_output(loss=loss, logits=None, hidden_states=getattr(outputs, "hidden_states", None),
                                attentions=getattr(outputs, "attentions", None), positions=positions,
                                predicted=predicted, sampled=sampled if return_samples else None)
        return output if return_dict else output.to_tuple()

    setattr(forward, _PATCH, original)
    return forward


def _masked_lm_class(family: str):
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return getattr(transformers, MODEL_FOR_MASKED_LM_MAPPING_NAMES[family])


def patch_masked_lm(model_or_family, *, vocab_size: int | None = None):
    """Makes a Hugging Face masked LM's training forward use the fused head. Returns what it was given.

    - A model (`XxxForMaskedLM` of a family in MASKED_LM_FAMILIES, dispatched on `config.model_type`): patches
      that instance. `vocab_size`, the tokenizer's, marks the ids at or above it as padding (DeBERTa-v3's 128,100
      ids for 128,001 tokens): never predicted nor sampled.
    - A family name ("bert", "roberta", ...): patches the family's class, so every instance, those built later
      included (as Liger-Kernel's apply_liger_kernel_to_* do).

    The patched forward takes, beyond the original's arguments, `skip_logits` (default: True with labels in
    training, or with return_samples; True without labels is an error), `return_samples` (default False: True
    returns the samples) and `seed` (as for `generator_loss_and_sample`: an int, a 0-dim int64 tensor, or None,
    which with return_samples draws one on the device from torch's default generator). With return_dict=False the
    tuple is the output's non-None fields in order: (loss, [hidden_states], [attentions], positions, predicted
    [, sampled]), no logits. A batch without labelled tokens gives loss 0 (the unpatched head gives NaN).
    Patching twice is a no-op; `unpatch_masked_lm` restores the original forward. Under nn.DataParallel (which
    copies a module's attributes to each replica), patch the family, not the instance."""
    if isinstance(model_or_family, str):
        if vocab_size is not None:
            raise ValueError("vocab_size is per model: patch the instance, not the family")
        if model_or_family not in MASKED_LM_FAMILIES:
            raise ValueError(f"family must be one of {MASKED_LM_FAMILIES}, got {model_or_family!r}")
        cls = _masked_lm_class(model_or_family)
        if not hasattr(cls.forward, _PATCH):
            cls.forward = _fused_forward(cls.forward)
        return model_or_family
    model = check_masked_lm(model_or_family)
    config = model.config
    if vocab_size is not None and not 0 < vocab_size <= config.vocab_size:
        raise ValueError(f"vocab_size must be in [1, {config.vocab_size}] (the model's ids), got {vocab_size}")
    model._electra_fast_vocab = vocab_size
    if "forward" not in model.__dict__:  # its own, so that unpatching the family leaves it patched
        original = getattr(type(model).forward, _PATCH, type(model).forward)
        model.forward = types.MethodType(_fused_forward(original), model)
    return model


def unpatch_masked_lm(model_or_family):
    """Restores the original forward of a model or a family's class patched by `patch_masked_lm`; returns what
    it was given. Unpatched already: a no-op."""
    if isinstance(model_or_family, str):
        if model_or_family not in MASKED_LM_FAMILIES:
            raise ValueError(f"family must be one of {MASKED_LM_FAMILIES}, got {model_or_family!r}")
        cls = _masked_lm_class(model_or_family)
        cls.forward = getattr(cls.forward, _PATCH, cls.forward)
        return model_or_family
    model = model_or_family
    model.__dict__.pop("forward", None)
    model.__dict__.pop("_electra_fast_vocab", None)
    return model


def is_patched(model) -> bool:
    """Whether `model`'s forward (its own or its class's) is the fused one."""
    return hasattr(model.forward, _PATCH)
