"""`electra-fast pretrain` and `electra-fast plot`: their flags and mains (one line and exit 2 for bad input).

pretrain's flags are PretrainConfig's fields (electra_fast.pretraining.config): the command reads them into a
PretrainConfig and runs electra_fast.pretrain on it; interrupted (Ctrl-C), it exits with 130 once the run has
named its latest checkpoint."""
from __future__ import annotations

import argparse

from ..errors import EXIT_INTERRUPTED, BadInput
from ..options.cli import add_options, config_from, report_bad_input
from .config import PretrainConfig
from .plot import X_AXES


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, PretrainConfig)


def main(args: argparse.Namespace) -> int:
    """Runs `electra-fast pretrain`; returns the exit status (2 for bad input, 130 when interrupted)."""
    from .loop import pretrain

    try:
        pretrain(config_from(args, PretrainConfig))
    except (BadInput, OSError) as e:  # OSError: locking.FolderInUse, a folder that cannot be made
        return report_bad_input("pretrain", e)
    except KeyboardInterrupt:  # the run has printed where it stopped
        return EXIT_INTERRUPTED
    return 0


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="pretraining output folders (each with log.jsonl)")
    p.add_argument("--x", default="steps", choices=list(X_AXES), help="the horizontal axis (default steps)")
    p.add_argument("--metrics", nargs="+", default=["loss"], metavar="NAME",
                   help="logged fields, e.g. loss mlm_loss rtd_loss disc_accuracy valid_loss (default loss)")
    p.add_argument("--out", required=True, metavar="PNG", help="the figure to write")


def plot_main(args: argparse.Namespace) -> int:
    """Runs `electra-fast plot`; returns the exit status (2 for bad input or without matplotlib)."""
    from .plot import plot_runs

    try:
        plot_runs(args.runs, args.out, x=args.x, metrics=tuple(args.metrics))
    except (BadInput, OSError) as e:  # OSError: a figure that cannot be written
        return report_bad_input("plot", e)
    except ImportError:
        return report_bad_input("plot", "needs matplotlib (pip install matplotlib)")
    print(args.out)
    return 0
