"""`electra-fast pretrain`: ELECTRA pretraining on a text corpus, with a progress bar, checkpoints, resume and
several processes through torchrun (DistributedDataParallel).

The default corpus ships with Python itself (the English help topics of `pydoc_data.topics`), so a fresh
machine runs it with no download; `--corpus PATH` takes any UTF-8 text file. The tokenizer is a word-level
vocabulary built from the corpus. Each step re-seeds torch from (base seed, step, data-parallel rank): ranks
never share noise, and a resumed run draws what the uninterrupted one drew.
"""
from __future__ import annotations

import collections
import os
import re

import torch

from .pretrainer import ElectraPretrainer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def add_arguments(p) -> None:
    p.add_argument("--corpus", default=None, help="UTF-8 text file (default: Python's pydoc help topics)")
    p.add_argument("--preset", default="small", choices=["small", "base", "large"])
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="electra-pretrain", help="folder for checkpoints and the discriminator")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--device", default=None)


def default_corpus() -> str:
    from pydoc_data import topics

    return "\n".join(topics.topics.values())


def build_vocab(text: str, size: int) -> dict:
    counts = collections.Counter(_WORD.findall(text.lower()))
    words = [w for w, _ in counts.most_common(max(0, size - len(SPECIALS)))]
    return {w: i for i, w in enumerate(SPECIALS + words)}


def encode(text: str, vocab: dict, seq_len: int) -> torch.Tensor:
    """The corpus as [num_sequences, seq_len] ids: [CLS] words... [SEP], cut into consecutive windows."""
    ids = torch.tensor([vocab.get(w, UNK) for w in _WORD.findall(text.lower())], dtype=torch.int64)
    body = seq_len - 2
    n = len(ids) // body
    windows = ids[: n * body].view(n, body)
    cls = torch.full((n, 1), CLS, dtype=torch.int64)
    sep = torch.full((n, 1), SEP, dtype=torch.int64)
    return torch.cat([cls, windows, sep], dim=1)


def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return world, rank


def step_seed(base: int, step: int, rank: int) -> int:
    return (base * 1_000_003 + step) * 4099 + rank


def main(args) -> int:
    from tqdm import tqdm

    world, rank = _distributed()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(args.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu"))
    text = open(args.corpus, encoding="utf-8").read() if args.corpus else default_corpus()
    vocab = build_vocab(text, args.vocab_size)
    data = encode(text, vocab, args.seq_len)
    torch.manual_seed(args.seed)
    overrides = {} if args.num_layers is None else {"num_layers": args.num_layers}
    model = ElectraPretrainer.from_preset(args.preset, vocab_size=len(vocab), mask_token_id=MASK, pad_token_id=PAD,
                                          special_token_ids=(CLS, SEP, UNK),
                                          max_position_embeddings=max(512, args.seq_len), **overrides).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, args.steps // 10)))
    start = 0
    path = os.path.join(args.out, "checkpoint.pt")
    if args.resume and os.path.exists(path):
        state = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=rank != 0, desc="pretrain")
    out = None
    for step in bar:
        torch.manual_seed(step_seed(args.seed, step, rank))
        batch = data[torch.randint(0, len(data), (args.batch_size,))].to(device)
        out = wrapped(batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{out.loss.item():.3f}", mlm=f"{out.mlm_loss.item():.3f}",
                        rtd=f"{out.rtd_loss.item():.3f}", disc_acc=f"{out.disc_accuracy.item():.3f}")
        if rank == 0 and ((step + 1) % args.save_every == 0 or step + 1 == args.steps):
            os.makedirs(args.out, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "step": step + 1, "vocab": vocab}, path)
    if rank == 0:
        model.save_discriminator(os.path.join(args.out, "discriminator"))
        if out is not None:
            print(f"step {args.steps}: loss {out.loss.item():.4f} mlm {out.mlm_loss.item():.4f} "
                  f"rtd {out.rtd_loss.item():.4f} gen_acc {out.gen_accuracy.item():.3f} "
                  f"disc_acc {out.disc_accuracy.item():.3f}")
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0
