"""Compiles every Triton kernel ahead of time for a CUDA target with the launchers' own GPU configurations (no
GPU needed: the launchers run on CPU tensors with their kernels captured instead of launched), and prints
registers, spills and shared memory per kernel from ptxas. A kernel that fails to compile makes the exit code 1.

    python bench/kernel_report.py [--arch 90] [--preset small|base]
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for real: must be unset before triton is imported

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64",
           torch.int32: "i32", torch.uint8: "u8", torch.bool: "i1"}
_OPTIONS = ("num_warps", "num_stages")


class Capture:
    """Stands in for a @triton.jit kernel: records the arguments of each launch instead of launching."""

    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append((self.kernel, args, kwargs))


def signature(kernel, args, kwargs):
    sig, constexprs = {}, {}
    names = [n for n in kernel.arg_names if n not in kwargs]
    for name, value in zip(names, args):
        if isinstance(value, torch.Tensor):
            sig[name] = "*" + _DTYPES[value.dtype]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i64" if not -2**31 <= value < 2**31 else "i32"
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{name}: {type(value)}")
    for name, value in kwargs.items():
        if name not in _OPTIONS:
            sig[name] = "constexpr"
            constexprs[name] = value
    return sig, constexprs, {k: v for k, v in kwargs.items() if k in _OPTIONS}


def ptxas_report(ptx: str, arch: int) -> str:
    """Registers and spill bytes from ptxas -v; Triton ships ptxas binaries of several CUDA versions: the first
    that accepts the PTX answers."""
    out = ""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        for ptxas in sorted(glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                                                   "ptxas*")), reverse=True):
            gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
            run = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", path, "-o", os.path.join(d, "k.o")],
                                 capture_output=True, text=True)
            if run.returncode == 0:
                out = run.stderr
                break
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    return f"{regs.group(1) if regs else '?':>4} regs  {spill.group(1) if spill else '?':>5} B spilled"


def launches(preset: str):
    """Runs every launcher on CPU tensors of the preset's head shapes, capturing its kernel launches."""
    from electra_fast.kernels import (generator_head, generator_head_backward, replace, rtd_loss, sample_logits,
                                      sampler)

    log = []
    modules = (generator_head, generator_head_backward, replace, rtd_loss, sample_logits, sampler)
    for module in modules:
        for name in dir(module):
            obj = getattr(module, name)
            if isinstance(obj, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
                setattr(module, name, Capture(obj, log))
    n, h = (2458, 128) if preset == "small" else (19660, 768)
    v = 30522
    for dtype in (torch.float32, torch.bfloat16):
        hidden, weight = torch.empty(n, h, dtype=dtype), torch.empty(v, h, dtype=dtype)
        bias, targets = torch.empty(v, dtype=dtype), torch.zeros(n, dtype=torch.int64)
        lse, scale = torch.empty(n), torch.empty(n)
        common = dict(ignore_index=-100, temperature=1.0, disallow_correct=True)
        generator_head.head_forward(hidden, weight, bias, targets, precision="ieee", **common)
        generator_head_backward.head_backward(hidden, weight, bias, targets, lse, scale, precision="ieee")
        chunk_lse, seed = torch.empty(n, (v + 127) // 128), torch.zeros(1, dtype=torch.int64)
        sampler.sample(chunk_lse, seed, targets, -100, 1.0, True, v, hidden=hidden, weight=weight, bias=bias)
        logits = torch.empty(n, v, dtype=dtype)
        sampler.sample(chunk_lse, seed, targets, -100, 1.0, True, v, logits=logits)
        sample_logits.logits_forward(logits, targets, **common)
        sample_logits.logits_backward(logits, targets, lse, scale)
        rtd_loss.rtd_forward(torch.empty(128, 128, dtype=dtype), torch.zeros(128, 128, dtype=torch.bool),
                             torch.ones(128, 128, dtype=torch.int64))
    ids = torch.zeros(128, 128, dtype=torch.int64)
    replace.replace(ids, torch.arange(10), torch.arange(10))
    return log


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--preset", default="base", choices=["small", "base"])
    args = parser.parse_args()
    failures = 0
    for kernel, call_args, kwargs in launches(args.preset):
        sig, constexprs, options = signature(kernel, call_args, kwargs)
        dtypes = ",".join(sorted({t for t in sig.values() if t.startswith("*") and t[1:] in ("fp32", "bf16", "fp16")}))
        label = f"{kernel.fn.__name__:<26} {dtypes:<16} warps={options.get('num_warps', 4)}"
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                                      target=GPUTarget("cuda", args.arch, 32), options=options)
            print(f"OK    {label}  {ptxas_report(compiled.asm['ptx'], args.arch)}", flush=True)
        except Exception as error:  # report every kernel, then fail
            failures += 1
            print(f"FAIL  {label}  {type(error).__name__}: {str(error)[:2000]}", flush=True)
    print(f"{failures} kernels failed to compile" if failures else "all kernels compiled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
