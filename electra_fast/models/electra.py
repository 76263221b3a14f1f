"""ELECTRA's generator and discriminator: a BERT-style encoder you can read in one sitting.

Embeddings (token + position + segment, LayerNorm, dropout; projected when the embedding size differs from the
hidden size) -> post-LayerNorm transformer layers (attention through F.scaled_dot_product_attention with the
padding mask, GELU feed-forward). The generator's head is dense -> GELU -> LayerNorm, then the tied token
embedding with its own bias (computed by the fused op, never here); the discriminator's is dense -> GELU ->
dense to one logit per token. Presets follow the ELECTRA paper (Clark et al., 2020).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    embedding_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12


# hidden / layers / heads / intermediate / embedding, and the generator's share of the discriminator's width.
PRESETS = {
    "small": dict(hidden_size=256, num_layers=12, num_heads=4, intermediate_size=1024, embedding_size=128,
                  generator_fraction=0.25),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, embedding_size=768,
                 generator_fraction=1 / 3),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, embedding_size=1024,
                  generator_fraction=0.25),
}


def preset_configs(name: str, *, vocab_size: int, **overrides) -> tuple[EncoderConfig, EncoderConfig]:
    """(generator, discriminator) configs of a preset. Overrides (any EncoderConfig field, or
    generator_fraction) apply to the discriminator; the generator takes its width from the fraction."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    settings = {**PRESETS[name], **overrides}
    fraction = settings.pop("generator_fraction")
    known = {f.name for f in dataclasses.fields(EncoderConfig)}
    unknown = set(settings) - known
    if unknown:
        allowed = sorted(known | {"generator_fraction"})
        raise ValueError(f"unknown preset overrides {sorted(unknown)}; allowed: {allowed}")
    disc = EncoderConfig(vocab_size=vocab_size, **settings)
    gen_heads = max(1, round(disc.num_heads * fraction))
    gen_hidden = max(gen_heads, round(disc.hidden_size * fraction / gen_heads) * gen_heads)
    gen = dataclasses.replace(disc, hidden_size=gen_hidden, num_heads=gen_heads,
                              intermediate_size=max(1, round(disc.intermediate_size * fraction)))
    return gen, disc


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT/ELECTRA initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Embeddings(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.embedding_size)
        self.position = nn.Embedding(c.max_position_embeddings, c.embedding_size)
        self.token_type = nn.Embedding(c.type_vocab_size, c.embedding_size)
        self.norm = nn.LayerNorm(c.embedding_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, input_ids, token_type_ids=None):
        t = input_ids.shape[1]
        x = self.word(input_ids) + self.position(torch.arange(t, device=input_ids.device))
        x = x + (self.token_type.weight[0] if token_type_ids is None else self.token_type(token_type_ids))
        return self.dropout(self.norm(x))


class Layer(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.num_heads = c.num_heads
        self.dropout = c.dropout
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.attn_out = nn.Linear(c.hidden_size, c.hidden_size)
        self.attn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.ff_in = nn.Linear(c.hidden_size, c.intermediate_size)
        self.ff_out = nn.Linear(c.intermediate_size, c.hidden_size)
        self.ff_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x, key_mask):
        b, t, h = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, h // self.num_heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p)
        a = a.transpose(1, 2).reshape(b, t, h)
        x = self.attn_norm(x + F.dropout(self.attn_out(a), p, self.training))
        return self.ff_norm(x + F.dropout(self.ff_out(F.gelu(self.ff_in(x))), p, self.training))


class Encoder(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c)
        self.project = nn.Linear(c.embedding_size, c.hidden_size) if c.embedding_size != c.hidden_size else None
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_layers))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """input_ids [B, T] int64, attention_mask [B, T] (1 = token, 0 = padding) -> [B, T, hidden_size]."""
        x = self.embeddings(input_ids, token_type_ids)
        if self.project is not None:
            x = self.project(x)
        key_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


class Generator(nn.Module):
    """The small masked language model. `features` gives the head's hidden states [B, T, E]; the logits are
    features @ encoder.embeddings.word.weight.T + output_bias, computed by the fused op at masked rows only."""

    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.encoder = Encoder(c)
        self.dense = nn.Linear(c.hidden_size, c.embedding_size)
        self.norm = nn.LayerNorm(c.embedding_size, eps=c.layer_norm_eps)
        self.output_bias = nn.Parameter(torch.zeros(c.vocab_size))
        init_weights(self)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.encoder.embeddings.word.weight

    def transform(self, hidden):
        """The head's transform, dense -> GELU -> LayerNorm: [..., hidden_size] -> [..., embedding_size]."""
        return self.norm(F.gelu(self.dense(hidden)))

    def features(self, input_ids, attention_mask=None):
        return self.transform(self.encoder(input_ids, attention_mask))

    def forward(self, input_ids, attention_mask=None):
        """Full logits [B, T, V] (for inspection; training uses `features` and the fused head)."""
        return self.features(input_ids, attention_mask) @ self.output_weight.T + self.output_bias


class Discriminator(nn.Module):
    """The replaced-token detector: one logit per token, [B, T]."""

    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.encoder = Encoder(c)
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.out = nn.Linear(c.hidden_size, 1)
        init_weights(self)

    def forward(self, input_ids, attention_mask=None):
        return self.out(F.gelu(self.dense(self.encoder(input_ids, attention_mask)))).squeeze(-1)


# ------------------------------------------------------------------------------------- Hugging Face ELECTRA format
# The discriminator as transformers' ElectraForPreTraining, a generator (or the MLM baseline's encoder) as
# ElectraForMaskedLM: config.json + model.safetensors. Names map one to one except attention, which Layer fuses
# into one qkv projection ([3H, H], rows q, k, v) and transformers keeps as three. The masked LM's output weight
# is the token embedding (tied), so only its bias is written.

_HF_EMBEDDINGS = {"word": "word_embeddings", "position": "position_embeddings",
                  "token_type": "token_type_embeddings", "norm": "LayerNorm"}
_HF_LAYER = {"attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
             "ff_in": "intermediate.dense", "ff_out": "output.dense", "ff_norm": "output.LayerNorm"}
_HF_QKV = ("query", "key", "value")
# Per model class: its transformers architecture and the names of its head's parameters there.
_HF_HEADS = {
    Discriminator: ("ElectraForPreTraining", {"dense": "discriminator_predictions.dense",
                                              "out": "discriminator_predictions.dense_prediction"}),
    Generator: ("ElectraForMaskedLM", {"dense": "generator_predictions.dense",
                                       "norm": "generator_predictions.LayerNorm",
                                       "output_bias": "generator_lm_head.bias"}),
}
_ARCHITECTURES = {architecture: kind for kind, (architecture, _) in _HF_HEADS.items()}


def _hf_names(name: str, head: dict[str, str]) -> list[str]:
    """The transformers names of a built-in Discriminator or Generator parameter (`head`: its class's entry of
    _HF_HEADS): one, or q, k, v for the fused qkv (the parameter is their concatenation along dim 0)."""
    parts = name.split(".")
    if parts[0] in head:
        return [".".join([head[parts[0]], *parts[1:]])]
    if parts[1] == "embeddings":
        return [f"electra.embeddings.{_HF_EMBEDDINGS[parts[2]]}.{parts[3]}"]
    if parts[1] == "project":
        return [f"electra.embeddings_project.{parts[2]}"]
    layer = f"electra.encoder.layer.{parts[2]}"
    if parts[3] == "qkv":
        return [f"{layer}.attention.self.{part}.{parts[4]}" for part in _HF_QKV]
    return [f"{layer}.{_HF_LAYER[parts[3]]}.{parts[4]}"]


def hugging_face_config(c: EncoderConfig, architecture: str = "ElectraForPreTraining", **extra) -> dict:
    """config.json of transformers' `architecture` (ElectraForPreTraining or ElectraForMaskedLM) for an encoder
    config (`extra`: e.g. pad_token_id)."""
    return {"architectures": [architecture], "model_type": "electra", "vocab_size": c.vocab_size,
            "embedding_size": c.embedding_size, "hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads, "intermediate_size": c.intermediate_size, "hidden_act": "gelu",
            "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.dropout,
            "max_position_embeddings": c.max_position_embeddings, "type_vocab_size": c.type_vocab_size,
            "layer_norm_eps": c.layer_norm_eps, "position_embedding_type": "absolute", **extra}


def encoder_config_from_hugging_face(config: dict) -> EncoderConfig:
    """The EncoderConfig of a transformers ELECTRA config.json (absolute positions and GELU only)."""
    if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only ELECTRA configs with hidden_act 'gelu' and absolute positions map to the built-in "
                         f"encoder, got {config.get('hidden_act')!r} / {config.get('position_embedding_type')!r}")
    return EncoderConfig(vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
                         num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
                         intermediate_size=config["intermediate_size"],
                         embedding_size=config.get("embedding_size", config["hidden_size"]),
                         max_position_embeddings=config["max_position_embeddings"],
                         type_vocab_size=config["type_vocab_size"], dropout=config["hidden_dropout_prob"],
                         layer_norm_eps=config["layer_norm_eps"])


def to_hugging_face(model: Discriminator | Generator) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' ElectraForPreTraining / ElectraForMaskedLM names, q/k/v split;
    contiguous copies that share no memory (safetensors' requirement)."""
    head = _HF_HEADS[type(model)][1]
    state = {}
    for name, tensor in model.state_dict().items():
        names = _hf_names(name, head)
        for hf, piece in zip(names, tensor.detach().chunk(len(names), dim=0), strict=True):
            state[hf] = piece.clone().contiguous()
    return state


def from_hugging_face(config: dict, state: dict[str, torch.Tensor]) -> Discriminator | Generator:
    """A built-in Discriminator (config.json's architecture ElectraForPreTraining, or none named) or Generator
    (ElectraForMaskedLM) from a transformers ELECTRA config.json dict and its weights. Raises KeyError naming a
    missing weight."""
    kind = _ARCHITECTURES.get((config.get("architectures") or ["ElectraForPreTraining"])[0], Discriminator)
    model = kind(encoder_config_from_hugging_face(config))
    head = _HF_HEADS[kind][1]
    model.load_state_dict({name: torch.cat([state[hf] for hf in _hf_names(name, head)])
                           for name in model.state_dict()})
    return model


def save_hugging_face(model: Discriminator | Generator, directory: str, **config_extra) -> None:
    """Writes `directory/config.json` and `directory/model.safetensors`, which transformers'
    ElectraForPreTraining (a Discriminator) or ElectraForMaskedLM (a Generator) and the AutoModelFor... classes
    load (`config_extra`: e.g. pad_token_id)."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    save_file(to_hugging_face(model), os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    architecture = _HF_HEADS[type(model)][0]
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hugging_face_config(model.encoder.config, architecture, **config_extra), f, indent=2)


def load_hugging_face(directory: str) -> Discriminator | Generator:
    """The built-in Discriminator or Generator of a transformers ElectraForPreTraining or ElectraForMaskedLM
    folder (config.json + model.safetensors), whether saved by `save_hugging_face` or by transformers itself."""
    from safetensors.torch import load_file

    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    state = load_file(os.path.join(directory, "model.safetensors"))
    try:
        return from_hugging_face(config, state)
    except KeyError as e:
        kind = "masked LM" if "ElectraForMaskedLM" in config.get("architectures", ()) else "discriminator"
        raise ValueError(f"{directory}/model.safetensors is not an ELECTRA {kind}: it lacks {e}") from None
