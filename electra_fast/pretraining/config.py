"""What a pretraining run takes and gives: PretrainConfig, whose fields are the flags of `electra-fast pretrain`
(`--num-layers` is `num_layers`, with the same default and help: the command builds its parser from them), and
PretrainResult, what electra_fast.pretrain returns.

    result = electra_fast.pretrain(PretrainConfig(out="run", steps=200, num_layers=2))
    result.export, result.metrics["loss"], result.valid_metrics, result.tokens_per_s
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..data.config import CorpusOptions
from ..errors import BadInput, at_least, check_ranges, finite_above, finite_at_least, flag, within
from ..hf.encoders import EMBEDDING_SHARING, FAMILIES, GENERATOR_SIZING
from ..models import PRESETS
from ..ops.masking import MASKING_SPLITS
from ..options import option
from . import tensorboard_events

# The default model is ELECTRA-Small cut to 2 layers, so that the default 200 steps finish in minutes on a CPU.
DEFAULT_LAYERS = 2
# log_every's default on a GPU, where a log line waits for the device; on a CPU reading a metric waits for
# nothing (its operations ran when they were called), and the default stays a line per step.
GPU_LOG_EVERY = 10
# --objective: ELECTRA; "ELECTRA 15%" (the paper's Table 5: the RTD loss at the masked positions only);
# masked-language modelling (electra_fast.pretraining.build makes each one's Pretrainer).
OBJECTIVES = ("electra", "electra-15", "mlm")
# Options that count something, at least 1 each (None, where it is the default, passes).
_COUNTS = ("steps", "batch_size", "grad_accum", "save_every", "keep", "log_every", "seq_len", "max_positions",
           "num_layers", "hidden_size", "num_heads", "intermediate_size", "embedding_size")


@dataclass(kw_only=True)
class _DataOption:
    """`data`, a base of its own so that it comes first, before the corpus options it replaces (a dataclass lists
    the fields of its last base first), as the command has always listed it."""
    data: str | None = option(None, "token shards that `electra-fast prepare` wrote (memory-mapped); else --corpus "
                                    "is prepared into OUT/data first", metavar="DATA")


@dataclass(kw_only=True)
class PretrainConfig(CorpusOptions, _DataOption):
    """Every option of a pretraining run, the flags of `electra-fast pretrain`: `data` (token shards already
    prepared), else the corpus options it shares with `prepare` (CorpusOptions: corpus, tokenizer, vocab_size,
    ...), then the ones below. None means a default decided at run time (by the device, the data or the
    preset)."""
    objective: str = option(
        "electra", "electra (default); electra-15: the RTD loss at the masked positions only (the paper's "
                   "ablation); mlm: masked-language modelling, one encoder of the discriminator's size (the "
                   "built-in one, exported as an ELECTRA masked LM, or --discriminator's family, exported as its "
                   "XxxForMaskedLM; finetune takes either)", choices=OBJECTIVES)
    masking: str = option("electra", "what the masked positions become: electra, 85% [MASK] and 15% kept (default); "
                                     "bert, 80% [MASK], 10% a random id, 10% kept", choices=sorted(MASKING_SPLITS))
    preset: str = option("small", choices=sorted(PRESETS))
    num_layers: int = option(DEFAULT_LAYERS, f"encoder layers (default {DEFAULT_LAYERS}; the paper's small preset "
                                             "has 12)", type=int)
    hidden_size: int | None = option(None, "override the preset's hidden size", type=int)
    num_heads: int | None = option(None, "override the preset's attention heads", type=int)
    intermediate_size: int | None = option(None, "override the preset's feed-forward size", type=int)
    embedding_size: int | None = option(None, "override the preset's embedding size", type=int)
    max_positions: int = option(512, "the model's position embeddings", type=int)
    # Hugging Face models (electra_fast.hf.encoders) instead of the built-in pair
    discriminator: str | None = option(
        None, f"a Hugging Face discriminator: a family ({', '.join(FAMILIES)}; with --objective mlm also "
              "distilbert; sized by --hidden-size, --num-layers, ... and the preset) or a config/model folder; "
              "default: the built-in ELECTRA", metavar="FAMILY|DIR")
    generator: str | None = option(None, "the generator, likewise (with --discriminator); default: derived by "
                                         "--generator-sizing", metavar="FAMILY|DIR")
    generator_sizing: str | None = option(None, "the derived generator: ELECTRA's (a quarter of the width) or "
                                                "DeBERTa-v3's (the same width, half the depth; default)",
                                          choices=GENERATOR_SIZING)
    embedding_sharing: str = option("es", "es: one token embedding for both models (ELECTRA's; default); gdes: "
                                          "DeBERTa-v3's gradient-disentangled sharing; none", choices=EMBEDDING_SHARING)
    # training
    seq_len: int = option(128, type=int)
    batch_size: int = option(8, "sequences per process and micro-batch", type=int)
    grad_accum: int = option(1, "micro-batches per optimizer step", type=int)
    steps: int = option(200, "optimizer steps (with --resume, a larger number extends the run)", type=int)
    lr: float = option(5e-4, "peak learning rate", type=float)
    warmup_steps: int | None = option(None, "linear warm-up (default: 10% of --steps)", type=int)
    weight_decay: float = option(0.01, type=float)
    seed: int = option(0, type=int)
    max_flops: float | None = option(
        None, "a compute budget: train for as many steps as it pays for (replaces --steps), FLOPs counted as the "
              "ELECTRA paper counts them (electra_fast.pretraining.flops)", type=float)
    export_at_flops: tuple[float, ...] = option(
        (), "also export the discriminator (with --objective mlm: the encoder) when the run's training FLOPs first "
            "reach each of these, to OUT/exports/flops-X/ (its config.json records the FLOPs and step)",
        type=float, nargs="+", metavar="FLOPS")
    valid_sequences: int | None = option(None, "sequences held out for validation (default: 1% of the data, at "
                                               "most 1,000)", type=int)
    valid_fraction: float | None = option(None, "or this share of the data", type=float)
    eval_every: int | None = option(None, "steps between validations (default: --save-every; 0: none)", type=int)
    # the output folder
    out: str = option("electra-pretrain", "folder for data, checkpoints, log, export")
    save_every: int = option(100, "steps between checkpoints", type=int)
    keep: int = option(2, "checkpoints kept", type=int)
    log_every: int | None = option(
        None, "steps between log lines (log.jsonl, the progress bar, TensorBoard), each the average over the steps "
              "since the previous one; also at every checkpoint, validation and the last step (default: "
              f"{GPU_LOG_EVERY} on a GPU, where the steps between lines run without waiting for it; 1 on a CPU)",
        type=int, metavar="N")
    resume: bool = option(False, "continue from OUT's latest checkpoint", action="store_true")
    # the device
    device: str | None = option(None, "default: cuda:(LOCAL_RANK mod GPUs) if a GPU is present, else cpu")
    bf16: bool | None = option(None, "bf16 autocast (default: on for a GPU that supports it)",
                               action="boolean_optional")
    compile: bool = option(False, "torch.compile the whole step (forward and backward) as one graph",
                           action="store_true")
    tensorboard: bool = option(False, "also write every logged scalar (train and validation, the FLOPs total too) "
                                      "as TensorBoard events under OUT/tensorboard (pip install "
                                      "'electra-fast[tensorboard]')", action="store_true")
    cuda_graphs: bool = option(False, "capture the whole step (forward and backward) as CUDA graphs and replay it "
                                      "(CUDA only; turns the value checks off)", action="store_true")

    def check(self) -> None:
        """Raises BadInput naming (as its flag, `field` set where one option is at fault) the first option whose
        value has the wrong type, lies outside its range, or does not go with another's. electra_fast.pretrain
        calls it before anything is written."""
        super().check()
        check_ranges(self, [*(at_least(name, 1) for name in _COUNTS),
                            finite_above("lr", 0), finite_at_least("weight_decay", 0), at_least("warmup_steps", 0),
                            within("seed", 0, 2 ** 63, high_open=True, written="[0, 2**63)"),
                            at_least("valid_sequences", 0), within("valid_fraction", 0, 1, high_open=True),
                            at_least("eval_every", 0), finite_above("max_flops", 0),
                            ("export_at_flops", lambda values: all(math.isfinite(f) and f > 0 for f in values),
                             "finite numbers > 0")])
        if self.hidden_size is not None and self.num_heads is not None and self.hidden_size % self.num_heads:
            raise BadInput(f"--hidden-size {self.hidden_size} must be a multiple of --num-heads {self.num_heads}",
                           field="hidden_size")
        if self.valid_sequences is not None and self.valid_fraction is not None:
            raise BadInput("--valid-sequences and --valid-fraction: give one of them", field="valid_fraction")
        if not self.discriminator:
            for name in ("generator", "generator_sizing"):
                if getattr(self, name) is not None:
                    raise BadInput(f"{flag(name)} needs --discriminator (the built-in ELECTRA pair comes "
                                   "from --preset)", field=name)
            if self.embedding_sharing == "gdes":
                raise BadInput("--embedding-sharing gdes needs --discriminator (Hugging Face models); the built-in "
                               "ELECTRA pair takes es or none", field="embedding_sharing")
        if self.objective == "mlm":
            rtd_only = {"generator": self.generator, "generator_sizing": self.generator_sizing,
                        "embedding_sharing": None if self.embedding_sharing == "es" else self.embedding_sharing}
            for name, value in rtd_only.items():
                if value is not None:
                    raise BadInput(f"--objective mlm trains one encoder (the built-in one, or --discriminator's "
                                   f"family): {flag(name)} is for the RTD objectives", field=name)
        tensorboard_events.check_available(self.tensorboard, BadInput)
        if self.data and self.corpus:
            raise BadInput("--data and --corpus: give one of them (--data is a corpus already prepared)",
                           field="corpus")
        if self.seq_len > self.max_positions:
            raise BadInput(f"--seq-len {self.seq_len} exceeds the model's {self.max_positions} positions "
                           "(--max-positions)", field="seq_len")
        if self.device is not None:
            try:
                torch.device(self.device)
            except RuntimeError:
                raise BadInput(f"--device must be a torch device (cpu, cuda, cuda:1, ...), got {self.device!r}",
                               field="device") from None


@dataclass(frozen=True)
class PretrainResult:
    """What electra_fast.pretrain returns.

    out: the run's folder (config.out). export: the exported folder, OUT/discriminator (the discriminator in
    Hugging Face format with its tokenizer; with objective "mlm" the masked LM): finetune's --model, or
    transformers' from_pretrained. checkpoint: the latest checkpoint's folder. steps: the run's steps, all
    completed (config.steps, or what max_flops paid for). metrics: the last line of OUT/log.jsonl without its
    valid_* fields: the step, lr, grad_norm, the objective's losses and accuracies averaged over the steps since
    the line before (the discriminator's AUC, precision and recall too), tokens_per_s, tokens, flops, total_flops.
    valid_metrics: the last validation's metrics ({} when the run held none out or validated none), named without
    the valid_ prefix. tokens_per_s: the training tokens per second of this call's steps (None when it trained
    none: a run resumed at its end). Under torchrun every process returns one; rank 0 writes the log and the
    export."""
    out: str
    export: str
    checkpoint: str | None
    steps: int
    metrics: dict = field(default_factory=dict)
    valid_metrics: dict = field(default_factory=dict)
    tokens_per_s: float | None = None
