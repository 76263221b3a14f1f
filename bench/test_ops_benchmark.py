"""Per-op micro-benchmarks with pytest-benchmark (times only; nothing here asserts a time):

    python -m pytest bench/test_ops_benchmark.py --benchmark-only

Shapes: ELECTRA-Small's head (N = 2,458 masked rows, H = 128, V = 30,522) and its step (the benchmark's
default batch for the device: 128 x 128 in bfloat16 on CUDA, 8 x 128 in float32 on the CPU).
"""
import pytest
import torch

from electra_fast import benchmark

CFG = benchmark.Config(device="cuda" if torch.cuda.is_available() else "cpu")
HEAD = {"head fwd": benchmark.head_variants(CFG, backward=False, peers=False),
        "head fwd+bwd": benchmark.head_variants(CFG, peers=False)}
CASES = [(table, name, fn) for table, variants in {**HEAD, **benchmark.op_variants(CFG)}.items()
         for name, fn in variants.items()]


@pytest.mark.parametrize("table, variant, fn", CASES, ids=[f"{t}-{v}" for t, v, _ in CASES])
def test_op(benchmark, table, variant, fn):
    benchmark.group = table
    sync = torch.cuda.synchronize if CFG.device == "cuda" else (lambda: None)
    benchmark(lambda: (fn(), sync()))
