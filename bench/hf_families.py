"""RTD pretraining step of each Hugging Face family: electra-fast against eager Hugging Face with full-sequence MLM
logits (what users run today), on the same models and batch.

Both variants train one generator (the family's XxxForMaskedLM, DeBERTa-v3's sizing: the discriminator's width,
half its depth) and one discriminator (the family's base model + an RTD head) sharing their token embedding ("es"),
with AdamW. "eager-full" masks with electra_fast.mask_tokens, runs the XxxForMaskedLM forward (logits [B, T, V]),
F.cross_entropy over the labels (-100 off the masked positions), Gumbel-max sampling from torch.rand noise at the
masked positions, index assignment and F.binary_cross_entropy_with_logits; "electra-fast" is ElectraPretrainer
(the fused head at the masked rows only). Tokens/s counts all B x T positions of a whole step (forward, backward,
optimizer), the median of interleaved rounds after warm-up, by the wall clock and, on the CPU, by the process's
CPU time too (all its threads), which other work on a shared machine disturbs far less; the speed-up is the CPU
time's on the CPU. Peak memory is the growth of the max RSS of a fresh process that runs one step of that variant
alone (CPU), or the CUDA allocator's peak.

    python bench/hf_families.py                      # every family, batch 8 x 128, V = 30,522
    python bench/hf_families.py --families bert modernbert --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from electra_fast import ElectraPretrainer, mask_tokens
from electra_fast.benchmark import peak_memory_mb
from electra_fast.benchmark.baselines import gumbel_sample
from electra_fast.benchmark.report import environment
from electra_fast.hf import encoders

PAD, CLS, SEP, MASK = 0, 1, 2, 3
VARIANTS = ("eager-full", "electra-fast")


def build(family: str, args, device):
    torch.manual_seed(0)
    return ElectraPretrainer.from_hugging_face(
        family, vocab_size=args.vocab_size, mask_token_id=MASK, pad_token_id=PAD, special_token_ids=(CLS, SEP),
        hidden_size=args.hidden_size, num_hidden_layers=args.num_layers, num_attention_heads=args.hidden_size // 64,
        intermediate_size=4 * args.hidden_size, max_position_embeddings=args.seq_len,
    ).to(device)


def batch(args, device):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, args.vocab_size, (args.batch_size, args.seq_len), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    return ids.to(device), torch.ones_like(ids)


def step_of(variant: str, model: ElectraPretrainer, ids, mask):
    """One training step of `variant` as a zero-argument callable."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def electra_fast_step():
        model(ids, mask).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def eager_full_step():
        masked = mask_tokens(ids, mask, mask_token_id=MASK, special_token_ids=(CLS, SEP, PAD))
        labels = torch.full_like(ids, -100).view(-1).index_put((masked.positions,), masked.targets).view_as(ids)
        logits = model.generator(input_ids=masked.masked_ids, attention_mask=mask).logits  # [B, T, V]
        mlm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.view(-1))
        with torch.no_grad():
            sampled = gumbel_sample(logits.reshape(-1, logits.shape[-1])[masked.positions])
        noised = ids.clone().view(-1).index_put((masked.positions,), sampled).view_as(ids)
        rtd = F.binary_cross_entropy_with_logits(model._models.logits(noised, mask), (noised != ids).float(),
                                                 weight=mask.float(), reduction="sum") / mask.sum()
        (mlm + model.disc_weight * rtd).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"eager-full": eager_full_step, "electra-fast": electra_fast_step}[variant]


def time_steps(steps: dict, device, warmup: int, repeats: int) -> dict:
    """{name: (median wall seconds, median CPU seconds)} per call, over `repeats` interleaved rounds."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    wall, cpu = {name: [] for name in steps}, {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in steps}


def peak_in_fresh_process(family: str, variant: str, argv: list[str]) -> float | None:
    # A fixed mmap threshold makes glibc return large blocks to the OS, so the warm-up's heap does not hide the peak.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    try:
        out = subprocess.run([sys.executable, __file__, *argv, "--child", family, variant], capture_output=True,
                             text=True, check=True, env=env, timeout=900)
    except (subprocess.SubprocessError, OSError):
        return None
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(encoders.FAMILIES), choices=encoders.FAMILIES)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2, help="the discriminator's; the generator has half")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=2, metavar=("FAMILY", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device(args.device)
    argv = sys.argv[1:]

    if args.child:
        family, variant = args.child
        model = build(family, args, device)
        step = step_of(variant, model, *batch(args, device))
        step()  # warm-up: optimizer state and allocator caches exist before the measured step
        print(peak_memory_mb(step, device))
        return

    ids, mask = batch(args, device)
    rows = []
    for family in args.families:
        model = build(family, args, device)
        steps = {variant: step_of(variant, model, ids, mask) for variant in VARIANTS}
        seconds = time_steps(steps, device, warmup=args.warmup, repeats=args.repeats)
        for variant in VARIANTS:
            wall, cpu = seconds[variant]
            rows.append({"family": family, "variant": variant, "ms": 1e3 * wall, "cpu_ms": 1e3 * cpu,
                         "tokens_per_s": ids.numel() / wall, "peak_mb": peak_in_fresh_process(family, variant, argv)})
    env = environment(device)
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    print(f"batch={args.batch_size}x{args.seq_len} V={args.vocab_size} discriminator={args.num_layers}x"
          f"{args.hidden_size} generator={max(1, args.num_layers // 2)}x{args.hidden_size} embedding_sharing=es "
          f"median of {args.repeats} interleaved rounds after {args.warmup} warm-up")
    clock = "ms" if device.type == "cuda" else "cpu_ms"  # the speed-up's clock
    print(f"\n{'family':<12} {'variant':<13} {'ms':>8} {'cpu ms':>8} {'tokens/s':>9} {'peak MB':>8} {'speed-up':>9} "
          f"{'memory':>7}")
    for row in rows:
        base = next(r for r in rows if r["family"] == row["family"] and r["variant"] == "eager-full")
        memory = (f"{row['peak_mb'] / base['peak_mb']:.2f}x" if row["peak_mb"] and base["peak_mb"] else "-")
        print(f"{row['family']:<12} {row['variant']:<13} {row['ms']:>8.1f} {row['cpu_ms']:>8.1f} "
              f"{row['tokens_per_s']:>9.0f} {row['peak_mb'] if row['peak_mb'] is not None else float('nan'):>8.0f} "
              f"{base[clock] / row[clock]:>8.2f}x {memory:>7}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
