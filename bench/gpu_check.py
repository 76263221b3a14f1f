"""One prepared script for a CUDA machine: the op tests compiled in every dtype, `electra-fast check`, then the
per-op and head (fwd+bwd) benchmarks at ELECTRA-Small and -Base shapes and the Small training step, as one
table. Sized to finish within 8 minutes on an H100.

    pip install --no-build-isolation --no-deps -e . && python bench/gpu_check.py [--json out.json]
"""
import argparse
import json
import subprocess
import sys
import time

import torch

from electra_fast import benchmark, check


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA device")
        return 2
    started = time.time()
    status = 0
    if not args.skip_tests:
        status |= subprocess.call([sys.executable, "-m", "pytest", "-q", "-x", "tests", "-p", "no:cacheprovider"])
    status |= check.main("cuda")

    reports = []
    for cfg in (
        benchmark.Config(device="cuda", preset="small", head_rows=2458, parts=("head", "ops", "step"),
                         batch_size=128, seq_len=128, warmup=3, repeats=10),
        benchmark.Config(device="cuda", preset="base", head_rows=19660, dtype="bfloat16", parts=("head",),
                         warmup=3, repeats=10),
    ):
        report = benchmark.run(cfg, progress=False)
        print(benchmark.format_table(report), flush=True)
        reports.append(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2)
    print(f"gpu_check finished in {time.time() - started:.0f} s, status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
