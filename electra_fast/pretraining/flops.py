"""Training compute, counted as the ELECTRA paper's released FLOPs script counts it, so that runs of different
objectives compare at equal compute.

The conventions (Clark et al., 2020, and the script published with the paper):
- a matrix multiply of an m-vector by an m x n matrix is 2·m·n flops; elementwise work is counted per element
  with small constants (layer norm 5, GELU 8, softmax 5, dropout 4);
- training costs twice the forward pass (the backward counted equal to the forward, as the script does); so
  counted, BERT-Small is 1.4e18, BERT-Base and ELECTRA-Base 6.4e19, as in the paper's Table 1, and ELECTRA-Small
  with its quarter-width generator 1.3e18 (the table says 1.4e18, which a half-width generator would give);
- the input embedding lookup is counted *dense*, as a multiply by a one-hot vector (2·E·V per token), unless
  `sparse_embeddings=True`; at the tiny sizes of a CPU run this choice dominates the ELECTRA/MLM ratio;
- the MLM output (projection, GELU, layer norm, the 2·E·V product with the embedding, its softmax) is counted
  only at the masked share of the tokens; the discriminator's head (dense, GELU, dense to one logit) at every
  token.
All counts are per sequence of `seq_len` tokens; multiply by the batch for a step. Hugging Face families other than
ELECTRA and BERT are counted as BERT-shaped encoders of their configs' sizes (hf_encoders.encoder_config), an
approximation for DeBERTa's relative-position attention and ModernBERT's gated feed-forward and local attention.
"""
from __future__ import annotations

from ..models import EncoderConfig

DROPOUT, LAYER_NORM, ACTIVATION, SOFTMAX = 4, 5, 8, 5


def block_flops(c: EncoderConfig, seq_len: int) -> float:
    """Forward flops of one transformer layer for one token (attending over seq_len tokens)."""
    h, i, heads, s = c.hidden_size, c.intermediate_size, c.num_heads, seq_len
    attention = (3 * 2 * h * h + 3 * h                       # q, k, v projections and biases
                 + 2 * h * s + (SOFTMAX + DROPOUT + 1) * s * heads  # scores, softmax, dropout, scaling
                 + 2 * h * s                                 # weighted sum of the values
                 + 2 * h * h + h + DROPOUT * h + h + LAYER_NORM)   # output projection, residual, layer norm
    feed_forward = (2 * h * i + i + ACTIVATION * i             # intermediate, bias, GELU
                    + 2 * i * h + h + DROPOUT * h + h + LAYER_NORM * h)
    return attention + feed_forward


def input_embedding_flops(c: EncoderConfig, seq_len: int, sparse_embeddings: bool = False) -> float:
    """Forward flops per token of the embeddings: the token lookup (dense unless sparse_embeddings), position and
    segment embeddings, layer norm, dropout, and the projection to the hidden size when it differs."""
    e, h = c.embedding_size, c.hidden_size
    flops = (0 if sparse_embeddings else 2 * e * c.vocab_size) + 2 * e * (seq_len + 2) + 2 * e + LAYER_NORM * e \
        + DROPOUT * e
    if e != h:
        flops += 2 * h * e + h
    return flops


def mlm_output_flops(c: EncoderConfig) -> float:
    """Forward flops of the MLM head for one masked token: dense to the embedding size, GELU, layer norm, the
    product with the tied embedding, the softmax and the target's log-probability."""
    e, h, v = c.embedding_size, c.hidden_size, c.vocab_size
    return 2 * h * e + e + ACTIVATION * e + LAYER_NORM * e + 2 * e * v + SOFTMAX * v + 2 * v


def discriminator_head_flops(c: EncoderConfig) -> float:
    """Forward flops of the per-token discriminator head: dense, GELU, dense to one logit."""
    h = c.hidden_size
    return 2 * h * h + h + ACTIVATION * h + 2 * h


def encoder_train_flops(c: EncoderConfig, seq_len: int, *, masked_fraction: float | None,
                        sparse_embeddings: bool = False) -> float:
    """Training flops (forward + backward) of one sequence through an encoder and its head: the MLM head at
    `masked_fraction` of the tokens, or the discriminator's head when masked_fraction is None."""
    head = discriminator_head_flops(c) if masked_fraction is None else masked_fraction * mlm_output_flops(c)
    forward = c.num_layers * block_flops(c, seq_len) + input_embedding_flops(c, seq_len, sparse_embeddings) + head
    return 2 * seq_len * forward


def electra_train_flops(generator: EncoderConfig, discriminator: EncoderConfig, seq_len: int, *,
                        masked_fraction: float, sparse_embeddings: bool = False) -> float:
    """Training flops of one sequence of ELECTRA: the generator (MLM at the masked share) plus the discriminator."""
    return (encoder_train_flops(generator, seq_len, masked_fraction=masked_fraction,
                                sparse_embeddings=sparse_embeddings)
            + encoder_train_flops(discriminator, seq_len, masked_fraction=None, sparse_embeddings=sparse_embeddings))
