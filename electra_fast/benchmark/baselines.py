"""The generator head's baselines (contract §5): eager as ELECTRA ports write it, torch.compile of it, electra-fast,
and the fused linear cross-entropy peers; its GEMM floor; and the other fused ops against their eager one-liners,
at the step's shapes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import electra_fast

from .config import Config
from .measure import gemm_flops_per_second, time_variants


def gumbel_sample(logits: torch.Tensor) -> torch.Tensor:
    """What ELECTRA ports write: float32 Gumbel noise from torch.rand, add, argmax. [N, V] -> [N] int64."""
    u = torch.rand(logits.shape, device=logits.device, dtype=torch.float32)
    return (logits.float() - torch.log(-torch.log(u.clamp_min(1e-9)))).argmax(-1)


def eager_head(hidden, weight, bias, targets):
    """contract §5's eager head: F.linear, F.cross_entropy in float32, Gumbel sample. Returns (loss, sampled [N])."""
    logits = F.linear(hidden, weight, bias)
    loss = F.cross_entropy(logits.float(), targets)
    with torch.no_grad():
        sampled = gumbel_sample(logits)
    return loss, sampled


def fused_head(hidden, weight, bias, targets):
    loss, sampled, _ = electra_fast.generator_loss_and_sample(hidden, weight, bias, targets)
    return loss, sampled


def head_peers(device: torch.device, dtype: torch.dtype) -> dict:
    """Fused linear cross-entropy of the installed peers, in their exact mode (loss only: they draw no sample).
    Cut Cross-Entropy's Triton path (CUDA) takes bf16/fp16 only; Liger-Kernel is CUDA-only."""
    peers = {}
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        linear_cross_entropy = None
    if linear_cross_entropy is not None and (device.type != "cuda" or dtype != torch.float32):
        # cce_exact: the default "cce" skips gradient tiles under a threshold, not the same function on flat
        # distributions (contract §5). On the CPU only its torch.compile path runs.
        impl = "cce_exact" if device.type == "cuda" else "torch_compile"
        peers["cce (loss only)"] = lambda h, w, b, t: (linear_cross_entropy(h, w, t, impl=impl), None)
    if device.type != "cuda":
        return peers
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        peers["liger (loss only)"] = lambda h, w, b, t: (liger_fused_linear_cross_entropy(h, w, t, b), None)
    except ImportError:
        pass
    return peers


def head_inputs(n: int, h: int, v: int, device, dtype, seed: int = 0):
    """hidden [n, h], weight [v, h], bias [v] (zeros: the peers take none) in `dtype`, requiring grad; targets
    [n] int64."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.05).to(device, dtype).requires_grad_()
    bias = torch.zeros(v).to(device, dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    return hidden, weight, bias, targets


def head_variants(cfg: Config, *, backward: bool = True, peers: bool = True) -> dict:
    """name -> zero-argument callable running the head at cfg.head_rows x cfg.hidden_size x cfg.vocab_size
    (forward, and backward unless backward=False)."""
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    args = head_inputs(cfg.head_rows, cfg.hidden_size, cfg.vocab_size, device, dtype)
    heads = {"eager": eager_head, "compile": torch.compile(eager_head), "electra-fast": fused_head}
    if peers:
        heads.update(head_peers(device, dtype))

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


def head_floor(cfg: Config) -> dict:
    """The head's floor, the time of its three matrix products (logits, d hidden, d weight: 6·N·H·V flops).
    On CUDA: those flops at the card's rate measured here with a large torch.mm (contract §5); returns
    {"head_gemm_floor_ms", "gemm_tflops"}. On the CPU: torch's own time for the three products in vocabulary
    tiles, so that no [N, V] tensor is written, the floor of a head whose products run through BLAS; returns
    {"head_gemm_floor_ms"}."""
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    if device.type == "cuda":
        rate = gemm_flops_per_second(device, dtype)
        flops = 6 * cfg.head_rows * cfg.hidden_size * cfg.vocab_size
        return {"head_gemm_floor_ms": flops / rate * 1e3, "gemm_tflops": rate / 1e12}
    h, w, _, _ = head_inputs(cfg.head_rows, cfg.hidden_size, cfg.vocab_size, device, dtype)
    h, w = h.detach(), w.detach()

    def three_gemms():
        dh = torch.zeros_like(h)
        for v0 in range(0, cfg.vocab_size, 512):
            wt = w[v0:v0 + 512]
            z = h @ wt.T
            dh.addmm_(z, wt)
            _ = z.T @ h

    seconds = time_variants({"gemm": three_gemms}, device, cfg.warmup, cfg.repeats)["gemm"]
    return {"head_gemm_floor_ms": seconds * 1e3}


def cublas_float32_out(device: torch.device, dtype: torch.dtype) -> tuple[bool, bool]:
    """The head's cuBLAS probe (`kernels.generator_loss_and_sample._float32_out`) on a CUDA `device` for
    float16/bfloat16 `dtype`: (cuBLAS multiplies such matrices into a float32 result, and accumulates such a product
    into a float32 tensor in place). Where either is False the head takes a slower path with more memory: its weight
    upcast to a float32 [V, H] copy, d weight accumulated through a float32 [V, H] temporary per row-chunk."""
    from ..kernels import generator_loss_and_sample  # needs triton, which a CUDA machine has

    if device.index is None:  # the probe is cached per device, as the head asks it: with the index
        device = torch.device(device.type, torch.cuda.current_device())
    return generator_loss_and_sample._float32_out(device, dtype)


def cublas_probe_flagged(device: torch.device) -> bool:
    """Whether a "no" from the cuBLAS probe is a fault on this CUDA device: on sm_80 or newer (bfloat16 tensor
    cores, torch >= 2.8 offering out_dtype) the fast path is expected."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def cublas_probe_notes(device: torch.device, dtype: torch.dtype) -> dict:
    """The cuBLAS probe's answer for a head of `dtype` on `device`, as report notes: "cublas mm -> float32" and
    "cublas addmm -> float32 in place", each "yes", "no" or "n/a (...)"; and a "WARNING" note where a "no" on sm_80
    or newer sends the head down its slow path."""
    keys = ("cublas mm -> float32", "cublas addmm -> float32 in place")
    if device.type != "cuda":
        return dict.fromkeys(keys, "n/a (CPU)")
    if dtype not in (torch.float16, torch.bfloat16):
        return dict.fromkeys(keys, f"n/a ({str(dtype).replace('torch.', '')} inputs)")
    answers = cublas_float32_out(device, dtype)
    notes = {k: "yes" if ok else "no" for k, ok in zip(keys, answers, strict=True)}
    if not all(answers) and cublas_probe_flagged(device):
        missing = " and ".join(k.split(" ", 1)[1] for k, ok in zip(keys, answers, strict=True) if not ok)
        notes["WARNING"] = (f"cuBLAS refused {missing} for {str(dtype).replace('torch.', '')} on this sm_80+ GPU "
                            f"with torch {torch.__version__}: the head ran its slow path (a float32 [V, H] copy "
                            f"or temporary: ~2 GB and ~15 ms more at V 128,256 x H 4,096); its timings here are "
                            f"not the fast path's")
    return notes


def op_variants(cfg: Config) -> dict:
    """table -> {name -> zero-argument callable} for sample_logits, replace_ and rtd_loss at the step's shapes
    (batch_size x seq_len tokens, 15 % of them masked)."""
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
        "replace_": {"eager": eager_replace,
                     "electra-fast": lambda: electra_fast.replace_(ids.clone(), positions, sampled)},
        "rtd_loss fwd+bwd": {"eager": eager_rtd, "electra-fast": fused_rtd},
    }
