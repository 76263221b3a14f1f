"""The benchmark's report: rows and ratios, the environment it ran in, the text table and the plot."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

import torch

BASELINES = ("eager-full", "eager", "compile", "hf eager-full")
PLOT_INSTALL_HINT = "--plot needs matplotlib: pip install matplotlib (or pip install 'electra-fast[plot]')"


@dataclass
class Row:
    table: str
    variant: str
    ms: float
    peak_mb: float | None = None
    tokens_per_s: float | None = None
    note: str = ""
    ratios: dict = field(default_factory=dict)


def add_ratios(rows: list[Row]) -> None:
    """Fills each row's "vs <baseline>" speed-ups against the baselines present in the same table."""
    by_name = {r.variant: r.ms for r in rows}
    for r in rows:
        for base in BASELINES:
            if base in by_name and r.variant != base:
                r.ratios[f"vs {base}"] = by_name[base] / r.ms


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict:
    """Versions, date and the device by name (contract §5: GPU figures name the card)."""
    info = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads(), "device": str(device), "date": time.strftime("%Y-%m-%d")}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = _cpu_name()
    return info


def format_table(report: dict) -> str:
    """The report as text: environment, configuration, one line per row, the notes, the variants that failed."""
    cfg = report["config"]
    timer = " (CUDA events, do_bench medians)" if report["environment"]["device"].startswith("cuda") else ""
    lines = [" ".join(f"{k}={v}" for k, v in report["environment"].items()),
             f"preset={cfg['preset']} batch={cfg['batch_size']}x{cfg['seq_len']} head_rows={cfg['head_rows']} "
             f"dtype={cfg['dtype']} median of {cfg['repeats']} interleaved rounds{timer} after {cfg['warmup']} warm-up",
             ""]
    header = (f"{'table':<18} {'variant':<28} {'ms':>9} {'tokens/s':>9} {'peak MB':>8} {'vs eager':>9} "
              f"{'vs compile':>10} {'vs eager-full':>13} {'vs hf eager-full':>16}")
    lines += [header, "-" * len(header)]
    def ratio(r, key):
        v = r["ratios"].get(key)
        return f"{v:.2f}x" if v else "-"

    for r in report["rows"]:
        tokens = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "-"
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
        name = r["variant"] + (f" [{r['note']}]" if r["note"] else "")
        lines.append(f"{r['table']:<18} {name:<28} {r['ms']:>9.1f} {tokens:>9} {peak:>8} {ratio(r, 'vs eager'):>9} "
                     f"{ratio(r, 'vs compile'):>10} {ratio(r, 'vs eager-full'):>13} {ratio(r, 'vs hf eager-full'):>16}")
    for k, v in report["notes"].items():
        lines.append(f"{k}: {v:.3f}" if isinstance(v, (int, float)) else f"{k}: {v}")
    for f in report.get("failed", []):
        lines.append(f"FAILED {f['table']} / {f['variant']}: {f['error']}")
    return "\n".join(lines)


def require_matplotlib() -> None:
    """Raises ModuleNotFoundError with the install hint where matplotlib cannot be imported; `--plot` calls it
    before any timing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ModuleNotFoundError(PLOT_INSTALL_HINT) from error


def plot(report: dict, path: str) -> None:
    """A bar chart per table of the speed-up over eager (matplotlib), written to the PNG at `path`."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = list(dict.fromkeys(r["table"] for r in report["rows"]))
    fig, axes = plt.subplots(1, len(tables), figsize=(3.2 * len(tables), 3.4), squeeze=False)
    for ax, table in zip(axes[0], tables, strict=True):
        rows = [r for r in report["rows"] if r["table"] == table]
        base = next((r["ms"] for r in rows if r["variant"] in ("eager", "hf eager-full")), rows[0]["ms"])
        names = [r["variant"] for r in rows]
        ax.bar(range(len(rows)), [base / r["ms"] for r in rows], color="tab:blue")
        ax.set_xticks(range(len(rows)), names, rotation=35, ha="right", fontsize=7)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(table, fontsize=9)
        ax.set_ylabel("speed-up vs eager (hf eager-full)" if ax is axes[0][0] else "")
    env = report["environment"]
    fig.suptitle(f"electra-fast on {env.get('gpu', env.get('cpu'))} ({env['threads']} threads)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
