"""The fused head inside Hugging Face masked LMs (electra_fast.patch_masked_lm), on tiny random configs of every
family: the patched training loss and every parameter's gradient equal the unpatched forward's (float64, labels
at random positions, a padded batch); eval and label-free forwards give the original logits bit for bit;
num_items_in_batch divides the summed loss, so that Trainer's gradient accumulation gives the full batch's
gradient; the patched model compiles as one graph; its samples follow softmax(logits); padded ids are never
predicted; unpatching restores the original forward."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import electra_fast  # noqa: E402
from electra_fast.hf import masked_lm  # noqa: E402
from electra_fast.ops.numerics import chi_square_pvalue  # noqa: E402

from helpers import TINY_FAMILIES, padded_batch, tiny_config  # noqa: E402

V, PAD, CLS, SEP = 120, 0, 1, 2


def _model(name, dtype=torch.float64, seed=0, **changes):
    torch.manual_seed(seed)
    config = tiny_config(name, vocab_size=V, pad_token_id=PAD, **changes)
    return transformers.AutoModelForMaskedLM.from_config(config).to(dtype).train()


def _batch(seed=0, share=0.3, lengths=(20, 16, 11, 7)):
    """(ids, attention_mask, labels): labels at random attended positions (about `share` of them), else -100."""
    ids, mask = padded_batch(list(lengths), max(lengths), V, cls=CLS, sep=SEP, pad=PAD, seed=seed)
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed + 1)) < share
    return ids, mask, torch.where(chosen & (mask == 1), ids, -100)


def _assert_grads_equal(model, reference, rtol):
    """Every parameter's gradient, to rtol of the largest gradient entry of the model (those that are zero in
    exact arithmetic, such as attention key biases, stay at rounding level)."""
    scale = max(q.grad.abs().max() for q in reference.parameters() if q.grad is not None)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=rtol * scale, msg=name)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_patched_loss_and_every_gradient_equal_the_unpatched_forward(name):
    # A ReLU encoder: RoBERTa's head keeps its hard-coded GELU, the others follow the config.
    activation = {"distilbert": "activation", "modernbert": "hidden_activation"}.get(name, "hidden_act")
    reference = _model(name, **{activation: "relu"})
    model = electra_fast.patch_masked_lm(copy.deepcopy(reference))
    ids, mask, labels = _batch()
    with electra_fast.use_backend("reference"):  # float64 throughout: the comparison is of the wiring alone
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
    want = reference(input_ids=ids, attention_mask=mask, labels=labels)
    # The family's own loss, in float64 (ModernBERT's casts its logits to float32 first: to 1e-6 there).
    truth = F.cross_entropy(want.logits.view(-1, V), labels.view(-1))
    torch.testing.assert_close(want.loss.double(), truth, rtol=1e-6 if name == "modernbert" else 1e-12, atol=0)
    truth.backward()
    assert out.logits is None and want.logits is not None
    torch.testing.assert_close(out.loss, truth, rtol=1e-12, atol=0)
    _assert_grads_equal(model, reference, 1e-10)
    # The outputs at the labelled tokens: their flat indices and the argmax of the unpatched logits there.
    assert torch.equal(out.positions, (labels.view(-1) != -100).nonzero().view(-1))
    assert torch.equal(out.predicted, want.logits.view(-1, V)[out.positions].argmax(-1))


def test_patched_forward_on_each_backend_in_float32(target):
    backend, device = target
    reference = _model("roberta", torch.float32).to(device)
    model = electra_fast.patch_masked_lm(copy.deepcopy(reference))
    ids, mask, labels = (t.to(device) for t in _batch(seed=3))
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    want = reference(input_ids=ids, attention_mask=mask, labels=labels)
    want.loss.backward()
    torch.testing.assert_close(out.loss, want.loss, rtol=1e-5, atol=0)
    _assert_grads_equal(model, reference, 1e-5)


@pytest.mark.parametrize("name", ["bert", "deberta-v3", "modernbert", "distilbert"])
def test_eval_and_label_free_forwards_give_the_original_logits_bit_for_bit(name):
    reference = _model(name, torch.float32)
    model = electra_fast.patch_masked_lm(copy.deepcopy(reference))
    ids, mask, labels = _batch()
    for train, call in ((False, dict(labels=labels)), (True, {}), (True, dict(labels=labels, skip_logits=False))):
        model.train(train), reference.train(train)
        torch.manual_seed(5)
        got = model(input_ids=ids, attention_mask=mask, **call)
        torch.manual_seed(5)
        want = reference(input_ids=ids, attention_mask=mask, **{k: v for k, v in call.items() if k == "labels"})
        assert torch.equal(got.logits, want.logits)
        assert (got.loss is None) == (want.loss is None)
        if want.loss is not None:
            assert torch.equal(got.loss, want.loss)


def test_positional_arguments_and_other_inputs_reach_the_encoder():
    """(ids, mask) positionally, token_type_ids and hidden states asked for: as the unpatched forward takes them."""
    reference = _model("bert")
    model = electra_fast.patch_masked_lm(copy.deepcopy(reference))
    ids, mask, labels = _batch()
    types = (torch.arange(ids.shape[1]) >= 6).long().expand_as(ids)
    with electra_fast.use_backend("reference"):
        out = model(ids, mask, types, labels=labels, output_hidden_states=True)
    want = reference(ids, mask, types, labels=labels, output_hidden_states=True)
    torch.testing.assert_close(out.loss, F.cross_entropy(want.logits.view(-1, V), labels.view(-1)), rtol=1e-12, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, want.hidden_states, strict=True))
    assert not torch.equal(reference(ids, mask, labels=labels).loss, want.loss)  # the token types matter


def test_an_instance_patch_outlives_the_family_unpatch():
    electra_fast.patch_masked_lm("bert")
    try:
        model = electra_fast.patch_masked_lm(_model("bert"))
    finally:
        electra_fast.unpatch_masked_lm("bert")
    assert masked_lm.is_patched(model) and not masked_lm.is_patched(_model("bert"))


def test_skip_logits_without_labels_is_refused():
    model = electra_fast.patch_masked_lm(_model("bert"))
    ids, mask, _ = _batch()
    with pytest.raises(ValueError, match="skip_logits=True needs labels"):
        model(input_ids=ids, attention_mask=mask, skip_logits=True)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_labels_of_another_shape_than_the_tokens_are_refused_as_unpatched_forwards_refuse_them(name):
    reference = _model(name, dtype=torch.float32)
    model = electra_fast.patch_masked_lm(copy.deepcopy(reference))
    ids = torch.randint(5, V, (2, 10), generator=torch.Generator().manual_seed(0))
    labels = torch.where(torch.rand(2, 10, generator=torch.Generator().manual_seed(1)) < 0.5, ids, -100)
    for wrong in (labels[:, :5], labels[:1]):  # fewer labels than tokens; another batch
        with pytest.raises((RuntimeError, ValueError)):
            reference(input_ids=ids, labels=wrong)
        with pytest.raises(ValueError, match=re.escape(f"(2, 10) (or flat [20]), got shape {tuple(wrong.shape)}")):
            model(input_ids=ids, labels=wrong)
    # As many labels as tokens but another batch: the unpatched heads flatten both, the patched one refuses.
    with pytest.raises(ValueError, match=r"got shape \(4, 5\)"):
        model(input_ids=ids, labels=labels.reshape(4, 5))
    # Flat labels mean what [B, T] labels mean, patched and unpatched.
    flat = labels.reshape(-1)
    want = reference(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(reference(input_ids=ids, labels=flat).loss, want)
    torch.testing.assert_close(model(input_ids=ids, labels=flat).loss, want, rtol=1e-5, atol=0)


def test_num_items_in_batch_divides_the_summed_loss():
    reference = _model("electra")
    model = electra_fast.patch_masked_lm(copy.deepcopy(reference))
    ids, mask, labels = _batch()
    with electra_fast.use_backend("reference"):
        got = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(57))
    logits = reference(input_ids=ids, attention_mask=mask).logits
    want = F.cross_entropy(logits.view(-1, V), labels.view(-1), reduction="sum") / 57
    torch.testing.assert_close(got.loss, want, rtol=1e-12, atol=0)


def _train_with_trainer(tmp_path, name, *, patched, accumulation, batch):
    """The weights after one SGD step of transformers.Trainer on 4 fixed sequences of unequal label counts."""
    model = _model(name)
    if patched:
        electra_fast.patch_masked_lm(model)
    ids, mask, labels = _batch(seed=2, share=0.4, lengths=(20, 6, 14, 9))
    rows = [dict(input_ids=i, attention_mask=m, labels=lab) for i, m, lab in zip(ids, mask, labels, strict=True)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / f"{name}-{patched}-{accumulation}"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.5, optim="sgd", max_grad_norm=0.0,
        lr_scheduler_type="constant", report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    with electra_fast.use_backend("reference"):
        transformers.Trainer(model=model, args=args, train_dataset=rows).train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_step(got, want, initial, tol):
    """The two steps' updates agree to `tol` of the largest update entry."""
    scale = max((want[k] - initial[k]).abs().max() for k in want)
    assert scale > 0  # the step moved the weights
    for key in want:
        error = (got[key] - want[key]).abs().max()
        assert error <= tol * scale, f"{key}: {error:.3g} > {tol} x {scale:.3g}"


@pytest.mark.parametrize("name", ["roberta", "modernbert"])
def test_trainer_gradient_accumulation_gives_the_full_batch_step(tmp_path, name):
    """Two micro-batches of 2 with the patched head step as one batch of 4 does unpatched (each micro-batch's
    summed loss over the labelled tokens of both). ModernBERT's own head honours num_items_in_batch too, so its
    unpatched accumulation agrees as well (to 1e-6: its head computes the loss in float32)."""
    tol = 1e-6 if name == "modernbert" else 1e-10
    initial = _model(name).state_dict()
    full_batch = _train_with_trainer(tmp_path, name, patched=False, accumulation=1, batch=4)
    accumulated = _train_with_trainer(tmp_path, name, patched=True, accumulation=2, batch=2)
    _assert_same_step(accumulated, full_batch, initial, tol)
    if name == "modernbert":
        unpatched = _train_with_trainer(tmp_path, name, patched=False, accumulation=2, batch=2)
        _assert_same_step(accumulated, unpatched, initial, tol)


@pytest.fixture
def checks_off():
    electra_fast.set_value_checks(False)
    yield
    electra_fast.set_value_checks(True)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_patched_training_forward_is_one_graph(name, checks_off):
    """fullgraph=True turns any graph break into an error; the count of captured graphs is 1."""
    model = electra_fast.patch_masked_lm(_model(name, torch.float32))
    ids, mask, labels = _batch()
    graphs = []

    def count(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    loss = torch.compile(model, fullgraph=True, backend=count)(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert len(graphs) == 1 and torch.isfinite(loss)


def test_compiled_patched_model_equals_eager(checks_off):
    """A real fullgraph compile (AOT autograd: forward and backward traced with the data-dependent row count)."""
    reference = _model("roberta", torch.float32)
    model = electra_fast.patch_masked_lm(copy.deepcopy(reference))
    eager = electra_fast.patch_masked_lm(copy.deepcopy(reference))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for seed in (0, 1):  # two label counts: the compiled graph is not specialised to one
        ids, mask, labels = _batch(seed=seed)
        got, want = compiled(input_ids=ids, attention_mask=mask, labels=labels), eager(
            input_ids=ids, attention_mask=mask, labels=labels)
        got.loss.backward()
        want.loss.backward()
        torch.testing.assert_close(got.loss, want.loss, rtol=1e-6, atol=0)
    _assert_grads_equal(model, eager, 1e-5)


def test_samples_follow_the_softmax_of_the_logits():
    """64 copies of one sequence, one labelled token each, over 25 seeds: 1,600 samples of one distribution."""
    model = electra_fast.patch_masked_lm(_model("bert", torch.float32, seed=4))
    ids, mask, _ = _batch(lengths=(12,))
    ids, mask = ids.expand(64, -1), mask.expand(64, -1)
    labels = torch.full_like(ids, -100)
    labels[:, 5] = ids[:, 5]
    with torch.no_grad():
        logits = model(input_ids=ids[:1], attention_mask=mask[:1], skip_logits=False).logits[0, 5]
        torch.manual_seed(11)
        samples = torch.cat([model(input_ids=ids, attention_mask=mask, labels=labels, return_samples=True).sampled
                             for _ in range(25)])
    assert samples.shape == (1600,)
    assert chi_square_pvalue(samples, torch.softmax(logits.double(), 0)) > 1e-3
    # Without return_samples the seed stays fixed and nothing is drawn from torch's generator.
    state = torch.get_rng_state()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.sampled is None and torch.equal(torch.get_rng_state(), state)


def test_the_patched_forward_takes_its_seed_as_the_api_does():
    model = electra_fast.patch_masked_lm(_model("bert", torch.float32, seed=4)).eval()
    ids, mask, labels = _batch()
    rows = (labels.view(-1) != -100).sum()

    def samples(**seed):
        return model(input_ids=ids, attention_mask=mask, labels=labels, return_samples=True, **seed).sampled

    torch.manual_seed(1)
    int_seed, tensor_seed = samples(seed=2**40 + 9), samples(seed=torch.tensor(2**40 + 9))
    torch.manual_seed(2)
    assert torch.equal(samples(seed=2**40 + 9), int_seed) and torch.equal(tensor_seed, int_seed)
    assert not torch.equal(samples(seed=2**40 + 10), int_seed)
    torch.manual_seed(3)
    drawn = samples()
    torch.manual_seed(3)
    assert torch.equal(samples(), drawn) and drawn.shape == (rows,)
    with pytest.raises(ValueError, match="seed"):
        samples(seed=-1)


def test_padded_vocabulary_ids_are_never_predicted_nor_sampled():
    reference = _model("deberta-v3")
    model = electra_fast.patch_masked_lm(copy.deepcopy(reference), vocab_size=V - 40)
    ids, mask, labels = _batch()
    labels = labels.clamp_max(V - 41)
    with electra_fast.use_backend("reference"):
        out = model(input_ids=ids, attention_mask=mask, labels=labels, return_samples=True)
    assert out.sampled.max() < V - 40 and out.predicted.max() < V - 40
    logits = reference(input_ids=ids, attention_mask=mask).logits.view(-1, V)[:, :V - 40]
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, labels.view(-1)), rtol=1e-12, atol=0)
    assert torch.equal(out.predicted, logits[out.positions].argmax(-1))


def test_autocast_bf16_loss_near_the_unpatched_one():
    reference = _model("roberta", torch.float32)
    model = electra_fast.patch_masked_lm(copy.deepcopy(reference))
    ids, mask, labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        want = reference(input_ids=ids, attention_mask=mask, labels=labels).loss
    truth = reference(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert abs(got - truth) <= 2 * abs(want - truth) + 1e-2 * truth


def test_unpatch_restores_the_original_forward_of_instance_and_class():
    original = transformers.RobertaForMaskedLM.forward
    model = electra_fast.patch_masked_lm(_model("roberta"))
    assert masked_lm.is_patched(model) and electra_fast.patch_masked_lm(model) is model  # twice: a no-op
    ids, mask, labels = _batch()
    assert model(input_ids=ids, attention_mask=mask, labels=labels).logits is None
    electra_fast.unpatch_masked_lm(model)
    assert not masked_lm.is_patched(model)
    assert model(input_ids=ids, attention_mask=mask, labels=labels).logits is not None

    assert electra_fast.patch_masked_lm("roberta") == "roberta"
    try:
        later = _model("roberta")  # built after the class patch
        assert masked_lm.is_patched(later) and not masked_lm.is_patched(_model("bert"))
        assert later(input_ids=ids, attention_mask=mask, labels=labels).logits is None
    finally:
        electra_fast.unpatch_masked_lm("roberta")
    assert transformers.RobertaForMaskedLM.forward is original and not masked_lm.is_patched(later)


def test_unknown_families_are_refused_naming_the_supported_ones():
    albert = transformers.AlbertForMaskedLM(transformers.AlbertConfig(
        vocab_size=V, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32))
    for bad in (albert, "albert"):
        with pytest.raises(ValueError, match="bert.*roberta.*xlm-roberta.*deberta-v2.*modernbert.*electra.*distilbert"):
            electra_fast.patch_masked_lm(bad)
    with pytest.raises(TypeError, match="masked LM"):
        electra_fast.patch_masked_lm(transformers.AutoModel.from_config(tiny_config("bert", vocab_size=V,
                                                                                   pad_token_id=PAD)))
    with pytest.raises(ValueError, match="vocab_size must be in"):
        electra_fast.patch_masked_lm(_model("bert"), vocab_size=V + 1)
