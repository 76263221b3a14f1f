"""`ElectraPretrainer`: the whole ELECTRA step as one module (contract §2); `MlmPretrainer`: the masked-language-model
baseline it is measured against, on the same masking and fused head.

mask_token_slots -> generator encoder -> the B·P masked slots -> the generator's MLM transform -> fused head
(MLM loss, sample, argmax; unused slots ignored) -> REPLACE of the valid slots into a copy of the original ids ->
discriminator -> RTD loss. No gradient flows through the sample. Every shape is static and, with value checks
off, nothing reads a tensor's values on the host: the step is one graph under torch.compile(fullgraph=True)
and can be captured as a CUDA graph. Works with the built-in models (electra_fast.models) and Hugging Face encoders
of several families (electra_fast.hf.encoders), ELECTRA's ElectraForMaskedLM / ElectraForPreTraining among them.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import NamedTuple, Sequence

import torch
from torch import nn

from ..hf import encoders as hf_encoders
from ..hf import masked_lm as hf_mlm
from ..hf.encoders import EMBEDDING_SHARING, FamilyAdapter
from ..models import Discriminator, Generator, preset_configs, save_hugging_face
from ..ops import api
from ..ops.masking import IGNORE_INDEX, MASKING_SPLITS, check_max_predictions, mask_token_slots
from . import flops, rtd_metrics

GENERATOR_OBJECTIVES = ("mle", "adversarial")
RTD_TOKENS = ("all", "masked")


class ElectraOutput(NamedTuple):
    loss: torch.Tensor  # gen_weight * generator objective + disc_weight * rtd_loss
    mlm_loss: torch.Tensor
    rtd_loss: torch.Tensor
    gen_accuracy: torch.Tensor  # share of masked positions where the argmax is the original id
    sampled_accuracy: torch.Tensor  # share of masked positions where the sample is the original id
    disc_accuracy: torch.Tensor  # share of the tokens the RTD loss counts where (logit > 0) == is_replaced
    replaced_fraction: torch.Tensor  # share of attended tokens whose id changed
    disc_histogram: torch.Tensor  # int64 [2, rtd_metrics.BINS]: the counted tokens' logits, real and replaced


class _BuiltIn:
    """Adapter over electra_fast.models."""

    def __init__(self, generator: Generator, discriminator: Discriminator, embedding_sharing: str):
        self.generator, self.discriminator = generator, discriminator
        self.embedding_sharing = embedding_sharing
        if embedding_sharing == "es":
            self.generator.encoder.embeddings = self.discriminator.encoder.embeddings

    def compile(self, kwargs):
        self.generator.encoder.compile(**kwargs)
        self.discriminator.encoder.compile(**kwargs)

    def features(self, ids, mask):
        return self.generator.encoder(ids, mask)

    def transform(self, rows):
        return self.generator.transform(rows)

    def output(self):
        return self.generator.output_weight, self.generator.output_bias

    def logits(self, ids, mask):
        return self.discriminator(ids, mask)

    def shared_embedding(self):
        return self.discriminator.encoder.embeddings.word.weight

    def save_discriminator(self, directory, pad_token_id):
        save_hugging_face(self.discriminator, directory, pad_token_id=pad_token_id)


def _adapter(generator, discriminator, embedding_sharing):
    if isinstance(generator, Generator) and isinstance(discriminator, Discriminator):
        if embedding_sharing == "gdes":
            raise ValueError("embedding_sharing 'gdes' needs Hugging Face models; the built-in ones take 'es' or "
                             "'none'")
        return _BuiltIn(generator, discriminator, embedding_sharing)
    if isinstance(generator, nn.Module) and getattr(generator, "config", None) is not None \
            and getattr(discriminator, "config", None) is not None:
        return FamilyAdapter(generator, discriminator, embedding_sharing)
    raise TypeError("generator/discriminator must be electra_fast.models.Generator/Discriminator, or a Hugging Face "
                    "XxxForMaskedLM and a discriminator from electra_fast.hf.encoders (ElectraForPreTraining for "
                    f"ELECTRA), got {type(generator).__name__}/{type(discriminator).__name__}")


def _embedding_sharing(embedding_sharing: str | None, tie_embeddings: bool) -> str:
    """embedding_sharing, or the older tie_embeddings flag's meaning (True: "es", False: "none")."""
    if embedding_sharing is None:
        return "es" if tie_embeddings else "none"
    if embedding_sharing not in EMBEDDING_SHARING:
        raise ValueError(f"embedding_sharing must be one of {EMBEDDING_SHARING}, got {embedding_sharing!r}")
    if not tie_embeddings and embedding_sharing != "none":
        raise ValueError(f"tie_embeddings=False contradicts embedding_sharing {embedding_sharing!r}; give "
                         "embedding_sharing alone")
    return embedding_sharing


def _padded_ids(model_vocab: int, vocab_size: int) -> torch.Tensor | None:
    """bool [model_vocab]: the output ids at or above vocab_size (a vocabulary padded past the tokenizer's, as
    DeBERTa-v3's 128,100 for 128,001 tokens); None when there are none."""
    if not 0 < vocab_size <= model_vocab:
        raise ValueError(f"vocab_size must be in [1, {model_vocab}] (the generator's output ids), got {vocab_size}")
    return torch.arange(model_vocab) >= vocab_size if vocab_size < model_vocab else None


class Pretrainer(nn.Module):
    """An objective, as the trainer sees it: `forward(input_ids [B, T] int64, attention_mask [B, T] | None,
    return_scores=False)` -> an `Output` NamedTuple whose first field is the loss to minimise, its masking
    (`mask_prob`, `max_predictions`, `masking`: a key of MASKING_SPLITS), and what a run records and exports. A new
    objective subclasses it; the trainer has no case per objective.

    Metrics: each 0-dim field of Output is logged by name, averaged over micro-batches and processes. The fields
    named in COUNTS are counts instead, summed over them; `count_metrics` turns the sums into metrics. With
    return_scores=True forward returns (Output, scores): per-token tensors from which `exact_metrics` computes
    validation's metrics over every scored token (they replace the averaged ones of the same name)."""

    Output: type  # the NamedTuple forward returns
    COUNTS: dict[str, tuple[str, ...]] = {}  # each field of Output that is a count: the metrics made from it
    export_name = "discriminator"  # what the export folder holds, in words

    @classmethod
    def averaged_fields(cls) -> tuple[str, ...]:
        """The fields of Output that are 0-dim metrics (not counts), in order."""
        return tuple(f for f in cls.Output._fields if f not in cls.COUNTS)

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        """Every metric a training step logs (and a validation), in order."""
        return cls.averaged_fields() + tuple(name for names in cls.COUNTS.values() for name in names)

    def count_metrics(self, counts: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics from the COUNTS fields, each summed over a step's micro-batches and processes."""
        return {}

    def exact_metrics(self, scores: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics from the scores of forward(return_scores=True), each concatenated over a whole split."""
        return {}

    def _init_masking(self, *, mask_token_id, vocab_size, special_token_ids, pad_token_id, mask_prob,
                      max_predictions, masking):
        check_max_predictions(max_predictions)
        if masking not in MASKING_SPLITS:
            raise ValueError(f"masking must be one of {tuple(MASKING_SPLITS)}, got {masking!r}")
        self.mask_token_id, self.vocab_size, self.pad_token_id = mask_token_id, vocab_size, pad_token_id
        self.special_token_ids = tuple(special_token_ids)
        self.mask_prob, self.max_predictions, self.masking = mask_prob, max_predictions, masking

    def describe(self) -> dict:
        """The models' configurations as a checkpoint records them (a resumed run must match them)."""
        raise NotImplementedError

    def sequence_flops(self, seq_len: int) -> float:
        """Training FLOPs of one sequence as the ELECTRA paper counts them (electra_fast.pretraining.flops)."""
        raise NotImplementedError

    def save_pretrained(self, directory: str) -> None:
        """Writes the model that fine-tuning takes, in Hugging Face format."""
        raise NotImplementedError

    def compile_encoders(self, **compile_kwargs) -> "Pretrainer":
        """Puts the encoders under torch.compile (the fused ops stay opaque custom ops between them); returns
        self."""
        raise NotImplementedError


def _hf_config(config) -> dict:
    described = json.loads(config.to_json_string(use_diff=True))
    described.pop("transformers_version", None)
    return described


class ElectraPretrainer(Pretrainer):
    """One ELECTRA pretraining step: `forward(input_ids, attention_mask=None) -> ElectraOutput`.

    input_ids [B, T] int64 are never modified. attention_mask [B, T] (1 = token) defaults to
    input_ids != pad_token_id. Each step draws its sampling seed from torch's default generator, so
    torch.manual_seed makes a step repeatable (the seed is drawn on the ids' device, so that a CUDA graph
    replays a fresh draw). Each row masks into `max_predictions` slots (default ceil(mask_prob * T) of the
    batch's T, which never cuts a row's count; Google's max_predictions_per_seq), so the step's shapes do not
    depend on the data. generator_objective="adversarial" trains the generator by
    REINFORCE with the discriminator's probability that the sampled token is real as the reward, minus a running
    mean baseline, instead of maximum likelihood; mlm_loss is then still reported, without gradient.
    embedding_sharing: "es" (default; ELECTRA's: one token-embedding matrix that both losses update), "gdes"
    (DeBERTa-v3's, Hugging Face models only: electra_fast.hf.encoders.GdesEmbedding) or "none";
    tie_embeddings=False is the older spelling of "none". vocab_size is the tokenizer's: output ids at or above it
    (a padded model vocabulary) get probability 0.
    rtd_tokens="masked" counts the RTD loss (and disc_accuracy) at the masked positions only: the paper's
    "ELECTRA 15%" ablation (its Table 5), which isolates the gain of learning from every token.
    masking: what the masked positions become, a key of MASKING_SPLITS ("electra": 85% [MASK], 15% kept;
    "bert": 80% [MASK], 10% a random id, 10% kept).
    """

    Output = ElectraOutput

    def __init__(self, generator, discriminator, *, mask_token_id: int, vocab_size: int,
                 special_token_ids: Sequence[int] = (), pad_token_id: int = 0, mask_prob: float = 0.15,
                 gen_weight: float = 1.0, disc_weight: float = 50.0, temperature: float = 1.0,
                 disallow_correct: bool = False, tie_embeddings: bool = True, generator_objective: str = "mle",
                 baseline_momentum: float = 0.99, max_predictions: int | None = None, rtd_tokens: str = "all",
                 embedding_sharing: str | None = None, masking: str = "electra"):
        super().__init__()
        if generator_objective not in GENERATOR_OBJECTIVES:
            raise ValueError(f"generator_objective must be one of {GENERATOR_OBJECTIVES}, got "
                             f"{generator_objective!r}")
        if rtd_tokens not in RTD_TOKENS:
            raise ValueError(f"rtd_tokens must be one of {RTD_TOKENS}, got {rtd_tokens!r}")
        self._init_masking(mask_token_id=mask_token_id, vocab_size=vocab_size, special_token_ids=special_token_ids,
                           pad_token_id=pad_token_id, mask_prob=mask_prob, max_predictions=max_predictions,
                           masking=masking)
        self.generator, self.discriminator = generator, discriminator
        self._models = _adapter(generator, discriminator, _embedding_sharing(embedding_sharing, tie_embeddings))
        self.register_buffer("padded_ids", _padded_ids(self._models.output()[0].shape[0], vocab_size),
                             persistent=False)
        self.gen_weight, self.disc_weight = gen_weight, disc_weight
        self.temperature, self.disallow_correct = temperature, disallow_correct
        self.generator_objective, self.baseline_momentum = generator_objective, baseline_momentum
        self.rtd_tokens = rtd_tokens
        self.register_buffer("reward_baseline", torch.tensor(0.5))

    @classmethod
    def from_preset(cls, name: str, *, vocab_size: int, mask_token_id: int, pad_token_id: int = 0,
                    special_token_ids: Sequence[int] = (), **overrides) -> "ElectraPretrainer":
        """Builds both models from a preset ("small", "base", "large"). Overrides change the preset (num_layers,
        hidden_size, max_position_embeddings, ...) or, where they name an ElectraPretrainer argument
        (disc_weight, temperature, ...), the pretrainer."""
        pretrainer_args = {k: overrides.pop(k) for k in list(overrides) if k in _PRETRAINER_ARGS}
        gen_config, disc_config = preset_configs(name, vocab_size=vocab_size, **overrides)
        return cls(Generator(gen_config), Discriminator(disc_config), mask_token_id=mask_token_id,
                   vocab_size=vocab_size, pad_token_id=pad_token_id, special_token_ids=special_token_ids,
                   **pretrainer_args)

    @classmethod
    def from_hugging_face(cls, discriminator, generator=None, *, vocab_size: int, mask_token_id: int,
                          pad_token_id: int = 0, special_token_ids: Sequence[int] = (),
                          generator_sizing: str = "debertav3", generator_fraction: float = 0.25,
                          embedding_sharing: str = "es", **overrides) -> "ElectraPretrainer":
        """Builds a Hugging Face generator and discriminator (electra_fast.hf.encoders): each a family name
        ("bert", "roberta", "xlm-roberta", "deberta-v2", "modernbert", "electra"), a transformers config or a local
        model folder (weights loaded when present). Without `generator`, its config is derived from the
        discriminator's by `generator_sizing` ("electra": `generator_fraction` of the width; "debertav3": the same
        width, half the depth). `embedding_sharing` is "es", "gdes" or "none". Overrides that name an
        ElectraPretrainer argument (disc_weight, ...) go to the pretrainer; the rest (hidden_size,
        num_hidden_layers, ...) into the configs built from family names. `vocab_size` is the tokenizer's: a
        model vocabulary beyond it is padding, never sampled."""
        from ..hf.encoders import build_models

        pretrainer_args = {k: overrides.pop(k) for k in list(overrides) if k in _PRETRAINER_ARGS}
        generator, discriminator = build_models(discriminator, generator, vocab_size=vocab_size,
                                                pad_token_id=pad_token_id, generator_sizing=generator_sizing,
                                                generator_fraction=generator_fraction,
                                                embedding_sharing=embedding_sharing, **overrides)
        return cls(generator, discriminator, mask_token_id=mask_token_id, vocab_size=vocab_size,
                   pad_token_id=pad_token_id, special_token_ids=special_token_ids,
                   embedding_sharing=embedding_sharing, **pretrainer_args)

    def compile_encoders(self, **compile_kwargs) -> "ElectraPretrainer":
        """Puts both encoders under torch.compile (the fused ops stay opaque custom ops between them); returns
        self. Part of the recommended step on both CPU and GPU."""
        self._models.compile(compile_kwargs)
        return self

    def describe(self) -> dict:
        if isinstance(self._models, FamilyAdapter):
            described = {name: _hf_config(getattr(self, name).config) for name in ("generator", "discriminator")}
            described["embedding_sharing"] = self._models.embedding_sharing
        else:
            sharing = self._models.embedding_sharing
            described = {"generator": dataclasses.asdict(self.generator.encoder.config),
                         "discriminator": dataclasses.asdict(self.discriminator.encoder.config),
                         # Recorded only when not ELECTRA's default, so that runs from before the flag still resume.
                         **({"embedding_sharing": sharing} if sharing != "es" else {})}
        return {**described, **_masking_record(self)}

    def sequence_flops(self, seq_len: int) -> float:
        """Hugging Face models count as the BERT-shaped encoder of their config (hf_encoders.encoder_config)."""
        configs = [m.encoder.config if isinstance(m, (Generator, Discriminator))
                   else hf_encoders.encoder_config(m.config) for m in (self.generator, self.discriminator)]
        return flops.electra_train_flops(*configs, seq_len, masked_fraction=self.mask_prob)

    def save_discriminator(self, directory: str) -> None:
        """Saves the discriminator as a Hugging Face checkpoint, `config.json` + `model.safetensors`. The built-in
        models write ELECTRA's format alone (the fused q/k/v projection split into transformers' three), which
        transformers.ElectraForPreTraining and electra_fast.finetune.load_discriminator_encoder load. Hugging Face
        models write their family's format (a GDES embedding merged), the RTD head and the generator beside it
        (electra_fast.hf.encoders.save_discriminator)."""
        self._models.save_discriminator(directory, self.pad_token_id)

    save_pretrained = save_discriminator  # what fine-tuning takes, under the name MlmPretrainer shares

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_scores: bool = False):
        """ElectraOutput; with return_scores also a dict of the scored tokens' "disc_logits" (float32 [n]) and
        "is_replaced" (bool [n]), and the valid slots' "gen_correct" and "sampled_correct" (bool [m])."""
        attention_mask, slots = _mask_slots(self, input_ids, attention_mask)
        positions, valid, targets = slots.positions.view(-1), slots.valid.view(-1), slots.targets.view(-1)
        features = self._models.features(slots.masked_ids, attention_mask)
        rows = self._models.transform(_slot_rows(features, positions))
        weight, bias = self._models.output()
        if self.padded_ids is not None:  # ids the tokenizer lacks get logit -inf: probability 0, never sampled
            bias = (torch.zeros_like(weight[:, 0]) if bias is None else bias).masked_fill(self.padded_ids, -torch.inf)
        # The adversarial objective reports the MLM loss without its gradient: the head need not compute it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.generator_objective == "mle"):
            mlm_loss, sampled, predicted = api.generator_loss_and_sample(
                rows, weight, bias, targets, temperature=self.temperature, disallow_correct=self.disallow_correct,
                ignore_index=IGNORE_INDEX)

        noised = input_ids.clone()
        is_replaced = api.replace_(noised, positions, sampled, valid)
        disc_logits = self._models.logits(noised, attention_mask)
        rtd_weight = attention_mask
        if self.rtd_tokens == "masked":
            # Accumulated, so that unused slots (clamped onto token 0 with weight 0) cannot erase a valid slot's 1.
            rtd_weight = torch.zeros(attention_mask.numel(), dtype=torch.long, device=attention_mask.device
                                     ).index_put_((positions.clamp_min(0),), valid.long(), accumulate=True
                                                  ).view(attention_mask.shape)
        rtd = api.rtd_loss(disc_logits, is_replaced, rtd_weight)

        gen_objective = mlm_loss
        if self.generator_objective == "adversarial":
            gen_objective = self._adversarial_objective(rows, weight, bias, sampled, positions, valid, disc_logits)
        loss = self.gen_weight * gen_objective + self.disc_weight * rtd

        # Shares as tensor ops (no host sync): masked means over the valid slots and the attended tokens.
        with torch.no_grad():
            attended = attention_mask.bool()
            n_attended = attended.sum().clamp_min(1)
            n_valid = valid.sum().clamp_min(1)
            gen_correct, sampled_correct = predicted == targets, sampled == targets
            gen_accuracy = (gen_correct & valid).sum().float() / n_valid
            sampled_accuracy = (sampled_correct & valid).sum().float() / n_valid
            scored = rtd_weight.bool()
            disc_correct = ((disc_logits > 0) == is_replaced) & scored
            disc_accuracy = disc_correct.sum().float() / scored.sum().clamp_min(1)
            replaced_fraction = (is_replaced & attended).sum().float() / n_attended
            histogram = rtd_metrics.logit_histogram(disc_logits, is_replaced, scored)
        out = ElectraOutput(loss, mlm_loss, rtd, gen_accuracy, sampled_accuracy, disc_accuracy, replaced_fraction,
                            histogram)
        if not return_scores:
            return out
        return out, {"disc_logits": disc_logits.detach().float()[scored], "is_replaced": is_replaced[scored],
                     "gen_correct": gen_correct[valid], "sampled_correct": sampled_correct[valid]}

    COUNTS = {"disc_histogram": ("disc_auc", "disc_precision", "disc_recall")}

    def count_metrics(self, counts: dict[str, torch.Tensor]) -> dict[str, float]:
        """The discriminator's AUC, precision and recall from the summed histogram."""
        return {f"disc_{k}": v for k, v in rtd_metrics.from_histogram(counts["disc_histogram"]).items()}

    def exact_metrics(self, scores: dict[str, torch.Tensor]) -> dict[str, float]:
        metrics = {f"disc_{k}": v for k, v in rtd_metrics.exact(scores["disc_logits"], scores["is_replaced"]).items()}
        metrics.update(gen_accuracy=_share(scores["gen_correct"]), sampled_accuracy=_share(scores["sampled_correct"]))
        return metrics

    def _adversarial_objective(self, rows, weight, bias, sampled, positions, valid, disc_logits):
        """REINFORCE: mean over the valid slots of (reward - baseline) * -log p(sampled); reward = P(real)."""
        # Its samples are discarded; the seed is drawn all the same (on the rows' device: no host-to-device copy).
        neg_log_p, _, _ = api.generator_loss_and_sample(rows, weight, bias, torch.where(valid, sampled, IGNORE_INDEX),
                                                        ignore_index=IGNORE_INDEX, reduction="none")
        n_valid = valid.sum().clamp_min(1)
        with torch.no_grad():
            reward = torch.sigmoid(-disc_logits.reshape(-1)[positions.clamp_min(0)].float())
            advantage = torch.where(valid, reward - self.reward_baseline, 0.0)
            if self.training:
                # A batch without masked slots leaves the baseline as it was (weight 0), without a host branch.
                mean_reward = torch.where(valid, reward, 0.0).sum() / n_valid
                self.reward_baseline.lerp_(mean_reward, (1 - self.baseline_momentum) * valid.any())
        return (advantage * neg_log_p).sum() / n_valid


_PRETRAINER_ARGS = {"mask_prob", "gen_weight", "disc_weight", "temperature", "disallow_correct", "tie_embeddings",
                    "generator_objective", "baseline_momentum", "max_predictions", "rtd_tokens",
                    "embedding_sharing", "masking"}
_MLM_ARGS = {"mask_prob", "max_predictions", "masking"}


def _share(flags: torch.Tensor) -> float:
    """The share of True in bool `flags` (NaN when empty)."""
    return flags.double().mean().item() if flags.numel() else math.nan


def _masking_record(pretrainer) -> dict:
    """The masking split as a checkpoint records it: only when not ELECTRA's, so that older runs still resume."""
    return {"masking": pretrainer.masking} if pretrainer.masking != "electra" else {}


def _mask_slots(pretrainer, input_ids, attention_mask):
    """(attention_mask as int64, MaskedSlots) for a batch: the pretrainer's masking into its fixed slots."""
    if attention_mask is None:
        attention_mask = input_ids != pretrainer.pad_token_id
    attention_mask = attention_mask.long()
    mask_replace_prob, random_token_prob = MASKING_SPLITS[pretrainer.masking]
    slots = mask_token_slots(input_ids, attention_mask, mask_token_id=pretrainer.mask_token_id,
                             mask_prob=pretrainer.mask_prob, max_predictions=pretrainer.max_predictions,
                             special_token_ids=pretrainer.special_token_ids + (pretrainer.pad_token_id,),
                             mask_replace_prob=mask_replace_prob, random_token_prob=random_token_prob,
                             vocab_size=pretrainer.vocab_size)
    return attention_mask, slots


def _slot_rows(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The rows [B·P, H] of features [B, T, H] at the flat slot positions [B·P]. An unused slot (-1) reads token 0
    of the batch; its target IGNORE_INDEX keeps it out of the loss and its gradient."""
    return features.reshape(-1, features.shape[-1])[positions.clamp_min(0)]


class MlmOutput(NamedTuple):
    loss: torch.Tensor  # the MLM loss, which is also what the step minimises
    mlm_loss: torch.Tensor
    mlm_accuracy: torch.Tensor  # share of masked positions where the argmax is the original id


class MlmPretrainer(Pretrainer):
    """The masked-language-model objective (BERT's, without next-sentence prediction), ELECTRA's baseline: one
    encoder with its MLM head, its loss at the masked positions from the fused head. The masking, the slots and
    the data are ElectraPretrainer's; there is no generator and no RTD. `model` is the built-in encoder
    (electra_fast.models.Generator of the discriminator's size: dense -> GELU -> LayerNorm -> the tied token
    embedding + bias), saved as a Hugging Face ELECTRA masked LM, or a Hugging Face `XxxForMaskedLM` of a family
    in hf_mlm.MASKED_LM_FAMILIES, whose own MLM transform runs at the masked rows (electra_fast.hf.masked_lm, the head
    that `patch_masked_lm` puts in the model's forward), saved in its family's format. `forward(input_ids,
    attention_mask=None) -> MlmOutput`; `electra-fast finetune` takes what `save_pretrained` writes (DistilBERT's
    excepted)."""

    Output = MlmOutput
    export_name = "encoder"

    def __init__(self, model, *, mask_token_id: int, vocab_size: int, special_token_ids: Sequence[int] = (),
                 pad_token_id: int = 0, mask_prob: float = 0.15, max_predictions: int | None = None,
                 masking: str = "electra"):
        super().__init__()
        if not isinstance(model, Generator):
            if not hasattr(getattr(model, "config", None), "model_type"):
                raise TypeError(f"model must be an electra_fast.models.Generator or a Hugging Face masked LM, got "
                                f"{type(model).__name__}")
            hf_mlm.check_masked_lm(model)
            if model.config.vocab_size < vocab_size:
                raise ValueError(f"model: its vocab_size {model.config.vocab_size} is below the tokenizer's "
                                 f"{vocab_size}")
        self._init_masking(mask_token_id=mask_token_id, vocab_size=vocab_size, special_token_ids=special_token_ids,
                           pad_token_id=pad_token_id, mask_prob=mask_prob, max_predictions=max_predictions,
                           masking=masking)
        self.model = model
        self.built_in = isinstance(model, Generator)

    @classmethod
    def from_preset(cls, name: str, *, vocab_size: int, mask_token_id: int, pad_token_id: int = 0,
                    special_token_ids: Sequence[int] = (), **overrides) -> "MlmPretrainer":
        """The encoder of a preset's discriminator. Overrides change the preset as for ElectraPretrainer.from_preset
        (generator_fraction has no effect), or set mask_prob / max_predictions / masking; ELECTRA's own arguments
        (disc_weight, temperature, ...) are refused as unknown."""
        pretrainer_args = {k: overrides.pop(k) for k in list(overrides) if k in _MLM_ARGS}
        _, config = preset_configs(name, vocab_size=vocab_size, **overrides)
        return cls(Generator(config), mask_token_id=mask_token_id, vocab_size=vocab_size, pad_token_id=pad_token_id,
                   special_token_ids=special_token_ids, **pretrainer_args)

    @classmethod
    def from_hugging_face(cls, model, *, vocab_size: int, mask_token_id: int, pad_token_id: int = 0,
                          special_token_ids: Sequence[int] = (), **overrides) -> "MlmPretrainer":
        """A family's XxxForMaskedLM from a family name (its config built with vocab_size, pad_token_id and the
        overrides that are not mask_prob / max_predictions / masking: hidden_size, num_hidden_layers, ...), a
        transformers config, or a local folder (its weights loaded when present)."""
        pretrainer_args = {k: overrides.pop(k) for k in list(overrides) if k in _MLM_ARGS}
        fields = hf_encoders.positions_for(model, {"vocab_size": vocab_size, "pad_token_id": pad_token_id,
                                                   **overrides})
        return cls(hf_encoders.build_generator(model, argument="model", fields=fields,
                                               families=hf_mlm.MASKED_LM_FAMILIES), mask_token_id=mask_token_id,
                   vocab_size=vocab_size, pad_token_id=pad_token_id, special_token_ids=special_token_ids,
                   **pretrainer_args)

    def _encoder(self):
        return self.model.encoder if self.built_in else self.model.base_model

    def compile_encoders(self, **compile_kwargs) -> "MlmPretrainer":
        self._encoder().compile(**compile_kwargs)
        return self

    def describe(self) -> dict:
        config = dataclasses.asdict(self.model.encoder.config) if self.built_in else _hf_config(self.model.config)
        return {"encoder": config, **_masking_record(self)}

    def sequence_flops(self, seq_len: int) -> float:
        config = self.model.encoder.config if self.built_in else hf_encoders.encoder_config(self.model.config)
        return flops.encoder_train_flops(config, seq_len, masked_fraction=self.mask_prob)

    def save_pretrained(self, directory: str) -> None:
        """The built-in encoder and its MLM head as transformers' ElectraForMaskedLM; a Hugging Face model in its
        own format (config.json + model.safetensors), which the family's AutoModelForMaskedLM loads."""
        if self.built_in:
            save_hugging_face(self.model, directory, pad_token_id=self.pad_token_id)
        else:
            self.model.save_pretrained(directory)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_scores: bool = False):
        """MlmOutput; with return_scores also {"mlm_correct": bool [m]}, at the valid slots."""
        attention_mask, slots = _mask_slots(self, input_ids, attention_mask)
        positions, valid, targets = slots.positions.view(-1), slots.valid.view(-1), slots.targets.view(-1)
        # The fused head samples too (its cost is a few hundred ids per row); the sample is unused here.
        seed = api.resolve_seed(None, input_ids.device)
        if self.built_in:
            # The head's transform at the masked slots only, as for ELECTRA's generator.
            rows = self.model.transform(_slot_rows(self.model.encoder(slots.masked_ids, attention_mask), positions))
            loss, _, predicted = api.generator_loss_and_sample(
                rows, self.model.output_weight, self.model.output_bias, targets, seed=seed, ignore_index=IGNORE_INDEX)
        else:
            features = self.model.base_model(input_ids=slots.masked_ids, attention_mask=attention_mask,
                                             **hf_encoders.position_kwargs(self.model.config, attention_mask))[0]
            loss, _, predicted = hf_mlm.fused_mlm_loss(self.model, _slot_rows(features, positions), targets,
                                                       vocab_size=self.vocab_size, seed=seed)
        with torch.no_grad():
            correct = predicted == targets
            accuracy = (correct & valid).sum().float() / valid.sum().clamp_min(1)
        out = MlmOutput(loss, loss.detach(), accuracy)
        return (out, {"mlm_correct": correct[valid]}) if return_scores else out

    def exact_metrics(self, scores: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"mlm_accuracy": _share(scores["mlm_correct"])}
