"""Every Triton launch configuration checked against each supported GPU's per-block shared memory, ahead of
time and without a GPU (contract §7): the launchers run on meta tensors with their kernels captured instead of
launched, and each distinct launch is compiled for sm_80, sm_86, sm_89 and sm_90 with the specialisation the
runtime applies (16-byte divisibility of pointers and of integers that are multiples of 16, integers equal to
1 as constants). Without that specialisation the compiler reports far less shared memory than the runtime asks
for. A configuration over a target's limit fails to launch there even though the interpreter runs it.

    python -m electra_fast.ops.launch_limits        # prints one row per (launch, target); exit code 1 on failure
"""
from __future__ import annotations

import contextlib
import sys
from typing import NamedTuple

import torch

# Bytes of shared memory one block may have (cudaDevAttrMaxSharedMemoryPerBlockOptin).
SHARED_MEMORY_LIMITS = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}
_POINTER_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64",
                  torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8", torch.bool: "i1"}
_OPTIONS = ("num_warps", "num_stages")


class Launch(NamedTuple):
    """One kernel launch as the runtime would specialise it: the signature, the constexprs (launch-time
    constants included), the divisibility attributes and the compile options."""
    kernel: object
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict

    @property
    def label(self) -> str:
        pointers = sorted({t[1:] for t in self.signature.values() if t.startswith("*")} - {"i64", "i32", "u8", "i1"})
        flags = ",".join(f"{k}={v}" for k, v in sorted(self.constexprs.items()) if not isinstance(v, int) or
                         isinstance(v, bool) or k.isupper())
        return f"{self.kernel.fn.__name__} [{'/'.join(pointers)}] {flags} warps={self.options.get('num_warps', 4)}"

    def key(self):
        return (self.kernel.fn.__name__, tuple(self.signature.items()), tuple(sorted(self.constexprs.items())),
                tuple(sorted(self.attrs)), tuple(sorted(self.options.items())))


def specialise(kernel, args: tuple, kwargs: dict) -> Launch:
    """The Launch the Triton runtime would compile for kernel[grid](*args, **kwargs)."""
    signature, constexprs, attrs = {}, {}, {}
    positional = [n for n in kernel.arg_names if n not in kwargs]
    # strict=False: parameters after the arguments given keep their defaults, as in a launch.
    for name, value in zip(positional, args, strict=False):
        index = (kernel.arg_names.index(name),)
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _POINTER_TYPES[value.dtype]
            if value.storage_offset() * value.element_size() % 16 == 0:  # allocations are 256-byte aligned
                attrs[index] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                signature[name], constexprs[name] = "constexpr", 1
                continue
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[index] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{kernel.fn.__name__}: argument {name} of type {type(value).__name__}")
    for name, value in kwargs.items():
        if name not in _OPTIONS:
            signature[name], constexprs[name] = "constexpr", value
    return Launch(kernel, signature, constexprs, attrs, {k: v for k, v in kwargs.items() if k in _OPTIONS})


class _Capture:
    def __init__(self, kernel, record):
        self.kernel, self.record = kernel, record

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.record(self.kernel, grid, args, kwargs)


@contextlib.contextmanager
def capturing(modules, record=None):
    """Within the block, the @triton.jit kernels of `modules` record their launches instead of running: the block
    gets a list of their `Launch`es, or, with `record`, each launch is handed to record(kernel, grid, args,
    kwargs) instead (the performance model keeps the grid and the arguments too)."""
    import triton

    launches, saved = [], []
    if record is None:
        def record(kernel, grid, args, kwargs):
            launches.append(specialise(kernel, args, kwargs))
    for module in modules:
        for name, obj in vars(module).items():
            if isinstance(obj, triton.runtime.jit.JITFunction):
                saved.append((module, name, obj))
    try:
        for module, name, obj in saved:
            setattr(module, name, _Capture(obj, record))
        yield launches
    finally:
        for module, name, obj in saved:
            setattr(module, name, obj)


# The shapes users run (H 64..4,096, V 1,031..128,256), and odd ones for the ragged edges.
HEAD_SHAPES = ((203, 64, 1031), (2458, 128, 30522), (19660, 768, 30522), (8192, 4096, 128256), (77, 1024, 50257))


def shipped_launches() -> list[Launch]:
    """Every distinct launch the shipped launchers make over the dtypes and shapes users run, on meta tensors."""
    from ..kernels import generator_loss_and_sample, replace, rtd_loss, sample_logits, sampler

    meta = torch.device("meta")
    with capturing([generator_loss_and_sample, replace, rtd_loss, sample_logits, sampler]) as launches:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for n, h, v in HEAD_SHAPES:
                hidden = torch.empty(n, h, dtype=dtype, device=meta)
                weight = torch.empty(v, h, dtype=dtype, device=meta)
                targets = torch.empty(n, dtype=torch.int64, device=meta)
                seed = torch.empty(1, dtype=torch.int64, device=meta)
                scale, stats = torch.empty(n, device=meta), torch.empty(n, 2, device=meta)
                for bias in (None, torch.empty(v, dtype=dtype, device=meta)):
                    for grads in ((False,) * 3, (True,) * 3):
                        generator_loss_and_sample.forward(
                            hidden, weight, bias, targets, seed, scale, ignore_index=-100, temperature=1.0,
                            disallow_correct=grads[0], grads=grads, budget=512 << 20)
                    generator_loss_and_sample.backward(hidden, weight, bias, targets, stats, scale, budget=512 << 20)
                logits = torch.empty(n, v, dtype=dtype, device=meta)
                for disallow in (False, True):
                    _, _, _, chunk_lse = sample_logits.fold_rows(
                        logits, None, targets, ignore_index=-100, temperature=1.0, disallow_correct=disallow)
                    sampler.sample(logits, None, chunk_lse, seed, targets, ignore_index=-100, temperature=1.0,
                                   disallow_correct=disallow)
                sample_logits.softmax_grad(logits, None, targets, stats, scale)
            for b, t in ((128, 128), (7, 31)):
                x = torch.empty(b, t, dtype=dtype, device=meta)
                for labels in (torch.empty(b, t, dtype=torch.bool, device=meta),
                               torch.empty(b, t, dtype=torch.int64, device=meta)):
                    rtd_loss.forward(x, labels, None)
                    rtd_loss.forward(x, labels, labels)
        for b, t in ((128, 128), (7, 31)):
            ids = torch.empty(b, t, dtype=torch.int64, device=meta)
            n = b * t // 7
            for valid in (None, torch.empty(n, dtype=torch.bool, device=meta)):
                replace.replace(ids, torch.empty(n, dtype=torch.int64, device=meta),
                                torch.empty(n, dtype=torch.int64, device=meta), valid)
    return list({launch.key(): launch for launch in launches}.values())


def representatives(launches) -> list[Launch]:
    """One launch per (kernel, pointer dtypes, block sizes, warps): the one with the most flags on (a flag only
    adds code) and, among those, the most divisibility specialisation (what raised shared memory before)."""
    groups = {}
    for launch in launches:
        blocks = tuple(sorted((k, v) for k, v in launch.constexprs.items() if k.startswith("BLOCK") or k == "ROWS"))
        pointers = tuple(t for t in launch.signature.values() if t.startswith("*"))
        groups.setdefault((launch.kernel.fn.__name__, pointers, blocks, tuple(sorted(launch.options.items()))),
                          []).append(launch)

    def weight(launch):
        return sum(v is True for v in launch.constexprs.values()), len(launch.attrs)

    return [max(group, key=weight) for group in groups.values()]


_COMPILED = {}  # (id of the kernel, launch key, arch) -> (kernel, compiled): one compile per launch and process


def compile_launch(launch: Launch, arch: int):
    """The Triton CompiledKernel of `launch` for sm_<arch> (no GPU needed), compiled once per process."""
    key = (id(launch.kernel), launch.key(), arch)
    if key not in _COMPILED:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        source = ASTSource(launch.kernel, launch.signature, launch.constexprs, launch.attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(launch.options))
        _COMPILED[key] = (launch.kernel, compiled)  # the kernel held, so that its id is not reused
    return _COMPILED[key][1]


def shared_memory(launch: Launch, arch: int) -> int:
    """Bytes of shared memory per block the compiled kernel asks for on sm_<arch>."""
    return compile_launch(launch, arch).metadata.shared


def check(launches, archs=tuple(SHARED_MEMORY_LIMITS)) -> list[tuple[str, int, int | None, int, str]]:
    """(launch label, arch, shared bytes or None, limit, error or "") for every launch on every target."""
    rows = []
    for launch in launches:
        for arch in archs:
            limit = SHARED_MEMORY_LIMITS[arch]
            try:
                shared = shared_memory(launch, arch)
                rows.append((launch.label, arch, shared, limit, "" if shared <= limit else "over the limit"))
            except Exception as error:  # a kernel that does not compile fails the check, with its reason
                rows.append((launch.label, arch, None, limit, f"{type(error).__name__}: {str(error)[:300]}"))
    return rows


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m electra_fast.ops.launch_limits",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="every distinct launch, not one per configuration")
    launches = shipped_launches()
    rows = check(launches if parser.parse_args(argv).all else representatives(launches))
    for label, arch, shared, limit, error in rows:
        print(f"{'FAIL' if error else 'OK  '} sm_{arch} {shared if shared is not None else '-':>7} / {limit:>7} B  "
              f"{label}  {error}")
    failed = sum(bool(r[-1]) for r in rows)
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
