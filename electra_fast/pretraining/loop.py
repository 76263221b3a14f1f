"""The pretraining run, `pretrain(PretrainConfig)` (electra_fast.pretrain; `electra-fast pretrain` is it behind
its flags, electra_fast.pretraining.cli): ELECTRA pretraining on a text corpus, on one process or many (torchrun,
DDP); with `--objective` also the paper's "ELECTRA 15%" ablation or the masked-language-model baseline. The
options are named here by their flags (PretrainConfig's fields: `--seq-len` is `seq_len`).

Data: token shards that `electra-fast prepare` wrote (`--data`), memory-mapped, or `--corpus` prepared into
OUT/data first (electra_fast.data.prepare; by default the help topics that ship with Python). Windows of `--seq-len`
are visited once per epoch in a seeded order, each rank its own share, with a held-out validation split evaluated
every `--eval-every` steps (electra_fast.data.shards). Training: AdamW (no weight decay on LayerNorm and biases), linear
warm-up then linear decay to 0, gradient clipping at 1.0, gradient accumulation, bf16 autocast, the whole step
compiled as one graph (on CUDA also captured as CUDA graphs). Each step re-seeds torch from (base seed, step,
data-parallel rank) (contract §2 Seeds): ranks never share noise, and a resumed run draws what the uninterrupted one
drew. Checkpoints (electra_fast.pretraining.checkpoint) are safetensors + a weights-only state file behind an atomic
`latest` pointer.

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
data, tokenizer, checkpoint, an option out of range, a full disk) raises BadInput (the command: a one-line error
and exit status 2); the last good checkpoint stays as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import torch

from .. import locking
from ..data import prepare
from ..data import shards as data
from ..errors import BadInput
from ..files import write_folder
from ..ops.settings import set_value_checks, value_checks
from ..schedule import lr_multiplier
from . import checkpoint, tensorboard_events
from .build import build_pretrainer
from .checkpoint import CheckpointError
from .config import GPU_LOG_EVERY, PretrainConfig, PretrainResult
from .objectives import Pretrainer

_PROGRESS_NAMES = {"loss": "loss", "mlm_loss": "mlm", "rtd_loss": "rtd", "gen_accuracy": "gen_acc",
                   "disc_accuracy": "disc_acc", "disc_auc": "disc_auc", "mlm_accuracy": "mlm_acc"}


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Pretrains as config says (`electra-fast pretrain` is this function behind its flags; electra_fast.pretrain
    calls it): on one process, or on every process of a torchrun job (WORLD_SIZE, RANK and LOCAL_RANK read from
    the environment); holds config.out's lock throughout (rank 0). Returns the run's PretrainResult.

    Raises BadInput (DataError, CorpusError, CheckpointError, ...) for bad input, before anything is written where
    it can (a checkpoint that cannot be written keeps the previous one), and OSError for a folder it cannot write
    (locking.FolderInUse while another run writes config.out). KeyboardInterrupt propagates, once the latest
    checkpoint is named on stderr (also when it comes while the corpus is prepared or the model exported): the
    same config with resume=True continues the run. `config` is not changed."""
    config.check()
    dist = _Distributed(config.device)
    try:
        with locking.exclusive(config.out, rank=dist.rank, broadcast=dist.broadcast):  # rank 0 alone writes
            return _pretrain(config, dist)
    except KeyboardInterrupt as interrupt:
        if dist.rank == 0 and not getattr(interrupt, "reported", False):  # outside the steps: preparing, exporting
            latest = checkpoint.latest(config.out) or "none yet"
            print(f"interrupted; the latest checkpoint in {config.out} is {latest} "
                  "(continue with --resume; a corpus being prepared continues where it stopped)", file=sys.stderr)
        raise
    finally:
        dist.close()


def step_seed(base: int, step: int, rank: int) -> int:
    """torch's seed for one step of one rank: distinct for every (step, rank) of a run."""
    return (base * 1_000_003 + step) * 4099 + rank


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


def _pretrain(config: PretrainConfig, dist: _Distributed) -> PretrainResult:
    from tqdm import tqdm

    previous = checkpoint.latest(config.out)
    if previous and not config.resume:
        raise CheckpointError(f"--out {config.out} already holds a checkpoint ({previous}); pass --resume to "
                              "continue it, or choose another --out")
    saved_config = checkpoint.read_manifest(previous)["config"] if previous else None
    device, rank = dist.device, dist.rank
    if config.cuda_graphs and device.type != "cuda":
        raise BadInput(f"--cuda-graphs needs a CUDA device, got {device}", field="cuda_graphs")
    bf16 = config.bf16 if config.bf16 is not None else device.type == "cuda" and torch.cuda.is_bf16_supported()

    tokens = _token_data(config, dist)
    tokenizer = data.load_tokenizer(tokens.tokenizer_dir)
    specials = data.special_ids(tokenizer)
    windows = tokens.windows(config.seq_len, _valid_sequences(config, tokens))
    tokens.verify(rank, dist.world)

    torch.manual_seed(config.seed)
    model = build_pretrainer(config, tokenizer.get_vocab_size(), specials).to(device)
    step_flops = config.batch_size * config.grad_accum * dist.world * model.sequence_flops(config.seq_len)
    steps = config.steps
    if config.max_flops is not None:
        steps = int(config.max_flops // step_flops)
        if steps < 1:
            raise BadInput(f"--max-flops {config.max_flops:.3g} pays for no step (one step costs {step_flops:.3g})",
                           field="max_flops")
        if rank == 0:
            print(f"--max-flops {config.max_flops:.3g}: {steps} steps of {step_flops:.3g} FLOPs", file=sys.stderr)
    milestones = sorted(config.export_at_flops)
    unreachable = [f for f in milestones if f > steps * step_flops]
    if unreachable and rank == 0:
        print(f"--export-at-flops: {', '.join(f'{f:g}' for f in unreachable)} lie past the run's "
              f"{steps * step_flops:g} FLOPs and will not be exported", file=sys.stderr)
    warmup = config.warmup_steps
    if warmup is None:  # an extended run keeps the warm-up it had
        warmup = saved_config["warmup_steps"] if saved_config else max(1, steps // 10)
    # The checkpoint's record of the run, compared on --resume: its keys are part of the checkpoint format (a
    # checkpoint written by an earlier version must still resume).
    run_config = {
        # Written only when not ELECTRA, so that runs from before --objective existed still resume.
        **({"objective": config.objective} if config.objective != "electra" else {}), "model": model.describe(),
        "tokenizer": data.tokenizer_fingerprint(tokenizer), "data": tokens.fingerprint,
        "valid_sequences": windows.valid,
        "seq_len": config.seq_len, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
        "processes": dist.world, "seed": config.seed, "steps": steps, "lr": config.lr, "warmup_steps": warmup,
        "weight_decay": config.weight_decay,
    }
    optimizer = _adamw(model, config.lr, config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, warmup=warmup, total=steps))

    start, consumed = 0, 0
    if previous:
        # Only --steps may change on resume: a larger one extends the run, its decay recomputed.
        state = checkpoint.load(previous, model, {**run_config, "steps": saved_config["steps"]}, device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        start, consumed = state["step"], state["sequences_consumed"]
        if steps < saved_config["steps"]:
            raise CheckpointError(f"--steps {steps} is below the {saved_config['steps']} steps of the run in "
                                  f"{config.out}; a resumed run continues to its end or is extended")
        if steps > saved_config["steps"]:
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base * lr_multiplier(start, warmup=warmup, total=steps)
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
            if rank == 0:
                print(f"--resume: extending the run from {saved_config['steps']} to {steps} steps; the learning "
                      f"rate now decays to 0 at step {steps}", file=sys.stderr)
    elif config.resume and rank == 0:
        print(f"--resume: no checkpoint in {config.out}; starting from step 0", file=sys.stderr)
    checking = value_checks()  # restored at the end: the steps turn the checks off on a GPU
    step_model = _step_model(model, compile=config.compile, cuda_graphs=config.cuda_graphs)
    wrapped = (torch.nn.parallel.DistributedDataParallel(step_model, device_ids=[device.index]
                                                         if device.type == "cuda" else None)
               if dist.world > 1 else step_model)
    stream = data.prefetched(windows.batches(batch_size=config.batch_size, seed=config.seed, rank=rank,
                                             world_size=dist.world, start=consumed))
    log = _Log(os.path.join(config.out, "log.jsonl"), keep_until=start, tensorboard=config.tensorboard) \
        if rank == 0 else None
    eval_every = config.save_every if config.eval_every is None else config.eval_every
    log_every = config.log_every if config.log_every is not None else GPU_LOG_EVERY if device.type == "cuda" else 1

    window = _Window(model, config.grad_accum, dist)
    began = window_began = time.perf_counter()
    metrics, valid, run_tokens, run_tokens_per_s = None, {}, 0.0, None
    # The last log line, and the last with a validation, for the result: a resumed run's start with the lines kept.
    last_line, last_valid_line = (log.last, log.last_valid) if log is not None else (None, None)
    step = start
    try:
        with tqdm(range(start, steps), initial=start, total=steps, disable=rank != 0, desc="pretrain") as bar:
            for step in bar:
                torch.manual_seed(step_seed(config.seed, step, rank))
                totals, counts = _accumulate_gradients(wrapped, stream, config.grad_accum, bf16, specials["[PAD]"],
                                                       dist, model.COUNTS)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # before clipping
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                consumed += config.grad_accum * config.batch_size
                window.add(totals, counts, grad_norm)

                done = step + 1
                checkpointed = done % config.save_every == 0 or done == steps
                evaluated = bool(windows.valid and eval_every and (done % eval_every == 0 or done == steps))
                # A line at every checkpoint too: a resumed run starts with nothing summed, as the run it continues.
                logged = done % log_every == 0 or checkpointed or evaluated
                if logged:
                    metrics, mean_grad_norm, window_tokens = window.read()  # the host waits for the device here
                    now = time.perf_counter()
                    tokens_per_s = window_tokens / (now - window_began)
                    run_tokens += window_tokens
                    run_tokens_per_s = run_tokens / (now - began)  # the whole run's, for the last line printed
                if evaluated:
                    valid = _evaluate(model, windows, config.batch_size, bf16, specials["[PAD]"], dist)
                if logged:
                    last_line = {"step": done, "lr": lr, "grad_norm": mean_grad_norm, **metrics,
                                 "tokens_per_s": tokens_per_s,
                                 "tokens": done * config.grad_accum * config.batch_size * dist.world * config.seq_len,
                                 "flops": step_flops,
                                 "total_flops": done * step_flops,
                                 **({f"valid_{k}": v for k, v in valid.items()} if evaluated else {})}
                    if evaluated:
                        last_valid_line = last_line
                    if log is not None:
                        log.write(last_line)
                for milestone in milestones:
                    if rank == 0 and (done - 1) * step_flops < milestone <= done * step_flops:
                        _export(os.path.join(config.out, "exports", f"flops-{milestone:g}"), model, tokenizer,
                                step=done, flops=done * step_flops)
                if logged:
                    bar.set_postfix({**{short: f"{metrics[name]:.3f}" for name, short in _PROGRESS_NAMES.items()
                                        if name in metrics}, "tok_s": f"{tokens_per_s:.0f}",
                                     **{f"valid_{short}": f"{valid[name]:.3f}"
                                        for name, short in _PROGRESS_NAMES.items()
                                        if name.endswith("_loss") and name in valid}})
                if checkpointed:
                    _raise_if_corrupt(tokens, dist)  # no checkpoint of steps that read a corrupt shard
                    _save(config.out, done, model, optimizer, scheduler, consumed, run_config, config.keep, dist)
                if logged:  # the next window's speed: its training alone, not this line's validation or checkpoint
                    window_began = time.perf_counter()
                if step == start and device.type == "cuda":
                    # The first step's ops checked the ids and positions; the later steps' come from the same data
                    # and masking, and on a GPU each check is a wait for the device.
                    set_value_checks(False)
    except KeyboardInterrupt as interrupt:
        if rank == 0:
            print(f"interrupted at step {step}; the latest checkpoint is {checkpoint.latest(config.out)} "
                  "(continue with --resume)", file=sys.stderr)
        interrupt.reported = True  # pretrain() says nothing more
        raise
    finally:
        set_value_checks(checking)
        stream.close()
        if log is not None:
            log.close()
    export = os.path.join(config.out, "discriminator")  # the folder's name whatever the objective exports
    if rank == 0:
        _export(export, model, tokenizer, step=steps, flops=steps * step_flops)
        _plot(log.path, os.path.join(config.out, "loss.png"))
        if metrics is not None:
            print(f"step {steps}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                  + "".join(f" valid_{k} {v:.4f}" for k, v in valid.items())
                  + f" | {run_tokens_per_s:.0f} tokens/s | {model.export_name}: {export}")
    return PretrainResult(
        out=config.out, export=export, checkpoint=checkpoint.latest(config.out), steps=steps,
        metrics={k: v for k, v in (last_line or {}).items() if not k.startswith("valid_")},
        valid_metrics={k[len("valid_"):]: v for k, v in (last_valid_line or {}).items() if k.startswith("valid_")},
        tokens_per_s=run_tokens_per_s)


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

    write_folder(folder, fill)


def _token_data(config: PretrainConfig, dist: _Distributed) -> data.TokenData:
    """--data, checked against --tokenizer; else --corpus prepared into OUT/data by rank 0 (continued or reused
    when it is there) while the other ranks wait."""
    if config.data:
        tokens = data.TokenData(config.data)
        if config.tokenizer:
            theirs = data.tokenizer_fingerprint(data.load_tokenizer(config.tokenizer))
            if theirs != tokens.index["tokenizer"]:
                raise data.DataError(f"--tokenizer {config.tokenizer} (fingerprint {theirs}) is not the tokenizer of "
                                     f"--data {config.data} ({tokens.index['tokenizer']})")
        return tokens
    folder = os.path.join(config.out, "data")
    if dist.rank == 0:
        prepare.prepare(config.corpus, folder, tokenizer_dir=config.tokenizer, vocab_size=config.vocab_size,
                        tokenizer_sample=config.tokenizer_sample, workers=config.workers,
                        shard_tokens=config.shard_tokens, document_per=config.documents,
                        text_field=config.text_field, skip_bad_lines=config.skip_bad_lines, progress=False)
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
        raise data.DataError(f"--data {tokens.folder}: shard {found[0]}; prepare the corpus again")


def _valid_sequences(config: PretrainConfig, tokens: data.TokenData) -> int:
    """The size of the validation split: --valid-sequences, --valid-fraction of the windows, or by default 1% of
    them (at most 1,000; none when that rounds to 0)."""
    count = tokens.windows(config.seq_len).count
    if config.valid_sequences is not None:
        return config.valid_sequences
    if config.valid_fraction is not None:
        return int(config.valid_fraction * count)
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
    metrics = dict(zip(averaged, (sums[:-1] / sums[-1].clamp_min(1)).tolist(), strict=True))
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
        metrics = {name: total / micro_batches for name, total in zip(self.averaged, fields, strict=True)}
        metrics.update(self.model.count_metrics({k: self.dist.sum(v) for k, v in self.counts.items()}))
        read = metrics, grad_norm_sum / self.steps, tokens * self.dist.world
        self._start()
        return read


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
        records = [json.loads(line) for line in kept]
        self.last = records[-1] if records else None  # the last line, and the last with a validation's metrics
        self.last_valid = next((r for r in reversed(records) if any(k.startswith("valid_") for k in r)), None)
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
