"""ElectraPretrainer: the whole step with the built-in models and with Hugging Face's ELECTRA models."""
import pytest
import torch

import electra_fast
from electra_fast import ElectraPretrainer
from electra_fast.pretraining import rtd_metrics

from helpers import fit_fixed_batch, padded_batch

V, MASK, CLS, SEP, PAD = 120, 3, 1, 2, 0


def _batch(b=4, t=24, seed=0):
    return padded_batch([t, t - 5, t - 9, 6][:b], t, V, cls=CLS, sep=SEP, pad=PAD, seed=seed)


def _builtin(**kw):
    torch.manual_seed(0)
    return ElectraPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, special_token_ids=(CLS, SEP),
                                         num_layers=2, hidden_size=64, num_heads=2, intermediate_size=128,
                                         embedding_size=32, max_position_embeddings=64, dropout=0.0, **kw)


def _hugging_face(**kw):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=V, embedding_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    gen = transformers.ElectraForMaskedLM(transformers.ElectraConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=1, intermediate_size=32, **common))
    disc = transformers.ElectraForPreTraining(transformers.ElectraConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, **common))
    return ElectraPretrainer(gen, disc, mask_token_id=MASK, vocab_size=V, special_token_ids=(CLS, SEP), **kw)


MODELS = [_builtin, _hugging_face]


@pytest.mark.parametrize("make", MODELS)
def test_output_fields_and_loss_composition(make):
    model = make(gen_weight=0.7, disc_weight=20.0)
    ids, mask = _batch()
    before = ids.clone()
    out = model(ids, mask)
    assert torch.equal(ids, before)  # the caller's ids are never changed
    for name, value in out._asdict().items():
        if name not in model.COUNTS:
            assert value.dim() == 0 and value.dtype == torch.float32 and value.isfinite(), name
    assert out.loss.requires_grad and out.mlm_loss.requires_grad and out.rtd_loss.requires_grad
    assert not (out.gen_accuracy.requires_grad or out.sampled_accuracy.requires_grad
                or out.disc_accuracy.requires_grad)
    assert out.disc_histogram.dtype == torch.long and out.disc_histogram.shape == (2, rtd_metrics.BINS)
    assert out.disc_histogram.sum() == mask.sum()  # every attended token, once
    assert torch.allclose(out.loss, 0.7 * out.mlm_loss + 20.0 * out.rtd_loss)
    assert 0 <= out.replaced_fraction <= 0.25


@pytest.mark.parametrize("make", MODELS)
def test_overfitting_a_fixed_batch_lowers_both_losses(make):
    model = make()
    first, *_, out = fit_fixed_batch(model, *_batch(), steps=30)
    assert out.mlm_loss < first.mlm_loss * 0.8 and out.rtd_loss < first.rtd_loss


@pytest.mark.parametrize("make", MODELS)
def test_reference_and_cpp_backends_agree_for_one_seed(make):
    model = make()
    ids, mask = _batch()
    results = []
    for backend in ("reference", "cpp"):
        with electra_fast.use_backend(backend):
            torch.manual_seed(123)
            results.append(model(ids, mask))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", MODELS)
def test_shared_embedding_gets_gradient_from_both_losses(make):
    model = make()
    ids, mask = _batch()
    shared = model._models.shared_embedding()
    torch.manual_seed(0)
    out = model(ids, mask)
    g_mlm, = torch.autograd.grad(out.mlm_loss, shared, retain_graph=True)
    g_rtd, = torch.autograd.grad(out.rtd_loss, shared)
    assert g_mlm.abs().sum() > 0 and g_rtd.abs().sum() > 0
    weight, _ = model._models.output()
    assert weight is shared


def test_padding_is_never_masked_nor_counted():
    model = _builtin()
    ids, mask = _batch()
    torch.manual_seed(0)
    out = model(ids, mask)
    # Changing what sits under padding changes nothing.
    ids2 = ids.clone()
    ids2[mask == 0] = 77
    torch.manual_seed(0)
    out2 = model(ids2, mask)
    assert torch.allclose(out.rtd_loss, out2.rtd_loss) and torch.allclose(out.mlm_loss, out2.mlm_loss)


def test_batch_without_maskable_tokens_is_finite():
    model = _builtin()
    ids = torch.tensor([[CLS, SEP, PAD, PAD], [CLS, SEP, PAD, PAD]])
    out = model(ids)
    assert out.loss.isfinite() and out.mlm_loss == 0
    out.loss.backward()


def test_seeded_step_is_repeatable_and_attention_mask_defaults_to_pad():
    model = _builtin()
    ids, mask = _batch()
    torch.manual_seed(9)
    a = model(ids, mask)
    torch.manual_seed(9)
    b = model(ids)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_bf16_autocast_on_cpu():
    model = _builtin()
    ids, mask = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask)
    assert out.loss.dtype == torch.float32 and out.loss.isfinite()
    out.loss.backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize("make", MODELS)
def test_adversarial_objective_trains_the_generator(make, monkeypatch):
    from electra_fast.ops import custom_ops

    asked = []  # the gradients each head call asks its forward for, by reduction
    forward_grads = custom_ops._forward_grads
    monkeypatch.setattr(custom_ops, "_forward_grads", lambda backend, hidden, weight, bias, reduction, wanted: (
        asked.append((reduction, wanted)) or forward_grads(backend, hidden, weight, bias, reduction, wanted)))
    model = make(generator_objective="adversarial")
    ids, mask = _batch()
    torch.manual_seed(0)
    out = model(ids, mask)
    assert not out.mlm_loss.requires_grad
    assert ("mean", (False, False, False)) in asked  # the MLM loss, reported only, costs no gradient
    out.loss.backward()
    assert model.generator_objective == "adversarial"
    gen_params = [p for n, p in model.named_parameters() if n.startswith("generator.") and p.grad is not None]
    assert any(p.grad.abs().sum() > 0 for p in gen_params)
    with pytest.raises(ValueError, match="generator_objective"):
        make(generator_objective="gan")


def test_temperature_and_disallow_correct_are_used():
    model = _builtin(disallow_correct=True, temperature=0.5)
    ids, mask = _batch()
    seen = []
    real = electra_fast.ops.api.generator_loss_and_sample

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    electra_fast.pretraining.objectives.api.generator_loss_and_sample = spy
    try:
        model(ids, mask)
    finally:
        electra_fast.pretraining.objectives.api.generator_loss_and_sample = real
    assert seen[0]["disallow_correct"] is True and seen[0]["temperature"] == 0.5


def test_hugging_face_discriminator_loads_into_downstream_heads(tmp_path):
    transformers = pytest.importorskip("transformers")
    from electra_fast.finetune import load_discriminator_encoder

    model = _hugging_face()
    ids, mask = _batch()
    model(ids, mask).loss.backward()
    model.save_discriminator(str(tmp_path))
    for cls in (transformers.ElectraForSequenceClassification, transformers.ElectraForTokenClassification,
                transformers.ElectraForQuestionAnswering):
        loaded = cls.from_pretrained(str(tmp_path))
        assert torch.equal(loaded.electra.embeddings.word_embeddings.weight,
                           model.discriminator.electra.embeddings.word_embeddings.weight)
    # the same folder format as the built-in models': electra_fast.finetune reads it into the built-in encoder
    encoder = load_discriminator_encoder(str(tmp_path)).eval()
    with torch.no_grad():
        theirs = model.discriminator.eval().electra(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = encoder(ids, mask)
    assert torch.allclose(ours[mask.bool()], theirs[mask.bool()], rtol=1e-5, atol=1e-5)


def test_builtin_discriminator_saves_and_loads_back(tmp_path):
    from electra_fast.finetune import load_discriminator_encoder

    model = _builtin()
    model.save_discriminator(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    encoder = load_discriminator_encoder(str(tmp_path))
    for a, b in zip(encoder.state_dict().values(), model.discriminator.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_presets_follow_the_paper():
    from electra_fast.models import preset_configs

    gen, disc = preset_configs("small", vocab_size=30522)
    assert (disc.hidden_size, disc.num_layers, disc.embedding_size, gen.hidden_size) == (256, 12, 128, 64)
    gen, disc = preset_configs("base", vocab_size=30522)
    assert (disc.hidden_size, gen.hidden_size, disc.embedding_size) == (768, 256, 768)
    gen, disc = preset_configs("large", vocab_size=30522)
    assert (disc.hidden_size, disc.num_layers, gen.hidden_size) == (1024, 24, 256)
    with pytest.raises(ValueError, match="preset"):
        preset_configs("tiny", vocab_size=10)
    with pytest.raises(ValueError, match="overrides"):
        preset_configs("small", vocab_size=10, layers=2)


def test_head_gets_max_predictions_slots_per_row(monkeypatch):
    rows, targets = [], []
    real = electra_fast.ops.api.generator_loss_and_sample

    def spy(hidden, weight, bias, t, **kwargs):
        rows.append(hidden.shape[0])
        targets.append(t)
        return real(hidden, weight, bias, t, **kwargs)

    monkeypatch.setattr(electra_fast.pretraining.objectives.api, "generator_loss_and_sample", spy)
    ids, mask = _batch()  # rows of 24, 19, 15 and 6 tokens: 22, 17, 13 and 4 eligible
    _builtin()(ids, mask)
    _builtin(max_predictions=2)(ids, mask)
    assert rows == [4 * 4, 4 * 2]  # ceil(0.15 * 24) = 4 slots by default
    assert (targets[0] != -100).view(4, 4).sum(1).tolist() == [3, 3, 2, 1]  # round(0.15 * eligible)
    assert (targets[1] != -100).view(4, 2).sum(1).tolist() == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="max_predictions"):
        _builtin(max_predictions=0)
