"""The benchmark of SPEC §5: tokens/sec of the whole ELECTRA step and the time of the fused head, against
PyTorch eager, eager over the full sequence, torch.compile of eager, and (where installed) Cut Cross-Entropy's
and Liger-Kernel's fused linear cross-entropy (loss only, no sample).

Every variant of one table runs in this process on the same inputs, interleaved (one call of each per round),
after warm-up; a figure is the median over rounds. Peak memory: CUDA's max_memory_allocated per variant; on
the CPU the max RSS of a subprocess that runs that variant alone, minus its RSS before the variant ran.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

import electra_fast
from electra_fast import models

MASK_ID, CLS_ID, SEP_ID, PAD_ID = 103, 101, 102, 0  # BERT uncased's


@dataclass
class Config:
    preset: str = "small"
    batch_size: int = 8
    seq_len: int = 128
    num_layers: int | None = None  # None: the preset's
    head_rows: int = 2458  # ELECTRA-Small's masked rows per step (128 x 128 x 0.15)
    vocab_size: int = 30522  # BERT uncased
    dtype: str = "float32"
    device: str = "cpu"
    warmup: int = 2
    repeats: int = 5
    memory: bool = True
    parts: tuple = ("head", "ops", "step")


MEMORY_TABLES = ("head fwd", "head fwd+bwd", "step", "recommended step")  # the other ops' tensors are a few KB


@dataclass
class Row:
    table: str
    variant: str
    ms: float
    peak_mb: float | None = None
    tokens_per_s: float | None = None
    note: str = ""
    ratios: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# Timing


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(variants: dict, device, warmup: int, repeats: int, progress=None) -> dict:
    """Median seconds per call of each variant, called round-robin so that drift hits all alike."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            if progress is not None:
                progress.update(1)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Resets the kernel's high-water mark of this process's RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn, device) -> float:
    """Extra peak memory of one call of fn: the CUDA allocator's peak over what was allocated before; on the
    CPU the growth of this process's peak RSS over its RSS before the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _reset_peak_rss()
    before = _status_mb("VmRSS")
    fn()
    return max(0.0, _status_mb("VmHWM") - before)


# --------------------------------------------------------------------------------------------------------
# The generator head: eager (SPEC §5's port), torch.compile of it, electra-fast, and the fused-CE peers.


def gumbel_sample(logits: torch.Tensor) -> torch.Tensor:
    """What ELECTRA ports write: float32 Gumbel noise from torch.rand, add, argmax."""
    u = torch.rand(logits.shape, device=logits.device, dtype=torch.float32)
    return (logits.float() - torch.log(-torch.log(u.clamp_min(1e-9)))).argmax(-1)


def eager_head(hidden, weight, bias, targets):
    logits = F.linear(hidden, weight, bias)
    loss = F.cross_entropy(logits.float(), targets)
    with torch.no_grad():
        sampled = gumbel_sample(logits)
    return loss, sampled


def fused_head(hidden, weight, bias, targets):
    loss, sampled, _ = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets)
    return loss, sampled


def head_peers(device) -> dict:
    """Fused linear cross-entropy of installed peers (loss only: they draw no sample). Liger is CUDA-only."""
    peers = {}
    try:
        from cut_cross_entropy import linear_cross_entropy

        impl = "cce" if device.type == "cuda" else "torch_compile"  # its Triton kernels, or its CPU path
        peers["cce (loss only)"] = lambda h, w, b, t: (linear_cross_entropy(h, w, t, impl=impl), None)
    except ImportError:
        pass
    if device.type != "cuda":
        return peers
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        peers["liger (loss only)"] = lambda h, w, b, t: (liger_fused_linear_cross_entropy(h, w, t, b), None)
    except ImportError:
        pass
    return peers


def head_inputs(n, h, v, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.05).to(device, dtype).requires_grad_()
    bias = torch.zeros(v).to(device, dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    return hidden, weight, bias, targets


def head_variants(cfg: Config, hidden_size: int, *, backward: bool = True, peers: bool = True) -> dict:
    """name -> zero-argument callable running the head (forward, and backward unless backward=False)."""
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    args = head_inputs(cfg.head_rows, hidden_size, cfg.vocab_size, device, dtype)
    heads = {"eager": eager_head, "compile": torch.compile(eager_head), "electra-fast": fused_head}
    if peers:
        heads.update(head_peers(device))

    def run(head):
        def call():
            for a in args[:3]:
                a.grad = None
            if backward:
                head(*args)[0].backward()
            else:
                with torch.no_grad():
                    head(*args)
        return call

    return {name: run(head) for name, head in heads.items()}


def gemm_floor_seconds(cfg: Config, hidden_size: int) -> float:
    """torch's own time for the head's three matrix products (logits, d hidden, d weight), in vocabulary tiles
    so that no [N, V] tensor is written: the floor for a fused head that does its matmuls through BLAS."""
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    h, w, _, _ = head_inputs(cfg.head_rows, hidden_size, cfg.vocab_size, device, dtype)
    h, w = h.detach(), w.detach()

    def three_gemms():
        dh = torch.zeros_like(h)
        for v0 in range(0, cfg.vocab_size, 512):
            wt = w[v0:v0 + 512]
            z = h @ wt.T
            dh.addmm_(z, wt)
            _ = z.T @ h

    return time_interleaved({"gemm": three_gemms}, device, cfg.warmup, cfg.repeats)["gemm"]


# --------------------------------------------------------------------------------------------------------
# The other ops, at the step's shapes.


def op_variants(cfg: Config) -> dict:
    device = torch.device(cfg.device)
    b, t = cfg.batch_size, cfg.seq_len
    n = max(1, round(b * t * 0.15))
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(n, cfg.vocab_size, generator=g) * 2).to(device)
    ids = torch.randint(5, cfg.vocab_size, (b, t), generator=g).to(device)
    positions = torch.randperm(b * t, generator=g)[:n].sort().values.to(device)
    sampled = torch.randint(5, cfg.vocab_size, (n,), generator=g).to(device)
    disc = torch.randn(b, t, generator=g).to(device).requires_grad_()
    labels = (torch.rand(b, t, generator=g) < 0.15).to(device)
    mask = torch.ones(b, t, dtype=torch.long, device=device)

    def eager_sample():
        return gumbel_sample(logits)

    def eager_replace():
        noised = ids.clone()
        noised.view(-1)[positions] = sampled
        return noised != ids

    def eager_rtd():
        disc.grad = None
        loss = F.binary_cross_entropy_with_logits(disc, labels.float(), weight=mask.float(), reduction="sum")
        (loss / mask.sum()).backward()

    def fused_rtd():
        disc.grad = None
        electra_fast.rtd_loss(disc, labels, mask).backward()

    return {
        "sample_logits": {"eager": eager_sample, "electra-fast": lambda: electra_fast.sample_logits(logits)},
        "replace_": {"eager": eager_replace, "electra-fast": lambda: electra_fast.replace_(ids.clone(), positions, sampled)},
        "rtd_loss fwd+bwd": {"eager": eager_rtd, "electra-fast": fused_rtd},
    }


# --------------------------------------------------------------------------------------------------------
# The whole step: forward, backward, AdamW.


class EagerStep(torch.nn.Module):
    """ELECTRA's step as PyTorch ports write it, on the same models as ElectraPretrainer (whose masking it
    reuses). full_logits=True computes generator logits over the whole sequence, as Hugging Face's
    ElectraForMaskedLM does; else only at the masked positions."""

    def __init__(self, pretrainer: electra_fast.ElectraPretrainer, full_logits: bool):
        super().__init__()
        self.p = pretrainer
        self.full_logits = full_logits

    def forward(self, input_ids, attention_mask):
        p = self.p
        masked = electra_fast.mask_tokens(input_ids, attention_mask, mask_token_id=p.mask_token_id,
                                          mask_prob=p.mask_prob, special_token_ids=p.special_token_ids + (p.pad_token_id,))
        features = p.generator.features(masked.masked_ids, attention_mask)
        weight, bias = p.generator.output_weight, p.generator.output_bias
        if self.full_logits:
            logits = F.linear(features, weight, bias).view(-1, weight.shape[0])
            labels = torch.full((logits.shape[0],), -100, dtype=torch.long, device=logits.device)
            labels[masked.positions] = masked.targets
            mlm = F.cross_entropy(logits.float(), labels)
            logits = logits[masked.positions]
        else:
            logits = F.linear(features.reshape(-1, features.shape[-1])[masked.positions], weight, bias)
            mlm = F.cross_entropy(logits.float(), masked.targets)
        with torch.no_grad():
            sampled = gumbel_sample(logits)
            noised = input_ids.clone()
            noised.view(-1)[masked.positions] = sampled
            is_replaced = (noised != input_ids).float()
        disc_logits = p.discriminator(noised, attention_mask)
        mask = attention_mask.float()
        rtd = F.binary_cross_entropy_with_logits(disc_logits.float(), is_replaced, weight=mask, reduction="sum")
        return p.gen_weight * mlm + p.disc_weight * rtd / mask.sum()


def step_inputs(cfg: Config, device):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(min(1000, cfg.vocab_size // 2), cfg.vocab_size, (cfg.batch_size, cfg.seq_len), generator=g)
    lengths = torch.randint(cfg.seq_len // 2, cfg.seq_len + 1, (cfg.batch_size,), generator=g)
    mask = (torch.arange(cfg.seq_len)[None, :] < lengths[:, None]).long()
    ids[:, 0] = CLS_ID
    ids[torch.arange(cfg.batch_size), lengths - 1] = SEP_ID
    ids[mask == 0] = PAD_ID
    return ids.to(device), mask.to(device)


def _pretrainer(cfg: Config, device) -> electra_fast.ElectraPretrainer:
    overrides = {} if cfg.num_layers is None else {"num_layers": cfg.num_layers}
    torch.manual_seed(0)
    return electra_fast.ElectraPretrainer.from_preset(
        cfg.preset, vocab_size=cfg.vocab_size, mask_token_id=MASK_ID, pad_token_id=PAD_ID,
        special_token_ids=(CLS_ID, SEP_ID), max_position_embeddings=max(512, cfg.seq_len), dropout=0.0,
        **overrides).to(device)


def _training_step(cfg: Config, loss_of_batch, module, dtype: str | None = None):
    """A zero-argument callable: forward under autocast when dtype is not float32, backward, AdamW."""
    device = torch.device(cfg.device)
    ids, mask = step_inputs(cfg, device)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    dtype = dtype or cfg.dtype

    def step():
        with torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32"):
            loss = loss_of_batch(ids, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def step_variants(cfg: Config) -> dict:
    """name -> zero-argument callable doing one training step (forward, backward, AdamW) on its own copy of the
    same models and the same batch."""
    base = _pretrainer(cfg, torch.device(cfg.device))
    eager, full, compiled, fused = (copy.deepcopy(base) for _ in range(4))
    return {
        "eager-full": _training_step(cfg, EagerStep(full, full_logits=True), full),
        "eager": _training_step(cfg, EagerStep(eager, full_logits=False), eager),
        "compile": _training_step(cfg, torch.compile(EagerStep(compiled, full_logits=False)), compiled),
        "electra-fast": _training_step(cfg, lambda i, m: fused(i, m).loss, fused),
    }


class HuggingFaceStep(torch.nn.Module):
    """The step users run today with Hugging Face's models: ElectraForMaskedLM with labels (logits over the whole
    sequence), Gumbel sampling at the masked positions, ElectraForPreTraining with labels."""

    def __init__(self, generator, discriminator, disc_weight: float = 50.0):
        super().__init__()
        self.generator, self.discriminator, self.disc_weight = generator, discriminator, disc_weight
        self.generator.electra.embeddings = discriminator.electra.embeddings
        self.generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask):
        masked = electra_fast.mask_tokens(input_ids, attention_mask, mask_token_id=MASK_ID,
                                          special_token_ids=(CLS_ID, SEP_ID, PAD_ID))
        labels = torch.full_like(input_ids, -100)
        labels.view(-1)[masked.positions] = masked.targets
        gen = self.generator(input_ids=masked.masked_ids, attention_mask=attention_mask, labels=labels)
        with torch.no_grad():
            sampled = gumbel_sample(gen.logits.view(-1, gen.logits.shape[-1])[masked.positions])
            noised = input_ids.clone()
            noised.view(-1)[masked.positions] = sampled
        disc = self.discriminator(input_ids=noised, attention_mask=attention_mask,
                                  labels=(noised != input_ids).long())
        return gen.loss + self.disc_weight * disc.loss


def hugging_face_models(cfg: Config, device):
    """ElectraForMaskedLM / ElectraForPreTraining of the preset's sizes, or None without transformers."""
    try:
        import transformers
    except ImportError:
        return None
    overrides = {} if cfg.num_layers is None else {"num_layers": cfg.num_layers}
    gen_cfg, disc_cfg = models.preset_configs(cfg.preset, vocab_size=cfg.vocab_size, **overrides)

    def electra_config(c):
        return transformers.ElectraConfig(
            vocab_size=c.vocab_size, embedding_size=c.embedding_size, hidden_size=c.hidden_size,
            num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, intermediate_size=c.intermediate_size,
            max_position_embeddings=max(512, cfg.seq_len), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    torch.manual_seed(0)
    return (transformers.ElectraForMaskedLM(electra_config(gen_cfg)).to(device),
            transformers.ElectraForPreTraining(electra_config(disc_cfg)).to(device))


def bf16_supported(device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def recommended_variants(cfg: Config) -> dict:
    """The step users run today (Hugging Face models, full-sequence logits) against electra-fast's recommended
    steps: the fused ops on the same Hugging Face models, then on the built-in models (SDPA attention), with the
    encoders under torch.compile, and with bf16 autocast where the device supports it."""
    device = torch.device(cfg.device)
    variants = {}

    def fused_step(pretrainer, dtype=None):
        return _training_step(cfg, lambda ids, mask: pretrainer(ids, mask).loss, pretrainer, dtype)

    hf = hugging_face_models(cfg, device)
    if hf is not None:
        hf_step = HuggingFaceStep(*copy.deepcopy(hf))
        variants["hf eager-full"] = _training_step(cfg, hf_step, hf_step)
        variants["hf electra-fast"] = fused_step(electra_fast.ElectraPretrainer(
            *copy.deepcopy(hf), mask_token_id=MASK_ID, vocab_size=cfg.vocab_size, pad_token_id=PAD_ID,
            special_token_ids=(CLS_ID, SEP_ID)))
    base = _pretrainer(cfg, device)
    variants["electra-fast"] = fused_step(copy.deepcopy(base))
    variants["electra-fast +compile"] = fused_step(copy.deepcopy(base).compile_encoders())
    if bf16_supported(device) and cfg.dtype == "float32":
        variants["electra-fast +bf16"] = fused_step(copy.deepcopy(base), "bfloat16")
        variants["electra-fast +compile+bf16"] = fused_step(copy.deepcopy(base).compile_encoders(), "bfloat16")
    return variants


def fused_share_of_step(cfg: Config, eager_step_seconds: float, hidden_size: int) -> float:
    """Share of the eager step spent in what the fused ops replace (head fwd+bwd with sampling, REPLACE, RTD
    loss), timed alone at the step's number of masked rows."""
    rows = max(1, round(cfg.batch_size * cfg.seq_len * 0.15))
    head = head_variants(Config(**{**asdict(cfg), "head_rows": rows}), hidden_size, peers=False)["eager"]
    ops = op_variants(cfg)
    parts = {"head": head, "replace": ops["replace_"]["eager"], "rtd": ops["rtd_loss fwd+bwd"]["eager"]}
    times = time_interleaved(parts, torch.device(cfg.device), cfg.warmup, cfg.repeats)
    return sum(times.values()) / eager_step_seconds


# --------------------------------------------------------------------------------------------------------
# Memory of one variant in a fresh process (CPU).


def _probe_memory(cfg: Config, table: str, variant: str) -> float | None:
    """Runs one variant alone in a subprocess; returns its extra peak RSS in MB."""
    payload = json.dumps({"config": asdict(cfg), "table": table, "variant": variant})
    # A fixed mmap threshold makes glibc return every large block to the OS when freed, so that the peak RSS
    # of the measured call is not hidden by memory the warm-up call left in the heap.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    try:
        out = subprocess.run([sys.executable, "-m", "electra_fast.benchmark", payload], capture_output=True,
                             text=True, timeout=900, check=True, env=env,
                             cwd=tempfile.gettempdir())  # not a source checkout, which `-m` would import
    except (subprocess.SubprocessError, OSError):
        return None
    return float(out.stdout.strip().splitlines()[-1])


def _memory_probe_main(payload: str) -> None:
    spec = json.loads(payload)
    cfg = Config(**{**spec["config"], "parts": tuple(spec["config"]["parts"])})
    fn = _variants_of(cfg, spec["table"])[spec["variant"]]
    fn()  # warm-up (compilation, allocator) before the measured call
    print(peak_memory_mb(fn, torch.device(cfg.device)))


def _hidden_size(cfg: Config) -> int:
    return models.PRESETS[cfg.preset]["embedding_size"]


def _variants_of(cfg: Config, table: str) -> dict:
    if table == "head fwd+bwd":
        return head_variants(cfg, _hidden_size(cfg))
    if table == "head fwd":
        return head_variants(cfg, _hidden_size(cfg), backward=False)
    if table == "step":
        return step_variants(cfg)
    if table == "recommended step":
        return recommended_variants(cfg)
    return op_variants(cfg)[table]


# --------------------------------------------------------------------------------------------------------
# The run: tables, ratios, report.


BASELINES = ("eager-full", "eager", "compile", "hf eager-full")


def _ratios(rows: list[Row]) -> None:
    by_name = {r.variant: r.ms for r in rows}
    for r in rows:
        for base in BASELINES:
            if base in by_name and r.variant != base:
                r.ratios[f"vs {base}"] = by_name[base] / r.ms


def environment(device) -> dict:
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


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(cfg: Config, progress: bool = True) -> dict:
    """Runs the tables of cfg.parts and returns the report (environment, rows, notes)."""
    device = torch.device(cfg.device)
    hidden_size = _hidden_size(cfg)
    tables = []
    if "head" in cfg.parts:
        tables += ["head fwd", "head fwd+bwd"]
    if "ops" in cfg.parts:
        tables += list(op_variants(cfg))
    if "step" in cfg.parts:
        tables.append("step")
    if "recommended" in cfg.parts:
        tables.append("recommended step")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=0, desc="bench", unit="call", leave=False, file=sys.stderr)
    rows, notes = [], {}
    for table in tables:
        variants = _variants_of(cfg, table)
        if bar is not None:
            bar.total += cfg.repeats * len(variants)
            bar.set_description(table)
        seconds = time_interleaved(variants, device, cfg.warmup, cfg.repeats, bar)
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
                               else _probe_memory(cfg, table, row.variant))
        _ratios(table_rows)
        rows += table_rows
        if table == "head fwd+bwd":
            floor = gemm_floor_seconds(cfg, hidden_size)
            notes["head_gemm_floor_ms"] = floor * 1e3
            notes["head_over_floor"] = seconds["electra-fast"] / floor
        if table == "step":
            notes["fused_share_of_eager_step"] = fused_share_of_step(cfg, seconds["eager"], hidden_size)
    if bar is not None:
        bar.close()
    return {"environment": environment(device), "config": asdict(cfg), "rows": [asdict(r) for r in rows],
            "notes": notes}


def format_table(report: dict) -> str:
    cfg = report["config"]
    lines = [" ".join(f"{k}={v}" for k, v in report["environment"].items()),
             f"preset={cfg['preset']} batch={cfg['batch_size']}x{cfg['seq_len']} head_rows={cfg['head_rows']} "
             f"dtype={cfg['dtype']} median of {cfg['repeats']} interleaved rounds after {cfg['warmup']} warm-up", ""]
    header = (f"{'table':<18} {'variant':<28} {'ms':>9} {'tokens/s':>9} {'peak MB':>8} {'vs eager':>9} "
              f"{'vs compile':>10} {'vs eager-full':>13} {'vs hf eager-full':>16}")
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        def ratio(key):
            v = r["ratios"].get(key)
            return f"{v:.2f}x" if v else "-"
        tokens = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "-"
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
        name = r["variant"] + (f" [{r['note']}]" if r["note"] else "")
        lines.append(f"{r['table']:<18} {name:<28} {r['ms']:>9.1f} {tokens:>9} {peak:>8} {ratio('vs eager'):>9} "
                     f"{ratio('vs compile'):>10} {ratio('vs eager-full'):>13} {ratio('vs hf eager-full'):>16}")
    for k, v in report["notes"].items():
        lines.append(f"{k}: {v:.3f}")
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """A bar chart per table of the speed-up over eager (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = list(dict.fromkeys(r["table"] for r in report["rows"]))
    fig, axes = plt.subplots(1, len(tables), figsize=(3.2 * len(tables), 3.4), squeeze=False)
    for ax, table in zip(axes[0], tables):
        rows = [r for r in report["rows"] if r["table"] == table]
        base = next(r["ms"] for r in rows if r["variant"] in ("eager", "hf eager-full"))
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


if __name__ == "__main__":
    _memory_probe_main(sys.argv[1])
