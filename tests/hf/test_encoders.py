"""RTD pretraining for Hugging Face encoders (electra_fast.hf.encoders), on tiny random configs of every family: the
step trains; the fused head at masked rows equals each family's own eager XxxForMaskedLM; each embedding-sharing
mode's gradients follow its definition; padded vocabulary ids are never sampled; the export loads in the family's
AutoModel classes; `electra-fast pretrain --discriminator FAMILY` resumes exactly."""
import argparse
import json
import os

import pytest
import torch
import torch.nn.functional as F

import electra_fast
from electra_fast import ElectraPretrainer
from electra_fast.hf import encoders as hf_encoders
from electra_fast.hf import masked_lm
from electra_fast.ops import api
from electra_fast.ops.masking import IGNORE_INDEX

from helpers import TINY_FAMILIES, TINY_SIZES, fit_fixed_batch, interrupted_at_step, padded_batch, tiny_config

transformers = pytest.importorskip("transformers")

V, PAD, CLS, SEP, MASK = 120, 0, 1, 2, 3
FAMILIES = {name: spec for name, spec in TINY_FAMILIES.items() if spec[0] != "distilbert"}  # RTD: no DistilBERT


def _config(name, **changes):
    return tiny_config(name, vocab_size=V, pad_token_id=PAD, **changes)


def _pretrainer(name, embedding_sharing="es", vocab_size=V, **changes):
    torch.manual_seed(0)
    return ElectraPretrainer.from_hugging_face(_config(name, **changes), vocab_size=vocab_size, mask_token_id=MASK,
                                               pad_token_id=PAD, special_token_ids=(CLS, SEP),
                                               embedding_sharing=embedding_sharing)


def _batch(b=4, t=20, seed=0):
    return padded_batch([t, t - 4, t - 9, 7][:b], t, V, cls=CLS, sep=SEP, pad=PAD, seed=seed)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_step_runs_and_both_losses_fall_on_a_fixed_batch(name):
    model = _pretrainer(name, embedding_sharing="gdes" if name.startswith("deberta") else "es")
    losses = fit_fixed_batch(model, *_batch(), steps=20)
    assert all(v.isfinite().all() for out in losses for v in out)
    assert losses[-1].mlm_loss < 0.8 * losses[0].mlm_loss and losses[-1].rtd_loss < losses[0].rtd_loss


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_head_at_masked_rows_equals_the_family_eager_mlm_head(name):
    torch.manual_seed(0)
    config = _config(name)
    generator = transformers.AutoModelForMaskedLM.from_config(config).double()
    adapter = hf_encoders.FamilyAdapter(generator, hf_encoders.build_discriminator(config).double(), "none")
    ids, mask = _batch()
    positions = torch.tensor([1, 3, 5, 20 + 2, 20 + 7, 40 + 4, 60 + 1, 60 + 5])
    targets = ids.view(-1)[positions]
    params = [p for p in generator.parameters() if p.requires_grad]

    # Truth: the family's own forward over the whole sequence, then cross-entropy at the masked rows.
    logits = generator(input_ids=ids, attention_mask=mask).logits
    truth = F.cross_entropy(logits.reshape(-1, logits.shape[-1])[positions], targets)
    truth_grads = torch.autograd.grad(truth, params, allow_unused=True)

    features = adapter.features(ids, mask)
    rows = adapter.transform(features.reshape(-1, features.shape[-1])[positions])
    weight, bias = adapter.output()
    ours, _, _ = api.generator_loss_and_sample(rows, weight, bias, targets, seed=0)
    our_grads = torch.autograd.grad(ours, params, allow_unused=True)

    assert ours.dtype == torch.float64 and torch.allclose(ours, truth, rtol=1e-5, atol=0)
    # Gradients that are 0 in exact arithmetic (the key bias: softmax ignores a shift) are rounding noise on both
    # sides: each is compared within 1e-5 of its own norm or 1e-12 of the whole gradient's.
    scale = torch.cat([b.flatten() for b in truth_grads if b is not None]).norm()
    for (param_name, _), a, b in zip(generator.named_parameters(), our_grads, truth_grads, strict=True):
        if b is None:
            assert a is None or a.abs().sum() == 0, param_name
        else:
            assert (a - b).norm() <= 1e-5 * b.norm() + 1e-12 * scale, param_name
    assert sum(b is not None and b.abs().sum() > 1e-9 * scale for b in truth_grads) >= len(params) // 2


def _step_grads(model, wrt, seed=7):
    """Gradients of the MLM and the RTD loss of one seeded step with respect to each tensor in `wrt`."""
    ids, mask = _batch()
    torch.manual_seed(seed)
    out = model(ids, mask)
    mlm = torch.autograd.grad(out.mlm_loss, wrt, retain_graph=True, allow_unused=True)
    rtd = torch.autograd.grad(out.rtd_loss, wrt, allow_unused=True)
    zero = [torch.zeros_like(t) for t in wrt]
    return (out, [m if m is not None else z for m, z in zip(mlm, zero, strict=True)],
            [r if r is not None else z for r, z in zip(rtd, zero, strict=True)])


def _unshared_copy(name, gen_embedding, disc_embedding):
    """The same models with embedding_sharing "none", the generator's token embedding set to gen_embedding and the
    discriminator's to disc_embedding: the independent computation each mode's gradients are checked against."""
    model = _pretrainer(name, embedding_sharing="none")
    with torch.no_grad():
        model._models.generator_base.get_input_embeddings().weight.copy_(gen_embedding)
        model._models.discriminator_base.get_input_embeddings().weight.copy_(disc_embedding)
    return model


@pytest.mark.parametrize("name", ["bert", "deberta-v3", "modernbert"])
def test_gdes_gradients_follow_its_definition(name):
    model = _pretrainer(name, embedding_sharing="gdes")
    gdes = model._models.discriminator_base.get_input_embeddings()
    assert isinstance(gdes, hf_encoders.GdesEmbedding) and torch.equal(gdes.delta, torch.zeros_like(gdes.delta))
    with torch.no_grad():
        gdes.delta.normal_(0, 0.02)  # a trained E_delta, so that E_D differs from E_G
    e_g = model._models.shared_embedding()
    out, mlm, rtd = _step_grads(model, [e_g, gdes.delta])
    assert torch.equal(rtd[0], torch.zeros_like(e_g))  # stop_gradient: RTD never reaches E_G
    assert torch.equal(mlm[1], torch.zeros_like(gdes.delta))  # E_delta gets RTD gradient only
    assert mlm[0].abs().sum() > 0 and rtd[1].abs().sum() > 0

    # Truth: unshared models whose discriminator embedding is the matrix E_G + E_delta itself.
    plain = _unshared_copy(name, e_g.detach(), (e_g + gdes.delta).detach())
    plain_gen = plain._models.generator_base.get_input_embeddings().weight
    plain_disc = plain._models.discriminator_base.get_input_embeddings().weight
    plain_out, plain_mlm, plain_rtd = _step_grads(plain, [plain_gen, plain_disc])
    assert torch.allclose(out.rtd_loss, plain_out.rtd_loss, rtol=1e-6) and torch.equal(out.mlm_loss, plain_out.mlm_loss)
    assert torch.allclose(rtd[1], plain_rtd[1], rtol=1e-5, atol=1e-9)
    assert torch.allclose(mlm[0], plain_mlm[0], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", ["bert", "deberta-v3", "electra"])
def test_es_gradient_is_the_sum_of_both_losses_gradients(name):
    model = _pretrainer(name, embedding_sharing="es")
    shared = model._models.shared_embedding()
    assert model._models.output()[0] is shared
    assert model._models.discriminator_base.get_input_embeddings().weight is shared
    out, mlm, rtd = _step_grads(model, [shared])
    assert mlm[0].abs().sum() > 0 and rtd[0].abs().sum() > 0

    if name == "electra":
        return  # ELECTRA shares its whole embedding block, which two unshared models do not reproduce
    plain = _unshared_copy(name, shared.detach(), shared.detach())
    plain_gen = plain._models.generator_base.get_input_embeddings().weight
    plain_disc = plain._models.discriminator_base.get_input_embeddings().weight
    _, plain_mlm, plain_rtd = _step_grads(plain, [plain_gen, plain_disc])
    assert torch.allclose(mlm[0], plain_mlm[0], rtol=1e-5, atol=1e-9)
    assert torch.allclose(rtd[0], plain_rtd[1], rtol=1e-5, atol=1e-9)


def test_none_keeps_each_loss_on_its_own_embedding():
    model = _pretrainer("roberta", embedding_sharing="none")
    gen = model._models.generator_base.get_input_embeddings().weight
    disc = model._models.discriminator_base.get_input_embeddings().weight
    assert gen is not disc
    _, mlm, rtd = _step_grads(model, [gen, disc])
    assert torch.equal(rtd[0], torch.zeros_like(gen)) and torch.equal(mlm[1], torch.zeros_like(disc))
    assert mlm[0].abs().sum() > 0 and rtd[1].abs().sum() > 0


def test_padded_vocabulary_ids_are_never_sampled(monkeypatch):
    tokenizer_vocab = 100  # the model's V = 120 ids, the last 20 padding, as DeBERTa-v3's 128,100 for 128,001
    model = _pretrainer("deberta-v3", vocab_size=tokenizer_vocab)
    with torch.no_grad():
        model._models.bias[tokenizer_vocab:] = 30.0  # padding that would take every sample if it were not masked
    seen = []
    real = api.generator_loss_and_sample

    def spy(hidden, weight, bias, targets, **kwargs):
        result = real(hidden, weight, bias, targets, **kwargs)
        seen.append((hidden, weight, bias, targets, result))
        return result

    monkeypatch.setattr(electra_fast.pretraining.objectives.api, "generator_loss_and_sample", spy)
    ids, mask = _batch()
    ids = ids.masked_fill(ids >= tokenizer_vocab, 7)
    for seed in range(5):
        torch.manual_seed(seed)
        model(ids, mask)
    sampled = torch.cat([s[-1][1] for s in seen])
    predicted = torch.cat([s[-1][2] for s in seen])
    assert sampled.numel() > 50 and sampled.max() < tokenizer_vocab and predicted.max() < tokenizer_vocab
    # The loss is the cross-entropy over the tokenizer's ids alone.
    hidden, weight, _, targets, (loss, _, _) = seen[0]
    logits = (hidden @ weight.T + model._models.bias)[:, :tokenizer_vocab]
    assert torch.allclose(loss, F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX), rtol=1e-5)
    with pytest.raises(ValueError, match="vocab_size"):
        _pretrainer("bert", vocab_size=V + 1)


@pytest.mark.parametrize("name,sharing", [(n, "gdes" if n != "xlm-roberta" else "es") for n in FAMILIES])
def test_export_loads_in_the_family_auto_classes_with_the_same_hidden_states(tmp_path, name, sharing):
    model = _pretrainer(name, embedding_sharing=sharing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids, mask = _batch()
    for _ in range(2):  # move every weight (E_delta included) off its initial value
        model(ids, mask).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval().save_discriminator(str(tmp_path))
    with torch.no_grad():
        ours = model._models.discriminator_base(input_ids=ids, attention_mask=mask).last_hidden_state
        our_logits = model._models.logits(ids, mask)
        our_mlm = model._models.output()
        theirs = transformers.AutoModel.from_pretrained(str(tmp_path)).eval()(input_ids=ids, attention_mask=mask)
        reloaded = hf_encoders.build_discriminator(str(tmp_path)).eval()
        reloaded_logits = hf_encoders.FamilyAdapter(
            transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "generator")), reloaded, "none"
        ).logits(ids, mask)
    attended = mask.bool()
    assert ours[attended].std() > 1e-3
    assert torch.allclose(theirs.last_hidden_state[attended], ours[attended], rtol=1e-5, atol=1e-5)
    assert torch.allclose(reloaded_logits[attended], our_logits[attended], rtol=1e-5, atol=1e-5)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == FAMILIES[name][0]
    generator = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "generator"))
    assert torch.equal(generator.get_input_embeddings().weight, model._models.shared_embedding())
    assert torch.equal(hf_encoders.FamilyAdapter(generator, reloaded, "none").output()[1], our_mlm[1])
    for auto in (transformers.AutoModelForSequenceClassification, transformers.AutoModelForTokenClassification):
        loaded, info = auto.from_pretrained(str(tmp_path), num_labels=3, output_loading_info=True)
        prefix = loaded.base_model_prefix + "."
        assert not [k for k in info["missing_keys"] if k.startswith(prefix) and ".pooler." not in k]
    # The folders are model specs too: a pretrainer built from them continues from these weights.
    again = ElectraPretrainer.from_hugging_face(str(tmp_path), str(tmp_path / "generator"), vocab_size=V,
                                                mask_token_id=MASK, embedding_sharing="none").eval()
    with torch.no_grad():
        assert torch.allclose(again._models.logits(ids, mask)[attended], our_logits[attended], rtol=1e-5, atol=1e-5)


def test_generator_sizing():
    disc = _config("deberta-v2-projected", hidden_size=64, num_attention_heads=4, intermediate_size=128,
                   num_hidden_layers=4)
    electra = hf_encoders.generator_config(disc, "electra", 0.25)
    assert (electra.hidden_size, electra.num_attention_heads, electra.intermediate_size,
            electra.num_hidden_layers, electra.embedding_size) == (16, 1, 32, 4, 16)
    v3 = hf_encoders.generator_config(_config("modernbert", num_hidden_layers=4), "debertav3")
    assert (v3.hidden_size, v3.num_hidden_layers, len(v3.layer_types)) == (32, 2, 2)
    assert disc.num_hidden_layers == 4  # a copy
    with pytest.raises(ValueError, match="generator_sizing"):
        hf_encoders.generator_config(disc, "gpt")
    with pytest.raises(ValueError, match="non-legacy"):
        hf_encoders.generator_config(_config("deberta-v2-non-legacy"), "electra")
    # ELECTRA's sizing narrows BERT's embedding with the width: sharing it is refused, naming the way out.
    with pytest.raises(ValueError, match="embedding_sharing 'es' needs token embeddings of one shape"):
        ElectraPretrainer.from_hugging_face("bert", vocab_size=V, mask_token_id=MASK, generator_sizing="electra",
                                            **TINY_SIZES)
    with pytest.raises(ValueError, match="family"):
        ElectraPretrainer.from_hugging_face("gpt2", vocab_size=V, mask_token_id=MASK)


def test_a_folder_with_only_a_config_builds_fresh_models(tmp_path):
    _config("modernbert", num_hidden_layers=4).save_pretrained(str(tmp_path))
    generator, discriminator = hf_encoders.build_models(str(tmp_path), vocab_size=V, pad_token_id=PAD)
    assert isinstance(discriminator, hf_encoders.RtdDiscriminator)
    assert (discriminator.config.num_hidden_layers, generator.config.num_hidden_layers) == (4, 2)
    assert type(generator).__name__ == "ModernBertForMaskedLM"
    with pytest.raises(ValueError, match="vocab_size 120 is below the tokenizer's 121"):
        hf_encoders.build_models(str(tmp_path), vocab_size=V + 1, pad_token_id=PAD)
    with pytest.raises(ValueError, match="embedding_sharing"):
        _pretrainer("bert", embedding_sharing="shared")


# ------------------------------------------------------------------------------------------------ the command line

@pytest.fixture(scope="module")
def roberta_corpus(tmp_path_factory):
    """(corpus file, a byte-level BPE tokenizer with RoBERTa's specials <s> </s> <pad> <mask> <unk>)."""
    from pydoc_data import topics

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("roberta")
    lines = [line for name in sorted(topics.topics)[:3] for line in topics.topics[name].splitlines()
             if line.strip()][:80]
    (root / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                             special_tokens=specials))
    (root / "tokenizer").mkdir()
    tokenizer.save(str(root / "tokenizer" / "tokenizer.json"))
    return str(root / "corpus.txt"), str(root / "tokenizer")


def _pretrain(out, corpus, *extra):
    from electra_fast.pretraining import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    path, tokenizer = corpus
    return cli.main(p.parse_args(["--corpus", path, "--tokenizer", tokenizer, "--num-layers", "2",
                                      "--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "64",
                                      "--seq-len", "24", "--batch-size", "2", "--max-positions", "32",
                                      "--steps", "4", "--save-every", "2", "--out", str(out), *extra]))


@pytest.mark.parametrize("flags", [["--discriminator", "roberta", "--generator", "deberta-v2",
                                    "--embedding-sharing", "gdes"],
                                   ["--discriminator", "modernbert", "--embedding-sharing", "es"]],
                         ids=["roberta-deberta-gdes", "modernbert-es"])
def test_pretrain_command_resumes_a_hugging_face_pair_exactly(tmp_path, roberta_corpus, monkeypatch, flags):
    from safetensors.torch import load_file

    from electra_fast.pretraining import checkpoint

    assert _pretrain(tmp_path / "a", roberta_corpus, *flags) == 0
    with interrupted_at_step(monkeypatch, 3):
        assert _pretrain(tmp_path / "b", roberta_corpus, *flags) == 130
    assert _pretrain(tmp_path / "b", roberta_corpus, *flags, "--resume") == 0

    logs = [[json.loads(line) for line in open(tmp_path / run / "log.jsonl")] for run in "ab"]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    for key in ElectraPretrainer.metric_names():
        assert json.dumps([r[key] for r in logs[0]]) == json.dumps([r[key] for r in logs[1]]), key  # NaN-safe
    weights = [load_file(os.path.join(checkpoint.latest(tmp_path / run), checkpoint.WEIGHTS)) for run in "ab"]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    export = tmp_path / "a" / "discriminator"
    families = flags[1], flags[3] if flags[2] == "--generator" else flags[1]
    assert json.loads((export / "config.json").read_text())["model_type"] == families[0]
    assert json.loads((export / "generator" / "config.json").read_text())["model_type"] == families[1]
    assert transformers.AutoTokenizer.from_pretrained(str(export)).mask_token == "<mask>"
    # another sharing mode is another configuration: refused on resume
    assert _pretrain(tmp_path / "a", roberta_corpus, *flags[:-1], "none", "--resume") == 2


@pytest.mark.parametrize("flags,message", [
    (["--generator", "bert"], "--generator needs --discriminator"),
    (["--discriminator", "gpt2"], "--discriminator gpt2: discriminator must be a family"),
    (["--discriminator", "bert", "--generator-sizing", "electra"], "needs token embeddings of one shape"),
    (["--discriminator", "bert", "--objective", "mlm", "--embedding-sharing", "none"],
     "--embedding-sharing is for the RTD objectives"),
    (["--objective", "mlm", "--generator", "bert"], "--generator needs --discriminator"),
    (["--embedding-sharing", "gdes"], "--embedding-sharing gdes needs --discriminator"),
    (["--generator-sizing", "electra"], "--generator-sizing needs --discriminator"),
])
def test_pretrain_command_refuses_bad_model_choices_in_one_line(tmp_path, roberta_corpus, capsys, flags, message):
    assert _pretrain(tmp_path, roberta_corpus, *flags) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("electra-fast pretrain: error:") and message in error


def test_electra_15_objective_takes_hugging_face_models(tmp_path, roberta_corpus):
    from electra_fast.pretraining import checkpoint

    assert _pretrain(tmp_path, roberta_corpus, "--discriminator", "bert", "--objective", "electra-15") == 0
    config = checkpoint.read_manifest(checkpoint.latest(tmp_path))["config"]
    assert config["objective"] == "electra-15"
    with open(tmp_path / "log.jsonl") as f:
        assert all(0 <= json.loads(line)["disc_accuracy"] <= 1 for line in f)


def test_mlm_objective_pretrains_a_hugging_face_family_and_exports_its_masked_lm(tmp_path, roberta_corpus):
    from safetensors.torch import load_file

    from electra_fast.pretraining import checkpoint

    assert _pretrain(tmp_path, roberta_corpus, "--discriminator", "roberta", "--objective", "mlm",
                     "--masking", "bert") == 0
    config = checkpoint.read_manifest(checkpoint.latest(tmp_path))["config"]
    assert config["objective"] == "mlm" and config["model"]["masking"] == "bert"
    assert config["model"]["encoder"]["model_type"] == "roberta"
    with open(tmp_path / "log.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(r["mlm_loss"] > 0 for r in records)
    export = str(tmp_path / "discriminator")
    model = transformers.AutoModelForMaskedLM.from_pretrained(export)
    assert type(model) is transformers.RobertaForMaskedLM
    trained = load_file(os.path.join(checkpoint.latest(tmp_path), checkpoint.WEIGHTS))
    exported = model.state_dict()
    assert all(torch.equal(exported[k.removeprefix("model.")], v) for k, v in trained.items())
    assert transformers.AutoTokenizer.from_pretrained(export).mask_token == "<mask>"
    # The masking is part of the run: resuming with the other split is refused.
    assert _pretrain(tmp_path, roberta_corpus, "--discriminator", "roberta", "--objective", "mlm", "--resume",
                     "--steps", "6") == 2


@pytest.mark.parametrize("family", [f for f in masked_lm.MASKED_LM_FAMILIES if f != "roberta"])  # roberta: above
def test_mlm_objective_pretrains_and_exports_every_masked_lm_family(tmp_path, roberta_corpus, family):
    """Each family at the size flags (DistilBERT names the feed-forward width hidden_dim), 4 steps, exported in
    its own format: AutoModelForMaskedLM loads the trained weights."""
    from safetensors.torch import load_file

    from electra_fast.pretraining import checkpoint

    assert _pretrain(tmp_path, roberta_corpus, "--discriminator", family, "--objective", "mlm") == 0
    with open(tmp_path / "log.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]
    model = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "discriminator"))
    assert model.config.model_type == family and model.__class__.__name__.endswith("ForMaskedLM")
    config = model.config
    feed_forward = config.hidden_dim if family == "distilbert" else config.intermediate_size
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, feed_forward) == (32, 2, 2, 64)
    assert hf_encoders.encoder_config(config).intermediate_size == 64
    trained = load_file(os.path.join(checkpoint.latest(tmp_path), checkpoint.WEIGHTS))
    exported = model.state_dict()
    assert len(trained) == len(list(model.parameters()))  # each parameter once, tied ones too
    assert all(torch.equal(exported[k.removeprefix("model.")], v) for k, v in trained.items())


def test_distilbert_is_refused_for_rtd_naming_the_mlm_objective(tmp_path, roberta_corpus, capsys):
    assert _pretrain(tmp_path, roberta_corpus, "--discriminator", "distilbert") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--discriminator distilbert: distilbert has no RTD discriminator here: pretrain it with --objective mlm" \
        in error
    assert not (tmp_path / "discriminator").exists()


def test_tie_embeddings_is_the_older_spelling_of_es_and_none():
    config = _config("bert")
    gen, disc = hf_encoders.build_models(config, vocab_size=V, pad_token_id=PAD)
    assert ElectraPretrainer(gen, disc, mask_token_id=MASK, vocab_size=V, tie_embeddings=False) \
        ._models.embedding_sharing == "none"
    gen, disc = hf_encoders.build_models(config, vocab_size=V, pad_token_id=PAD)
    assert ElectraPretrainer(gen, disc, mask_token_id=MASK, vocab_size=V)._models.embedding_sharing == "es"
    with pytest.raises(ValueError, match="contradicts"):
        ElectraPretrainer(gen, disc, mask_token_id=MASK, vocab_size=V, tie_embeddings=False, embedding_sharing="gdes")
    with pytest.raises(ValueError, match="'gdes' needs Hugging Face models"):
        ElectraPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, num_layers=1, embedding_sharing="gdes")


@pytest.mark.parametrize("name", ["modernbert", "deberta-v3"])
def test_finetune_takes_the_exported_folder(tmp_path, roberta_corpus, name):
    """The export of a family without BERT's segment embeddings, with a RoBERTa-style tokenizer, fine-tunes."""
    import io

    from electra_fast.data import shards
    from electra_fast.finetune import FinetuneOptions, finetune

    tokenizer = shards.load_tokenizer(roberta_corpus[1])
    specials = shards.special_ids(tokenizer)
    torch.manual_seed(0)
    model = ElectraPretrainer.from_hugging_face(
        FAMILIES[name][0], vocab_size=tokenizer.get_vocab_size(), mask_token_id=specials["[MASK]"],
        pad_token_id=specials["[PAD]"], embedding_sharing="gdes", **{**TINY_SIZES, **FAMILIES[name][1]})
    folder = tmp_path / "discriminator"
    model.save_discriminator(str(folder))
    shards.save_tokenizer(tokenizer, str(folder))
    rows = [("the cat sat", 0), ("a dog ran far", 1)] * 8
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    results = finetune(FinetuneOptions(model=str(folder), task="classification", train=str(tmp_path / "train.tsv"),
                                       validation=str(tmp_path / "dev.tsv"), text_columns=["sentence"],
                                       out=str(tmp_path / "out"), epochs=1, batch_size=8, progress=False,
                                       log=io.StringIO()))
    assert 0 <= results["median"]["accuracy"] <= 1


@pytest.mark.parametrize("name", ["roberta", "xlm-roberta"])
def test_roberta_positions_follow_the_attention_mask_when_the_pad_id_is_sampled(name):
    model = _pretrainer(name).eval()
    ids, mask = _batch()
    sampled = ids.clone()
    sampled[0, 3] = PAD  # a generator's sample inside an attended row
    base, t = model._models.discriminator_base, ids.shape[1]
    # RoBERTa numbers the attended tokens pad_id + 1, pad_id + 2, ... (the rows are right-padded) and padding pad_id.
    positions = torch.where(mask.bool(), PAD + 1 + torch.arange(t), PAD)
    with torch.no_grad():
        truth = model._models.rtd_head(base(input_ids=sampled, attention_mask=mask,
                                            position_ids=positions).last_hidden_state)
        ours = model._models.logits(sampled, mask)
        by_ids = model._models.rtd_head(base(input_ids=sampled, attention_mask=mask).last_hidden_state)
    attended = mask.bool()
    assert torch.allclose(ours[attended], truth[attended], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(by_ids[0, 4:], truth[0, 4:], atol=1e-4)  # numbering by ids shifts the rest


def test_gdes_refuses_a_discriminator_folder_with_weights(tmp_path):
    model = _pretrainer("bert", embedding_sharing="none")
    model.save_discriminator(str(tmp_path))
    with pytest.raises(ValueError, match="would drop the trained one"):
        ElectraPretrainer.from_hugging_face(str(tmp_path), vocab_size=V, mask_token_id=MASK, pad_token_id=PAD,
                                            embedding_sharing="gdes")
    (tmp_path / "model.safetensors").unlink()  # a folder with config.json alone builds fresh models
    assert ElectraPretrainer.from_hugging_face(str(tmp_path), vocab_size=V, mask_token_id=MASK, pad_token_id=PAD,
                                               embedding_sharing="gdes")._models.embedding_sharing == "gdes"
