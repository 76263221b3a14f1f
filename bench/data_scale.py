"""Pretraining data at corpus scale, measured: `prepare` against `tokenizers` alone, memory and time to the first
step as the corpus grows, and the cost of a batch at a GPU's step rate.

    python bench/data_scale.py                          # 100 MB and 1 GB corpora (about 20 minutes on 2 cores)
    python bench/data_scale.py --sizes 2M 8M --json out.json
    python bench/data_scale.py --baseline-python OLD/bin/python --baseline-size 100M   # with the in-memory path

The corpora are generated on the fly in a temporary folder (never kept): lines of Python's own help topics in a
seeded random order, so every size has the same text statistics. Each figure is measured in this one run:
- throughput: `tokenizers`' `encode_batch_fast` on every core (the text already in memory) against `prepare` on
  the same text and tokenizer (reading, tokenizing on `--workers` = every core, writing shards), interleaved,
  medians of `--repeats`; also `prepare --workers 1`, for MB/s per core;
- `prepare` and `pretrain --data ... --steps 1` at each size in fresh processes: wall time, the peak resident
  memory of the largest process, and for pretrain the time until its first step is logged;
- one training batch of 128 x 128 (ELECTRA-Small) from the largest data: the gather alone, and what the training
  loop waits for with the prefetching thread while each step takes as long as at a million tokens per second.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from electra_fast.data.config import byte_count

GPU_TOKENS_PER_S = 1_000_000
TINY_MODEL = ["--num-layers", "2", "--batch-size", "8", "--eval-every", "0", "--save-every", "1000"]


def write_corpus(path: str, size: int, seed: int = 0) -> None:
    """`size` bytes of help-topic lines in a seeded random order, one document per line."""
    from pydoc_data import topics

    lines = [line.strip() for text in topics.topics.values() for line in text.splitlines() if line.strip()]
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            rng.shuffle(lines)
            block = "\n".join(lines) + "\n"
            block = block[:size - written] if written + len(block) > size else block
            f.write(block)
            written += len(block.encode())


def run_measured(command: list[str], first_line_of: str | None = None) -> dict:
    """Runs `command` in a wrapper process: wall seconds, peak RSS (MB) of the largest descendant, and the seconds
    until the file `first_line_of` first holds a line."""
    script = ("import resource, subprocess, sys, time, os\n"
              "t0 = time.perf_counter(); p = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, "
              "stderr=subprocess.PIPE)\n"
              "first = None\n"
              "while p.poll() is None:\n"
              "    if first is None and sys.argv[1] and os.path.exists(sys.argv[1]) and os.path.getsize(sys.argv[1]):\n"
              "        first = time.perf_counter() - t0\n"
              "    time.sleep(0.01)\n"
              "err = p.stderr.read().decode()[-2000:]\n"
              "print(p.returncode, time.perf_counter() - t0, first, "
              "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
              "sys.stderr.write(err)\n")
    run = subprocess.run([sys.executable, "-c", script, first_line_of or "", *command], capture_output=True,
                         text=True)
    code, seconds, first, peak = run.stdout.split()
    if code != "0":
        raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr}")
    return {"seconds": float(seconds), "first_step_s": None if first == "None" else float(first),
            "peak_rss_mb": float(peak)}


def throughput(text_path: str, tokenizer_dir: str, workers: int, repeats: int, scratch: str) -> dict:
    """MB/s of tokenizers alone and of prepare on the same text, interleaved."""
    from tokenizers import Tokenizer

    from electra_fast.data import prepare

    with open(text_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    megabytes = os.path.getsize(text_path) / 1e6
    batches, size, batch = [], 0, []
    for line in lines:  # batches of about a megabyte, as prepare sends them
        batch.append(line)
        size += len(line)
        if size >= prepare.BATCH_BYTES:
            batches.append(batch)
            batch, size = [], 0
    batches.append(batch)
    tokenizer = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    rates = {"tokenizers": [], "prepare": [], "prepare_one_worker": []}
    for repeat in range(repeats):
        began = time.perf_counter()
        for batch in batches:
            tokenizer.encode_batch_fast(batch, add_special_tokens=False)
        rates["tokenizers"].append(megabytes / (time.perf_counter() - began))
        for key, count in (("prepare", workers), ("prepare_one_worker", 1)):
            out = os.path.join(scratch, f"throughput-{key}-{repeat}")
            began = time.perf_counter()
            prepare.prepare([text_path], out, tokenizer_dir=tokenizer_dir, workers=count, progress=False)
            rates[key].append(megabytes / (time.perf_counter() - began))
    medians = {key: statistics.median(values) for key, values in rates.items()}
    return {"megabytes": megabytes, "workers": workers, "repeats": repeats, "mb_per_s": medians, "all": rates,
            "prepare_over_tokenizers": medians["prepare"] / medians["tokenizers"],
            "mb_per_s_per_core": medians["prepare"] / workers}


def data_startup_ms(data_dir: str) -> float:
    """Milliseconds from opening prepared data to holding the first 128 x 128 training batch (in this process)."""
    from electra_fast.data import shards as data

    began = time.perf_counter()
    tokens = data.TokenData(data_dir)
    windows = tokens.windows(128, valid_sequences=min(1000, tokens.windows(128).count // 100))
    next(windows.batches(batch_size=128, seed=0, rank=0, world_size=1))
    return (time.perf_counter() - began) * 1e3


def batch_cost(data_dir: str, batches: int = 200) -> dict:
    """Microseconds per 128 x 128 batch: the gather, and the training loop's wait behind the prefetching thread
    while each step lasts as long as at GPU_TOKENS_PER_S."""
    from electra_fast.data import shards as data

    tokens = data.TokenData(data_dir)
    windows = tokens.windows(128, valid_sequences=min(1000, tokens.windows(128).count // 100))
    stream = windows.batches(batch_size=128, seed=0, rank=0, world_size=1, start=10 ** 6)
    next(stream)
    began = time.perf_counter()
    for _ in range(batches):
        next(stream)
    gather_us = (time.perf_counter() - began) / batches * 1e6
    step_s = 128 * 128 / GPU_TOKENS_PER_S
    prefetched = data.prefetched(windows.batches(batch_size=128, seed=0, rank=0, world_size=1, start=2 * 10 ** 6))
    next(prefetched)
    waits = []
    for _ in range(batches):
        time.sleep(step_s)  # the device's step: the loop waits on it with the interpreter lock released
        began = time.perf_counter()
        next(prefetched)
        waits.append(time.perf_counter() - began)
    wait_us = statistics.median(waits) * 1e6
    return {"gather_us": gather_us, "loop_wait_us_median": wait_us, "loop_wait_us_mean": statistics.mean(waits) * 1e6,
            "step_ms_at_1M_tokens_per_s": step_s * 1e3, "loop_wait_share_of_step": statistics.mean(waits) / step_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["100M", "1G"], help="corpus sizes (bytes; K, M, G)")
    parser.add_argument("--throughput-size", default="20M", help="text for the throughput comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--baseline-python", default=None,
                        help="a Python whose electra_fast is the in-memory pretrain (before prepare) to time too")
    parser.add_argument("--baseline-size", default="33M")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from electra_fast.data import shards as data

    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
              "load_average_at_start": os.getloadavg()[1]}
    import tokenizers
    import torch

    report["versions"] = {"torch": torch.__version__, "tokenizers": tokenizers.__version__, "numpy": np.__version__}
    with tempfile.TemporaryDirectory(prefix="electra-data-bench-") as scratch:
        tokenizer_dir = os.path.join(scratch, "tokenizer")
        sample = os.path.join(scratch, "sample.txt")
        write_corpus(sample, byte_count(args.throughput_size), seed=1)
        with open(sample, encoding="utf-8") as f:
            data.save_tokenizer(data.train_tokenizer(f.read().splitlines(), 8000), tokenizer_dir)
        print("throughput ...", file=sys.stderr)
        report["throughput"] = throughput(sample, tokenizer_dir, args.workers, args.repeats, scratch)
        os.remove(sample)

        report["sizes"] = []
        for size in args.sizes:
            corpus = os.path.join(scratch, f"corpus-{size}.txt")
            write_corpus(corpus, byte_count(size))
            out = os.path.join(scratch, f"data-{size}")
            print(f"prepare {size} ...", file=sys.stderr)
            prepared = run_measured([sys.executable, "-m", "electra_fast", "prepare", "--corpus", corpus,
                                     "--tokenizer", tokenizer_dir, "--out", out, "--quiet"])
            os.remove(corpus)
            run = os.path.join(scratch, f"run-{size}")
            print(f"pretrain {size} ...", file=sys.stderr)
            pretrained = run_measured([sys.executable, "-m", "electra_fast", "pretrain", "--data", out, "--out", run,
                                       "--steps", "1", *TINY_MODEL], first_line_of=os.path.join(run, "log.jsonl"))
            report["sizes"].append({"size": size, "bytes": byte_count(size), "prepare": prepared,
                                    "prepare_mb_per_s": byte_count(size) / 1e6 / prepared["seconds"],
                                    "pretrain_first_step": pretrained, "data_startup_ms": data_startup_ms(out),
                                    "shard_bytes": sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)
                                                       if n.startswith("shard-"))})
        print("batch cost ...", file=sys.stderr)
        report["batch"] = batch_cost(os.path.join(scratch, f"data-{args.sizes[-1]}"))

        if args.baseline_python:
            corpus = os.path.join(scratch, "baseline.txt")
            write_corpus(corpus, byte_count(args.baseline_size))
            run = os.path.join(scratch, "baseline-run")
            print(f"in-memory pretrain {args.baseline_size} ...", file=sys.stderr)
            report["in_memory"] = {"size": args.baseline_size, **run_measured(
                [args.baseline_python, "-m", "electra_fast", "pretrain", "--corpus", corpus, "--tokenizer",
                 tokenizer_dir, "--out", run, "--steps", "1", "--num-layers", "2", "--batch-size", "8"],
                first_line_of=os.path.join(run, "log.jsonl"))}
    report["load_average_at_end"] = os.getloadavg()[1]
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


def format_report(report: dict) -> str:
    t = report["throughput"]
    lines = [f"{report['machine']}, Python {report['python']}, " + ", ".join(f"{k} {v}" for k, v in
                                                                            report["versions"].items())
             + f"; 5-minute load average {report['load_average_at_start']:.1f} at the start, "
               f"{report['load_average_at_end']:.1f} at the end",
             f"throughput on {t['megabytes']:.0f} MB (median of {t['repeats']}): tokenizers alone "
             f"{t['mb_per_s']['tokenizers']:.2f} MB/s, prepare --workers {t['workers']} {t['mb_per_s']['prepare']:.2f}"
             f" MB/s ({t['prepare_over_tokenizers']:.0%} of tokenizers), {t['mb_per_s_per_core']:.2f} MB/s per core; "
             f"prepare --workers 1 {t['mb_per_s']['prepare_one_worker']:.2f} MB/s",
             "| corpus | shards | prepare | prepare MB/s | prepare peak RSS | pretrain: first step | pretrain peak RSS "
             "| open data + first batch |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["sizes"]:
        p, q = row["prepare"], row["pretrain_first_step"]
        lines.append(f"| {row['size']} | {row['shard_bytes'] / 1e6:.0f} MB | {p['seconds']:.1f} s | "
                     f"{row['prepare_mb_per_s']:.2f} | {p['peak_rss_mb']:.0f} MB | {q['first_step_s']:.1f} s | "
                     f"{q['peak_rss_mb']:.0f} MB | {row['data_startup_ms']:.1f} ms |")
    if "in_memory" in report:
        m = report["in_memory"]
        lines.append(f"| {m['size']}, in-memory pretrain --corpus (before prepare) | — | — | — | — | "
                     f"{m['first_step_s']:.1f} s | {m['peak_rss_mb']:.0f} MB | — |")
    b = report["batch"]
    lines.append(f"128 x 128 batch: gather {b['gather_us']:.0f} us; the loop waits {b['loop_wait_us_median']:.0f} us "
                 f"(median; mean {b['loop_wait_us_mean']:.0f}) behind the prefetching thread = "
                 f"{b['loop_wait_share_of_step']:.3%} of a {b['step_ms_at_1M_tokens_per_s']:.1f} ms step at "
                 f"{GPU_TOKENS_PER_S:,} tokens/s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
