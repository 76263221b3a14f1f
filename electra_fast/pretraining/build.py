"""The Pretrainer that a PretrainConfig asks for: its objective (ELECTRA, "ELECTRA 15%", MLM) over the built-in
models sized by the preset and the size options, or over Hugging Face models (`discriminator`, `generator`:
electra_fast.hf.encoders), with the tokenizer's vocabulary and special ids."""
from __future__ import annotations

import functools

from ..errors import BadInput
from ..hf import encoders as hf_encoders
from ..models import PRESETS
from .config import PretrainConfig
from .objectives import ElectraPretrainer, MlmPretrainer, Pretrainer


def build_pretrainer(config: PretrainConfig, vocab_size: int, specials: dict) -> Pretrainer:
    """The pretrainer of config.objective, with the tokenizer's vocabulary size and special ids ({"[MASK]": id,
    ...}, as electra_fast.data.shards.special_ids gives them). Raises BadInput naming the options for Hugging Face
    models that do not fit."""
    ids = dict(vocab_size=vocab_size, mask_token_id=specials["[MASK]"], pad_token_id=specials["[PAD]"],
               special_token_ids=(specials["[CLS]"], specials["[SEP]"], specials["[UNK]"]), masking=config.masking)
    return OBJECTIVES[config.objective](config, ids)


def _electra(config: PretrainConfig, ids: dict, **options) -> ElectraPretrainer:
    if config.discriminator:
        models = hugging_face_models(config, vocab_size=ids["vocab_size"], pad_token_id=ids["pad_token_id"])
        return ElectraPretrainer(*models, embedding_sharing=config.embedding_sharing, **ids, **options)
    return ElectraPretrainer.from_preset(config.preset, **ids, **_model_overrides(config), **options,
                                         embedding_sharing=config.embedding_sharing)


def _mlm(config: PretrainConfig, ids: dict) -> MlmPretrainer:
    if config.discriminator:
        model = hugging_face_masked_lm(config, vocab_size=ids["vocab_size"], pad_token_id=ids["pad_token_id"])
        return MlmPretrainer(model, **ids)
    return MlmPretrainer.from_preset(config.preset, **ids, **_model_overrides(config))


# config.objective -> the function that builds its Pretrainer from the config and the tokenizer's ids (the names
# are electra_fast.pretraining.config.OBJECTIVES).
OBJECTIVES = {"electra": _electra, "electra-15": functools.partial(_electra, rtd_tokens="masked"), "mlm": _mlm}


def _model_overrides(config: PretrainConfig) -> dict:
    chosen = {"num_layers": config.num_layers, "hidden_size": config.hidden_size, "num_heads": config.num_heads,
              "intermediate_size": config.intermediate_size, "embedding_size": config.embedding_size,
              "max_position_embeddings": config.max_positions}
    return {k: v for k, v in chosen.items() if v is not None}


def _family_fields(config: PretrainConfig) -> dict:
    """A family name's config fields from the size options, else the preset's sizes."""
    preset = PRESETS[config.preset]
    fields = {"hidden_size": config.hidden_size or preset["hidden_size"], "num_hidden_layers": config.num_layers,
              "num_attention_heads": config.num_heads or preset["num_heads"],
              "intermediate_size": config.intermediate_size or preset["intermediate_size"],
              "max_position_embeddings": config.max_positions}
    if config.embedding_size is not None and config.discriminator in ("electra", "deberta-v2"):
        fields["embedding_size"] = config.embedding_size
    return fields


def _naming_the_models(config: PretrainConfig, error: ValueError) -> BadInput:
    """BadInput naming the options, for a family, folder or sizing that does not fit (`error`'s first line)."""
    named = f"--discriminator {config.discriminator}" + (f" / --generator {config.generator}"
                                                          if config.generator else "")
    return BadInput(f"{named}: {str(error).splitlines()[0]}", field="discriminator")


def hugging_face_models(config: PretrainConfig, *, vocab_size: int, pad_token_id: int):
    """(generator, discriminator) of config.discriminator and config.generator, checked to share their embeddings
    as config.embedding_sharing says; a family name's config takes the size options (else the preset's sizes),
    the tokenizer's vocabulary and pad id. Raises BadInput naming the options."""
    try:
        generator, discriminator = hf_encoders.build_models(
            config.discriminator, config.generator, vocab_size=vocab_size, pad_token_id=pad_token_id,
            generator_sizing=config.generator_sizing or "debertav3", embedding_sharing=config.embedding_sharing,
            **_family_fields(config))
        hf_encoders.check_shareable(generator, discriminator, config.embedding_sharing)
    except ValueError as e:  # BadInput of electra_fast.hf.encoders, or transformers' own for a config it refuses
        raise _naming_the_models(config, e) from None
    return generator, discriminator


def hugging_face_masked_lm(config: PretrainConfig, *, vocab_size: int, pad_token_id: int):
    """The XxxForMaskedLM of config.discriminator for objective "mlm", sized as hugging_face_models sizes the
    discriminator. Raises BadInput naming the option."""
    fields = hf_encoders.positions_for(config.discriminator, {"vocab_size": vocab_size, "pad_token_id": pad_token_id,
                                                              **_family_fields(config)})
    try:
        model = hf_encoders.build_generator(config.discriminator, argument="discriminator", fields=fields,
                                            families=hf_encoders.MASKED_LM_FAMILIES)
        if model.config.vocab_size < vocab_size:
            raise BadInput(f"its vocab_size {model.config.vocab_size} is below the tokenizer's {vocab_size}")
    except ValueError as e:
        raise _naming_the_models(config, e) from None
    return model
