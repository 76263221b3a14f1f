"""`electra-fast`: bench (contract §5, §6), check (contract §4 on the device present), prepare, pretrain, plot,
finetune and glue (contract §6a). This module dispatches: each subcommand's flags and main live in its feature's
`cli` module (data.cli, pretraining.cli, finetune.cli), imported only when that subcommand runs."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

import torch

from .errors import EXIT_BAD_INPUT


def _best_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def bench(args) -> int:
    from . import benchmark

    if args.plot:  # before any timing: without matplotlib the plot would fail only after minutes of it
        try:
            benchmark.require_matplotlib()
        except ModuleNotFoundError as error:
            print(f"electra-fast bench: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        cfg = benchmark.Config(preset=args.preset, batch_size=args.batch_size, seq_len=args.seq_len,
                               num_layers=args.num_layers, head_rows=args.head_rows, vocab_size=args.vocab_size,
                               dtype=args.dtype, device=args.device or _best_device(), warmup=args.warmup,
                               repeats=args.repeats, memory=not args.no_memory, parts=tuple(args.parts))
    except ValueError as error:
        print(f"electra-fast bench: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report = benchmark.run(cfg, progress=not args.quiet)
    print(benchmark.format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.plot:
        benchmark.plot(report, args.plot)
    return 0


def check(args) -> int:
    from .ops import numerics as checks

    return checks.main(device=args.device or _best_device())


def pretrain(args) -> int:
    from .pretraining import cli

    return cli.main(args)


def prepare(args) -> int:
    from .data import cli

    return cli.main(args)


def finetune(args) -> int:
    from .finetune import cli

    return cli.main(args)


def glue(args) -> int:
    from .finetune import cli

    return cli.glue_main(args)


def plot(args) -> int:
    from .pretraining import cli

    return cli.plot_main(args)


def _bench_arguments(b: argparse.ArgumentParser) -> None:
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


def _check_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--device", default=None)


def _arguments_of(module: str, function: str):
    """The subcommand's argument definitions, `function` of `electra_fast.<module>`, imported when called."""
    def define(p: argparse.ArgumentParser) -> None:
        getattr(importlib.import_module(f"{__package__}.{module}"), function)(p)

    return define


# name -> (help, the function that adds its arguments to its parser, the function that runs it). Only the
# subcommand being run has its arguments defined, so only its modules are imported: `check` and `bench` need
# neither the data and pretraining modules nor what they import (safetensors, tokenizers).
COMMANDS = {
    "bench": ("tokens/sec of the ELECTRA step and per-op times against PyTorch baselines", _bench_arguments, bench),
    "check": ("run the numerics checks on the device present; prints a pass/fail table", _check_arguments, check),
    "prepare": ("stream a corpus of any size into memory-mapped token shards (pretrain --data)",
                _arguments_of("data.cli", "add_arguments"), prepare),
    "pretrain": ("pretrain ELECTRA on a text corpus (default: one shipped with Python)",
                 _arguments_of("pretraining.cli", "add_arguments"), pretrain),
    "finetune": ("fine-tune a pretrained discriminator (or an ELECTRA/BERT folder) on classification, token "
                 "classification or question answering", _arguments_of("finetune.cli", "add_arguments"), finetune),
    "glue": ("fine-tune on the eight GLUE tasks of the ELECTRA paper (GLUE's folder as distributed) and print its "
             "score table", _arguments_of("finetune.cli", "add_glue_arguments"), glue),
    "plot": ("the metrics of several runs' log.jsonl in one figure, against steps, tokens or FLOPs",
             _arguments_of("pretraining.cli", "add_plot_arguments"), plot),
}


def build_parser(argv: list) -> argparse.ArgumentParser:
    """The parser of `electra-fast`, every subcommand listed, the arguments defined of the one that argv (the
    arguments, without the program) names: its first argument that is not an option (the top-level parser has
    only --help). `electra-fast --help` imports no subcommand's module."""
    parser = argparse.ArgumentParser(prog="electra-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    named = next((str(arg) for arg in argv if not str(arg).startswith("-")), None)
    for name, (help_text, define_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == named:
            define_arguments(p)
        p.set_defaults(fn=run)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
