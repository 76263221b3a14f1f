"""GLUE as the ELECTRA paper scores it (Clark et al., 2020, Tables 1 and 2): its eight tasks, each fine-tuned for K
seeds with the paper's settings, scored on the dev sets; the GLUE score is the mean over the eight tasks of the
median of each task's metric. WNLI is left out, as the paper leaves it out.

    from electra_fast.finetune.glue import run_glue
    summary = run_glue("GLUE", "glue-out", "run1/discriminator", seeds=5, jobs=2)
    summary["score"]    # 100 × the mean of the eight medians, as the paper prints it

The data is GLUE as distributed (the folders that GLUE's download script writes), read as it is:

| folder | columns read | quirks |
|---|---|---|
| CoLA | 4th (sentence), 2nd (label) | no header |
| SST-2 | sentence, label | |
| MRPC | `#1 String`, `#2 String`, Quality | |
| STS-B | sentence1, sentence2, score | labels 0–5 as floats: a regression |
| QQP | question1, question2, is_duplicate | rows of a wrong field count (skipped, counted) |
| MNLI | sentence1, sentence2, gold_label | dev_matched.tsv and dev_mismatched.tsv, scored by one model |
| QNLI | question, sentence, label | |
| RTE | sentence1, sentence2, label | |

Settings per task: 3 epochs, 10 for RTE and STS-B (the paper's Table 7); the rest by the model's width, as
`finetune` chooses them. Metrics: Matthews correlation for CoLA, Spearman for STS-B, accuracy for the others;
the table also shows F1 for MRPC and QQP and the mismatched accuracy for MNLI, which the score leaves out (the
paper's MNLI column is the matched dev set, as the release's code scores it). The seed kept as each task's model
is the median one by the task's metric.

Each task is `finetune` into OUT/TASK (OUT/TASK/metrics.json and OUT/TASK/model/); a task whose folder is
complete is kept and skipped when the suite runs again, so a killed suite continues where it stopped. Tasks run
`jobs` at once, each in a process of its own. OUT/glue.json holds every task's runs and medians and the score;
OUT/glue.md the score table in the paper's column order.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import types
from dataclasses import dataclass

from ..errors import at_least, check_ranges
from ..files import write_file
from . import data
from .data import FinetuneDataError
from .train import FinetuneOptions, check_options, finetune


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: where its files are, which columns to read, and how the paper trains and scores it."""
    name: str                          # GLUE's folder name
    column: str                        # the paper's table header
    text_columns: tuple[str, ...]
    label_column: str
    metric: str = "accuracy"           # the paper's: the score's, and the one that picks the kept seed
    shown: tuple[str, ...] = ()        # further metrics the table shows after it
    heading: str = "acc"               # the table's words for the metric, then the shown ones
    epochs: float = 3
    header: bool = True
    validation: str = "dev.tsv"
    also_validate: tuple[tuple[str, str], ...] = ()   # (name, file): scored by the same model

    @property
    def files(self) -> tuple[str, ...]:
        return ("train.tsv", self.validation, *(file for _, file in self.also_validate))


TASKS = (
    GlueTask("CoLA", "CoLA", ("3",), "1", metric="mcc", heading="MCC", header=False),
    GlueTask("SST-2", "SST", ("sentence",), "label"),
    GlueTask("MRPC", "MRPC", ("#1 String", "#2 String"), "Quality", shown=("f1",), heading="acc / F1"),
    GlueTask("STS-B", "STS", ("sentence1", "sentence2"), "score", metric="spearman", heading="Spearman", epochs=10),
    GlueTask("QQP", "QQP", ("question1", "question2"), "is_duplicate", shown=("f1",), heading="acc / F1"),
    GlueTask("MNLI", "MNLI", ("sentence1", "sentence2"), "gold_label", shown=("mismatched_accuracy",),
             heading="acc m / mm", validation="dev_matched.tsv",
             also_validate=(("mismatched", "dev_mismatched.tsv"),)),
    GlueTask("QNLI", "QNLI", ("question", "sentence"), "label"),
    GlueTask("RTE", "RTE", ("sentence1", "sentence2"), "label", epochs=10),
)
# The release's names of the tasks (its --task_names), accepted as well
_RELEASE_NAMES = {"cola": "CoLA", "sst": "SST-2", "mrpc": "MRPC", "sts": "STS-B", "qqp": "QQP", "mnli": "MNLI",
                  "qnli": "QNLI", "rte": "RTE"}
# Set by the suite for each task; run_glue's settings are the rest of FinetuneOptions
_PER_TASK = {"task", "train", "validation", "also_validate", "out", "text_columns", "label_column", "header",
             "skip_malformed_rows", "metric"}
# Options that may differ between the run that finished a task and the one that keeps it: how, not what, it ran
_HOW = {"progress", "device", "bf16", "out"}


def select(names=None) -> tuple[GlueTask, ...]:
    """The tasks named (GLUE's folder names or the release's, any case; commas also separate), in the paper's
    order; all eight for None."""
    if not names:
        return TASKS
    by_name = {task.name.lower(): task for task in TASKS}
    by_name.update({short: by_name[name.lower()] for short, name in _RELEASE_NAMES.items()})
    wanted = set()
    for name in (part for entry in names for part in entry.split(",") if part):
        if name.lower() not in by_name:
            raise FinetuneDataError(f"--tasks: no GLUE task {name!r} (the paper's eight: "
                                    f"{', '.join(task.name for task in TASKS)}; WNLI is left out, as the paper "
                                    "leaves it out)")
        wanted.add(by_name[name.lower()].name)
    if not wanted:
        raise FinetuneDataError(f"--tasks: no task named in {' '.join(names)!r}")
    return tuple(task for task in TASKS if task.name in wanted)


def check_layout(data_dir: str, tasks) -> None:
    """Raises FinetuneDataError, before any training, for a task file that is missing or whose first line lacks
    the columns the task reads."""
    if not os.path.isdir(data_dir):
        raise FinetuneDataError(f"--data-dir {data_dir}: no such folder")
    for task in tasks:
        for file in task.files:
            path = os.path.join(data_dir, task.name, file)
            if not os.path.isfile(path):
                wanted = ", ".join(f"{task.name}/{name}" for name in task.files)
                raise FinetuneDataError(f"{path}: missing (GLUE as distributed has {wanted})")
            first = data.first_fields(path)
            needed = (*task.text_columns, task.label_column)
            if task.header:
                missing = [column for column in needed if column not in first]
                if missing:
                    raise FinetuneDataError(f"{path} line 1: the header has no column {missing[0]!r} (GLUE's "
                                            f"{task.name} header has {', '.join(map(repr, needed))})")
            elif len(first) <= max(int(column) for column in needed):
                raise FinetuneDataError(f"{path} line 1: {len(first)} fields; GLUE's {task.name} rows have at least "
                                        f"{max(int(column) for column in needed) + 1} (no header)")


def task_options(task: GlueTask, data_dir: str, out: str, model: str, settings: dict) -> FinetuneOptions:
    """finetune's options for `task`: its files, columns, metric and epochs (settings' epochs override them)."""
    folder = os.path.join(data_dir, task.name)
    return FinetuneOptions(**{
        "epochs": task.epochs, **settings, "model": model, "task": "classification",
        "train": os.path.join(folder, "train.tsv"), "validation": os.path.join(folder, task.validation),
        "also_validate": tuple((name, os.path.join(folder, file)) for name, file in task.also_validate),
        "out": os.path.join(out, task.name), "text_columns": task.text_columns, "label_column": task.label_column,
        "header": task.header, "skip_malformed_rows": True, "metric": task.metric})


def _recorded(options: FinetuneOptions) -> dict:
    """The options as a finished task's metrics.json records them (JSON: tuples are lists)."""
    return json.loads(json.dumps({f.name: getattr(options, f.name) for f in dataclasses.fields(options)
                                  if f.name != "log"}))


def finished(options: FinetuneOptions) -> dict | None:
    """The results of the task folder options.out if a run with these options completed it, else None. Raises
    FinetuneDataError when it was completed with other options (mixing them would make the table a lie)."""
    path = os.path.join(options.out, "metrics.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            results = json.load(f)
        earlier = results["options"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FinetuneDataError(f"{path}: unreadable ({e}); remove {options.out} to run the task again") from None
    differing = [name for name, value in _recorded(options).items()
                 if name not in _HOW and earlier.get(name) != value]
    if differing:
        name = differing[0]
        raise FinetuneDataError(f"{options.out} was finished with other settings ({name} {earlier.get(name)!r}, "
                                f"now {getattr(options, name)!r}): give another --out, or remove the folder to run "
                                "the task again")
    return results


class _Prefixed:
    """A text stream that starts each line written to `stream` with `prefix`: the log of one task among several."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write(self.prefix)
            self.stream.write(piece)
            self.at_line_start = piece.endswith(("\n", "\r"))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _run_task(options: FinetuneOptions, name: str, threads: int | None = None) -> dict:
    """One task's finetune, its log lines marked with its name; `threads`: torch's CPU threads (a worker process)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    for leftover in glob.glob(os.path.join(glob.escape(os.path.dirname(options.out)), f".{name}.*")):
        shutil.rmtree(leftover, ignore_errors=True)   # the temporary folder of a run killed before it finished
    return finetune(dataclasses.replace(options, log=_Prefixed(options.log or sys.stderr, f"{name}: ")))


def _report(task: GlueTask, results: dict, log) -> None:
    shown = ", ".join(f"{name} {100 * results['median'][name]:.1f}" for name in (task.metric, *task.shown))
    print(f"{task.name}: {shown} (median of {len(results['runs'])} seed(s)) -> {results['options']['out']}", file=log)


def run_glue(data_dir: str, out: str, model: str, *, tasks=None, jobs: int = 1, log=None, **settings) -> dict:
    """Fine-tunes `model` on the GLUE tasks named in `tasks` (all eight for None) found in `data_dir`, `jobs` tasks
    at once, each into out/TASK; writes out/glue.json (the returned summary) and out/glue.md (score_table).

    `settings`: any other FinetuneOptions field (seeds, seed, lr, epochs, batch_size, from_scratch, device, ...),
    the same for every task; epochs, if given, replaces the per-task ones. Finished task folders are kept (and
    refused if finished with other settings). Progress goes to `log` (default stderr). Raises FinetuneDataError for
    bad input before any training."""
    log = log or sys.stderr
    reserved = sorted(_PER_TASK & set(settings))
    if reserved:
        raise TypeError(f"run_glue sets {', '.join(reserved)} for each task")
    check_ranges(types.SimpleNamespace(jobs=jobs), [at_least("jobs", 1)], FinetuneDataError)
    settings = {name: value for name, value in settings.items() if value is not None}   # None: the default
    data_dir, out = os.path.abspath(data_dir), os.path.abspath(out)
    chosen = select(tasks)
    options = {task.name: task_options(task, data_dir, out, os.path.abspath(model), settings) for task in chosen}
    for task_settings in options.values():
        check_options(task_settings)
    check_layout(data_dir, chosen)
    results = {}
    for task in chosen:
        earlier = finished(options[task.name])
        if earlier is not None:
            results[task.name] = earlier
            print(f"{task.name}: finished before, kept", file=log)
    pending = [task for task in chosen if task.name not in results]
    if jobs == 1 or len(pending) <= 1:
        for task in pending:
            results[task.name] = _run_task(dataclasses.replace(options[task.name], log=log), task.name)
            _report(task, results[task.name], log)
    else:
        results.update(_run_parallel(pending, options, jobs, log))
    summary = summarize(chosen, results, model=model, from_scratch=settings.get("from_scratch", False))
    os.makedirs(out, exist_ok=True)
    write_file(os.path.join(out, "glue.json"), json.dumps(summary, indent=2) + "\n")
    write_file(os.path.join(out, "glue.md"), score_table(summary) + "\n")
    return summary


def _run_parallel(pending, options: dict, jobs: int, log) -> dict:
    """The results of the pending tasks, `jobs` at once in processes of their own (spawned: torch and the
    tokenizers do not survive a fork), largest training file first; the CPU threads shared out, the GPUs, if
    several, taken in turn. An error or an interrupt ends the other processes (their tasks rerun next time)."""
    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    gpus = torch.cuda.device_count()
    largest_first = sorted(pending, key=lambda task: -os.path.getsize(options[task.name].train))
    work = []
    for i, task in enumerate(largest_first):
        task_options = dataclasses.replace(options[task.name], progress=False, log=None)
        if task_options.device is None and gpus > 1:
            task_options = dataclasses.replace(task_options, device=f"cuda:{i % gpus}")
        work.append((task_options, task.name, threads))
    by_name = {task.name: task for task in pending}
    results = {}
    # Leaving the pool early (an error, Ctrl-C) ends its processes; they leave Ctrl-C to this one
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(work)), initializer=signal.signal,
                                                   initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        for name, task_results in pool.imap_unordered(_run_named, work):
            results[name] = task_results
            _report(by_name[name], task_results, log)
        pool.close()   # all done: let the processes end by themselves
        pool.join()
    return results


def _run_named(work: tuple) -> tuple[str, dict]:
    options, name, threads = work
    return name, _run_task(options, name, threads)


def glue_score(medians: dict[str, float]) -> float | None:
    """The paper's GLUE score: 100 × the mean over its eight tasks of each task's median metric (`medians`: task
    name -> that median, as a fraction); None unless all eight are there."""
    if set(medians) != {task.name for task in TASKS}:
        return None
    return 100 * statistics.fmean(medians[task.name] for task in TASKS)


def summarize(tasks, results: dict, *, model: str, from_scratch: bool = False) -> dict:
    """glue.json: per task its metric, the medians, every run and the kept seed; and the score (None unless all
    eight tasks ran)."""
    entries = {task.name: {"metric": task.metric, "median": results[task.name]["median"],
                           "median_seed": results[task.name]["median_seed"], "runs": results[task.name]["runs"],
                           "epochs": results[task.name]["options"]["epochs"], "notices": results[task.name]["notices"],
                           "folder": results[task.name]["options"]["out"]} for task in tasks}
    seeds = len(next(iter(entries.values()))["runs"])   # the same for every task: `finished` refuses other settings
    return {"model": model, "from_scratch": from_scratch, "seeds": seeds, "tasks": entries,
            "score": glue_score({name: entry["median"][entry["metric"]] for name, entry in entries.items()})}


def score_table(summary: dict) -> str:
    """The markdown table of a summary: the paper's columns (CoLA SST MRPC STS QQP MNLI QNLI RTE, then GLUE), a row
    naming each column's metrics, and the model's row of medians in points (100 ×, one decimal; – for a task not
    run)."""
    def cell(task):
        entry = summary["tasks"].get(task.name)
        if entry is None:
            return "–"
        return " / ".join(f"{100 * entry['median'][name]:.1f}" for name in (task.metric, *task.shown))

    seeds = summary["seeds"]
    label = f"{summary['model']}{' (from scratch)' if summary['from_scratch'] else ''}, median of {seeds} seed(s)"
    score = "–" if summary["score"] is None else f"{summary['score']:.1f}"
    rows = [["model", *(task.column for task in TASKS), "GLUE"], ["---"] * (len(TASKS) + 2),
            ["metric", *(task.heading for task in TASKS), "mean"], [label, *(cell(task) for task in TASKS), score]]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)
