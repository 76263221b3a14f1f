"""Twenty ELECTRA steps on one fixed batch, with the built-in models (`from_preset("small", num_layers=2)`) and
with Hugging Face's ElectraForMaskedLM / ElectraForPreTraining; prints the losses of each step.

    python examples/overfit_fixed_batch.py
"""
import torch

from electra_fast import ElectraPretrainer

V, PAD, CLS, SEP, MASK = 30522, 0, 101, 102, 103


def fixed_batch(b=8, t=128):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, V, (b, t), generator=g)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    ids[:, 0], ids[torch.arange(b), lengths - 1] = CLS, SEP
    ids[mask == 0] = PAD
    return ids, mask


def hugging_face_models():
    import transformers

    common = dict(vocab_size=V, embedding_size=128, max_position_embeddings=512)
    generator = transformers.ElectraForMaskedLM(transformers.ElectraConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=256, **common))
    discriminator = transformers.ElectraForPreTraining(transformers.ElectraConfig(
        hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024, **common))
    return generator, discriminator


def train(name, model, steps=20):
    ids, mask = fixed_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    print(f"{name}\n{'step':>4} {'loss':>8} {'mlm':>8} {'rtd':>7} {'gen_acc':>8} {'disc_acc':>8} {'replaced':>8}")
    for step in range(steps):
        torch.manual_seed(step)
        out = model(ids, mask)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        print(f"{step:>4} {out.loss.item():>8.3f} {out.mlm_loss.item():>8.3f} {out.rtd_loss.item():>7.4f} "
              f"{out.gen_accuracy.item():>8.3f} {out.disc_accuracy.item():>8.3f} {out.replaced_fraction.item():>8.3f}")


if __name__ == "__main__":
    torch.manual_seed(0)
    train("built-in models, from_preset('small', num_layers=2)",
          ElectraPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, special_token_ids=(CLS, SEP),
                                        num_layers=2))
    torch.manual_seed(0)
    train("Hugging Face ElectraForMaskedLM + ElectraForPreTraining (2 layers)",
          ElectraPretrainer(*hugging_face_models(), mask_token_id=MASK, vocab_size=V, special_token_ids=(CLS, SEP)))
