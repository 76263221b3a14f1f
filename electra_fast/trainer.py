"""`electra-fast pretrain`: ELECTRA pretraining on a text corpus, on one process or many (torchrun, DDP).

Data (electra_fast.data): files, folders or globs, by default the help topics that ship with Python; a WordPiece
tokenizer trained on the corpus (or `--tokenizer DIR`); sequences packed to `--seq-len`, visited once per epoch
in a seeded order, each rank its own shard. Training: AdamW (no weight decay on LayerNorm and biases), linear
warm-up then linear decay to 0, gradient clipping at 1.0, gradient accumulation, bf16 autocast, the whole step
compiled as one graph (on CUDA also captured as CUDA graphs). Each step re-seeds torch from (base seed, step,
data-parallel rank) (SPEC §2 Seeds): ranks never share noise, and a resumed run draws what the uninterrupted one
drew. Checkpoints (electra_fast.checkpoint) are
safetensors + a weights-only state file behind an atomic `latest` pointer. Output folder:

    OUT/tokenizer/            the tokenizer (tokenizer.json, vocab.txt)
    OUT/checkpoints/step-N/   checkpoints; OUT/latest names the newest complete one
    OUT/log.jsonl             one line of metrics per step; OUT/loss.png the curve (with matplotlib)
    OUT/discriminator/        the discriminator in Hugging Face ELECTRA format, with the tokenizer

Bad input (corpus, tokenizer, checkpoint, sizes, a full disk) ends the command with a one-line error and exit
status 2; the last good checkpoint stays as it was.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time

import torch

from . import checkpoint, data
from .checkpoint import CheckpointError
from .data import DataError
from .models import PRESETS
from .pretrainer import ElectraPretrainer
from .settings import set_value_checks

# The default model is ELECTRA-Small cut to 2 layers, so that the default 200 steps finish in minutes on a CPU.
DEFAULT_LAYERS = 2
METRICS = ("loss", "mlm_loss", "rtd_loss", "gen_accuracy", "disc_accuracy", "replaced_fraction")
EXIT_BAD_INPUT = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", nargs="+", metavar="PATH", default=None,
                   help="UTF-8 text files, folders (every file below) or globs (default: Python's pydoc help topics)")
    p.add_argument("--documents", choices=["line", "file"], default="line",
                   help="one document per non-blank line (default) or per file")
    p.add_argument("--tokenizer", metavar="DIR", default=None,
                   help="load this tokenizer (tokenizer.json or a BERT vocab.txt) instead of training one")
    p.add_argument("--vocab-size", type=int, default=8000, help="size of the tokenizer trained on the corpus")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--num-layers", type=int, default=DEFAULT_LAYERS,
                   help=f"encoder layers (default {DEFAULT_LAYERS}; the paper's small preset has 12)")
    p.add_argument("--hidden-size", type=int, default=None, help="override the preset's hidden size")
    p.add_argument("--num-heads", type=int, default=None, help="override the preset's attention heads")
    p.add_argument("--intermediate-size", type=int, default=None, help="override the preset's feed-forward size")
    p.add_argument("--embedding-size", type=int, default=None, help="override the preset's embedding size")
    p.add_argument("--max-positions", type=int, default=512, help="the model's position embeddings")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per process and micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up (default: 10%% of --steps)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="electra-pretrain", help="folder for tokenizer, checkpoints, log, export")
    p.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept")
    p.add_argument("--resume", action="store_true", help="continue from OUT's latest checkpoint")
    p.add_argument("--device", default=None, help="default: cuda:(LOCAL_RANK mod GPUs) if a GPU is present, else cpu")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for a GPU that supports it)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the whole step (forward and backward) as one graph")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="capture the whole step (forward and backward) as CUDA graphs and replay it (CUDA only; "
                        "turns the value checks off)")


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
        return _pretrain(args, dist)
    except (DataError, CheckpointError, OSError) as e:
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

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(values)
            values /= self.world
        return values

    def close(self):
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _pretrain(args: argparse.Namespace, dist: _Distributed) -> int:
    from tqdm import tqdm

    for name in ("steps", "batch_size", "grad_accum", "save_every", "keep", "seq_len"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.seq_len > args.max_positions:
        raise DataError(f"--seq-len {args.seq_len} exceeds the model's {args.max_positions} positions "
                        "(--max-positions)")
    previous = checkpoint.latest(args.out)
    if previous and not args.resume:
        raise CheckpointError(f"--out {args.out} already holds a checkpoint ({previous}); pass --resume to "
                              "continue it, or choose another --out")
    device, rank = dist.device, dist.rank
    if args.cuda_graphs and device.type != "cuda":
        raise DataError(f"--cuda-graphs needs a CUDA device, got {device}")
    bf16 = args.bf16 if args.bf16 is not None else device.type == "cuda" and torch.cuda.is_bf16_supported()

    documents = data.read_documents(args.corpus, document_per=args.documents)
    tokenizer = _tokenizer(args, documents, dist, resuming=bool(previous))
    specials = data.special_ids(tokenizer)
    sequences = data.pack(documents, tokenizer, args.seq_len)

    torch.manual_seed(args.seed)
    model = ElectraPretrainer.from_preset(
        args.preset, vocab_size=tokenizer.get_vocab_size(), mask_token_id=specials["[MASK]"],
        pad_token_id=specials["[PAD]"],
        special_token_ids=(specials["[CLS]"], specials["[SEP]"], specials["[UNK]"]), **_model_overrides(args)
    ).to(device)
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.steps // 10)
    config = {
        "model": {"generator": dataclasses.asdict(model.generator.encoder.config),
                  "discriminator": dataclasses.asdict(model.discriminator.encoder.config)},
        "tokenizer": data.tokenizer_fingerprint(tokenizer),
        "corpus": hashlib.sha256(sequences.numpy().tobytes()).hexdigest()[:16],
        "seq_len": args.seq_len, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "processes": dist.world, "seed": args.seed, "steps": args.steps, "lr": args.lr, "warmup_steps": warmup,
        "weight_decay": args.weight_decay,
    }
    optimizer = _adamw(model, args.lr, args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, warmup=warmup, total=args.steps))

    start, consumed = 0, 0
    if previous:
        state = checkpoint.load(previous, model, config, device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        start, consumed = state["step"], state["sequences_consumed"]
    elif args.resume and rank == 0:
        print(f"--resume: no checkpoint in {args.out}; starting from step 0", file=sys.stderr)
    step_model = _step_model(model, compile=args.compile, cuda_graphs=args.cuda_graphs)
    wrapped = (torch.nn.parallel.DistributedDataParallel(step_model, device_ids=[device.index]
                                                         if device.type == "cuda" else None)
               if dist.world > 1 else step_model)
    stream = data.batches(sequences, batch_size=args.batch_size, seed=args.seed, rank=rank, world_size=dist.world,
                          start=consumed)
    log = _Log(os.path.join(args.out, "log.jsonl"), keep_until=start) if rank == 0 else None

    began, tokens, metrics = time.perf_counter(), 0.0, None
    step = start
    try:
        with tqdm(range(start, args.steps), initial=start, total=args.steps, disable=rank != 0,
                  desc="pretrain") as bar:
            for step in bar:
                torch.manual_seed(step_seed(args.seed, step, rank))
                totals = _accumulate_gradients(wrapped, stream, args.grad_accum, bf16, specials["[PAD]"], dist)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                consumed += args.grad_accum * args.batch_size

                totals = dist.mean(totals)
                tokens += totals[-1].item() * dist.world
                metrics = dict(zip(METRICS, (totals[:-1] / args.grad_accum).tolist()))
                tokens_per_s = tokens / (time.perf_counter() - began)
                if log is not None:
                    log.write({"step": step + 1, "lr": lr, **metrics, "tokens_per_s": tokens_per_s})
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", mlm=f"{metrics['mlm_loss']:.3f}",
                                rtd=f"{metrics['rtd_loss']:.3f}", gen_acc=f"{metrics['gen_accuracy']:.3f}",
                                disc_acc=f"{metrics['disc_accuracy']:.3f}", tok_s=f"{tokens_per_s:.0f}")
                if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
                    _save(args.out, step + 1, model, optimizer, scheduler, consumed, config, args.keep, dist)
    except KeyboardInterrupt:
        if rank == 0:
            print(f"interrupted at step {step}; the latest checkpoint is {checkpoint.latest(args.out)} "
                  "(continue with --resume)", file=sys.stderr)
        return 130
    finally:
        if log is not None:
            log.file.close()
    if rank == 0:
        export = os.path.join(args.out, "discriminator")
        checkpoint.write_folder(export, lambda folder: (model.save_discriminator(folder),
                                                        data.save_tokenizer(tokenizer, folder)))
        _plot(log.path, os.path.join(args.out, "loss.png"))
        if metrics is not None:
            print(f"step {args.steps}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                  + f" | {tokens_per_s:.0f} tokens/s | discriminator: {export}")
    return 0


def _step_model(model: ElectraPretrainer, *, compile: bool, cuda_graphs: bool) -> torch.nn.Module:
    """What each micro-batch calls: the pretrainer itself, or its whole step (the forward, and the backward
    AOTAutograd derives from it) compiled as one graph; with cuda_graphs also captured as CUDA graphs and
    replayed (torch.compile's "reduce-overhead"), with the value checks off: each would be a host sync inside the
    captured step."""
    if cuda_graphs:
        set_value_checks(False)
        return torch.compile(model, fullgraph=True, mode="reduce-overhead")
    return torch.compile(model, fullgraph=True) if compile else model


def _accumulate_gradients(wrapped, stream, grad_accum: int, bf16: bool, pad_id: int,
                          dist: _Distributed) -> torch.Tensor:
    """Forward and backward of `grad_accum` micro-batches from `stream` (DDP all-reduces gradients on the last
    only); returns float32 [len(METRICS) + 1]: each metric summed over the micro-batches, then the tokens seen."""
    totals = torch.zeros(len(METRICS) + 1, device=dist.device)
    for micro in range(grad_accum):
        batch = next(stream).to(dist.device)
        last = micro == grad_accum - 1
        with contextlib.nullcontext() if last or dist.world == 1 else wrapped.no_sync():
            with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = wrapped(batch)
            (out.loss / grad_accum).backward()
        totals += torch.stack([*(v.detach().float() for v in out), (batch != pad_id).sum().float()])
    return totals


def _model_overrides(args) -> dict:
    chosen = {"num_layers": args.num_layers, "hidden_size": args.hidden_size, "num_heads": args.num_heads,
              "intermediate_size": args.intermediate_size, "embedding_size": args.embedding_size,
              "max_position_embeddings": args.max_positions}
    return {k: v for k, v in chosen.items() if v is not None}


def _tokenizer(args, documents, dist: _Distributed, *, resuming: bool):
    """--tokenizer DIR, else on resume the run's own, else one trained on the corpus by rank 0 and sent to the
    others (training breaks ties in hash order, so ranks must not train their own). Rank 0 saves it in OUT."""
    saved = os.path.join(args.out, "tokenizer")
    if args.tokenizer or resuming:
        tokenizer = data.load_tokenizer(args.tokenizer or saved)
    else:
        from tokenizers import Tokenizer

        trained = data.train_tokenizer(documents, args.vocab_size).to_str() if dist.rank == 0 else None
        tokenizer = Tokenizer.from_str(dist.broadcast(trained))
    if dist.rank == 0 and not resuming:
        checkpoint.write_folder(saved, lambda folder: data.save_tokenizer(tokenizer, folder))
    return tokenizer


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
    """OUT/log.jsonl, one JSON object per step; a resumed run drops the lines after its checkpoint's step."""

    def __init__(self, path: str, keep_until: int):
        self.path = path
        kept = []
        if keep_until and os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if json.loads(line)["step"] <= keep_until]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.file = open(path, "w")
        self.file.writelines(kept)
        self.file.flush()

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


def _plot(log_path: str, png_path: str) -> None:
    """The loss curves of the log as a PNG; a one-line notice instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("loss curve skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return
    with open(log_path) as f:
        records = [json.loads(line) for line in f]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key in zip(axes, ("loss", "mlm_loss", "rtd_loss")):
        ax.plot([r["step"] for r in records], [r[key] for r in records])
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
