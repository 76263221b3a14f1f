"""`electra-fast pretrain`: ELECTRA pretraining on a text corpus, on one process or many (torchrun, DDP); with
`--objective` also the paper's "ELECTRA 15%" ablation or the masked-language-model baseline.

Data: token shards that `electra-fast prepare` wrote (`--data`), memory-mapped, or `--corpus` prepared into
OUT/data first (electra_fast.data.prepare; by default the help topics that ship with Python). Windows of `--seq-len`
are visited once per epoch in a seeded order, each rank its own share, with a held-out validation split evaluated
every `--eval-every` steps (electra_fast.data.shards). Training: AdamW (no weight decay on LayerNorm and biases), linear
warm-up then linear decay to 0, gradient clipping at 1.0, gradient accumulation, bf16 autocast, the whole step
compiled as one graph (on CUDA also captured as CUDA graphs). Each step re-seeds torch from (base seed, step,
data-parallel rank) (contract §2 Seeds): ranks never share noise, and a resumed run draws what the uninterrupted one
drew. Checkpoints (electra_fast.pretrain.checkpoint) are safetensors + a weights-only state file behind an atomic `latest`
pointer.

Logging: the steps between two log lines never wait for the device (on a GPU each wait leaves it idle while Python
catches up). Each step's losses, accuracies, gradient norm and counts (the discriminator's logit histogram) are
summed on the device; a line, written every `--log-every` steps (default 10 on a GPU, 1 on a CPU) and at every
checkpoint, validation and the last step, reads the sums: each metric averaged over the steps since the previous
line (AUC, precision and recall from the counts summed over those steps), and the tokens per second of their
training (the previous line's validation and checkpoint not counted). The progress bar and the TensorBoard scalars
show the same values. A resumed run starts at a checkpoint, where a line was written, so its log is the
uninterrupted run's. Output folder:

    OUT/data/                 the prepared corpus and its tokenizer (with --corpus)
    OUT/checkpoints/step-N/   checkpoints; OUT/latest names the newest complete one
    OUT/log.jsonl             one line of metrics every --log-every steps; OUT/loss.png the curve (with matplotlib)
    OUT/discriminator/        the discriminator in Hugging Face ELECTRA format, with the tokenizer (with
                              --discriminator: its family's format, the RTD head and the generator beside it)

A resumed run may raise --steps: it continues with the decay recomputed for the new total. Bad input (corpus,
data, tokenizer, checkpoint, a flag out of range, a full disk) ends the command with a one-line error and exit
status 2; the last good checkpoint stays as it was.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import time

import torch

from . import checkpoint, tensorboard_events
from ..data import shards as data, prepare
from ..hf import encoders as hf_encoders
from .. import locking
from .checkpoint import CheckpointError
from ..data.corpus import CorpusError
from ..data.shards import DataError
from ..models import PRESETS
from ..ops.masking import MASKING_SPLITS
from .objectives import ElectraPretrainer, MlmPretrainer, Pretrainer
from ..ops.settings import set_value_checks, value_checks

# The default model is ELECTRA-Small cut to 2 layers, so that the default 200 steps finish in minutes on a CPU.
DEFAULT_LAYERS = 2
# --log-every's default on a GPU, where a log line waits for the device; on a CPU reading a metric waits for
# nothing (its operations ran when they were called), and the default stays a line per step.
GPU_LOG_EVERY = 10
_PROGRESS_NAMES = {"loss": "loss", "mlm_loss": "mlm", "rtd_loss": "rtd", "gen_accuracy": "gen_acc",
                   "disc_accuracy": "disc_acc", "disc_auc": "disc_auc", "mlm_accuracy": "mlm_acc"}
EXIT_BAD_INPUT = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DATA", default=None,
                   help="token shards that `electra-fast prepare` wrote (memory-mapped); else --corpus is prepared "
                        "into OUT/data first")
    prepare.add_arguments(p, out_flag=False)
    p.add_argument("--objective", default="electra", choices=list(OBJECTIVES),
                   help="electra (default); electra-15: the RTD loss at the masked positions only (the paper's "
                        "ablation); mlm: masked-language modelling, one encoder of the discriminator's size (the "
                        "built-in one, exported as an ELECTRA masked LM, or --discriminator's family, exported as "
                        "its XxxForMaskedLM; finetune takes either)")
    p.add_argument("--masking", default="electra", choices=sorted(MASKING_SPLITS),
                   help="what the masked positions become: electra, 85%% [MASK] and 15%% kept (default); bert, 80%% "
                        "[MASK], 10%% a random id, 10%% kept")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--num-layers", type=int, default=DEFAULT_LAYERS,
                   help=f"encoder layers (default {DEFAULT_LAYERS}; the paper's small preset has 12)")
    p.add_argument("--hidden-size", type=int, default=None, help="override the preset's hidden size")
    p.add_argument("--num-heads", type=int, default=None, help="override the preset's attention heads")
    p.add_argument("--intermediate-size", type=int, default=None, help="override the preset's feed-forward size")
    p.add_argument("--embedding-size", type=int, default=None, help="override the preset's embedding size")
    p.add_argument("--max-positions", type=int, default=512, help="the model's position embeddings")
    hf_encoders.add_arguments(p)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per process and micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, default=200,
                   help="optimizer steps (with --resume, a larger number extends the run)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up (default: 10%% of --steps)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-flops", type=float, default=None,
                   help="a compute budget: train for as many steps as it pays for (replaces --steps), FLOPs counted "
                        "as the ELECTRA paper counts them (electra_fast.pretrain.flops)")
    p.add_argument("--export-at-flops", type=float, nargs="+", default=(), metavar="FLOPS",
                   help="also export the discriminator (with --objective mlm: the encoder) when the run's training "
                        "FLOPs first reach each of these, to OUT/exports/flops-X/ (its config.json records the FLOPs "
                        "and step)")
    p.add_argument("--valid-sequences", type=int, default=None,
                   help="sequences held out for validation (default: 1%% of the data, at most 1,000)")
    p.add_argument("--valid-fraction", type=float, default=None, help="or this share of the data")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between validations (default: --save-every; 0: none)")
    p.add_argument("--out", default="electra-pretrain", help="folder for data, checkpoints, log, export")
    p.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept")
    p.add_argument("--log-every", type=int, default=None, metavar="N",
                   help=f"steps between log lines (log.jsonl, the progress bar, TensorBoard), each the average over "
                        f"the steps since the previous one; also at every checkpoint, validation and the last step "
                        f"(default: {GPU_LOG_EVERY} on a GPU, where the steps between lines run without waiting for "
                        f"it; 1 on a CPU)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's latest checkpoint")
    p.add_argument("--device", default=None, help="default: cuda:(LOCAL_RANK mod GPUs) if a GPU is present, else cpu")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for a GPU that supports it)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the whole step (forward and backward) as one graph")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write every logged scalar (train and validation, the FLOPs total too) as TensorBoard "
                        "events under OUT/tensorboard (pip install 'electra-fast[tensorboard]')")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="capture the whole step (forward and backward) as CUDA graphs and replay it (CUDA only; "
                        "turns the value checks off)")


def check_arguments(args: argparse.Namespace) -> None:
    """Raises DataError naming the first numeric flag outside its range."""
    prepare.check_arguments(args)
    at_least_one = ("steps", "batch_size", "grad_accum", "save_every", "keep", "log_every", "seq_len",
                    "max_positions", "num_layers", "hidden_size", "num_heads", "intermediate_size", "embedding_size")
    checks = [(name, getattr(args, name) is None or getattr(args, name) >= 1, "at least 1") for name in at_least_one]
    checks += [("lr", math.isfinite(args.lr) and args.lr > 0, "a finite number > 0"),
               ("weight_decay", math.isfinite(args.weight_decay) and args.weight_decay >= 0, "a finite number >= 0"),
               ("warmup_steps", args.warmup_steps is None or args.warmup_steps >= 0, "at least 0"),
               ("seed", 0 <= args.seed < 2 ** 63, "in [0, 2**63)"),
               ("valid_sequences", args.valid_sequences is None or args.valid_sequences >= 0, "at least 0"),
               ("valid_fraction", args.valid_fraction is None or 0 <= args.valid_fraction < 1, "in [0, 1)"),
               ("eval_every", args.eval_every is None or args.eval_every >= 0, "at least 0"),
               ("max_flops", args.max_flops is None or (math.isfinite(args.max_flops) and args.max_flops > 0),
                "a finite number > 0"),
               ("export_at_flops", all(math.isfinite(f) and f > 0 for f in args.export_at_flops),
                "finite numbers > 0")]
    for name, ok, expected in checks:
        if not ok:
            raise DataError(f"--{name.replace('_', '-')} must be {expected}, got {getattr(args, name)}")
    if args.hidden_size is not None and args.num_heads is not None and args.hidden_size % args.num_heads:
        raise DataError(f"--hidden-size {args.hidden_size} must be a multiple of --num-heads {args.num_heads}")
    if args.valid_sequences is not None and args.valid_fraction is not None:
        raise DataError("--valid-sequences and --valid-fraction: give one of them")
    if not args.discriminator:
        for flag, value in (("--generator", args.generator), ("--generator-sizing", args.generator_sizing)):
            if value is not None:
                raise DataError(f"{flag} needs --discriminator (the built-in ELECTRA pair comes from --preset)")
        if args.embedding_sharing == "gdes":
            raise DataError("--embedding-sharing gdes needs --discriminator (Hugging Face models); the built-in "
                            "ELECTRA pair takes es or none")
    if args.objective == "mlm":
        for flag, value in (("--generator", args.generator), ("--generator-sizing", args.generator_sizing),
                            ("--embedding-sharing", None if args.embedding_sharing == "es" else args.embedding_sharing)):
            if value is not None:
                raise DataError(f"--objective mlm trains one encoder (the built-in one, or --discriminator's family): "
                                f"{flag} is for the RTD objectives")
    tensorboard_events.check_available(args.tensorboard, DataError)
    if args.data and args.corpus:
        raise DataError("--data and --corpus: give one of them (--data is a corpus already prepared)")
    if args.seq_len > args.max_positions:
        raise DataError(f"--seq-len {args.seq_len} exceeds the model's {args.max_positions} positions "
                        "(--max-positions)")


def step_seed(base: int, step: int, rank: int) -> int:
    """torch's seed for one step of one rank: distinct for every (step, rank) of a run."""
    return (base * 1_000_003 + step) * 4099 + rank


def lr_multiplier(step: int, *, warmup: int, total: int) -> float:
    """ELECTRA's schedule at optimizer step `step` (0-based): (step + 1) / warmup during warm-up, then linear
    decay that would reach 0 at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def main(args: argparse.Namespace) -> int:
    """Runs `electra-fast pretrain`; returns the exit status (2 for bad input, 130 when interrupted)."""
    dist = _Distributed(args.device)
    try:
        check_arguments(args)
        with locking.exclusive(args.out, rank=dist.rank, broadcast=dist.broadcast):  # rank 0 alone writes
            return _pretrain(args, dist)
    except (DataError, CorpusError, CheckpointError, OSError) as e:
        print(f"electra-fast pretrain: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        dist.close()


class _Distributed:
    """The process's place in a torchrun job (WORLD_SIZE, RANK, LOCAL_RANK) and its device. NCCL when every local
    rank has a GPU of its own, gloo otherwise (CPU, or more ranks than GPUs: NCCL refuses two ranks on one GPU)."""

    def __init__(self, requested_device: str | None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        gpus = torch.cuda.device_count()
        device = torch.device(requested_device or ("cuda" if gpus else "cpu"))
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank % max(1, gpus))
        self.device = device
        if self.world > 1 and not torch.distributed.is_initialized():
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
            nccl = device.type == "cuda" and local_world <= gpus and torch.distributed.is_nccl_available()
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl" if nccl else "gloo")

    def broadcast(self, value):
        """Rank 0's `value` on every rank (any picklable object)."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, items: list) -> list:
        """Every rank's `items` (picklable), concatenated in rank order, on every rank."""
        if self.world == 1:
            return items
        every = [None] * self.world
        torch.distributed.all_gather_object(every, items)
        return [item for part in every for item in part]

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(values)
            values /= self.world
        return values

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(values)
        return values

    def close(self):
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _pretrain(args: argparse.Namespace, dist: _Distributed) -> int:
    from tqdm import tqdm

    previous = checkpoint.latest(args.out)
    if previous and not args.resume:
        raise CheckpointError(f"--out {args.out} already holds a checkpoint ({previous}); pass --resume to "
                              "continue it, or choose another --out")
    saved = checkpoint.read_manifest(previous)["config"] if previous else None
    device, rank = dist.device, dist.rank
    if args.cuda_graphs and device.type != "cuda":
        raise DataError(f"--cuda-graphs needs a CUDA device, got {device}")
    bf16 = args.bf16 if args.bf16 is not None else device.type == "cuda" and torch.cuda.is_bf16_supported()

    tokens = _token_data(args, dist)
    tokenizer = data.load_tokenizer(tokens.tokenizer_dir)
    specials = data.special_ids(tokenizer)
    windows = tokens.windows(args.seq_len, _valid_sequences(args, tokens))
    tokens.verify(rank, dist.world)

    torch.manual_seed(args.seed)
    model = _build_model(args, tokenizer.get_vocab_size(), specials).to(device)
    step_flops = args.batch_size * args.grad_accum * dist.world * model.sequence_flops(args.seq_len)
    if args.max_flops is not None:
        args.steps = int(args.max_flops // step_flops)
        if args.steps < 1:
            raise DataError(f"--max-flops {args.max_flops:.3g} pays for no step (one step costs {step_flops:.3g})")
        if rank == 0:
            print(f"--max-flops {args.max_flops:.3g}: {args.steps} steps of {step_flops:.3g} FLOPs", file=sys.stderr)
    milestones = sorted(args.export_at_flops)
    unreachable = [f for f in milestones if f > args.steps * step_flops]
    if unreachable and rank == 0:
        print(f"--export-at-flops: {', '.join(f'{f:g}' for f in unreachable)} lie past the run's "
              f"{args.steps * step_flops:g} FLOPs and will not be exported", file=sys.stderr)
    warmup = args.warmup_steps
    if warmup is None:  # an extended run keeps the warm-up it had
        warmup = saved["warmup_steps"] if saved else max(1, args.steps // 10)
    config = {
        # Written only when not ELECTRA, so that runs from before --objective existed still resume.
        **({"objective": args.objective} if args.objective != "electra" else {}), "model": model.describe(),
        "tokenizer": data.tokenizer_fingerprint(tokenizer), "data": tokens.fingerprint,
        "valid_sequences": windows.valid,
        "seq_len": args.seq_len, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "processes": dist.world, "seed": args.seed, "steps": args.steps, "lr": args.lr, "warmup_steps": warmup,
        "weight_decay": args.weight_decay,
    }
    optimizer = _adamw(model, args.lr, args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, warmup=warmup, total=args.steps))

    start, consumed = 0, 0
    if previous:
        # Only --steps may change on resume: a larger one extends the run, its decay recomputed.
        state = checkpoint.load(previous, model, {**config, "steps": saved["steps"]}, device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        start, consumed = state["step"], state["sequences_consumed"]
        if args.steps < saved["steps"]:
            raise CheckpointError(f"--steps {args.steps} is below the {saved['steps']} steps of the run in {args.out}; "
                                  "a resumed run continues to its end or is extended")
        if args.steps > saved["steps"]:
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * lr_multiplier(start, warmup=warmup, total=args.steps)
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
            if rank == 0:
                print(f"--resume: extending the run from {saved['steps']} to {args.steps} steps; the learning rate "
                      f"now decays to 0 at step {args.steps}", file=sys.stderr)
    elif args.resume and rank == 0:
        print(f"--resume: no checkpoint in {args.out}; starting from step 0", file=sys.stderr)
    checking = value_checks()  # restored at the end: the steps turn the checks off on a GPU
    step_model = _step_model(model, compile=args.compile, cuda_graphs=args.cuda_graphs)
    wrapped = (torch.nn.parallel.DistributedDataParallel(step_model, device_ids=[device.index]
                                                         if device.type == "cuda" else None)
               if dist.world > 1 else step_model)
    stream = data.prefetched(windows.batches(batch_size=args.batch_size, seed=args.seed, rank=rank,
                                             world_size=dist.world, start=consumed))
    log = _Log(os.path.join(args.out, "log.jsonl"), keep_until=start, tensorboard=args.tensorboard) \
        if rank == 0 else None
    eval_every = args.save_every if args.eval_every is None else args.eval_every
    log_every = args.log_every if args.log_every is not None else GPU_LOG_EVERY if device.type == "cuda" else 1

    window = _Window(model, args.grad_accum, dist)
    began = window_began = time.perf_counter()
    metrics, valid, run_tokens = None, {}, 0.0
    step = start
    try:
        with tqdm(range(start, args.steps), initial=start, total=args.steps, disable=rank != 0,
                  desc="pretrain") as bar:
            for step in bar:
                torch.manual_seed(step_seed(args.seed, step, rank))
                totals, counts = _accumulate_gradients(wrapped, stream, args.grad_accum, bf16, specials["[PAD]"],
                                                       dist, model.COUNTS)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # before clipping
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                consumed += args.grad_accum * args.batch_size
                window.add(totals, counts, grad_norm)

                done = step + 1
                saved = done % args.save_every == 0 or done == args.steps
                evaluated = bool(windows.valid and eval_every and (done % eval_every == 0 or done == args.steps))
                # A line at every checkpoint too: a resumed run starts with nothing summed, as the run it continues.
                logged = done % log_every == 0 or saved or evaluated
                if logged:
                    metrics, mean_grad_norm, window_tokens = window.read()  # the host waits for the device here
                    now = time.perf_counter()
                    tokens_per_s = window_tokens / (now - window_began)
                    run_tokens += window_tokens
                    run_tokens_per_s = run_tokens / (now - began)  # the whole run's, for the last line printed
                if evaluated:
                    valid = _evaluate(model, windows, args.batch_size, bf16, specials["[PAD]"], dist)
                if logged and log is not None:
                    log.write({"step": done, "lr": lr, "grad_norm": mean_grad_norm, **metrics,
                               "tokens_per_s": tokens_per_s,
                               "tokens": done * args.grad_accum * args.batch_size * dist.world * args.seq_len,
                               "flops": step_flops,
                               "total_flops": done * step_flops,
                               **({f"valid_{k}": v for k, v in valid.items()} if evaluated else {})})
                for milestone in milestones:
                    if rank == 0 and (done - 1) * step_flops < milestone <= done * step_flops:
                        _export(os.path.join(args.out, "exports", f"flops-{milestone:g}"), model, tokenizer,
                                step=done, flops=done * step_flops)
                if logged:
                    bar.set_postfix({**{short: f"{metrics[name]:.3f}" for name, short in _PROGRESS_NAMES.items()
                                        if name in metrics}, "tok_s": f"{tokens_per_s:.0f}",
                                     **{f"valid_{short}": f"{valid[name]:.3f}"
                                        for name, short in _PROGRESS_NAMES.items()
                                        if name.endswith("_loss") and name in valid}})
                if saved:
                    _raise_if_corrupt(tokens, dist)  # no checkpoint of steps that read a corrupt shard
                    _save(args.out, done, model, optimizer, scheduler, consumed, config, args.keep, dist)
                if logged:  # the next window's speed: its training alone, not this line's validation or checkpoint
                    window_began = time.perf_counter()
                if step == start and device.type == "cuda":
                    # The first step's ops checked the ids and positions; the later steps' come from the same data
                    # and masking, and on a GPU each check is a wait for the device.
                    set_value_checks(False)
    except KeyboardInterrupt:
        if rank == 0:
            print(f"interrupted at step {step}; the latest checkpoint is {checkpoint.latest(args.out)} "
                  "(continue with --resume)", file=sys.stderr)
        return 130
    finally:
        set_value_checks(checking)
        stream.close()
        if log is not None:
            log.close()
    if rank == 0:
        export = os.path.join(args.out, "discriminator")  # the folder's name whatever the objective exports
        _export(export, model, tokenizer, step=args.steps, flops=args.steps * step_flops)
        _plot(log.path, os.path.join(args.out, "loss.png"))
        if metrics is not None:
            print(f"step {args.steps}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                  + "".join(f" valid_{k} {v:.4f}" for k, v in valid.items())
                  + f" | {run_tokens_per_s:.0f} tokens/s | {model.export_name}: {export}")
    return 0


def _export(folder: str, model: Pretrainer, tokenizer, *, step: int, flops: float) -> None:
    """The discriminator (the MLM baseline's encoder) in Hugging Face format with its tokenizer; its config.json
    records the pretraining step and training FLOPs that made it."""
    def fill(temporary):
        model.save_pretrained(temporary)
        data.save_tokenizer(tokenizer, temporary)
        path = os.path.join(temporary, "config.json")
        with open(path) as f:
            config = json.load(f)
        with open(path, "w") as f:
            json.dump({**config, "pretraining_step": step, "pretraining_flops": flops}, f, indent=2)

    checkpoint.write_folder(folder, fill)


def _token_data(args, dist: _Distributed) -> data.TokenData:
    """--data, checked against --tokenizer; else --corpus prepared into OUT/data by rank 0 (continued or reused
    when it is there) while the other ranks wait."""
    if args.data:
        tokens = data.TokenData(args.data)
        if args.tokenizer:
            theirs = data.tokenizer_fingerprint(data.load_tokenizer(args.tokenizer))
            if theirs != tokens.index["tokenizer"]:
                raise DataError(f"--tokenizer {args.tokenizer} (fingerprint {theirs}) is not the tokenizer of --data "
                                f"{args.data} ({tokens.index['tokenizer']})")
        return tokens
    folder = os.path.join(args.out, "data")
    if dist.rank == 0:
        prepare.prepare(args.corpus, folder, tokenizer_dir=args.tokenizer, vocab_size=args.vocab_size,
                        tokenizer_sample=args.tokenizer_sample, workers=args.workers, shard_tokens=args.shard_tokens,
                        document_per=args.documents, text_field=args.text_field, skip_bad_lines=args.skip_bad_lines,
                        progress=False)
    else:
        # Preparing may take hours, past any collective's timeout: the other ranks watch for the index instead
        # (torchrun stops them if rank 0 fails). OUT must be on a filesystem every node sees, as for --resume.
        while not os.path.exists(os.path.join(folder, data.INDEX)):
            time.sleep(1)
    return data.TokenData(folder)


def _raise_if_corrupt(tokens: data.TokenData, dist: _Distributed) -> None:
    """Waits for every process's check of its share of the shards; raises DataError on every process if one
    found a shard corrupt or unreadable."""
    found = dist.gather(tokens.corrupt_shards())
    if found:
        raise DataError(f"--data {tokens.folder}: shard {found[0]}; prepare the corpus again")


def _valid_sequences(args, tokens: data.TokenData) -> int:
    """The size of the validation split: --valid-sequences, --valid-fraction of the windows, or by default 1% of
    them (at most 1,000; none when that rounds to 0)."""
    count = tokens.windows(args.seq_len).count
    if args.valid_sequences is not None:
        return args.valid_sequences
    if args.valid_fraction is not None:
        return int(args.valid_fraction * count)
    return min(1000, count // 100)


@torch.no_grad()
def _evaluate(model: Pretrainer, windows: data.Windows, batch_size: int, bf16: bool,
              pad_id: int, dist: _Distributed) -> dict:
    """Each metric over the validation split (each rank its share), with dropout off and a fixed seed for the
    masking and sampling, so that validations compare across steps; leaves training's RNG state as it was. The
    losses are averaged over the sequences; the metrics of `model.exact_metrics` are computed over every scored
    token of the split."""
    averaged = model.averaged_fields()
    sums = torch.zeros(len(averaged) + 1, device=dist.device, dtype=torch.float64)
    scores: dict[str, list] = {}
    mine = windows.validation(dist.rank, dist.world)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[dist.device] if dist.device.type == "cuda" else []):
        torch.manual_seed(0)
        for begin in range(0, len(mine), batch_size):
            batch = windows.sequences(mine[begin:begin + batch_size]).to(dist.device)
            with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16):
                out, batch_scores = model(batch, return_scores=True)
            fields = out._asdict()
            sums += torch.stack([*(fields[f].double() * len(batch) for f in averaged),
                                 torch.tensor(float(len(batch)), device=dist.device, dtype=torch.float64)])
            for k, v in batch_scores.items():
                scores.setdefault(k, []).append(v.cpu())
    model.train(was_training)
    sums = dist.sum(sums)
    metrics = dict(zip(averaged, (sums[:-1] / sums[-1].clamp_min(1)).tolist()))
    # One gather on every rank, whatever it holds (a rank's share of the split may be empty).
    every = dist.gather([{k: torch.cat(parts) for k, parts in scores.items()}])
    split = {k: torch.cat([part[k] for part in every if k in part]) for k in set().union(*every)}
    return {**metrics, **(model.exact_metrics(split) if split else {})}


def _step_model(model: Pretrainer, *, compile: bool, cuda_graphs: bool) -> torch.nn.Module:
    """What each micro-batch calls: the pretrainer itself, or its whole step (the forward, and the backward
    AOTAutograd derives from it) compiled as one graph; with cuda_graphs also captured as CUDA graphs and
    replayed (torch.compile's "reduce-overhead"), with the value checks off: each would be a host sync inside the
    captured step."""
    if cuda_graphs:
        set_value_checks(False)
        return torch.compile(model, fullgraph=True, mode="reduce-overhead")
    return torch.compile(model, fullgraph=True) if compile else model


def _accumulate_gradients(wrapped, stream, grad_accum: int, bf16: bool, pad_id: int, dist: _Distributed,
                          counted) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward of `grad_accum` micro-batches from `stream` (DDP all-reduces gradients on the last
    only); returns float32 [outputs + 1]: each of the model's 0-dim outputs summed over the micro-batches, then
    the tokens seen; and the outputs named in `counted`, each summed over the micro-batches."""
    totals, counts = 0, {}
    for micro in range(grad_accum):
        # Not blocking: a blocking copy to a GPU would wait for the work queued before it (pageable memory is staged
        # at once, so the host tensor may go right after).
        batch = next(stream).to(dist.device, non_blocking=True)
        last = micro == grad_accum - 1
        with contextlib.nullcontext() if last or dist.world == 1 else wrapped.no_sync():
            with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = wrapped(batch)
            (out.loss / grad_accum).backward()
        fields = out._asdict()
        totals += torch.stack([*(v.detach().float() for k, v in fields.items() if k not in counted),
                               (batch != pad_id).sum().float()])
        for k in counted:
            counts[k] = counts.get(k, 0) + fields[k]
    return totals, counts


class _Window:
    """The steps since the last log line, summed on the device, so that they never wait for it: the model's 0-dim
    outputs and the non-padding tokens (float64: a long window adds many float32 values), the gradient norm, and
    the COUNTS fields (int64). `read` waits for the device once for the sums (and the model's count_metrics may
    read its counts) and starts the next window. Every process must `read` at the same steps (the processes' sums
    are reduced there)."""

    def __init__(self, model: Pretrainer, grad_accum: int, dist: _Distributed):
        self.model, self.grad_accum, self.dist = model, grad_accum, dist
        self.averaged = model.averaged_fields()
        self._start()

    def _start(self) -> None:
        self.steps = 0
        self.sums = torch.zeros(len(self.averaged) + 1, dtype=torch.float64, device=self.dist.device)
        self.grad_norm_sum = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, totals: torch.Tensor, counts: dict[str, torch.Tensor], grad_norm: torch.Tensor) -> None:
        """One optimizer step, no host sync: totals float32 [averaged fields + 1] and counts {field: int64 tensor}
        as _accumulate_gradients returns them (summed over the step's micro-batches), grad_norm 0-dim (the same on
        every process: the gradients are all-reduced)."""
        self.sums += totals
        self.grad_norm_sum += grad_norm
        for name, count in counts.items():
            self.counts[name] = self.counts[name] + count if name in self.counts else count.clone()
        self.steps += 1

    def read(self) -> tuple[dict[str, float], float, float]:
        """(metrics, grad_norm, tokens) of the window, then a new one: each averaged field's mean over the window's
        micro-batches and the processes, the count metrics of the counts summed over its steps and processes, the
        mean gradient norm, and the non-padding tokens of every process."""
        sums = self.dist.mean(self.sums)
        *fields, tokens, grad_norm_sum = torch.cat([sums, self.grad_norm_sum.reshape(1)]).tolist()
        micro_batches = self.grad_accum * self.steps
        metrics = {name: total / micro_batches for name, total in zip(self.averaged, fields)}
        metrics.update(self.model.count_metrics({k: self.dist.sum(v) for k, v in self.counts.items()}))
        read = metrics, grad_norm_sum / self.steps, tokens * self.dist.world
        self._start()
        return read


def _build_model(args, vocab_size: int, specials: dict) -> Pretrainer:
    """The pretrainer of --objective with the tokenizer's special ids: Hugging Face models with --discriminator
    (electra_fast.hf.encoders), else the built-in ones from --preset and the size flags."""
    ids = dict(vocab_size=vocab_size, mask_token_id=specials["[MASK]"], pad_token_id=specials["[PAD]"],
               special_token_ids=(specials["[CLS]"], specials["[SEP]"], specials["[UNK]"]), masking=args.masking)
    return OBJECTIVES[args.objective](args, ids)


def _electra(args, ids: dict, **options) -> ElectraPretrainer:
    if args.discriminator:
        models = hf_encoders.models_from_arguments(args, vocab_size=ids["vocab_size"], pad_token_id=ids["pad_token_id"])
        return ElectraPretrainer(*models, embedding_sharing=args.embedding_sharing, **ids, **options)
    return ElectraPretrainer.from_preset(args.preset, **ids, **_model_overrides(args), **options,
                                         embedding_sharing=args.embedding_sharing)


def _mlm(args, ids: dict) -> MlmPretrainer:
    if args.discriminator:
        model = hf_encoders.masked_lm_from_arguments(args, vocab_size=ids["vocab_size"],
                                                     pad_token_id=ids["pad_token_id"])
        return MlmPretrainer(model, **ids)
    return MlmPretrainer.from_preset(args.preset, **ids, **_model_overrides(args))


# --objective: each builds its Pretrainer from the arguments and the tokenizer's ids. ELECTRA; "ELECTRA 15%" (the
# paper's Table 5: the RTD loss at the masked positions only); masked-language modelling.
OBJECTIVES = {"electra": _electra, "electra-15": functools.partial(_electra, rtd_tokens="masked"), "mlm": _mlm}


def _model_overrides(args) -> dict:
    chosen = {"num_layers": args.num_layers, "hidden_size": args.hidden_size, "num_heads": args.num_heads,
              "intermediate_size": args.intermediate_size, "embedding_size": args.embedding_size,
              "max_position_embeddings": args.max_positions}
    return {k: v for k, v in chosen.items() if v is not None}


def _adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as ELECTRA sets it up: eps 1e-6, weight decay on matrices only (not LayerNorm weights or biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)


def _save(out, step, model, optimizer, scheduler, consumed, config, keep, dist: _Distributed) -> None:
    """Rank 0 writes the checkpoint; every rank then raises rank 0's error, if any, so that all stop together."""
    error = None
    if dist.rank == 0:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": torch.get_rng_state(), "sequences_consumed": consumed}
        try:
            checkpoint.save(out, step, model, state, config, keep=keep)
        except CheckpointError as e:
            error = str(e)
    error = dist.broadcast(error)
    if error:
        raise CheckpointError(error)


class _Log:
    """OUT/log.jsonl, one JSON object per logged step; a resumed run drops the lines after its checkpoint's step. With
    `tensorboard`, every numeric field also goes to TensorBoard event files in OUT/tensorboard (train/NAME, and
    valid/NAME for the valid_* fields), the events of dropped steps purged."""

    def __init__(self, path: str, keep_until: int, tensorboard: bool = False):
        self.path = path
        kept = []
        if keep_until and os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if json.loads(line)["step"] <= keep_until]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.file = open(path, "w")
        self.file.writelines(kept)
        self.file.flush()
        self.events = None
        if tensorboard:
            self.events = tensorboard_events.summary_writer(
                os.path.join(os.path.dirname(os.path.abspath(path)), "tensorboard"),
                purge_step=keep_until + 1 if keep_until else None)

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.events is not None:
            tensorboard_events.write_scalars(self.events, record, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.events is not None:
            self.events.close()


def _plot(log_path: str, png_path: str) -> None:
    """The loss curves of the log as a PNG; a one-line notice instead when matplotlib is missing."""
    from .plot import plot_runs, read_log

    run = os.path.dirname(log_path)
    records = read_log(run)
    if not records:
        return
    # The MLM objective's loss is its MLM loss: one panel.
    keys = ("loss", "mlm_loss", "rtd_loss") if "rtd_loss" in records[0] else ("loss",)
    try:
        plot_runs([run], png_path, metrics=keys)
    except ImportError:
        print("loss curve skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
