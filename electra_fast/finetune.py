"""After pretraining the generator is discarded: load the saved discriminator's encoder and fine-tune it."""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

from .models import Discriminator, EncoderConfig, Encoder, SequenceClassifier


def load_discriminator_encoder(directory: str) -> Encoder:
    """The encoder of a discriminator saved by `ElectraPretrainer.save_discriminator` (built-in models)."""
    with open(os.path.join(directory, "config.json")) as f:
        config = EncoderConfig(**json.load(f))
    discriminator = Discriminator(config)
    state = torch.load(os.path.join(directory, "discriminator.pt"), map_location="cpu", weights_only=True)
    discriminator.load_state_dict(state)
    return discriminator.encoder


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
