"""Masked-language-model training steps of Hugging Face models at their real vocabulary sizes: the unpatched
XxxForMaskedLM (HF eager: [B, T, V] logits), the masked rows gathered then plain cross-entropy, the model
patched by electra_fast.patch_masked_lm (the fused head at the labelled rows), and a floor without a head (the
labels' own logits alone), whose memory every head's step holds too.

Each family is a tiny encoder (hidden 256, 2 layers, 4 heads, feed-forward 1,024) with its released vocabulary:
BERT 30,522, RoBERTa 50,265, XLM-R 250,002, DeBERTa-v3 128,100, ModernBERT 50,368. Labels are 15% of the
tokens, drawn once (BERT's masking rate, as DataCollatorForLanguageModeling draws it); each variant takes the
same batch. A step is forward, backward and an AdamW step, float32. Time: the median over interleaved rounds after
a warm-up, by the wall clock and by the process's CPU time (all threads; less disturbed by other work on a shared
machine); the speed-up is the CPU time's against the gather baseline. Memory: a fresh process per variant runs
one warm-up step, then one measured forward and backward; "extra" is the growth of its peak RSS over what it held
before plus the parameters' gradients: what the step needs beyond the model, its gradients and the optimizer's
state, which are the same for every variant (AdamW's own temporaries, the same too, come after the backward).
"head MB" is the extra above the floor's: the head's own. HF eager is skipped, with the reason, where its logits
alone would pass --eager-logits-gb.

    python bench/hf_mlm.py                                  # every family, 8 x 128 and 16 x 512
    python bench/hf_mlm.py --families xlm-roberta --batches 8x128
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from hf_families import time_steps

import electra_fast
from electra_fast.benchmark import peak_memory_mb
from electra_fast.benchmark.report import environment
from electra_fast.hf import encoders as hf_encoders
from electra_fast.hf import masked_lm

# family name -> (model_type, released vocabulary, config fields beyond the tiny sizes)
FAMILIES = {"bert": ("bert", 30522, {}), "roberta": ("roberta", 50265, {}),
            "xlm-roberta": ("xlm-roberta", 250002, {}),
            "deberta-v3": ("deberta-v2", 128100, dict(relative_attention=True, position_biased_input=False,
                                                      pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                                                      position_buckets=256, norm_rel_ebd="layer_norm",
                                                      share_att_key=True)),
            "modernbert": ("modernbert", 50368, {})}
VARIANTS = ("hf-eager", "gather", "patched", "floor")
PAD, MASK_RATE = 1, 0.15


def build(family: str, seq_len: int):
    model_type, vocab, extra = FAMILIES[family]
    torch.manual_seed(0)
    config = hf_encoders.family_config(model_type, vocab_size=vocab, pad_token_id=PAD, hidden_size=256,
                                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
                                       max_position_embeddings=seq_len + PAD + 1, **extra)
    import transformers

    return transformers.AutoModelForMaskedLM.from_config(config).train()


def batch(vocab: int, b: int, t: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    labels = torch.where(torch.rand(b, t, generator=g) < MASK_RATE, ids, -100)
    return ids, torch.ones_like(ids), labels


def labelled_rows(model, ids, mask, labels):
    """The encoder, then the family's MLM transform at the labelled rows: (rows [n, E], targets [n], weight
    [V, E], bias [V] or None), as a user gathers them."""
    hidden = model.base_model(input_ids=ids, attention_mask=mask)[0]
    keep = labels.view(-1) != -100
    transform = masked_lm.mlm_head(model)[0]
    weight, bias = masked_lm.output_weights(model)
    return transform(hidden.reshape(-1, hidden.shape[-1])[keep]), labels.view(-1)[keep], weight, bias


def gather_loss(model, ids, mask, labels):
    """What a user writes without electra-fast: the family's head on the labelled rows (their [n, V] logits),
    plain cross-entropy."""
    rows, targets, weight, bias = labelled_rows(model, ids, mask, labels)
    return F.cross_entropy(F.linear(rows, weight, bias), targets)


def floor_loss(model, ids, mask, labels):
    """No head: minus the labels' own logits, [n] products in place of [n, V]. What is left is what any head's
    step holds as well: the encoder's activations, and the output weight's dense gradient beside the tied
    embedding's before autograd sums the two."""
    rows, targets, weight, bias = labelled_rows(model, ids, mask, labels)
    logit = (rows * weight[targets]).sum(-1)
    return -(logit if bias is None else logit + bias[targets]).mean()


LOSSES = {"gather": gather_loss, "floor": floor_loss}


def step_of(variant: str, model, ids, mask, labels):
    """(one training step of `variant`, its forward and backward alone) as zero-argument callables (each variant
    its own model)."""
    if variant == "patched":
        electra_fast.patch_masked_lm(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward_backward():
        if variant in LOSSES:
            loss = LOSSES[variant](model, ids, mask, labels)
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()

    def step():
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, forward_backward


def eager_skip(vocab: int, b: int, t: int, limit_gb: float) -> str | None:
    logits_gb = b * t * vocab * 4 / 1e9
    if logits_gb > limit_gb:
        return f"its float32 logits alone are {logits_gb:.1f} GB (> --eager-logits-gb {limit_gb:g})"
    return None


def extra_memory_in_fresh_process(argv: list[str], family: str, variant: str, shape: str) -> float | None:
    # A fixed mmap threshold makes glibc return large blocks to the OS, so the warm-up's heap does not hide the peak.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    try:
        out = subprocess.run([sys.executable, __file__, *argv, "--child", family, variant, shape], capture_output=True,
                             text=True, check=True, env=env, timeout=1800)
    except (subprocess.SubprocessError, OSError):
        return None
    return float(out.stdout.strip().splitlines()[-1])


def parse_shape(text: str) -> tuple[int, int]:
    b, t = text.lower().split("x")
    return int(b), int(t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--batches", nargs="+", default=["8x128", "16x512"], metavar="BxT")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eager-logits-gb", type=float, default=4.0,
                   help="skip HF eager where its [B, T, V] float32 logits alone pass this")
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=3, metavar=("FAMILY", "VARIANT", "BxT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    argv = [a for a in sys.argv[1:]]

    if args.child:
        family, variant, shape = args.child
        model = build(family, parse_shape(shape)[1])
        step, forward_backward = step_of(variant, model, *batch(FAMILIES[family][1], *parse_shape(shape)))
        step()  # warm-up: the optimizer's state exists before the measured forward and backward
        grad_mb = sum(q.numel() * q.element_size() for q in model.parameters()) / 2**20
        print(peak_memory_mb(forward_backward, torch.device("cpu")) - grad_mb)
        return

    rows = []
    for shape in args.batches:
        b, t = parse_shape(shape)
        for family in args.families:
            vocab = FAMILIES[family][1]
            ids, mask, labels = batch(vocab, b, t)
            skip = eager_skip(vocab, b, t, args.eager_logits_gb)
            variants = [v for v in VARIANTS if not (v == "hf-eager" and skip)]
            steps = {v: step_of(v, build(family, t), ids, mask, labels)[0] for v in variants}
            seconds = time_steps(steps, torch.device("cpu"), warmup=args.warmup, repeats=args.repeats)
            del steps
            for variant in VARIANTS:
                row = {"batch": shape, "family": family, "vocab": vocab, "variant": variant,
                       "labelled": int((labels != -100).sum())}
                if variant in seconds:
                    wall, cpu = seconds[variant]
                    row.update(ms=1e3 * wall, cpu_ms=1e3 * cpu,
                               extra_mb=extra_memory_in_fresh_process(argv, family, variant, shape))
                else:
                    row["skipped"] = skip
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    env = environment(torch.device("cpu"))
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    print(f"tiny encoders (hidden 256, 2 layers), float32, AdamW; {MASK_RATE:.0%} of tokens labelled; median of "
          f"{args.repeats} interleaved rounds after {args.warmup} warm-up; speed-up and memory against the gather; "
          f"head MB: extra MB above the floor's")
    print(f"\n{'batch':<7} {'family':<12} {'V':>7} {'variant':<9} {'ms':>8} {'cpu ms':>8} {'extra MB':>9} "
          f"{'speed-up':>9} {'memory':>7} {'head MB':>8} {'head memory':>11}")
    for row in rows:
        alike = {r["variant"]: r for r in rows if r["batch"] == row["batch"] and r["family"] == row["family"]}
        base, floor = alike["gather"], alike["floor"]
        head = f"{row['batch']:<7} {row['family']:<12} {row['vocab']:>7} {row['variant']:<9}"
        if "skipped" in row:
            print(f"{head} skipped: {row['skipped']}")
            continue
        measured = all(r.get("extra_mb") is not None for r in (row, base, floor))
        if measured and base["extra_mb"] > 0 and base["extra_mb"] > floor["extra_mb"]:
            own, base_own = row["extra_mb"] - floor["extra_mb"], base["extra_mb"] - floor["extra_mb"]
            memory = f"{row['extra_mb'] / base['extra_mb']:>6.2f}x {own:>8.0f} {own / base_own:>10.2f}x"
        else:
            memory = f"{'-':>7} {'-':>8} {'-':>11}"
        extra = f"{row['extra_mb']:>9.0f}" if row["extra_mb"] is not None else f"{'failed':>9}"
        print(f"{head} {row['ms']:>8.0f} {row['cpu_ms']:>8.0f} {extra} {base['cpu_ms'] / row['cpu_ms']:>8.2f}x "
              f"{memory}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
