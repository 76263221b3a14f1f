"""`electra-fast`: bench (SPEC §5, §6), check (SPEC §4 on the device present), prepare, pretrain, finetune and
glue (SPEC §6a)."""
from __future__ import annotations

import argparse
import json
import sys

import torch


def _best_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def bench(args) -> int:
    from . import benchmark

    if args.plot:  # before any timing: without matplotlib the plot would fail only after minutes of it
        try:
            benchmark.require_matplotlib()
        except ModuleNotFoundError as error:
            print(f"electra-fast bench: {error}", file=sys.stderr)
            return 2
    try:
        cfg = benchmark.Config(preset=args.preset, batch_size=args.batch_size, seq_len=args.seq_len,
                               num_layers=args.num_layers, head_rows=args.head_rows, vocab_size=args.vocab_size,
                               dtype=args.dtype, device=args.device or _best_device(), warmup=args.warmup,
                               repeats=args.repeats, memory=not args.no_memory, parts=tuple(args.parts))
    except ValueError as error:
        print(f"electra-fast bench: {error}", file=sys.stderr)
        return 2
    report = benchmark.run(cfg, progress=not args.quiet)
    print(benchmark.format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.plot:
        benchmark.plot(report, args.plot)
    return 0


def check(args) -> int:
    from . import check as checks

    return checks.main(device=args.device or _best_device())


def pretrain(args) -> int:
    from . import trainer

    return trainer.main(args)


def prepare(args) -> int:
    from . import prepare as preparing

    return preparing.main(args)


def finetune(args) -> int:
    from .finetune import cli

    return cli.main(args)


def glue(args) -> int:
    from .finetune import cli

    return cli.glue_main(args)


def plot(args) -> int:
    from . import plot as plotting

    return plotting.main(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="electra-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="tokens/sec of the ELECTRA step and per-op times against PyTorch baselines")
    b.add_argument("--preset", default="small", choices=["small", "base", "large"])
    b.add_argument("--batch-size", type=int, default=None,
                   help="default: 128 on CUDA (ELECTRA-Small's real batch), 8 on the CPU")
    b.add_argument("--seq-len", type=int, default=128)
    b.add_argument("--num-layers", type=int, default=None, help="override the preset's layer count")
    b.add_argument("--head-rows", type=int, default=2458, help="masked rows of the head benchmark")
    b.add_argument("--vocab-size", type=int, default=30522)
    b.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="head inputs and step autocast; default: bfloat16 on CUDA where supported, else float32")
    b.add_argument("--device", default=None, help="cpu or cuda (default: the best present)")
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--parts", nargs="+", default=["head", "ops", "step"],
                   choices=["head", "ops", "step", "recommended", "graph"],
                   help="tables to run; 'recommended' (Hugging Face eager-full against the fused step with compiled "
                        "encoders and bf16) and 'graph' (the whole step as one compiled graph and, on CUDA, as "
                        "CUDA graphs, with first-call compile times) take several more minutes")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    b.add_argument("--json", metavar="PATH")
    b.add_argument("--plot", metavar="PATH", help="PNG bar chart (needs matplotlib)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(fn=bench)

    c = sub.add_parser("check", help="run the numerics checks on the device present; prints a pass/fail table")
    c.add_argument("--device", default=None)
    c.set_defaults(fn=check)

    d = sub.add_parser("prepare", help="stream a corpus of any size into memory-mapped token shards (pretrain --data)")
    from .prepare import add_arguments as add_prepare_arguments

    add_prepare_arguments(d)
    d.set_defaults(fn=prepare)

    p = sub.add_parser("pretrain", help="pretrain ELECTRA on a text corpus (default: one shipped with Python)")
    from .trainer import add_arguments

    add_arguments(p)
    p.set_defaults(fn=pretrain)

    f = sub.add_parser("finetune", help="fine-tune a pretrained discriminator (or an ELECTRA/BERT folder) on "
                                        "classification, token classification or question answering")
    from .finetune.cli import add_arguments as add_finetune_arguments

    add_finetune_arguments(f)
    f.set_defaults(fn=finetune)

    g = sub.add_parser("glue", help="fine-tune on the eight GLUE tasks of the ELECTRA paper (GLUE's folder as "
                                    "distributed) and print its score table")
    from .finetune.cli import add_glue_arguments

    add_glue_arguments(g)
    g.set_defaults(fn=glue)

    q = sub.add_parser("plot", help="the metrics of several runs' log.jsonl in one figure, against steps, tokens or "
                                    "FLOPs")
    from .plot import add_arguments as add_plot_arguments

    add_plot_arguments(q)
    q.set_defaults(fn=plot)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
