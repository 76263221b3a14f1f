"""The built-in discriminator exported in Hugging Face's ELECTRA format: transformers loads it and computes the
same logits; electra_fast.finetune loads it back bit for bit."""
import json

import pytest
import torch

from electra_fast import ElectraPretrainer
from electra_fast.models import load_hugging_face

V, PAD, CLS, SEP, MASK = 97, 0, 2, 3, 4


def _trained_model(embedding_size):
    torch.manual_seed(0)
    model = ElectraPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, pad_token_id=PAD,
                                          special_token_ids=(CLS, SEP), num_layers=2, hidden_size=64, num_heads=4,
                                          intermediate_size=96, embedding_size=embedding_size,
                                          max_position_embeddings=40)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):  # move every weight off its initial value (zero biases, unit norms)
        ids = torch.randint(5, V, (4, 24))
        model(ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _padded_batch():
    ids = torch.randint(5, V, (3, 24), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(24)[None] < torch.tensor([[24], [17], [5]])).long()
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize("embedding_size", [32, 64], ids=["projected", "unprojected"])
def test_transformers_loads_the_export_and_gives_the_same_logits(tmp_path, embedding_size):
    transformers = pytest.importorskip("transformers")
    model = _trained_model(embedding_size)
    model.save_discriminator(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["pad_token_id"] == PAD
    hf = transformers.ElectraForPreTraining.from_pretrained(str(tmp_path)).eval()
    ids, mask = _padded_batch()
    with torch.no_grad():
        ours = model.discriminator(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        our_states = model.discriminator.encoder(ids, mask)
        their_states = hf.electra(input_ids=ids, attention_mask=mask).last_hidden_state
    attended = mask.bool()
    assert torch.allclose(their_states[attended], our_states[attended], rtol=1e-5, atol=1e-5)
    assert torch.allclose(theirs[attended], ours[attended], rtol=1e-5, atol=1e-5), \
        (theirs - ours)[attended].abs().max()
    assert ours[attended].std() > 1e-3  # logits that vary, not a constant both sides agree on


def test_export_loads_back_into_the_built_in_discriminator_exactly(tmp_path):
    model = _trained_model(32)
    model.save_discriminator(str(tmp_path))
    loaded = load_hugging_face(str(tmp_path))
    original = model.discriminator.state_dict()
    assert loaded.state_dict().keys() == original.keys()
    assert all(torch.equal(v, original[k]) for k, v in loaded.state_dict().items())


def test_a_folder_without_discriminator_weights_is_refused(tmp_path):
    from safetensors.torch import save_file

    model = _trained_model(32)
    model.save_discriminator(str(tmp_path))
    save_file({"unrelated": torch.zeros(2)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not an ELECTRA discriminator: it lacks 'electra.embeddings"):
        load_hugging_face(str(tmp_path))
