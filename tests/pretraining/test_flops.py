"""Training compute as the ELECTRA paper's FLOPs script counts it: a hand calculation, and the paper's figures."""
import dataclasses

import pytest

from electra_fast.models import EncoderConfig, preset_configs
from electra_fast.pretraining import flops

TINY = EncoderConfig(vocab_size=10, hidden_size=4, num_layers=1, num_heads=2, intermediate_size=8, embedding_size=4)


def test_a_tiny_encoder_counted_by_hand():
    # One layer per token at 3 tokens: q, k, v 3·2·4·4 + 3·4 = 108; scores 2·4·3 + (5 + 4 + 1)·3·2 = 84; values 2·4·3
    # = 24; output 2·4·4 + 4 + 4·4 + 4 + 5 = 61; feed-forward 2·4·8 + 8 + 8·8 = 136 and 2·8·4 + 4 + 4·4 + 4 + 5·4 = 108.
    assert flops.block_flops(TINY, 3) == 108 + 84 + 24 + 61 + 136 + 108 == 521
    # Embeddings: dense lookup 2·4·10, position and segment 2·4·(3 + 2), their sum 2·4, layer norm 5·4, dropout 4·4.
    assert flops.input_embedding_flops(TINY, 3) == 80 + 40 + 8 + 20 + 16 == 164
    assert flops.input_embedding_flops(TINY, 3, sparse_embeddings=True) == 164 - 80
    assert flops.discriminator_head_flops(TINY) == 32 + 4 + 32 + 8 == 76
    # MLM head: 2·4·4 + 4 + 8·4 + 5·4 + 2·4·10 + 5·10 + 2·10
    assert flops.mlm_output_flops(TINY) == 32 + 4 + 32 + 20 + 80 + 50 + 20 == 238
    # Training: 2 (forward + backward) x 3 tokens x per-token forward; the MLM head at a third of the tokens.
    assert flops.encoder_train_flops(TINY, 3, masked_fraction=None) == 2 * 3 * (521 + 164 + 76) == 4566
    assert flops.encoder_train_flops(TINY, 3, masked_fraction=1 / 3) == pytest.approx(2 * 3 * (521 + 164 + 238 / 3))
    projected = dataclasses.replace(TINY, embedding_size=2)  # E != H adds the projection 2·4·2 + 4
    assert flops.input_embedding_flops(projected, 3) == \
        (2 * 2 * 10 + 2 * 2 * 5 + 2 * 2 + 5 * 2 + 4 * 2) + (2 * 4 * 2 + 4)


@pytest.mark.parametrize("model, steps, batch, seq_len, expected", [
    ("electra-small", 1_000_000, 128, 128, 1.3e18),  # the paper's table says 1.4e18: see flops.py
    ("bert-small", 1_450_000, 128, 128, 1.4e18),
    ("electra-base", 766_000, 256, 512, 6.4e19),
    ("bert-base", 1_000_000, 256, 512, 6.4e19),
])
def test_the_papers_training_flops(model, steps, batch, seq_len, expected):
    """The paper's Table 1 as its FLOPs script computes it: generators a quarter (Small, 64 wide) and a third (Base,
    256 wide) of the discriminator; 20 of every 128 tokens predicted."""
    small = EncoderConfig(vocab_size=30522, hidden_size=256, num_layers=12, num_heads=4, intermediate_size=1024,
                          embedding_size=128)
    base = EncoderConfig(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                         embedding_size=768)
    disc = small if "small" in model else base
    width = 64 if "small" in model else 256
    gen = dataclasses.replace(disc, hidden_size=width, num_heads=width // 64, intermediate_size=4 * width)
    masked = 0.15625
    per_sequence = (flops.electra_train_flops(gen, disc, seq_len, masked_fraction=masked) if model.startswith("electra")
                    else flops.encoder_train_flops(disc, seq_len, masked_fraction=masked))
    assert f"{per_sequence * batch * steps:.1e}" == f"{expected:.1e}"


def test_embedding_convention_sets_the_electra_to_mlm_ratio_at_tiny_sizes():
    gen, disc = preset_configs("small", vocab_size=30522, num_layers=2, hidden_size=128, num_heads=2,
                               intermediate_size=512, embedding_size=128)
    ratios = [flops.electra_train_flops(gen, disc, 128, masked_fraction=0.15, sparse_embeddings=sparse)
              / flops.encoder_train_flops(disc, 128, masked_fraction=0.15, sparse_embeddings=sparse)
              for sparse in (True, False)]
    assert ratios == pytest.approx([1.07, 1.80], abs=0.01)
