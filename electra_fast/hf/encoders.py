"""Replaced-token-detection pretraining for Hugging Face encoders: BERT, RoBERTa / XLM-R, DeBERTa-v2/v3, ModernBERT
and ELECTRA, as generator and as discriminator, built from configs, family names or local model folders; and the
masked LMs of those and DistilBERT (MASKED_LM_FAMILIES) for `pretrain --objective mlm`.

- The generator is the family's `XxxForMaskedLM`. Its encoder runs on the whole sequence; the masked rows are
  gathered, the family's own MLM transform applied to them alone, and the fused head
  (`api.generator_loss_and_sample`) takes the decoder weight and bias: no `[B, T, V]` logits
  (`electra_fast.hf.masked_lm.mlm_head` knows where each family keeps its head).
- The discriminator is the family's base model (`AutoModel`) plus `RtdHead` (dense -> activation -> dense to one
  logit, as ELECTRA's): no family but ELECTRA ships one. ELECTRA keeps `ElectraForPreTraining`.
- Embedding sharing (`EMBEDDING_SHARING`): "es" (ELECTRA's) puts one token-embedding matrix in both models, so
  both losses update it (ELECTRA shares its whole embedding block, as before); "gdes" (DeBERTa-v3's) gives the
  discriminator `GdesEmbedding`, E_D = stop_gradient(E_G) + E_delta with E_delta starting at 0, so that only the
  MLM loss reaches E_G and only the RTD loss E_delta; "none" keeps two matrices.
- `generator_config` sizes the generator from the discriminator's config, ELECTRA's way (a fraction of the width)
  or DeBERTa-v3's (the same width, half the depth).
- `save_discriminator` writes the discriminator in its family's format (GDES merged: E_G + E_delta), which the
  family's AutoModel / AutoModelFor... classes load, with `rtd_head.safetensors` and the generator (`generator/`)
  in the same folder.
"""
from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInput
from ..models import EncoderConfig
from .masked_lm import MASKED_LM_FAMILIES, mlm_head

# For RTD, and for MLM; MASKED_LM_FAMILIES adds DistilBERT, which has no RTD discriminator here (MLM only).
FAMILIES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "modernbert", "electra")
# Config fields that a family names otherwise (DistilBERT maps hidden_size and the others itself, not this one).
_FIELD_NAMES = {"distilbert": {"intermediate_size": "hidden_dim"}}


def _field_name(family: str, name: str) -> str:
    return _FIELD_NAMES.get(family, {}).get(name, name)
EMBEDDING_SHARING = ("es", "gdes", "none")
GENERATOR_SIZING = ("electra", "debertav3")
RTD_HEAD = "rtd_head.safetensors"
GENERATOR_FOLDER = "generator"
_WITH_POOLER = ("bert", "roberta", "xlm-roberta")  # base models that would otherwise build an unused pooler


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("Hugging Face encoders need transformers: pip install 'electra-fast[hf]'") from None
    return transformers


def check_family(config, families: tuple = FAMILIES) -> str:
    """config.model_type, or BadInput (a ValueError) naming `families` (by default FAMILIES, those electra-fast
    pretrains by RTD)."""
    if config.model_type not in families:
        raise BadInput(f"model_type must be one of {families}, got {config.model_type!r}")
    return config.model_type


# ------------------------------------------------------------------------------------------------------ the models

class RtdHead(nn.Module):
    """The per-token replaced-token detector: dense -> activation -> dense to one logit, as ELECTRA's.
    forward(hidden [B, T, H]) -> logits [B, T], in hidden's dtype."""

    def __init__(self, hidden_size: int, activation: str, initializer_range: float = 0.02):
        super().__init__()
        self.activation_name = activation
        self.activation = _transformers().activations.ACT2FN[activation]
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dense_prediction = nn.Linear(hidden_size, 1)
        for linear in (self.dense, self.dense_prediction):
            nn.init.normal_(linear.weight, std=initializer_range)
            nn.init.zeros_(linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(self.activation(self.dense(hidden))).squeeze(-1)


class RtdDiscriminator(nn.Module):
    """A family's base model (`encoder`, a transformers PreTrainedModel) with an `RtdHead`.
    forward(input_ids [B, T] int64, attention_mask [B, T]) -> logits [B, T]."""

    def __init__(self, encoder: nn.Module, head: RtdHead | None = None):
        super().__init__()
        config = encoder.config
        self.encoder = encoder
        self.head = head or RtdHead(config.hidden_size, _activation(config), config.initializer_range)

    @property
    def config(self):
        return self.encoder.config

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)


def _activation(config) -> str:
    return getattr(config, "hidden_act", None) or config.hidden_activation  # ModernBERT names it hidden_activation


class GdesEmbedding(nn.Module):
    """DeBERTa-v3's gradient-disentangled embedding sharing, in place of the discriminator's token embedding:
    E_D = stop_gradient(E_G) + E_delta, E_G the generator's [V, E] matrix, E_delta [V, E] starting at zero.
    forward(ids [...] int64) -> [..., E]: the two rows looked up and added (the same values as a lookup in E_D,
    without forming the [V, E] sum each step). The padding row of E_delta, like HF's, gets no gradient."""

    def __init__(self, generator_embedding: nn.Embedding):
        super().__init__()
        self.generator_embedding = generator_embedding
        self.delta = nn.Parameter(torch.zeros_like(generator_embedding.weight))
        self.padding_idx = generator_embedding.padding_idx

    @property
    def weight(self) -> torch.Tensor:
        """E_G + E_delta [V, E], the matrix the discriminator looks up (no gradient to E_G)."""
        return self.generator_embedding.weight.detach() + self.delta

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        shared = F.embedding(ids, self.generator_embedding.weight.detach(), self.padding_idx)
        return shared + F.embedding(ids, self.delta, self.padding_idx)


def _discriminator_parts(discriminator) -> tuple[nn.Module, nn.Module]:
    """(base model, head mapping its hidden states to logits [B, T])."""
    if isinstance(discriminator, RtdDiscriminator):
        return discriminator.encoder, discriminator.head
    return discriminator.electra, discriminator.discriminator_predictions


def check_shareable(generator, discriminator, embedding_sharing: str) -> None:
    """Raises BadInput (a ValueError) when `embedding_sharing` ("es", "gdes") cannot share these models' token
    embeddings."""
    gen_matrix = generator.base_model.get_input_embeddings().weight
    disc_matrix = _discriminator_parts(discriminator)[0].get_input_embeddings().weight
    if embedding_sharing != "none" and gen_matrix.shape != disc_matrix.shape:
        raise BadInput(
            f"embedding_sharing {embedding_sharing!r} needs token embeddings of one shape, got "
            f"{tuple(gen_matrix.shape)} (generator) and {tuple(disc_matrix.shape)} (discriminator): give both the "
            "same vocab_size and embedding width (generator_sizing 'debertav3' keeps the width; ELECTRA and "
            "DeBERTa-v2 also take an embedding_size), or embedding_sharing 'none'")


def position_kwargs(config, mask: torch.Tensor) -> dict:
    """{"position_ids": [B, T]} for RoBERTa and XLM-R, numbered from the attention mask as they number them from
    `ids != pad` (pad_token_id + 1 onwards, padding at pad_token_id): a generator that samples the pad id into
    a sequence must not shift the positions of the tokens after it. {} for the other families."""
    if check_family(config, MASKED_LM_FAMILIES) not in ("roberta", "xlm-roberta"):
        return {}
    attended = mask.long()
    return {"position_ids": attended.cumsum(1) * attended + config.pad_token_id}


class FamilyAdapter:
    """ElectraPretrainer's view of a transformers generator (`XxxForMaskedLM`) and discriminator
    (`RtdDiscriminator`, or `ElectraForPreTraining`), with their embeddings shared as `embedding_sharing` says."""

    def __init__(self, generator, discriminator, embedding_sharing: str):
        if embedding_sharing not in EMBEDDING_SHARING:
            raise BadInput(f"embedding_sharing must be one of {EMBEDDING_SHARING}, got {embedding_sharing!r}")
        self.generator, self.discriminator = generator, discriminator
        self.generator_base = generator.base_model
        self.discriminator_base, self.rtd_head = _discriminator_parts(discriminator)
        self.embedding_sharing = embedding_sharing
        self.transform, self.decoder, self.bias = mlm_head(generator)
        if embedding_sharing != "none":
            self._share()

    def _share(self):
        check_shareable(self.generator, self.discriminator, self.embedding_sharing)
        if self.embedding_sharing == "gdes":
            self.discriminator_base.set_input_embeddings(GdesEmbedding(self.generator_base.get_input_embeddings()))
            return
        families = {check_family(self.generator.config), check_family(self.discriminator_base.config)}
        if families == {"electra"}:
            self.generator_base.embeddings = self.discriminator_base.embeddings  # ELECTRA shares the whole block
        else:
            self.generator_base.set_input_embeddings(self.discriminator_base.get_input_embeddings())
        if self.decoder is not None:
            self.decoder.weight = self.discriminator_base.get_input_embeddings().weight

    def compile(self, kwargs):
        self.generator_base.compile(**kwargs)
        self.discriminator_base.compile(**kwargs)

    def features(self, ids, mask):
        return self.generator_base(input_ids=ids, attention_mask=mask,
                                   **position_kwargs(self.generator.config, mask)).last_hidden_state

    def output(self):
        weight = self.decoder.weight if self.decoder is not None else self.generator_base.get_input_embeddings().weight
        return weight, self.bias

    def logits(self, ids, mask):
        positions = position_kwargs(self.discriminator_base.config, mask)
        return self.rtd_head(self.discriminator_base(input_ids=ids, attention_mask=mask, **positions).last_hidden_state)

    def shared_embedding(self):
        """The token-embedding matrix that both losses reach: the one matrix under "es", E_G under "gdes"."""
        if self.embedding_sharing == "none":
            raise BadInput("embedding_sharing 'none': the models share no embedding")
        return self.generator_base.get_input_embeddings().weight

    def save_discriminator(self, directory, pad_token_id):
        save_discriminator(self.generator, self.discriminator, directory)


# ----------------------------------------------------------------------------------------- configs and building

def family_config(family: str, **fields):
    """A transformers config of `family` (one of MASKED_LM_FAMILIES) with `fields` (vocab_size, hidden_size,
    num_hidden_layers, num_attention_heads, intermediate_size, max_position_embeddings, pad_token_id, ...)."""
    if family not in MASKED_LM_FAMILIES:
        raise BadInput(f"family must be one of {MASKED_LM_FAMILIES}, got {family!r}")
    fields = {_field_name(family, name): value for name, value in fields.items()}
    transformers = _transformers()
    defaults = transformers.CONFIG_MAPPING[family]()
    vocab_size = fields.get("vocab_size", defaults.vocab_size)
    # Token ids meant for the family's released vocabulary (ModernBERT's 50,281, ...) that this one may lack.
    unknown = {name: None for name in ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")
               if name not in fields and (getattr(defaults, name, None) or 0) >= vocab_size}
    return transformers.AutoConfig.for_model(family, **unknown, **fields)


def generator_config(discriminator_config, sizing: str = "debertav3", fraction: float = 0.25):
    """The generator's config, derived from the discriminator's (a copy; the family stays):
    - "electra": ELECTRA's, the width times `fraction` (the paper uses 1/4 to 1/2; heads scaled alike, the head
      width kept) and the feed-forward with it, the depth and the token-embedding width kept (the latter only
      where the family has an embedding_size, ELECTRA and DeBERTa-v2; elsewhere the embedding narrows with the
      width and cannot be shared);
    - "debertav3": DeBERTa-v3's, the same width and half the depth (at least one layer)."""
    if sizing not in GENERATOR_SIZING:
        raise BadInput(f"generator_sizing must be one of {GENERATOR_SIZING}, got {sizing!r}")
    if not 0 < fraction <= 1:
        raise BadInput(f"generator_fraction must be in (0, 1], got {fraction}")
    config = copy.deepcopy(discriminator_config)
    if sizing == "debertav3":
        config.num_hidden_layers = max(1, discriminator_config.num_hidden_layers // 2)
        if getattr(config, "layer_types", None) is not None:  # ModernBERT's per-layer attention kinds
            config.layer_types = list(config.layer_types[:config.num_hidden_layers])
        return config
    embedding_width = getattr(discriminator_config, "embedding_size", None) or discriminator_config.hidden_size
    heads = max(1, round(discriminator_config.num_attention_heads * fraction))
    config.num_attention_heads = heads
    config.hidden_size = max(heads, round(discriminator_config.hidden_size * fraction / heads) * heads)
    config.intermediate_size = max(1, round(discriminator_config.intermediate_size * fraction))
    if check_family(config) == "deberta-v2" and not config.legacy:
        raise BadInput("generator_sizing 'electra' narrows the width below the embedding's, which DeBERTa-v2's "
                         "non-legacy MLM head (a product with the token embedding itself) cannot take: use "
                         "legacy=True or generator_sizing 'debertav3'")
    if check_family(config) in ("electra", "deberta-v2"):
        config.embedding_size = embedding_width
    for name in ("pooler_hidden_size", "head_dim"):  # DeBERTa's pooler; fields some versions derive from the width
        if getattr(config, name, None) is not None:
            setattr(config, name, config.hidden_size if name == "pooler_hidden_size" else config.hidden_size // heads)
    return config


def _has_weights(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in
               ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json"))


def _config(spec, argument: str, fields: dict, families: tuple = FAMILIES):
    """A config from a family name of `families` (with `fields`), a config object, or a local folder's
    config.json; its family checked to be one of `families`."""
    transformers = _transformers()
    if isinstance(spec, transformers.PretrainedConfig):
        config = spec
    elif isinstance(spec, str) and spec in families:
        config = family_config(spec, **fields)
    elif isinstance(spec, str) and os.path.isfile(os.path.join(spec, "config.json")):
        config = transformers.AutoConfig.from_pretrained(spec)
    elif isinstance(spec, str) and spec in MASKED_LM_FAMILIES:
        raise BadInput(f"{spec} has no RTD {argument} here: pretrain it with --objective mlm, or choose one of "
                         f"{', '.join(families)}")
    else:
        raise BadInput(f"{argument} must be a family ({', '.join(families)}), a transformers config or a folder "
                         f"holding config.json, got {spec!r}")
    check_family(config, families)
    return config


def build_generator(spec, *, argument: str = "generator", fields: dict | None = None, families: tuple = FAMILIES):
    """The family's XxxForMaskedLM (a family of `families`: FAMILIES for an RTD generator, MASKED_LM_FAMILIES for
    MLM): from a folder's weights when it has them, else freshly initialised."""
    transformers = _transformers()
    config = _config(spec, argument, fields or {}, families)
    if isinstance(spec, str) and spec not in families and _has_weights(spec):
        return transformers.AutoModelForMaskedLM.from_pretrained(spec)
    return transformers.AutoModelForMaskedLM.from_config(config)


def build_discriminator(spec, *, argument: str = "discriminator", fields: dict | None = None):
    """ElectraForPreTraining for ELECTRA, else RtdDiscriminator(the family's base model): from a folder's weights
    when it has them (an RTD head saved beside them too), else freshly initialised."""
    transformers = _transformers()
    config = _config(spec, argument, fields or {})
    family = config.model_type
    folder = spec if isinstance(spec, str) and spec not in FAMILIES and _has_weights(spec) else None
    if family == "electra":
        cls = transformers.ElectraForPreTraining
        return cls.from_pretrained(folder) if folder else cls(config)
    extra = {"add_pooling_layer": False} if family in _WITH_POOLER else {}
    if folder:
        discriminator = RtdDiscriminator(transformers.AutoModel.from_pretrained(folder, **extra))
        if os.path.isfile(os.path.join(folder, RTD_HEAD)):
            from safetensors.torch import load_model

            load_model(discriminator.head, os.path.join(folder, RTD_HEAD))
        return discriminator
    return RtdDiscriminator(transformers.AutoModel.from_config(config, **extra))


def build_models(discriminator, generator=None, *, vocab_size: int, pad_token_id: int,
                 generator_sizing: str = "debertav3", generator_fraction: float = 0.25,
                 embedding_sharing: str = "es", **config_fields):
    """(generator, discriminator) models. Each spec is a family name (then the config takes vocab_size,
    pad_token_id and `config_fields`), a transformers config, or a local folder (its weights loaded when present).
    Without `generator`, the generator's config comes from the discriminator's by `generator_config`. Raises
    BadInput (a ValueError) when a model's vocabulary is smaller than `vocab_size` (the tokenizer's; a larger one
    is padding, never sampled), and for embedding_sharing "gdes" with a discriminator folder that holds weights
    (GDES starts E_delta at zero, so its token embedding would be dropped; a GDES run continues with `pretrain
    --resume`)."""
    if embedding_sharing == "gdes" and isinstance(discriminator, str) and discriminator not in FAMILIES \
            and _has_weights(discriminator):
        raise BadInput(f"embedding_sharing 'gdes' starts the discriminator's embedding at the generator's "
                         f"(E_delta = 0) and would drop the trained one in {discriminator}: give a folder with "
                         "config.json alone, continue a run with --resume, or choose 'es' or 'none'")
    fields = {"vocab_size": vocab_size, "pad_token_id": pad_token_id, **config_fields}
    disc = build_discriminator(discriminator, fields=positions_for(discriminator, fields))
    if generator is None:
        gen = build_generator(generator_config(disc.config, generator_sizing, generator_fraction))
    else:
        gen = build_generator(generator, fields=positions_for(generator, fields))
    for name, model in (("generator", gen), ("discriminator", disc)):
        if model.config.vocab_size < vocab_size:
            raise BadInput(f"{name}: its vocab_size {model.config.vocab_size} is below the tokenizer's {vocab_size}")
    return gen, disc


def positions_for(spec, fields: dict) -> dict:
    """`fields` for a family name's config: RoBERTa and XLM-R number positions from pad_token_id + 1, so their
    table holds pad_token_id + 1 rows more than the longest sequence."""
    if isinstance(spec, str) and spec in ("roberta", "xlm-roberta") and "max_position_embeddings" in fields:
        return {**fields, "max_position_embeddings": fields["max_position_embeddings"] + fields["pad_token_id"] + 1}
    return fields


def encoder_config(config) -> EncoderConfig:
    """An EncoderConfig of a transformers config, for electra_fast.pretraining.flops: the count is an approximation for
    families that are not BERT-shaped (it ignores DeBERTa's relative-position attention, ModernBERT's gated
    feed-forward and local attention, and counts the generator's MLM transform at the embedding width)."""
    return EncoderConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                         num_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
                         intermediate_size=getattr(config, _field_name(config.model_type, "intermediate_size")),
                         embedding_size=getattr(config, "embedding_size", None) or config.hidden_size,
                         max_position_embeddings=config.max_position_embeddings)


# ------------------------------------------------------------------------------------------------------ the export

def save_discriminator(generator, discriminator, directory: str) -> None:
    """Writes the discriminator in its family's format (config.json + model.safetensors: the base model, or
    ElectraForPreTraining for ELECTRA), a GDES embedding merged into one matrix E_G + E_delta; for the other
    families its RTD head as `rtd_head.safetensors`; and the generator, in its XxxForMaskedLM format, in
    `generator/`."""
    from safetensors.torch import save_file

    base, head = _discriminator_parts(discriminator)
    embedding = base.get_input_embeddings()
    if isinstance(embedding, GdesEmbedding):
        merged = nn.Embedding.from_pretrained(embedding.weight.detach().clone(), freeze=False,
                                              padding_idx=embedding.padding_idx)
        base.set_input_embeddings(merged)
    try:
        (base if isinstance(discriminator, RtdDiscriminator) else discriminator).save_pretrained(directory)
    finally:
        base.set_input_embeddings(embedding)
    if isinstance(discriminator, RtdDiscriminator):
        state = {name: tensor.detach().clone().contiguous() for name, tensor in head.state_dict().items()}
        save_file(state, os.path.join(directory, RTD_HEAD),
                  metadata={"format": "pt", "activation": head.activation_name})
    generator.save_pretrained(os.path.join(directory, GENERATOR_FOLDER))
