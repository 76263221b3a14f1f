"""ELECTRA's generator and discriminator: a BERT-style encoder you can read in one sitting.

Embeddings (token + position + segment, LayerNorm, dropout; projected when the embedding size differs from the
hidden size) -> post-LayerNorm transformer layers (attention through F.scaled_dot_product_attention with the
padding mask, GELU feed-forward). The generator's head is dense -> GELU -> LayerNorm, then the tied token
embedding with its own bias (computed by the fused op, never here); the discriminator's is dense -> GELU ->
dense to one logit per token. Presets follow the ELECTRA paper (Clark et al., 2020).
"""
from __future__ import annotations

import dataclasses
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
        raise ValueError(f"unknown preset overrides {sorted(unknown)}; allowed: {sorted(known | {'generator_fraction'})}")
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

    def features(self, input_ids, attention_mask=None):
        return self.norm(F.gelu(self.dense(self.encoder(input_ids, attention_mask))))

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


class SequenceClassifier(nn.Module):
    """A pretrained discriminator's encoder with a classification head on the first token, for fine-tuning."""

    def __init__(self, encoder: Encoder, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        h = encoder.config.hidden_size
        self.dense = nn.Linear(h, h)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(h, num_labels)
        init_weights(self.dense)
        init_weights(self.out)

    def forward(self, input_ids, attention_mask=None):
        first = self.encoder(input_ids, attention_mask)[:, 0]
        return self.out(self.dropout(F.gelu(self.dense(self.dropout(first)))))
