"""The run of contract §5: tokens/sec of the whole ELECTRA step and the time of the fused head and ops, against the
baselines, one table at a time, every variant of a table in this process on the same inputs, interleaved."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

import torch

from .baselines import cublas_probe_notes, head_floor, head_variants, op_variants
from .config import Config
from .measure import peak_memory_mb, probe_memory, time_variants
from .report import Row, add_ratios, environment
from .steps import first_call_seconds, fused_share_of_step, one_graph_variants, recommended_variants, step_variants

# The tables whose peak memory is measured: the other ops' tensors are a few KB.
MEMORY_TABLES = ("head fwd", "head fwd+bwd", "step", "recommended step", "one-graph step")


def variants_of(cfg: Config, table: str) -> dict:
    """name -> zero-argument callable for one table of the report."""
    if table == "head fwd+bwd":
        return head_variants(cfg)
    if table == "head fwd":
        return head_variants(cfg, backward=False)
    if table == "step":
        return step_variants(cfg)
    if table == "recommended step":
        return recommended_variants(cfg)
    if table == "one-graph step":
        return one_graph_variants(cfg)
    return op_variants(cfg)[table]


def tables_of(cfg: Config) -> list[str]:
    tables = []
    if "head" in cfg.parts:
        tables += ["head fwd", "head fwd+bwd"]
    if "ops" in cfg.parts:
        tables += list(op_variants(cfg))
    if "step" in cfg.parts:
        tables.append("step")
    if "recommended" in cfg.parts:
        tables.append("recommended step")
    if "graph" in cfg.parts:
        tables.append("one-graph step")
    return tables


def run(cfg: Config, progress: bool = True) -> dict:
    """Runs the tables of cfg.parts; returns the report: environment, config, rows (one per variant that ran),
    notes (the cuBLAS probe's answer, the head's floor, the fused ops' share of the eager step) and failed
    (variants that raised, each with its one-line reason)."""
    device = torch.device(cfg.device)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=0, desc="bench", unit="call", leave=False, file=sys.stderr)
    # Which path the head's matrix products take (cuBLAS into float32, or the slow upcast): the timings' context.
    rows, notes, failed = [], cublas_probe_notes(device, getattr(torch, cfg.dtype)), []
    for table in tables_of(cfg):
        variants = variants_of(cfg, table)
        if bar is not None:
            bar.total += cfg.repeats * len(variants)
            bar.set_description(table)
        failures = {}
        seconds = time_variants(variants, device, cfg.warmup, cfg.repeats, bar, failed=failures)
        failed += [{"table": table, "variant": name, "error": error} for name, error in failures.items()]
        table_rows = []
        for name, s in seconds.items():
            row = Row(table, name, s * 1e3)
            if table.endswith("step"):
                row.tokens_per_s = cfg.batch_size * cfg.seq_len / s
            if "loss only" in name:
                row.note = "no sample"
            table_rows.append(row)
        if cfg.memory and table in MEMORY_TABLES:
            for row in table_rows:
                row.peak_mb = (peak_memory_mb(variants[row.variant], device) if device.type == "cuda"
                               else probe_memory(cfg, table, row.variant))
        add_ratios(table_rows)
        rows += table_rows
        if table == "head fwd+bwd":
            notes.update(head_floor(cfg))
            if "electra-fast" in seconds:
                notes["head_over_floor"] = seconds["electra-fast"] * 1e3 / notes["head_gemm_floor_ms"]
        if table == "step" and "eager" in seconds:
            notes["fused_share_of_eager_step"] = fused_share_of_step(cfg, seconds["eager"])
        if table == "one-graph step":
            notes.update(first_call_seconds(cfg))
    if bar is not None:
        bar.close()
    return {"environment": environment(device), "config": asdict(cfg), "rows": [asdict(r) for r in rows],
            "notes": notes, "failed": failed}


def memory_probe_main(payload: str) -> None:
    """The subprocess side of `measure.probe_memory`: runs one variant once to warm up, then prints the extra
    peak memory in MB of a second call."""
    spec = json.loads(payload)
    cfg = Config(**spec["config"])
    fn = variants_of(cfg, spec["table"])[spec["variant"]]
    fn()  # warm-up (compilation, allocator) before the measured call
    print(peak_memory_mb(fn, torch.device(cfg.device)))
