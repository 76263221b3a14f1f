"""The objectives ELECTRA is measured against: the masked-language-model baseline (MlmPretrainer, `pretrain
--objective mlm`) and "ELECTRA 15%" (the RTD loss at the masked positions only), each against an independent
eager computation on the same masks."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import electra_fast
from electra_fast import ElectraPretrainer, MlmPretrainer, mask_token_slots
from electra_fast.ops import api
from electra_fast.ops.masking import MASKING_SPLITS
from electra_fast.pretraining import rtd_metrics
from electra_fast.pretraining.objectives import RTD_TOKENS, _mask_slots

from helpers import REPOSITORY, TINY_FAMILIES, fit_fixed_batch, padded_batch, tiny_config

V, MASK, CLS, SEP, PAD = 150, 3, 1, 2, 0
ROOT = REPOSITORY


def _batch(b=3, t=20, seed=0):
    return padded_batch([t, t - 7, 9][:b], t, V, cls=CLS, sep=SEP, pad=PAD, seed=seed)


SIZE = dict(num_layers=2, hidden_size=48, num_heads=2, intermediate_size=96, embedding_size=24,
            max_position_embeddings=32, dropout=0.0)


def _mlm():
    torch.manual_seed(1)
    return MlmPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, special_token_ids=(CLS, SEP), **SIZE)


def _same_slots(model, ids, mask, seed):
    """The slots the pretrainer drew with torch seeded to `seed` (masking is its first draw)."""
    torch.manual_seed(seed)
    replace_prob, random_prob = MASKING_SPLITS[model.masking]
    return mask_token_slots(ids, mask, mask_token_id=MASK, mask_prob=model.mask_prob,
                            special_token_ids=(CLS, SEP, PAD), mask_replace_prob=replace_prob,
                            random_token_prob=random_prob, vocab_size=V)


def test_mlm_is_the_discriminator_sized_encoder_with_bert_head():
    mlm = _mlm()
    electra = ElectraPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, **SIZE)
    assert mlm.model.encoder.config == electra.discriminator.encoder.config
    assert mlm.model.output_weight is mlm.model.encoder.embeddings.word.weight  # tied, as BERT's


def test_mlm_loss_and_gradients_equal_eager_cross_entropy_at_masked_positions():
    mlm = _mlm()
    ids, mask = _batch()
    torch.manual_seed(7)
    out = mlm(ids, mask)
    out.loss.backward()
    ours = {name: p.grad.clone() for name, p in mlm.named_parameters()}
    mlm.zero_grad()

    slots = _same_slots(mlm, ids, mask, 7)
    valid = slots.valid.view(-1)
    positions, targets = slots.positions.view(-1)[valid], slots.targets.view(-1)[valid]
    assert valid.sum() > 3 and torch.equal(ids.view(-1)[positions], targets)
    logits = mlm.model(slots.masked_ids, mask).view(-1, V)[positions]  # the full [B, T, V] logits, eagerly
    truth = F.cross_entropy(logits.double(), targets)
    truth.backward()
    torch.testing.assert_close(out.loss.double(), truth, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.mlm_loss, out.loss.detach())
    predicted = logits.argmax(-1)
    assert out.mlm_accuracy.item() == pytest.approx((predicted == targets).float().mean().item())
    for name, p in mlm.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_mlm_export_loads_as_hugging_face_masked_lm_and_for_finetuning(tmp_path):
    transformers = pytest.importorskip("transformers")
    from electra_fast.finetune import load_discriminator_encoder
    from electra_fast.finetune.train import load_model
    from electra_fast.models import load_hugging_face

    mlm = _mlm().eval()
    with torch.no_grad():  # a trained-looking bias, so that the test sees whether it is written
        mlm.model.output_bias.normal_()
    mlm.save_pretrained(str(tmp_path))
    hf = transformers.ElectraForMaskedLM.from_pretrained(str(tmp_path)).eval()
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits, mlm.model(ids, mask), rtol=1e-5,
                                   atol=1e-5)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["architectures"] == ["ElectraForMaskedLM"]
    # Fine-tuning takes it: every encoder weight comes from the file.
    classifier = load_model(str(tmp_path), "classification", num_labels=3)
    torch.testing.assert_close(classifier.electra.embeddings.word_embeddings.weight,
                               mlm.model.encoder.embeddings.word.weight)
    # And the built-in loader, whole: encoder and head.
    loaded = load_hugging_face(str(tmp_path))
    assert type(loaded) is type(mlm.model)
    assert all(torch.equal(v, mlm.model.state_dict()[k]) for k, v in loaded.state_dict().items())
    torch.testing.assert_close(load_discriminator_encoder(str(tmp_path))(ids, mask), mlm.model.encoder(ids, mask))


HF_FAMILIES = [name for name, (family, _) in TINY_FAMILIES.items() if family != "distilbert"]


@pytest.mark.parametrize("name", HF_FAMILIES)
def test_mlm_of_a_hugging_face_family_equals_its_own_masked_lm_at_the_masked_positions(name):
    """Float64 on the reference backend: loss, accuracy and every gradient against the family's unpatched
    XxxForMaskedLM scoring every position, at the slots the pretrainer drew (BERT's split: random ids too)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    model = transformers.AutoModelForMaskedLM.from_config(tiny_config(name, vocab_size=V, pad_token_id=PAD)).double()
    mlm = MlmPretrainer(model, mask_token_id=MASK, vocab_size=V, special_token_ids=(CLS, SEP), masking="bert")
    ids, mask = _batch()
    torch.manual_seed(7)
    with electra_fast.use_backend("reference"):
        out = mlm(ids, mask)
        out.loss.backward()
    ours = {n: p.grad.clone() for n, p in mlm.named_parameters() if p.grad is not None}
    mlm.zero_grad()
    slots = _same_slots(mlm, ids, mask, 7)
    valid = slots.valid.view(-1)
    positions, targets = slots.positions.view(-1)[valid], slots.targets.view(-1)[valid]
    positions_kw = {"position_ids": mask.cumsum(1) * mask + PAD} if name in ("roberta", "xlm-roberta") else {}
    logits = model(input_ids=slots.masked_ids, attention_mask=mask, **positions_kw).logits.view(-1, V)[positions]
    truth = F.cross_entropy(logits, targets)
    truth.backward()
    torch.testing.assert_close(out.loss, truth, rtol=1e-12, atol=0)
    assert out.mlm_accuracy.item() == pytest.approx((logits.argmax(-1) == targets).double().mean().item())
    scale = max(p.grad.abs().max() for p in mlm.parameters() if p.grad is not None)
    for n, p in mlm.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours[n], p.grad, rtol=0, atol=1e-10 * scale, msg=n)


@pytest.mark.parametrize("masking", sorted(MASKING_SPLITS))
def test_masking_split_of_the_masked_positions(masking):
    """Over ~12,000 masked positions: the share that became [MASK], a random id, or kept their id, within 5
    standard deviations of the split (a random id equal to the original counts as kept: 1/V of the random)."""
    mlm = MlmPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, special_token_ids=(CLS, SEP),
                                    masking=masking, **SIZE)
    ids, mask = padded_batch([200] * 400, 200, V, cls=CLS, sep=SEP, pad=PAD, seed=3)
    torch.manual_seed(0)
    _, slots = _mask_slots(mlm, ids, mask)
    valid = slots.valid.view(-1)
    seen = slots.masked_ids.view(-1)[slots.positions.view(-1)[valid]]
    original = slots.targets.view(-1)[valid]
    n = valid.sum().item()
    replace_prob, random_prob = MASKING_SPLITS[masking]
    kept_prob = 1 - replace_prob - random_prob + random_prob / V
    for share, p in (((seen == MASK).float().mean(), replace_prob), ((seen == original).float().mean(), kept_prob)):
        assert abs(share.item() - p) <= 5 * (p * (1 - p) / n) ** 0.5 + 1e-9, (masking, share.item(), p)


def test_mlm_pretrainer_refuses_a_discriminator():
    electra = ElectraPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, **SIZE)
    with pytest.raises(TypeError, match="model must be"):
        MlmPretrainer(electra.discriminator, mask_token_id=MASK, vocab_size=V)


def _spy_on_the_head(monkeypatch):
    """Records the inputs of each fused-head call and returns, for the last, the argmax of its float64 logits."""
    seen = {}
    head = api.generator_loss_and_sample

    def spy(hidden, weight, bias, targets, **kwargs):
        logits = hidden.detach().double() @ weight.detach().double().T
        if bias is not None:
            logits = logits + bias.detach().double()
        seen.update(argmax=logits.argmax(-1), targets=targets)
        return head(hidden, weight, bias, targets, **kwargs)

    monkeypatch.setattr(api, "generator_loss_and_sample", spy)
    return seen


def _argmax_accuracy(seen):
    valid = seen["targets"] != -100
    return (seen["argmax"][valid] == seen["targets"][valid]).double().mean().item()


@pytest.mark.parametrize("rtd_tokens", RTD_TOKENS)
def test_the_discriminators_and_generators_metrics_are_those_of_the_tokens_the_loss_scores(monkeypatch, rtd_tokens):
    sklearn = pytest.importorskip("sklearn.metrics")
    torch.manual_seed(4)
    model = ElectraPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, special_token_ids=(CLS, SEP),
                                          rtd_tokens=rtd_tokens, **SIZE)
    seen = {}
    rtd_loss = api.rtd_loss

    def spy(logits, is_replaced, weight):
        seen.update(logits=logits.detach().view(-1), is_replaced=is_replaced.view(-1), weight=weight.view(-1))
        return rtd_loss(logits, is_replaced, weight)

    monkeypatch.setattr(api, "rtd_loss", spy)
    head = _spy_on_the_head(monkeypatch)
    ids, mask = _batch(b=5, t=29)
    torch.manual_seed(8)
    out, scores = model(ids, mask, return_scores=True)
    scored = seen["weight"] != 0
    logits, labels = seen["logits"][scored], seen["is_replaced"][scored]
    assert torch.equal(scores["disc_logits"], logits.float()) and torch.equal(scores["is_replaced"], labels)
    assert torch.equal(out.disc_histogram, rtd_metrics.logit_histogram(logits, labels, torch.ones_like(labels)))
    y, s = labels.numpy(), logits.double().numpy()
    truth = {"disc_auc": sklearn.roc_auc_score(y, s), "disc_recall": sklearn.recall_score(y, s > 0),
             "disc_precision": sklearn.precision_score(y, s > 0, zero_division=float("nan")),
             "disc_accuracy": sklearn.accuracy_score(y, s > 0)}
    counted, exact = model.count_metrics({"disc_histogram": out.disc_histogram}), model.exact_metrics(scores)
    assert set(counted) == {"disc_auc", "disc_precision", "disc_recall"}
    for name, value in truth.items():
        assert exact[name] == pytest.approx(value, abs=1e-12, nan_ok=True), name
        if name in counted:
            assert counted[name] == pytest.approx(value, abs=0.005 if name == "disc_auc" else 1e-12, nan_ok=True)
    assert out.disc_accuracy.item() == pytest.approx(truth["disc_accuracy"], abs=1e-6)
    # The generator's: the argmax of the head's logits, and the share of samples equal to the original, which
    # leave the token real (contract §1): the masked slots left unreplaced.
    slots = _same_slots(model, ids, mask, 8)
    positions = slots.positions.view(-1)[slots.valid.view(-1)]
    sampled_accuracy = 1 - seen["is_replaced"][positions].double().mean().item()
    assert exact["sampled_accuracy"] == pytest.approx(sampled_accuracy, abs=1e-12)
    assert out.sampled_accuracy.item() == pytest.approx(sampled_accuracy, abs=1e-6)
    assert exact["gen_accuracy"] == pytest.approx(_argmax_accuracy(head), abs=1e-12)
    assert out.gen_accuracy.item() == pytest.approx(_argmax_accuracy(head), abs=1e-6)
    assert len(scores["gen_correct"]) == len(positions)


def test_the_mlm_accuracy_is_the_argmax_of_the_heads_logits(monkeypatch):
    model = _mlm()
    ids, mask = _batch(b=6, t=31)
    fit_fixed_batch(model, ids, mask, steps=40, lr=1e-2)  # until it gets some right: a share strictly in (0, 1)
    head = _spy_on_the_head(monkeypatch)
    torch.manual_seed(7)  # masks it was not fitted on
    out, scores = model(ids, mask, return_scores=True)
    assert 0 < _argmax_accuracy(head) < 1
    assert model.exact_metrics(scores)["mlm_accuracy"] == pytest.approx(_argmax_accuracy(head), abs=1e-12)
    assert out.mlm_accuracy.item() == pytest.approx(_argmax_accuracy(head), abs=1e-6)


def test_electra_15_counts_rtd_only_at_the_masked_positions(monkeypatch):
    torch.manual_seed(2)
    model = ElectraPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, special_token_ids=(CLS, SEP),
                                          rtd_tokens="masked", **SIZE)
    seen = {}
    rtd_loss = api.rtd_loss

    def spy(logits, is_replaced, weight):
        seen.update(logits=logits.detach(), is_replaced=is_replaced)
        return rtd_loss(logits, is_replaced, weight)

    monkeypatch.setattr(api, "rtd_loss", spy)
    ids, mask = _batch()
    torch.manual_seed(11)
    out = model(ids, mask)
    slots = _same_slots(model, ids, mask, 11)
    positions = slots.positions.view(-1)[slots.valid.view(-1)]
    logits, labels = seen["logits"].view(-1)[positions], seen["is_replaced"].view(-1)[positions].double()
    truth = F.binary_cross_entropy_with_logits(logits.double(), labels)
    torch.testing.assert_close(out.rtd_loss.double(), truth, rtol=1e-5, atol=0)
    assert out.disc_accuracy.item() == pytest.approx(((logits > 0).double() == labels).double().mean().item())
    # "all" counts every attended token instead: a different loss on the same draw.
    model.rtd_tokens = "all"
    torch.manual_seed(11)
    everywhere = model(ids, mask)
    attended = mask.view(-1).bool()
    truth_all = F.binary_cross_entropy_with_logits(seen["logits"].view(-1)[attended].double(),
                                                   seen["is_replaced"].view(-1)[attended].double())
    torch.testing.assert_close(everywhere.rtd_loss.double(), truth_all, rtol=1e-5, atol=0)
    assert abs(everywhere.rtd_loss.item() - out.rtd_loss.item()) > 1e-4
    # A non-contiguous attention mask (contract §2) gives the same step.
    model.rtd_tokens = "masked"
    torch.manual_seed(11)
    transposed = model(ids, mask.t().contiguous().t())
    for name, value in out._asdict().items():
        torch.testing.assert_close(getattr(transposed, name), value, msg=name)
    with pytest.raises(ValueError, match="rtd_tokens"):
        ElectraPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, rtd_tokens="some", **SIZE)


def test_unused_slot_on_token_zero_does_not_erase_a_masked_token_zero(monkeypatch):
    """Unused slots read token 0 with weight 0; a masked token 0 must keep its weight 1 (accumulated)."""
    ids = torch.tensor([[7, 8, 9, 10, 11, 12, 13, 14]])
    torch.manual_seed(0)
    model = ElectraPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, rtd_tokens="masked",
                                          max_predictions=5, **SIZE)
    for seed in range(40):  # until token 0 is masked
        torch.manual_seed(seed)
        slots = mask_token_slots(ids, None, mask_token_id=MASK, mask_prob=0.15, max_predictions=5)
        if slots.positions[0, 0] == 0:
            break
    assert slots.positions[0, 0] == 0 and not slots.valid.all()
    seen = {}
    rtd_loss = api.rtd_loss

    def spy(logits, is_replaced, weight):
        seen["weight"] = weight
        return rtd_loss(logits, is_replaced, weight)

    monkeypatch.setattr(api, "rtd_loss", spy)
    torch.manual_seed(seed)
    model(ids)
    assert seen["weight"].view(-1).tolist() == [1, 0, 0, 0, 0, 0, 0, 0]


def test_rtd_vs_mlm_smoke_runs_every_objective(tmp_path):
    """bench/rtd_vs_mlm.py --preset smoke: two points per objective, one seed, its figure and table."""
    pytest.importorskip("transformers")
    from pydoc_data import topics

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(line for text in list(topics.topics.values())[:60] for line in text.splitlines()
                                if line.strip()))
    task = tmp_path / "task"
    task.mkdir()
    names = sorted(topics.topics)[:3]  # label: which help topic a line comes from
    lines = [(line.strip().replace("\t", " "), name) for name in names for line in topics.topics[name].splitlines()
             if len(line.split()) > 3]
    for split, part in (("train.tsv", lines[0::2]), ("validation.tsv", lines[1::2])):
        (task / split).write_text("text\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in part))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "rtd_vs_mlm.py"), "--preset", "smoke",
                          "--corpus", str(corpus), "--task-dir", str(task), "--out", str(out)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(out / "results.json") as f:
        results = json.load(f)
    points = results["points"]
    for objective in ("electra", "mlm", "electra-15"):
        mine = sorted((p for p in points if p["objective"] == objective), key=lambda p: p["flops"])
        assert len(mine) == 2 and 0 < mine[0]["flops"] < mine[1]["flops"] <= 3e8
        assert mine[0]["flops"] >= 1.5e8 and 0 < mine[0]["step"] < mine[1]["step"]
        assert all(0 <= p["median"]["accuracy"] <= 1 and len(p["runs"]) == 1 for p in mine)
        assert results["pretraining"][objective]["total_flops"] == mine[1]["flops"]
    # Equal compute: MLM's cheaper steps buy it more of them.
    last = {p["objective"]: p for p in sorted(points, key=lambda p: p["flops"])}
    assert last["mlm"]["step"] > last["electra"]["step"] == last["electra-15"]["step"]
    assert [p["flops"] for p in points if p["objective"] == "from-scratch"] == [0.0]
    with open(os.path.join(last["mlm"]["model"], "config.json")) as f:
        assert json.load(f)["architectures"] == ["ElectraForMaskedLM"]
    assert "| mlm |" in run.stdout and "| from-scratch |" in run.stdout
    assert all(0 <= results["pretraining"][o]["valid_disc_auc"] <= 1 for o in ("electra", "electra-15"))
    curve = run.stdout[run.stdout.index("| objective | step | disc_auc |"):].split("\n\n")[0].splitlines()[2:]
    assert {line.split(" | ")[0] for line in curve} == {"| electra", "| electra-15"}  # MLM has no discriminator
    pytest.importorskip("matplotlib")
    assert (out / "results.png").stat().st_size > 1000 and (out / "discriminator.png").stat().st_size > 1000
