"""After pretraining the generator is discarded and the discriminator fine-tuned on a downstream task:
classification and regression, token classification (named entities) or extractive question answering.

    from electra_fast.finetune import FinetuneOptions, finetune
    results = finetune(FinetuneOptions(model="run1/discriminator", task="classification",
                                       train="train.tsv", validation="dev.tsv", out="sst2", seeds=5))
    results["median"]    # {"accuracy": ..., "macro_f1": ..., "mcc": ..., "f1": ...}

`electra-fast finetune` is the same from the command line. `electra-fast glue` (`glue.run_glue`) runs the GLUE
suite as the paper does and prints its score table. Modules: `data` (readers and encoding), `metrics` (pure
functions), `train` (models, ELECTRA's optimiser with the schedule of electra_fast.schedule, seeds), `glue` (the
suite), `glue_sample` (a small made-up folder in GLUE's layout), `cli` (the commands' flags, which make
FinetuneOptions).
"""
from __future__ import annotations

from ..models import Encoder, load_hugging_face
from .data import FinetuneDataError
from .train import TASKS, FinetuneOptions, finetune, layerwise_parameter_groups, load_fast_tokenizer, load_model

__all__ = ["FinetuneDataError", "FinetuneOptions", "TASKS", "finetune", "layerwise_parameter_groups",
           "load_discriminator_encoder", "load_fast_tokenizer", "load_model", "load_tokenizer"]

# The name this function had before the data package's own load_tokenizer (a `tokenizers` tokenizer) made it
# ambiguous; kept so that code written against it still imports.
load_tokenizer = load_fast_tokenizer


def load_discriminator_encoder(directory: str) -> Encoder:
    """The built-in encoder of a Hugging Face ELECTRA discriminator or masked-LM folder (`config.json` +
    `model.safetensors`), as `electra-fast pretrain` exports it for every objective and either kind of model."""
    return load_hugging_face(directory).encoder
