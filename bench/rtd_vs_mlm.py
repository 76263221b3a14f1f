"""Replaced-token detection against masked language modelling at equal compute: the ELECTRA paper's headline
figure, measured. Downstream score against pretraining FLOPs, for each objective and for an encoder trained from
scratch.

    python bench/rtd_vs_mlm.py --preset cpu --out /tmp/rtd-vs-mlm    # 2-core CPU, about 30 minutes
    python bench/rtd_vs_mlm.py --preset gpu --data DATA --out run     # ELECTRA-Small on one GPU (hours)
    python bench/rtd_vs_mlm.py --preset smoke --corpus C --task-dir T --out O   # seconds: CI keeps it runnable

For each objective (`electra`, `mlm`, and the paper's ablation `electra-15`, RTD at the masked positions only)
`electra-fast pretrain --objective O --max-flops F` trains the same encoder on the same data, exporting at F/8,
F/4, F/2 and F (FLOPs counted as the paper's script counts them: electra_fast.pretraining.flops); every export,
and the same encoder freshly initialised (`finetune --from-scratch`), is fine-tuned with `electra-fast finetune` for
`--seeds` seeds. Jobs run as separate processes, `--jobs` at a time, each on `--threads` threads. OUT gets
`results.json` (every run, per-point medians and ranges, settings, versions, timings), `results.png` (the figure),
`discriminator.png` (the discriminator's AUC, accuracy, precision and recall against FLOPs) and markdown tables on
stdout; the pretraining runs and fine-tuned models stay under OUT/pretrain and OUT/finetune.

Data, all human-written and available offline (see bench/wordnet_supersenses.py): WordNet 3.0 from Debian's
`wordnet-base` (`apt-get install wordnet-base`). The labelled task is supersense classification of a synset's
definition (45 classes, 4,000 train / 1,000 validation); the pretraining corpus is the definitions and example
sentences of every synset outside the validation set (8.4 MB, 2.1M tokens). `--corpus` / `--data` and
`--task-dir` (train.tsv and validation.tsv, `text<TAB>label`) replace them; the GPU preset needs a real corpus
(`--data`, from `electra-fast prepare`): at 8.9e16 FLOPs WordNet would be seen hundreds of times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from electra_fast.ops.masking import MASKING_SPLITS
from electra_fast.pretraining.config import OBJECTIVES

# MLM, the longest run, goes second so that it starts at once beside ELECTRA.
DEFAULT_OBJECTIVES = ["electra", "mlm", "electra-15"]

# Per preset: the model (flags of `pretrain`, the same encoder for every objective), the vocabulary trained on the
# corpus when the script prepares it, the pretraining batch, the budget F in FLOPs (exports at F/2^k, k < points),
# fine-tuning flags, seeds, parallel jobs and threads per job.
PRESETS = {
    # The 2-layer hidden-128 discriminator (quarter-width generator) with a vocabulary of 8,000 trained on the
    # corpus: ELECTRA 1,319 steps of 32 x 128 tokens, MLM 2,192 (the MLM step is 1.66x cheaper, counted dense).
    "cpu": dict(model=["--num-layers", "2", "--hidden-size", "128", "--num-heads", "2", "--intermediate-size", "512",
                       "--embedding-size", "128"], vocab_size=8000,
                pretrain=["--seq-len", "128", "--batch-size", "32"], max_flops=6e13, points=4,
                finetune=[], seeds=3, jobs=2, threads=1),
    # ELECTRA-Small (12 layers, hidden 256, quarter-width generator), batch 128 x 128, bf16, compiled; the
    # smallest point is the paper's 6.25% of ELECTRA-Small's training, 8.9e16 FLOPs.
    "gpu": dict(model=["--num-layers", "12"], vocab_size=None,
                pretrain=["--seq-len", "128", "--batch-size", "128", "--bf16", "--compile"],
                max_flops=8 * 8.9e16, points=4, finetune=[], seeds=3, jobs=1, threads=None),
    # Two tiny points per objective, one seed: seconds.
    "smoke": dict(model=["--num-layers", "1", "--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "64",
                         "--embedding-size", "16"], vocab_size=300,
                  pretrain=["--seq-len", "32", "--batch-size", "4"], max_flops=3e8, points=2,
                  finetune=["--epochs", "1", "--max-length", "32", "--batch-size", "8"], seeds=1, jobs=2,
                  threads=1),
}


@dataclass
class Job:
    name: str
    command: list[str]
    after: tuple[str, ...] = ()
    threads: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    began: float = 0.0
    seconds: float = 0.0


def run_jobs(jobs: list[Job], parallel: int, logs: str) -> None:
    """Runs every job once the jobs it names in `after` have finished, at most `parallel` at a time, in list
    order; each writes OUT/logs/NAME.log. On a failure the others are stopped and RuntimeError names the job
    and the end of its log."""
    os.makedirs(logs, exist_ok=True)
    waiting, running, done = list(jobs), [], set()
    try:
        while waiting or running:
            for job in [j for j in running if j.process.poll() is not None]:
                running.remove(job)
                job.seconds = time.perf_counter() - job.began
                log = os.path.join(logs, f"{job.name}.log")
                if job.process.returncode:
                    with open(log, errors="replace") as f:
                        tail = f.read()[-2000:]
                    raise RuntimeError(f"{job.name} failed (exit {job.process.returncode}); {log} ends:\n{tail}")
                done.add(job.name)
                print(f"[{time.strftime('%H:%M:%S')}] {job.name}: {job.seconds:.0f} s", flush=True)
            for job in [j for j in waiting if set(j.after) <= done][:parallel - len(running)]:
                waiting.remove(job)
                env = dict(os.environ)
                if job.threads:
                    env.update(OMP_NUM_THREADS=str(job.threads), MKL_NUM_THREADS=str(job.threads))
                with open(os.path.join(logs, f"{job.name}.log"), "w") as log:
                    job.process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=env)
                job.began = time.perf_counter()
                running.append(job)
            if not running and waiting:
                raise RuntimeError(f"jobs wait for jobs that do not exist: {[j.name for j in waiting]}")
            time.sleep(0.2)
    finally:
        for job in running:
            job.process.kill()
            job.process.wait()


def milestones(max_flops: float, points: int) -> list[str]:
    """The export points below the budget, F/2^k for k = points-1 ... 1, as `pretrain --export-at-flops` takes
    them (and names their folders): the run's final export is the last point."""
    return [f"{max_flops / 2 ** k:g}" for k in range(points - 1, 0, -1)]


def plan(args, preset: dict, data: str, task: str) -> tuple[list[Job], dict]:
    """The pretraining and fine-tuning jobs, and where each fine-tuned point's model comes from."""
    python = [sys.executable, "-m", "electra_fast"]
    exports = milestones(preset["max_flops"], preset["points"])
    jobs, points = [], {}
    finetune = [*python, "finetune", "--task", "classification", "--train", os.path.join(task, "train.tsv"),
                "--validation", os.path.join(task, "validation.tsv"), "--seeds", "1", "--quiet", *preset["finetune"]]
    for objective in args.objectives:
        run = os.path.join(args.out, "pretrain", objective)
        jobs.append(Job(f"pretrain-{objective}", [
            *python, "pretrain", "--data", data, "--objective", objective, "--masking", args.masking,
            *preset["model"], *preset["pretrain"],
            "--max-flops", f"{preset['max_flops']:g}", "--export-at-flops", *exports, "--eval-every", "1000000000",
            "--save-every", "1000000000", "--seed", str(args.pretrain_seed), "--out", run],
            threads=preset["threads"]))
        folders = [os.path.join(run, "exports", f"flops-{float(f):g}") for f in exports] + [
            os.path.join(run, "discriminator")]
        for k, folder in enumerate(folders):
            points[(objective, k)] = folder
    points[("from-scratch", 0)] = points[(args.objectives[0], len(exports))]
    for (objective, k), folder in points.items():
        for seed in range(args.seeds):
            name = f"finetune-{objective}-{k}-seed{seed}"
            scratch = ["--from-scratch"] if objective == "from-scratch" else []
            jobs.append(Job(name, [*finetune, "--model", folder, *scratch, "--seed", str(seed), "--out",
                                   os.path.join(args.out, "finetune", name)],
                            after=(f"pretrain-{args.objectives[0] if objective == 'from-scratch' else objective}",),
                            threads=preset["threads"]))
    return jobs, points


def summarise(args, points: dict) -> list[dict]:
    """One record per point: objective, pretraining FLOPs and step (0 from scratch), every seed's metrics, and the
    median, min and max of each metric."""
    records = []
    for (objective, k), folder in points.items():
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        runs = []
        for seed in range(args.seeds):
            with open(os.path.join(args.out, "finetune", f"finetune-{objective}-{k}-seed{seed}", "metrics.json")) as f:
                runs.append(json.load(f)["runs"][0])
        metrics = [key for key in runs[0] if key != "seed" and isinstance(runs[0][key], float)]
        scratch = objective == "from-scratch"
        records.append({"objective": objective, "flops": 0.0 if scratch else config["pretraining_flops"],
                        "step": 0 if scratch else config["pretraining_step"], "model": folder, "runs": runs,
                        **{stat: {m: fn(run[m] for run in runs) for m in metrics}
                           for stat, fn in (("median", statistics.median), ("min", min), ("max", max))}})
    return records


def pretraining_summary(args) -> dict:
    """Each objective's last logged step: steps, FLOPs, tokens per second, losses and accuracies."""
    summary = {}
    for objective in args.objectives:
        with open(os.path.join(args.out, "pretrain", objective, "log.jsonl")) as f:
            *_, last = f
        summary[objective] = json.loads(last)
    return summary


def pretraining_table(summary: dict) -> str:
    """One row per objective: its run's steps, FLOPs, speed, last losses and the discriminator's metrics (of the
    last step; valid_*: the exact ones over the validation split)."""
    columns = [("loss", "loss"), ("MLM loss", "mlm_loss"), ("RTD loss", "rtd_loss"), ("gen./MLM accuracy", None),
               ("sampled accuracy", "sampled_accuracy"), ("disc. accuracy", "disc_accuracy"),
               ("1 − replaced", None), ("disc. AUC", "disc_auc"), ("precision", "disc_precision"),
               ("recall", "disc_recall"), ("valid MLM loss", "valid_mlm_loss"), ("valid disc. AUC", "valid_disc_auc")]
    rows = ["| objective | steps | FLOPs | tokens/s | " + " | ".join(name for name, _ in columns) + " |",
            "|---|" + "---|" * (3 + len(columns))]
    def cell(last, key):
        return f"{last[key]:.3f}" if key in last else "–"

    for objective, last in summary.items():
        accuracy = "gen_accuracy" if "gen_accuracy" in last else "mlm_accuracy"
        cells = {"gen./MLM accuracy": cell(last, accuracy),
                 "1 − replaced": f"{1 - last['replaced_fraction']:.3f}" if "replaced_fraction" in last else "–"}
        rows.append(f"| {objective} | {last['step']} | {last['total_flops']:.3g} | {last['tokens_per_s']:,.0f} | "
                    + " | ".join(cells.get(name) or cell(last, key) for name, key in columns) + " |")
    return "\n".join(rows)


CURVE_METRICS = ("disc_auc", "disc_accuracy", "disc_precision", "disc_recall")


def discriminator_curve(args, rows: int = 6, window: int = 25) -> str:
    """Is the discriminator learning? For each objective with one, its metrics at `rows` steps spread over the
    run, each the mean over `window` logged steps around it (one step's AUC comes from one batch), beside
    1 − replaced, the accuracy of a discriminator that calls every token real."""
    lines = ["| objective | step | " + " | ".join(CURVE_METRICS) + " | 1 − replaced |",
             "|---|---|" + "---|" * (len(CURVE_METRICS) + 1)]
    for objective in args.objectives:
        with open(os.path.join(args.out, "pretrain", objective, "log.jsonl")) as f:
            log = [json.loads(line) for line in f]
        if "disc_auc" not in log[0]:
            continue
        for i in sorted({round(k * (len(log) - 1) / (rows - 1)) for k in range(rows)}):
            near = log[max(0, i - window // 2):i + window // 2 + 1]
            mean = {m: statistics.fmean(r[m] for r in near) for m in (*CURVE_METRICS, "replaced_fraction")}
            lines.append(f"| {objective} | {log[i]['step']} | " + " | ".join(f"{mean[m]:.3f}" for m in CURVE_METRICS)
                         + f" | {1 - mean['replaced_fraction']:.3f} |")
    return "\n".join(lines)


def table(records: list[dict], metric: str) -> str:
    rows = ["| objective | pretraining FLOPs | step | " + " | ".join(f"seed {r['seed']}" for r in records[0]["runs"])
            + f" | {metric} median (min–max) |", "|---|---|---|" + "---|" * (len(records[0]["runs"]) + 1)]
    for r in sorted(records, key=lambda r: (r["objective"], r["flops"])):
        rows.append(f"| {r['objective']} | {r['flops']:.3g} | {r['step']} | "
                    + " | ".join(f"{run[metric]:.3f}" for run in r["runs"])
                    + f" | {r['median'][metric]:.3f} ({r['min'][metric]:.3f}–{r['max'][metric]:.3f}) |")
    return "\n".join(rows)


def plot(records: list[dict], metric: str, path: str, title: str) -> bool:
    """Median score against pretraining FLOPs per objective (bars: min–max over seeds), from scratch as a
    horizontal band. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for objective in sorted({r["objective"] for r in records} - {"from-scratch"}):
        mine = sorted((r for r in records if r["objective"] == objective), key=lambda r: r["flops"])
        x, y = [r["flops"] for r in mine], [r["median"][metric] for r in mine]
        ax.errorbar(x, y, yerr=[[r["median"][metric] - r["min"][metric] for r in mine],
                                [r["max"][metric] - r["median"][metric] for r in mine]],
                    marker="o", capsize=3, label=objective)
    for r in records:
        if r["objective"] == "from-scratch":
            ax.axhline(r["median"][metric], color="grey", linestyle="--", label="from scratch")
            ax.axhspan(r["min"][metric], r["max"][metric], color="grey", alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("pretraining FLOPs")
    ax.set_ylabel(f"validation {metric} (median of seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def versions() -> dict:
    import torch
    import transformers

    import electra_fast

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "electra_fast": electra_fast.__version__, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", required=True, help="a new folder for everything the run writes")
    parser.add_argument("--data", help="token shards from `electra-fast prepare` (default: the corpus, prepared)")
    parser.add_argument("--corpus", help="a text corpus to prepare (default: WordNet's, built into OUT/wordnet)")
    parser.add_argument("--task-dir", help="train.tsv and validation.tsv (default: WordNet supersenses)")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=DEFAULT_OBJECTIVES)
    parser.add_argument("--seeds", type=int, default=None, help="fine-tuning seeds per point (default: the preset's)")
    parser.add_argument("--pretrain-seed", type=int, default=0)
    parser.add_argument("--masking", choices=sorted(MASKING_SPLITS), default="electra",
                        help="what the masked positions become, for every objective: electra (85%% [MASK], 15%% "
                             "kept; default) or bert (80/10/10)")
    parser.add_argument("--jobs", type=int, default=None, help="processes at a time (default: the preset's)")
    parser.add_argument("--threads", type=int, default=None, help="threads per process (default: the preset's)")
    args = parser.parse_args()
    for name in ("seeds", "jobs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    preset = dict(PRESETS[args.preset])
    args.seeds = args.seeds or preset["seeds"]
    preset["threads"] = args.threads or preset["threads"]
    if os.path.exists(args.out):
        parser.error(f"--out {args.out} exists; give a new folder")
    if args.preset == "gpu" and not args.data:
        parser.error("--preset gpu needs --data: a corpus prepared with `electra-fast prepare` (WordNet is too small)")
    began = time.perf_counter()
    os.makedirs(args.out)

    task = args.task_dir
    if task is None or (args.data is None and args.corpus is None):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import wordnet_supersenses

        wordnet = os.path.join(args.out, "wordnet")
        wordnet_supersenses.build(wordnet_supersenses.WORDNET, wordnet)
        task = task or wordnet
    data = args.data
    if data is None:
        from electra_fast.data import prepare

        data = os.path.join(args.out, "data")
        prepare.prepare([args.corpus or os.path.join(args.out, "wordnet", "corpus.txt")], data,
                        vocab_size=preset["vocab_size"], progress=False)
    prepared = time.perf_counter()

    jobs, points = plan(args, preset, data, task)
    run_jobs(jobs, args.jobs or preset["jobs"], os.path.join(args.out, "logs"))
    finished = time.perf_counter()

    records = summarise(args, points)
    metric = "accuracy"
    results = {"preset": args.preset, "settings": {**preset, "seeds": args.seeds, "objectives": args.objectives,
                                                  "masking": args.masking, "data": data, "task": task},
               "versions": versions(),
               "seconds": {"data": prepared - began, "jobs": finished - prepared, "total": finished - began,
                           **{job.name: round(job.seconds, 1) for job in jobs}},
               "pretraining": pretraining_summary(args), "points": records}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    replace_prob, random_prob = MASKING_SPLITS[args.masking]
    split = f"{replace_prob:.0%} [MASK], {random_prob:.0%} random, {1 - replace_prob - random_prob:.0%} kept"
    title = (f"{args.preset} preset: {args.seeds} fine-tuning seeds per point; "
             f"budget {preset['max_flops']:.2g} FLOPs; masking {args.masking} ({split})")
    plotted = plot(records, metric, os.path.join(args.out, "results.png"), title)
    runs = [os.path.join(args.out, "pretrain", o) for o in args.objectives if o != "mlm"]
    if plotted and runs:
        from electra_fast.pretraining.plot import plot_runs

        plot_runs(runs, os.path.join(args.out, "discriminator.png"), x="flops", metrics=CURVE_METRICS)
    print(title + "\n")
    print(pretraining_table(results["pretraining"]) + "\n")
    if runs:
        print(discriminator_curve(args) + "\n")
    print(table(records, metric))
    print(f"\n{finished - began:.0f} s in all ({prepared - began:.0f} s data); results.json"
          + (", results.png" if plotted else " (no plot: matplotlib is missing)") + f" in {args.out}")


if __name__ == "__main__":
    main()
