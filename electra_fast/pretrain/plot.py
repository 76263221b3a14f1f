"""`electra-fast plot RUN [RUN ...]`: the metrics of several pretraining runs' `log.jsonl` in one figure, one panel
per metric, one line per run, against steps, tokens or training FLOPs (e.g. the objectives of
bench/rtd_vs_mlm.py against FLOPs)."""
from __future__ import annotations

import argparse
import json
import os
import sys

X_AXES = {"steps": "step", "tokens": "tokens", "flops": "total_flops"}  # --x -> the log's field
EXIT_BAD_INPUT = 2


class PlotError(ValueError):
    """A run folder, metric or axis that cannot be plotted; the message names it."""


def read_log(run: str) -> list[dict]:
    """The records of RUN/log.jsonl, in order."""
    path = os.path.join(run, "log.jsonl")
    if not os.path.isfile(path):
        raise PlotError(f"{run}: no log.jsonl (not a pretraining run folder, or one that has not logged a step)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_runs(runs: list[str], png_path: str, *, x: str = "steps", metrics=("loss",)) -> None:
    """Writes one PNG: a panel per metric, a line per run (labelled by its folder name) through the records
    that carry both the metric and the x field (validation metrics, valid_*, appear at the steps they were
    computed). Raises PlotError for a run without a log, an unknown axis, or a metric no run logged; ImportError
    without matplotlib."""
    if x not in X_AXES:
        raise PlotError(f"--x must be one of {tuple(X_AXES)}, got {x!r}")
    logs = {run: read_log(run) for run in runs}
    field = X_AXES[x]
    for metric in metrics:
        if not any(metric in r and field in r for records in logs.values() for r in records):
            raise PlotError(f"no run logged {metric!r} with {field!r} (runs: {', '.join(runs)})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for run, records in logs.items():
            points = [(r[field], r[metric]) for r in records if metric in r and field in r]
            if points:
                ax.plot(*zip(*points), label=os.path.basename(os.path.normpath(run)) or run)
        ax.set_title(metric)
        ax.set_xlabel(x)
        if x != "steps":
            ax.set_xscale("log")
        if len(logs) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="pretraining output folders (each with log.jsonl)")
    p.add_argument("--x", default="steps", choices=list(X_AXES), help="the horizontal axis (default steps)")
    p.add_argument("--metrics", nargs="+", default=["loss"], metavar="NAME",
                   help="logged fields, e.g. loss mlm_loss rtd_loss disc_accuracy valid_loss (default loss)")
    p.add_argument("--out", required=True, metavar="PNG", help="the figure to write")


def main(args: argparse.Namespace) -> int:
    try:
        plot_runs(args.runs, args.out, x=args.x, metrics=tuple(args.metrics))
    except PlotError as e:
        print(f"electra-fast plot: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError:
        print("electra-fast plot: error: needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(args.out)
    return 0
