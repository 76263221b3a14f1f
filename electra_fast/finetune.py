"""After pretraining the generator is discarded: load the saved discriminator's encoder and fine-tune it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .models import Encoder, SequenceClassifier, load_hugging_face_discriminator


def load_discriminator_encoder(directory: str) -> Encoder:
    """The built-in encoder of a Hugging Face ELECTRA discriminator folder (`config.json` +
    `model.safetensors`), as `ElectraPretrainer.save_discriminator` writes it for either kind of model."""
    return load_hugging_face_discriminator(directory).encoder


def finetune_sequence_classifier(encoder: Encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                 labels: torch.Tensor, *, num_labels: int, epochs: int = 3, lr: float = 1e-4,
                                 batch_size: int = 32) -> SequenceClassifier:
    """Trains a classification head (and the encoder) on input_ids [B, T], labels [B]; returns the model."""
    model = SequenceClassifier(encoder, num_labels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(input_ids.shape[0])
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            loss = F.cross_entropy(model(input_ids[batch], attention_mask[batch]), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
