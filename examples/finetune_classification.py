"""Pretrain a tiny ELECTRA for a few steps, keep only the discriminator (saved as a Hugging Face ELECTRA
checkpoint: config.json + model.safetensors), fine-tune it for sequence classification. Synthetic data, runs on a
CPU in under a minute:

    python examples/finetune_classification.py
"""
import tempfile

import torch

from electra_fast import ElectraPretrainer
from electra_fast.finetune import finetune_sequence_classifier, load_discriminator_encoder

V, PAD, CLS, SEP, MASK = 200, 0, 1, 2, 3
torch.manual_seed(0)


def sentences(n, t=32):
    ids = torch.randint(10, V, (n, t))
    ids[:, 0], ids[:, -1] = CLS, SEP
    return ids, torch.ones_like(ids)


model = ElectraPretrainer.from_preset("small", vocab_size=V, mask_token_id=MASK, special_token_ids=(CLS, SEP),
                                      num_layers=2, max_position_embeddings=64)
opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
ids, mask = sentences(256)
for step in range(20):
    batch = torch.randint(0, 256, (16,))
    out = model(ids[batch], mask[batch])
    opt.zero_grad()
    out.loss.backward()
    opt.step()
print(f"pretraining: loss {out.loss.item():.3f}, disc accuracy {out.disc_accuracy.item():.3f}")

with tempfile.TemporaryDirectory() as directory:
    model.save_discriminator(directory)
    encoder = load_discriminator_encoder(directory)

# Task: does the sentence contain an id below 20?
ids, mask = sentences(512)
ids[256:, 1:-1] = torch.where(ids[256:, 1:-1] < 20, ids[256:, 1:-1] + 20, ids[256:, 1:-1])
ids[:256, 5] = torch.randint(10, 20, (256,))
labels = torch.cat([torch.ones(256), torch.zeros(256)]).long()
split = torch.randperm(512)
train, test = split[:400], split[400:]
classifier = finetune_sequence_classifier(encoder, ids[train], mask[train], labels[train], num_labels=2, epochs=8,
                                          lr=3e-4)
with torch.no_grad():
    accuracy = (classifier(ids[test], mask[test]).argmax(-1) == labels[test]).float().mean()
print(f"fine-tuned classifier: test accuracy {accuracy.item():.3f}")
