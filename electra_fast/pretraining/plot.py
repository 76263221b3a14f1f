"""`electra-fast plot RUN [RUN ...]` (its flags: electra_fast.pretraining.cli): the metrics of several pretraining
runs' `log.jsonl` in one figure, one panel per metric, one line per run, against steps, tokens or training FLOPs
(e.g. the objectives of bench/rtd_vs_mlm.py against FLOPs)."""
from __future__ import annotations

import json
import os

from ..errors import BadInput

X_AXES = {"steps": "step", "tokens": "tokens", "flops": "total_flops"}  # --x -> the log's field


class PlotError(BadInput):
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
    for ax, metric in zip(axes[0], metrics, strict=True):
        for run, records in logs.items():
            points = [(r[field], r[metric]) for r in records if metric in r and field in r]
            if points:
                ax.plot(*zip(*points, strict=True), label=os.path.basename(os.path.normpath(run)) or run)
        ax.set_title(metric)
        ax.set_xlabel(x)
        if x != "steps":
            ax.set_xscale("log")
        if len(logs) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
