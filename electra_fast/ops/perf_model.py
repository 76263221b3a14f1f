"""A performance model of the GPU generator head, read from the compiled Triton kernels, without a GPU.

Every Triton launch configuration we ship (launch_limits' representatives) and every launch of the head's
training path is compiled for sm_80 and sm_90 as the runtime specialises it; the cubin is read with the NVIDIA
tools that Triton's wheel carries: cuobjdump for registers, stack, local and static shared memory, nvdisasm for
the SASS and its source lines. From those come occupancy (CTAs per SM) and the SASS instruction mix by class, for
the whole kernel and for its hot loops.

Loops: a backward branch (BRA to a label at or before it) closes a loop whose body is every instruction from the
label to the branch; the innermost loops are kept and named by their source: the `for` statement the closing
branch's line information points at (`for v0 in range(...)` -> v0). KERNEL_MODELS says, per kernel, which loop
variables walk its data (hot, with their iterations per CTA) and which are rare paths (cold: counted 0 times,
e.g. a row with a NaN redone id by id). Every instruction of a hot body counts once per iteration, predicated
off or not (it is issued either way); code outside the loops counts once per CTA. Padding NOPs and the closing
self-branch do not count.

Instructions per element: a hot body runs once per iteration in each of the CTA's warps, and an iteration covers
`elements` elements of the CTA (the fold: BLOCK_N x BLOCK_V logits). Warp instructions per element = body x
warps / elements: what the schedulers issue. The tables print thread-level counts, warp instructions x 32
lanes, summed over the hot loops (the fold's passes over the vocabulary) - "SASS instructions per logit".

The head's prediction traces the head's code on meta tensors, once per README shape and card
(`triton_backend.generator_loss_and_sample`, so the chunk plan, the launch configurations and every torch op come from
the implementation as it is when this runs; the head is told it runs on the card: cuBLAS multiplies bf16 into float32 as
it does on CUDA with torch >= 2.8, and a kernel helper `_multiprocessors` answers the card's SM count),
capturing each Triton launch with its grid and arguments and recording each aten op with its shapes:
- a Triton kernel takes max(issue time, memory time) + one launch overhead. Issue time: the busiest SM's CTAs x
  the warp instructions of one CTA / (issuing schedulers x clock), a scheduler issuing one warp instruction per
  cycle and idle where fewer than 4 warps are resident. Memory time: its bytes at MEMORY_EFFICIENCY x the card's
  bandwidth: each tensor argument once, in the part the launch covers; a kernel's data re-read by a second hot
  loop again from HBM unless the rows its resident CTAs walk fit in L2; the sampler's logits one chunk per row.
- a GEMM (mm / addmm) takes max(2 M N K flops at GEMM_EFFICIENCY x dense bf16 peak, its bytes: operands, output
  and, where it adds into an accumulator, the accumulator read, at MEMORY_EFFICIENCY x bandwidth) + one launch.
- any other aten op that launches a kernel takes its bytes at MEMORY_EFFICIENCY x bandwidth + one launch.
- the custom op's layer around the backend (ops.py: the forward's gradients cast to the parameters' dtypes, the
  backward scaling them in place by the upstream gradient) is mirrored, not traced.
Not modelled: the host's cost per op (eager PyTorch spends several microseconds per op on the host; the figures
assume the host runs ahead), latency limits within a scheduler (2 warps per scheduler issue less than 1
instruction per cycle when they wait on memory), cache effects beyond the re-read rule, clocks below boost.
The figures are predictions from the compiled code, not measurements.

    python -m electra_fast.ops.perf_model [--json PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import linecache
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import NamedTuple

import torch

from . import launch_limits

# ---------------------------------------------------------------------------------------------------------------
# Per-SM limits by compute capability (CUDA C++ Programming Guide, "Compute Capabilities", table "Technical
# Specifications per Compute Capability"; the occupancy calculator's rules): 64K 32-bit registers per SM in 4
# sub-partitions (one warp scheduler each), at most 255 per thread, allocated per warp in units of 256; at most
# 2,048 resident threads (64 warps) and 32 resident CTAs per SM on 8.0 and 9.0; shared memory per SM 164 KB on
# 8.0 and 228 KB on 9.0, of which the system reserves 1 KB per CTA (cudaDevAttrReservedSharedMemoryPerBlock).


class ArchLimits(NamedTuple):
    registers_per_sm: int
    sub_partitions: int
    register_unit_per_warp: int
    max_registers_per_thread: int
    max_threads_per_sm: int
    max_ctas_per_sm: int
    shared_per_sm: int
    reserved_shared_per_cta: int


ARCH_LIMITS = {
    80: ArchLimits(65_536, 4, 256, 255, 2_048, 32, 164 * 1024, 1024),
    90: ArchLimits(65_536, 4, 256, 255, 2_048, 32, 228 * 1024, 1024),
}
ARCHS = tuple(ARCH_LIMITS)
SCHEDULERS_PER_SM = 4  # each issues one warp instruction per cycle (sm_80, sm_90)


class Card(NamedTuple):
    arch: int
    sms: int
    clock_hz: float  # boost clock
    bandwidth: float  # bytes/s of HBM
    bf16_flops: float  # dense tensor-core bf16 flop/s
    l2_bytes: int


# Published figures. A100 SXM4 80GB: NVIDIA A100 datasheet (2,039 GB/s; 312 TFLOPS bf16 dense, 624 sparse) and
# the NVIDIA Ampere GA100 architecture whitepaper (108 SMs, 1,410 MHz boost, 40 MB L2). H100 SXM5: NVIDIA H100
# datasheet (3.35 TB/s; 1,979 TFLOPS bf16 with sparsity, 989 dense) and the NVIDIA H100 (Hopper) architecture
# whitepaper (132 SMs, 50 MB L2); 1.98 GHz is its maximum boost clock (the 989 TFLOPS are counted at the 1.83 GHz
# it holds under tensor-core load). H200 SXM: NVIDIA H200 datasheet (4.8 TB/s; bf16 as H100's), the same GH100 die
# and 132 SMs as H100 SXM.
CARDS = {
    "A100": Card(80, 108, 1.41e9, 2.039e12, 312e12, 40 << 20),
    "H100": Card(90, 132, 1.98e9, 3.35e12, 989e12, 50 << 20),
    "H200": Card(90, 132, 1.98e9, 4.8e12, 989e12, 50 << 20),
}

# Assumptions, stated: the fraction of dense peak cuBLAS reaches on these GEMMs, the fraction of peak bandwidth
# a streaming kernel reaches, and the GPU-side cost of each kernel launch (back-to-back launches on one stream).
GEMM_EFFICIENCY = 0.70
MEMORY_EFFICIENCY = 0.90
LAUNCH_OVERHEAD_S = 4e-6

# Register limits per kernel (the test's gate; spills are never allowed): the fold at 128, i.e. >= 4 CTAs of 4
# warps per SM, enough resident warps to hide the logits' load latency; the other kernels the same.
REGISTER_LIMITS = {
    "_fold_rows_kernel": 128,
    "_sample_kernel": 128,
    "_softmax_grad_kernel": 128,
    "_rtd_kernel": 128,
    "_replace_kernel": 128,
}

# The README's head shapes: (masked rows N, hidden H, vocabulary V).
HEAD_SHAPES = {"Small": (2458, 128, 30522), "Base": (19660, 768, 30522), "LLM-like": (8192, 4096, 128256)}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KernelModel(NamedTuple):
    """What a kernel's loops do, for the instruction counts (update it with the kernel)."""
    element: str  # what one element is
    element_arg: str | None  # the tensor argument whose entries are the elements
    per_iteration: tuple  # constexprs whose product is the elements a CTA covers per hot-loop iteration (absent: 1)
    hot: dict  # loop variable -> iterations per CTA, f(arguments by name, constexprs)
    cold: tuple = ()  # loop variables of rare paths, counted 0 times
    coverage: object = None  # f(arguments, constexprs, grid): the fraction of the elements a launch covers (1)


KERNEL_MODELS = {
    # for v0 in range(0, V // BLOCK_V * BLOCK_V, BLOCK_V): the full tiles; the ragged last one follows the loop.
    # for c0 in range(0, n_chunks, 4): rows with a NaN or an inf, their chunk log-masses redone id by id.
    "_fold_rows_kernel": KernelModel("logit", "logits_ptr", ("BLOCK_N", "BLOCK_V"),
                                     {"v0": lambda a, c: a["V"] // c["BLOCK_V"]}, ("c0",)),
    "_sample_kernel": KernelModel("chunk lse", "chunk_lse_ptr", ("ROWS", "BLOCK_C"),
                                  {"c0": lambda a, c: _cdiv(a["n_chunks"], c["BLOCK_C"])}),
    # Program (i, j): BLOCK_V columns of 1 / ROW_PROGRAMS of the rows, for r0 in range(first, end, BLOCK_N); the
    # launch with MASKED covers the ragged last columns, the other the full BLOCK_V-column blocks.
    "_softmax_grad_kernel": KernelModel(
        "logit", "logits_ptr", ("BLOCK_N", "BLOCK_V"), {"r0": lambda a, c: _cdiv(a["rows_per_program"], c["BLOCK_N"])},
        coverage=lambda a, c, grid: (a["V"] % c["BLOCK_V"] if c.get("MASKED") else grid[0] * c["BLOCK_V"]) / a["V"]),
    "_rtd_kernel": KernelModel("token", None, ("BLOCK",), {}),
    "_replace_kernel": KernelModel("token", None, ("BLOCK",), {}),
}

# ---------------------------------------------------------------------------------------------------------------
# SASS classes. "float": FP32 (and packed FP16, FP64) arithmetic, compares, min/max and selects; "mufu": the
# special function unit (ex2, lg2, rcp, ...); "convert": conversions between number formats; "int": per-lane
# integer, address and predicate arithmetic; "ld/st": global, shared and local loads and stores, atomics; "bar":
# barriers and fences; "shfl": warp shuffles; "other": moves, special registers, constant-bank loads, the uniform
# datapath, control flow, votes.
CLASSES = ("float", "mufu", "convert", "int", "ld/st", "bar", "shfl", "other")
_CLASS_OF = {name: cls for cls, names in {
    "float": "FADD FADD32I FMUL FMUL32I FFMA FFMA32I FMNMX FSETP FSET FSEL FCHK FSWZADD HADD2 HADD2_32I HMUL2 "
             "HMUL2_32I HFMA2 HFMA2_32I HSETP2 HSET2 HMNMX2 DADD DMUL DFMA DSETP DMNMX",
    "mufu": "MUFU",
    "convert": "F2F F2FP F2I F2IP I2F I2FP I2I FRND",
    "int": "IADD IADD3 IADD32I IMAD IMAD32I IMADSP IMUL IMUL32I IMNMX ISETP ISET ISCADD ISCADD32I LOP LOP3 LOP32I "
           "SHF SHL SHR LEA IABS SEL PRMT SGXT BMSK BFE BFI POPC FLO BREV VIADD VIMNMX VIADDMNMX IDP IDP4A PLOP3 "
           "PSETP P2R R2P",
    "ld/st": "LD LDG LDS LDL LDSM LDGSTS ST STG STS STL STSM ATOM ATOMG ATOMS RED",
    "bar": "BAR MEMBAR FENCE ERRBAR DEPBAR CCTL",
    "shfl": "SHFL",
}.items() for name in names.split()}


def opcode_class(mnemonic: str) -> str:
    """The class (one of CLASSES) of a SASS mnemonic, with or without modifiers ("FFMA.FTZ" -> "float")."""
    return _CLASS_OF.get(mnemonic.split(".")[0], "other")


class Instruction(NamedTuple):
    address: int
    mnemonic: str  # with its modifiers, e.g. "LDG.E.128"
    text: str  # the whole instruction, predicate and operands included
    source: tuple | None  # (file, line) from the line information, innermost inlined location


_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L\w*):")
_LOCATION = re.compile(r'^\s*//## File "([^"]+)", line (\d+)')
_TARGET = re.compile(r"`\((\.L\w*)\)")
_PREDICATE = re.compile(r"^@!?U?P[T\d]+\s+")
_FOR = re.compile(r"^\s*for\s+(\w+)\s+in\b")


def parse_sass(text: str) -> tuple[list[Instruction], dict[str, int]]:
    """nvdisasm output (with or without -g line information) -> (instructions in address order, label ->
    address). Padding NOPs are dropped."""
    instructions, labels, pending, source = [], {}, [], None
    for line in text.splitlines():
        location = _LOCATION.match(line)
        if location:
            source = (location.group(1), int(location.group(2)))
            continue
        label = _LABEL.match(line)
        if label:
            pending.append(label.group(1))
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        address, body = int(match.group(1), 16), match.group(2).strip().lstrip("{").strip()
        for name in pending:
            labels[name] = address
        pending = []
        mnemonic = _PREDICATE.sub("", body).split()[0] if body else ""
        if mnemonic and mnemonic != "NOP":
            instructions.append(Instruction(address, mnemonic, body, source))
    for name in pending:  # labels past the last instruction: the end of the function
        labels[name] = (instructions[-1].address + 16) if instructions else 0
    return instructions, labels


def _branch_target(instruction: Instruction, labels: dict[str, int]) -> int | None:
    if instruction.mnemonic.split(".")[0] not in ("BRA", "JMP", "BRX", "JMX"):
        return None
    target = _TARGET.search(instruction.text)
    return labels.get(target.group(1)) if target else None


def executed(instructions: list[Instruction], labels: dict[str, int]) -> list[Instruction]:
    """The instructions that can execute: without the self-branch that closes a function (a trap after EXIT)."""
    return [i for i in instructions if _branch_target(i, labels) != i.address]


class Loop(NamedTuple):
    first: int  # address of the first instruction of the body
    last: int  # address of the backward branch
    variable: str | None  # the loop variable of the `for` statement it comes from, when the source says
    source: str  # "file:line" of that statement, or of the closing branch


def _source_line(kernel, source: tuple) -> str:
    """Line `source` = (file, line) of the line information as it was compiled. Triton's cache is keyed by the
    kernels' source text and first lines, not by their path: a cached cubin may name another checkout's file, or
    this one since edited. So the line is read from the @triton.jit function (`kernel` or one it can call: the
    JIT functions of its module) whose file has that name and whose source spans that line; else from the file."""
    candidates = [kernel] + [v for v in getattr(getattr(kernel, "fn", None), "__globals__", {}).values()
                             if hasattr(v, "raw_src") and v is not kernel]
    for jit in candidates:
        fn, first, lines = getattr(jit, "fn", None), getattr(jit, "starting_line_number", None), \
            getattr(jit, "raw_src", None)
        if fn is None or first is None or not lines:
            continue
        if os.path.basename(fn.__code__.co_filename) == os.path.basename(source[0]) \
                and first <= source[1] < first + len(lines):
            return lines[source[1] - first]
    if not os.path.exists(source[0]):
        return ""
    linecache.checkcache(source[0])
    return linecache.getline(source[0], source[1])


def _loop_variable(source: tuple | None, kernel) -> str | None:
    if source is None:
        return None
    match = _FOR.match(_source_line(kernel, source))
    return match.group(1) if match else None


def find_loops(instructions: list[Instruction], labels: dict[str, int], kernel=None) -> list[Loop]:
    """The innermost loops, in address order: the span from a label to the last backward branch to it, keeping
    those that contain no other span; each named by the `for` statement its closing branch comes from (else the
    only `for` statement its body's lines name), read from `kernel` (a JITFunction) where it holds the line."""
    ends = {}
    for instruction in instructions:
        target = _branch_target(instruction, labels)
        if target is not None and target < instruction.address:
            ends[target] = max(ends.get(target, target), instruction.address)
    spans = sorted(ends.items())
    loops = []
    for a, b in spans:
        if any((c, d) != (a, b) and a <= c and d <= b for c, d in spans):
            continue
        latch = next(i for i in instructions if i.address == b)
        variable, source = _loop_variable(latch.source, kernel), latch.source
        if variable is None:
            named = {(s, _loop_variable(s, kernel)) for s in {i.source for i in instructions if a <= i.address <= b}}
            named = {(s, v) for s, v in named if v is not None}
            if len(named) == 1:
                source, variable = named.pop()
        loops.append(Loop(a, b, variable, f"{os.path.basename(source[0])}:{source[1]}" if source else "?"))
    return loops


def class_counts(instructions) -> dict[str, int]:
    """Instructions by class: {class: count} over CLASSES (zeros included) and 'total'."""
    counts = Counter(opcode_class(i.mnemonic) for i in instructions)
    return {**{c: counts.get(c, 0) for c in CLASSES}, "total": sum(counts.values())}


# ---------------------------------------------------------------------------------------------------------------
# Occupancy.

def ctas_per_sm(registers: int, warps: int, shared_bytes: int, arch: int) -> tuple[int, str]:
    """(resident CTAs per SM, what limits them: 'registers', 'threads', 'shared' or 'CTAs') for a kernel using
    `registers` per thread, `warps` per CTA and `shared_bytes` of shared memory per CTA (static + dynamic), as the
    CUDA occupancy calculator (cuda_occupancy.h) counts: registers per warp rounded up to the allocation unit,
    warps placed per sub-partition; shared memory plus the 1 KB reserved per CTA, in units of 128 bytes."""
    if registers < 1 or warps < 1 or shared_bytes < 0:
        raise ValueError(f"ctas_per_sm: registers ({registers}), warps ({warps}) and shared_bytes ({shared_bytes}) "
                         "must be >= 1, >= 1 and >= 0")
    if arch not in ARCH_LIMITS:
        raise ValueError(f"ctas_per_sm: arch {arch} is not one of {ARCHS}")
    limits = ARCH_LIMITS[arch]
    per_warp = _cdiv(registers * 32, limits.register_unit_per_warp) * limits.register_unit_per_warp
    warps_by_registers = (limits.registers_per_sm // limits.sub_partitions // per_warp) * limits.sub_partitions
    candidates = {
        "registers": warps_by_registers // warps,
        "threads": limits.max_threads_per_sm // (32 * warps),
        "shared": limits.shared_per_sm // (_cdiv(shared_bytes + limits.reserved_shared_per_cta, 128) * 128),
        "CTAs": limits.max_ctas_per_sm,
    }
    limiter = min(candidates, key=lambda k: candidates[k])  # ties: the first listed
    return candidates[limiter], limiter


# ---------------------------------------------------------------------------------------------------------------
# The NVIDIA tools in Triton's wheel.

def _tool(name: str) -> str:
    import triton

    try:  # Triton >= 3.4 finds them through its knobs (TRITON_<NAME>_PATH overrides)
        from triton import knobs

        return getattr(knobs.nvidia, name).path
    except (ImportError, AttributeError, RuntimeError):
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if not os.path.exists(path):
            raise RuntimeError(f"perf_model: {name} not found in Triton's NVIDIA backend ({path})") from None
        return path


def tools_missing() -> str | None:
    """Why the model cannot run here (no Triton, no NVIDIA backend or tools, the interpreter on), else None."""
    try:
        import triton  # noqa: F401
        import triton.backends.nvidia  # noqa: F401
    except ImportError as error:
        return f"Triton with its NVIDIA backend is not installed ({error})"
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "TRITON_INTERPRET is set: the kernels are interpreted, not compiled; unset it"
    for name in ("cuobjdump", "nvdisasm"):
        try:
            subprocess.run([_tool(name), "--version"], capture_output=True, check=True, timeout=60)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            return f"{name} from Triton's NVIDIA backend does not run here ({error})"
    return None


_RESOURCE = re.compile(r"\b(REG|STACK|SHARED|LOCAL):(\d+)")


def _cache_folder() -> str | None:
    """Where read_cubin keeps what the tools said about a cubin: beside Triton's compile cache."""
    try:
        from triton import knobs

        root = knobs.cache.dir
    except (ImportError, AttributeError):
        root = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    return os.path.join(root, "electra_fast_perf_model") if root else None


_TOOL_VERSIONS = []


def read_cubin(cubin: bytes) -> tuple[dict[str, int], str]:
    """({'REG', 'STACK', 'SHARED', 'LOCAL'}: registers, stack and local bytes per thread, static shared bytes per
    CTA, as cuobjdump reports them; nvdisasm's SASS with line information) of a cubin holding one kernel. Kept on
    disk by the cubin's hash and the tools' versions: disassembling takes about a second a kernel."""
    if not _TOOL_VERSIONS:
        _TOOL_VERSIONS.extend(subprocess.run([_tool(name), "--version"], capture_output=True, text=True,
                                             timeout=60).stdout for name in ("cuobjdump", "nvdisasm"))
    digest = hashlib.sha256(cubin + "".join(_TOOL_VERSIONS).encode()).hexdigest()
    folder = _cache_folder()
    cached = os.path.join(folder, digest + ".json") if folder else None
    if cached and os.path.exists(cached):
        with contextlib.suppress(OSError, ValueError):
            with open(cached) as f:
                usage, sass = json.load(f)
            return usage, sass
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        report = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True,
                                text=True, check=True, timeout=300).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", "-g", "-ndf", path], capture_output=True, text=True,
                              check=True, timeout=300).stdout
    function = [line for line in report.splitlines() if "REG:" in line]
    if len(function) != 1:
        raise RuntimeError(f"perf_model: expected one function in cuobjdump's report, got:\n{report}")
    usage = {k: int(v) for k, v in _RESOURCE.findall(function[0])}
    if cached:
        with contextlib.suppress(OSError):
            os.makedirs(folder, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
                json.dump([usage, sass], f)
            os.replace(f.name, cached)  # whole or not at all, for a concurrent reader
    return usage, sass


# ---------------------------------------------------------------------------------------------------------------
# One compiled launch.

class KernelStats(NamedTuple):
    """What the compiled code of one launch says on one arch. Instruction counts are per warp."""
    name: str
    label: str
    arch: int
    warps: int
    registers: int
    stack_bytes: int  # per thread (spills land there)
    local_bytes: int  # per thread
    spill_instructions: int  # LDL + STL in the SASS
    shared_bytes: int  # per CTA: static (cubin) + dynamic (Triton's launch)
    ctas_per_sm: int
    limiter: str
    static: dict  # whole kernel, by class
    loops: list  # per innermost loop: {'variable', 'source', 'span', 'loads_global', class counts}
    outside: dict  # outside the innermost loops, by class
    mnemonics: dict  # whole kernel, by mnemonic with its modifiers


_STATS = {}


def analyse(launch: launch_limits.Launch, arch: int) -> KernelStats:
    """Compile `launch` for sm_<arch> (once per process) and read its registers, memory, occupancy and SASS."""
    key = (id(launch.kernel), launch.key(), arch)
    if key in _STATS:
        return _STATS[key][1]
    compiled = launch_limits.compile_launch(launch, arch)
    usage, sass = read_cubin(compiled.asm["cubin"])
    instructions, labels = parse_sass(sass)
    code = executed(instructions, labels)
    loops = find_loops(code, labels, launch.kernel)
    bodies = [[i for i in code if loop.first <= i.address <= loop.last] for loop in loops]
    inside = {i.address for body in bodies for i in body}
    warps = launch.options.get("num_warps", 4)
    shared = usage.get("SHARED", 0) + compiled.metadata.shared
    occupancy, limiter = ctas_per_sm(usage["REG"], warps, shared, arch)
    stats = KernelStats(
        name=launch.kernel.fn.__name__, label=launch.label, arch=arch, warps=warps, registers=usage["REG"],
        stack_bytes=usage.get("STACK", 0), local_bytes=usage.get("LOCAL", 0),
        spill_instructions=sum(i.mnemonic.split(".")[0] in ("LDL", "STL") for i in code),
        shared_bytes=shared, ctas_per_sm=occupancy, limiter=limiter, static=class_counts(code),
        loops=[{"variable": loop.variable, "source": loop.source, "span": [loop.first, loop.last],
                "loads_global": any(i.mnemonic.startswith("LDG") for i in body), **class_counts(body)}
               for loop, body in zip(loops, bodies, strict=True)],
        outside=class_counts([i for i in code if i.address not in inside]),
        mnemonics=dict(Counter(i.mnemonic for i in code).most_common()))
    _STATS[key] = (launch.kernel, stats)
    return stats


def loop_roles(stats: KernelStats) -> list[str]:
    """'hot', 'cold' or 'unknown' for each of the kernel's loops, from KERNEL_MODELS."""
    model = KERNEL_MODELS.get(stats.name)
    if model is None:
        return ["unknown"] * len(stats.loops)
    return ["hot" if loop["variable"] in model.hot else "cold" if loop["variable"] in model.cold else "unknown"
            for loop in stats.loops]


def elements_per_iteration(name: str, constexprs: dict) -> tuple[str, int] | None:
    """(element, elements a CTA covers per hot-loop iteration, or per CTA without hot loops) of a kernel, None
    for a kernel KERNEL_MODELS does not describe."""
    model = KERNEL_MODELS.get(name)
    if model is None:
        return None
    return model.element, math.prod(constexprs.get(c, 1) for c in model.per_iteration)


def per_element(stats: KernelStats, elements: int) -> dict[str, float]:
    """Thread-level SASS instructions per element by class: the hot loops' bodies summed (loops of unknown role
    included), x warps x 32 lanes / elements per CTA and iteration; for a kernel without such loops, the whole
    kernel but its cold loops / elements per CTA."""
    roles = loop_roles(stats)
    bodies = [loop for loop, role in zip(stats.loops, roles, strict=True) if role != "cold"]
    if not bodies:
        cold = [loop for loop, role in zip(stats.loops, roles, strict=True) if role == "cold"]
        bodies = [{c: stats.static[c] - sum(loop[c] for loop in cold) for c in (*CLASSES, "total")}]
    return {c: sum(b[c] for b in bodies) * stats.warps * 32 / elements for c in (*CLASSES, "total")}


def instructions_per_warp(stats: KernelStats, args: dict, constexprs: dict) -> float:
    """Warp instructions one warp of a CTA issues in a launch with these arguments: the code outside the loops
    once, each hot loop's body times its iterations, cold loops never."""
    model = KERNEL_MODELS.get(stats.name)
    total = stats.outside["total"]
    for loop, role in zip(stats.loops, loop_roles(stats), strict=True):
        if role == "unknown":
            raise RuntimeError(
                f"perf_model: {stats.name} has a loop over `{loop['variable']}` ({loop['source']}) that "
                "KERNEL_MODELS does not name: add it to the kernel's hot loops (with its iterations) or cold loops")
        if role == "hot":
            try:
                total += loop["total"] * model.hot[loop["variable"]](args, constexprs)
            except KeyError as missing:
                raise RuntimeError(f"perf_model: {stats.name} has no argument or constexpr {missing}; update its "
                                   "KERNEL_MODELS entry") from None
    return total


# ---------------------------------------------------------------------------------------------------------------
# Time.

def issue_time(instructions_per_warp: float, warps: int, ctas: int, ctas_per_sm: int, card: Card) -> float:
    """Seconds to issue a grid of `ctas` CTAs of `warps` warps, each warp issuing `instructions_per_warp` warp
    instructions: the busiest SM's CTAs (ceil(ctas / SMs); the hardware hands a freed slot the next CTA) issued
    by its schedulers, one warp instruction per cycle each, those without a resident warp idle."""
    if ctas_per_sm < 1:
        raise ValueError(f"issue_time: ctas_per_sm is {ctas_per_sm}: the kernel does not fit an SM")
    per_sm = _cdiv(ctas, card.sms)
    resident_warps = min(ctas_per_sm, per_sm) * warps
    schedulers = min(SCHEDULERS_PER_SM, resident_warps)
    return per_sm * warps * instructions_per_warp / (schedulers * card.clock_hz)


def memory_time(num_bytes: float, card: Card) -> float:
    return num_bytes / (card.bandwidth * MEMORY_EFFICIENCY)


def gemm_time(flops: float, num_bytes: float, card: Card) -> float:
    """Roofline of one cuBLAS GEMM at the assumed efficiencies, plus its launch."""
    return max(flops / (card.bf16_flops * GEMM_EFFICIENCY), memory_time(num_bytes, card)) + LAUNCH_OVERHEAD_S


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def triton_bytes(stats: KernelStats, args: dict, constexprs: dict, grid: tuple, card: Card) -> int:
    """Bytes a Triton launch moves to or from HBM: each distinct tensor argument once (a dummy pointer passed for
    another counts once), tensors shaped like its elements in the part the launch covers; the elements again for
    each further hot loop that loads them, unless the part its resident CTAs walk fits in L2; the sampler's
    logits (and bias) one 128-id chunk per row."""
    name, model = stats.name, KERNEL_MODELS.get(stats.name)
    ctas = math.prod(grid)
    tensors = {id(v): v for v in args.values() if isinstance(v, torch.Tensor)}
    counted = {key: _nbytes(t) for key, t in tensors.items()}
    element_tensor = args.get(model.element_arg) if model and model.element_arg else None
    if isinstance(element_tensor, torch.Tensor) and element_tensor.numel():
        covered = min(1.0, model.coverage(args, constexprs, grid)) if model.coverage else 1.0
        hot = [loop for loop, role in zip(stats.loops, loop_roles(stats), strict=True) if role == "hot"]
        passes = max(1, sum(loop["loads_global"] for loop in hot))
        resident = min(ctas, card.sms * stats.ctas_per_sm)
        walked = _nbytes(element_tensor) * covered * resident / max(ctas, 1)
        again = 0 if walked <= card.l2_bytes else passes - 1
        for key, t in tensors.items():
            if t.shape == element_tensor.shape:
                counted[key] = int(_nbytes(t) * covered * (1 + (again if t is element_tensor else 0)))
    if name == "_sample_kernel":
        logits, bias = args["logits_ptr"], args.get("bias_ptr")
        rows = logits.shape[0]
        chunk = min(_chunk_ids(), logits.shape[1])
        counted[id(logits)] = rows * chunk * logits.element_size()
        if isinstance(bias, torch.Tensor) and id(bias) not in (id(logits), id(args.get("chunk_lse_ptr"))):
            counted[id(bias)] = min(_nbytes(bias), rows * chunk * bias.element_size())
    return sum(counted.values())


def _chunk_ids() -> int:
    from ..kernels import configs

    return getattr(configs, "CHUNK", 128)


def triton_launch_time(event: dict, card: Card) -> dict:
    """Predicted seconds of one captured Triton launch on `card`, max(issue, memory) + launch overhead, with the
    figures behind it."""
    launch, args = event["launch"], event["args"]
    stats = analyse(launch, card.arch)
    ctas = math.prod(event["grid"])
    per_warp = instructions_per_warp(stats, args, launch.constexprs)
    issue = issue_time(per_warp, stats.warps, ctas, stats.ctas_per_sm, card)
    num_bytes = triton_bytes(stats, args, launch.constexprs, event["grid"], card)
    memory = memory_time(num_bytes, card)
    return {"kernel": stats.name, "ctas": ctas, "ctas_per_sm": stats.ctas_per_sm,
            "instructions_per_warp": per_warp, "issue_s": issue, "bytes": num_bytes, "memory_s": memory,
            "seconds": max(issue, memory) + LAUNCH_OVERHEAD_S}


# ---------------------------------------------------------------------------------------------------------------
# Tracing the head on meta tensors.

_GEMMS = {"mm", "addmm", "bmm", "baddbmm"}
_WRITE_ONLY = {"copy_", "fill_", "zero_"}  # in-place ops that do not read the tensor they write


def _gemm_flops(name: str, args: tuple) -> int:
    a, b = (args[0], args[1]) if name in ("mm", "bmm") else (args[1], args[2])
    batch = a.shape[0] if a.dim() == 3 else 1
    return 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


def aten_event(func, args: tuple, kwargs: dict, out) -> dict | None:
    """The kernel an aten op launches, as {'kind': 'gemm' | 'pass', 'op', 'bytes', 'flops'}: bytes read (every
    tensor input, and a mutated one unless the op only writes it) and written (mutated arguments and new outputs);
    None for views and allocations, which launch nothing."""
    name = func.overloadpacket.__name__
    if func.is_view or name.startswith(("empty", "new_empty")) or name in ("detach", "alias", "lift_fresh"):
        return None
    schema = func._schema
    num_bytes = 0
    for index, argument in enumerate(schema.arguments):
        value = args[index] if index < len(args) else kwargs.get(argument.name)
        size = sum(_nbytes(t) for t in (value if isinstance(value, (list, tuple)) else [value]))
        mutated = argument.alias_info is not None and argument.alias_info.is_write
        only_written = mutated and (argument.is_out or name in _WRITE_ONLY)
        num_bytes += size * (2 if mutated and not only_written else 1)
    outputs = out if isinstance(out, (list, tuple)) else [out]
    # strict=False: an op may return nothing (or a list) where its schema names the returns otherwise.
    num_bytes += sum(_nbytes(t) for t, r in zip(outputs, schema.returns, strict=False) if r.alias_info is None)
    gemm = name in _GEMMS
    return {"kind": "gemm" if gemm else "pass", "op": str(func), "bytes": num_bytes,
            "flops": _gemm_flops(name, args) if gemm else 0}


def _recorder(events: list):
    """A TorchDispatchMode that appends aten_event's of the ops run under it to `events`."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            event = aten_event(func, args, kwargs, out)
            if event is not None:
                events.append(event)
            return out

    return Recorder()


@contextlib.contextmanager
def _as_on(card: Card, modules):
    """The head's device queries answered as on `card` (meta tensors would answer as a CPU): cuBLAS multiplies
    bf16 into float32 (torch >= 2.8 on CUDA), and a kernel module's `_multiprocessors` helper, where one sizes a
    grid, gives the card's SM count."""
    saved = []
    for module, name, value in [(m, "_float32_out", lambda device, dtype: (True, True)) for m in modules] + [
            (m, "_multiprocessors", lambda device: card.sms) for m in modules]:
        if hasattr(module, name):
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


class HeadTrace(NamedTuple):
    shape: tuple  # (N, H, V)
    card: str
    dtype: torch.dtype
    budget: int
    chunks: list  # [(first row, rows)]: generator_loss_and_sample._chunks, or the fold launches' rows
    events: list  # in order: {'kind': 'triton', 'launch', 'grid', 'args'} | aten_event's


def trace_head(n: int, h: int, v: int, card: str = "H100", dtype=torch.bfloat16, budget: int | None = None
               ) -> HeadTrace:
    """The ops and launches of the fused head's training path on `card` (forward writing the gradients, with a
    bias, sampling with disallow_correct, reduction 'mean', default logits budget), then the custom op's layer
    around it, run on meta tensors: hidden [n, h] and weight [v, h] in `dtype`."""
    from ..kernels import generator_loss_and_sample, replace, rtd_loss, sample_logits, sampler
    from . import settings
    from .backends import triton_backend

    if card not in CARDS:
        raise ValueError(f"trace_head: card {card!r} is not one of {sorted(CARDS)}")
    budget = settings.DEFAULT_LOGITS_BUDGET if budget is None else budget
    meta = torch.device("meta")
    hidden, weight = torch.empty(n, h, dtype=dtype, device=meta), torch.empty(v, h, dtype=dtype, device=meta)
    bias, targets = torch.empty(v, dtype=dtype, device=meta), torch.empty(n, dtype=torch.int64, device=meta)
    seed = torch.empty(1, dtype=torch.int64, device=meta)
    events, stand_ins = [], {}

    def record(kernel, grid, args, kwargs):
        launch = launch_limits.specialise(kernel, args, kwargs)
        # Within one call V is fixed: the chunks' launches of a kernel differ only in the 16-byte alignment of
        # their row slices (targets[r0:], row_scale[r0:]) and row counts, which moves a few scalar loads at most.
        # The first chunk's compile stands for them all: one compile per kernel and shape, not per chunk.
        group = (kernel.fn.__name__, tuple(launch.signature.items()), tuple(sorted(launch.constexprs.items())),
                 tuple(sorted(launch.options.items())))
        # strict=False: parameters after the arguments given keep their defaults, as in a launch.
        named = dict(zip([a for a in kernel.arg_names if a not in kwargs], args, strict=False))
        grid = grid({**named, **kwargs}) if callable(grid) else grid
        events.append({"kind": "triton", "launch": stand_ins.setdefault(group, launch), "grid": tuple(grid),
                       "args": named})

    modules = [generator_loss_and_sample, replace, rtd_loss, sample_logits, sampler]
    with _as_on(CARDS[card], modules), launch_limits.capturing(modules, record=record), _recorder(events):
        _loss, _sampled, _predicted, _stats, dh, dw, db = triton_backend.generator_loss_and_sample(
            hidden, weight, bias, targets, seed, 1.0, True, -100, "mean", (True, True, True))
        # ops.generator_loss_and_sample returns the gradients in the parameters' dtypes; its backward scales them
        # in place by the upstream gradient (ops._head_backward).
        grad_loss = torch.empty((), dtype=torch.float32, device=meta)
        for grad, like in ((dh, hidden), (dw, weight), (db, bias)):
            grad.to(like.dtype).mul_(grad_loss)
    folds = [e for e in events if e["kind"] == "triton" and e["launch"].kernel.fn.__name__ == "_fold_rows_kernel"]
    try:
        chunks = [tuple(c) for c in generator_loss_and_sample._chunks(n, v, dtype, budget)]
    except (AttributeError, TypeError):  # the helper changed: the plan as the fold launches show it
        chunks, r0 = [], 0
        for fold in folds:
            chunks.append((r0, fold["args"]["logits_ptr"].shape[0]))
            r0 += chunks[-1][1]
    if len(chunks) != len(folds):
        raise RuntimeError(f"perf_model: generator_loss_and_sample._chunks gives {len(chunks)} chunks at "
                           f"{(n, h, v)}, the head launched {len(folds)} folds; update trace_head")
    return HeadTrace((n, h, v), card, dtype, budget, chunks, events)


_PARTS = {"_fold_rows_kernel": "fold", "_sample_kernel": "sampler", "_softmax_grad_kernel": "grad tile"}
PARTS = ("fold", "sampler", "grad tile", "other", "GEMMs")


def predict(trace: HeadTrace) -> dict:
    """Predicted seconds of a traced head on its card, by part: the fold, the sampler and the gradient-tile
    kernels, other passes (other kernels, torch's elementwise ops and reductions), the GEMMs; their total; the
    GEMM-only floor (6 N H V flops at GEMM_EFFICIENCY, nothing else) and total / floor."""
    card = CARDS[trace.card]
    seconds, launches, kernels = dict.fromkeys(PARTS, 0.0), Counter(), {}
    for event in trace.events:
        if event["kind"] == "triton":
            timing = triton_launch_time(event, card)
            part = _PARTS.get(timing["kernel"], "other")
            summary = kernels.setdefault(part, {"issue_s": 0.0, "memory_s": 0.0, "bytes": 0, "ctas_per_sm": set()})
            for key in ("issue_s", "memory_s", "bytes"):
                summary[key] += timing[key]
            summary["ctas_per_sm"].add(timing["ctas_per_sm"])
            spent = timing["seconds"]
        elif event["kind"] == "gemm":
            part, spent = "GEMMs", gemm_time(event["flops"], event["bytes"], card)
        else:
            part, spent = "other", memory_time(event["bytes"], card) + LAUNCH_OVERHEAD_S
        seconds[part] += spent
        launches[part] += 1
    n, h, v = trace.shape
    floor = 6 * n * h * v / (card.bf16_flops * GEMM_EFFICIENCY)
    total = sum(seconds.values())
    for summary in kernels.values():
        summary["bound"] = "issue" if summary["issue_s"] > summary["memory_s"] else "memory"
        summary["ctas_per_sm"] = sorted(summary["ctas_per_sm"])
    return {"seconds": seconds, "total_s": total, "gemm_only_s": floor, "ratio": total / floor,
            "gemm_flops": sum(e["flops"] for e in trace.events if e["kind"] == "gemm"), "launches": dict(launches),
            "kernels": kernels}


# ---------------------------------------------------------------------------------------------------------------
# The command.

def head_traces() -> dict[tuple, HeadTrace]:
    """The training path traced at each of HEAD_SHAPES on each of CARDS: {(shape name, card name): trace}."""
    return {(shape, card): trace_head(*HEAD_SHAPES[shape], card=card) for shape in HEAD_SHAPES for card in CARDS}


def _kernel_row(stats: KernelStats, constexprs: dict, where: str) -> dict:
    element = elements_per_iteration(stats.name, constexprs)
    return {
        "where": where, "label": stats.label, "kernel": stats.name, "arch": stats.arch, "warps": stats.warps,
        "registers": stats.registers, "register_limit": REGISTER_LIMITS.get(stats.name),
        "stack_bytes": stats.stack_bytes, "local_bytes": stats.local_bytes,
        "spill_instructions": stats.spill_instructions, "shared_bytes": stats.shared_bytes,
        "ctas_per_sm": stats.ctas_per_sm, "limiter": stats.limiter, "static": stats.static,
        "loops": [{**loop, "role": role} for loop, role in zip(stats.loops, loop_roles(stats), strict=True)],
        "outside": stats.outside, "mnemonics": stats.mnemonics,
        "element": element[0] if element else None, "elements_per_iteration": element[1] if element else None,
        "per_element": per_element(stats, element[1]) if element else None,
    }


def kernel_table(traces: dict[tuple, HeadTrace]) -> list[dict]:
    """One row per (shipped representative launch, arch), then one per distinct launch of the traced heads on
    their cards' arch (their specialisation differs from the representatives': rows of V = 30,522 float32 logits
    are not 16-byte aligned unless the head pads them)."""
    rows = []
    for launch in launch_limits.representatives(launch_limits.shipped_launches()):
        for arch in ARCHS:
            rows.append(_kernel_row(analyse(launch, arch), launch.constexprs, "shipped"))
    head = {}  # (launch key, arch) -> (launch, [shape names])
    for (shape, card), trace in traces.items():
        for event in trace.events:
            if event["kind"] == "triton":
                entry = head.setdefault((event["launch"].key(), CARDS[card].arch), (event["launch"], []))
                if shape not in entry[1]:
                    entry[1].append(shape)
    for (_, arch), (launch, shapes) in head.items():
        rows.append(_kernel_row(analyse(launch, arch), launch.constexprs, "head " + "/".join(shapes)))
    return rows


def prediction_table(traces: dict[tuple, HeadTrace]) -> list[dict]:
    rows = []
    for (shape, card), trace in traces.items():
        n, h, v = trace.shape
        rows.append({"shape": shape, "N": n, "H": h, "V": v, "dtype": str(trace.dtype).split(".")[-1],
                     "card": card, "chunks": [list(c) for c in trace.chunks], **predict(trace)})
    return rows


def _format_kernels(rows: list[dict]) -> str:
    head = (f"{'kernel (launch)':<100} {'sm':>3} {'regs':>4} {'spill':>6} {'smem B':>6} {'CTA/SM':>11} "
            f"{'SASS':>5} {'loop bodies':>16} {'element':>9} " + " ".join(f"{c:>6}" for c in (*CLASSES, "total")))
    lines = [head, "-" * len(head)]
    for r in rows:
        bodies = "+".join(f"{loop['total']}{'' if loop['role'] == 'hot' else ' ' + loop['role']}"
                          for loop in r["loops"]) or "-"
        per = r["per_element"]
        counts = " ".join(f"{per[c]:6.1f}" for c in (*CLASSES, "total")) if per else ""
        spill = f"{r['stack_bytes'] + r['local_bytes']}" + (f"/{r['spill_instructions']}i" if r["spill_instructions"]
                                                             else "")
        label = r["label"] if r["where"] == "shipped" else f"{r['where']}: {r['label']}"
        lines.append(f"{label[:100]:<100} {r['arch']:>3} {r['registers']:>4} {spill:>6} {r['shared_bytes']:>6} "
                     f"{r['ctas_per_sm']:>2} ({r['limiter'][:4]:>4}) {r['static']['total']:>5} {bodies[:16]:>16} "
                     f"{(r['element'] or '-')[:9]:>9} {counts}")
    return "\n".join(lines)


def _format_predictions(rows: list[dict]) -> str:
    head = (f"{'shape':<9} {'card':<5} {'chunks':>6} " + " ".join(f"{p:>9}" for p in PARTS)
            + f" {'total':>9} {'GEMM-only':>9} {'total/GEMM-only':>15}  kernels bound by (CTAs/SM)")
    lines = [head, "-" * len(head)]
    for r in rows:
        bounds = ", ".join(f"{part} {k['bound']} ({'/'.join(map(str, k['ctas_per_sm']))})"
                           for part, k in r["kernels"].items())
        lines.append(f"{r['shape']:<9} {r['card']:<5} {len(r['chunks']):>6} "
                     + " ".join(f"{r['seconds'][p] * 1e3:9.3f}" for p in PARTS)
                     + f" {r['total_s'] * 1e3:9.3f} {r['gemm_only_s'] * 1e3:9.3f} {r['ratio']:15.2f}  {bounds}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m electra_fast.ops.perf_model", description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write every figure (and the assumptions) to PATH")
    options = parser.parse_args(argv)
    missing = tools_missing()
    if missing:
        print(f"perf_model: cannot run: {missing}", file=sys.stderr)
        return 2
    import triton

    start = time.perf_counter()
    traces = head_traces()
    kernels = kernel_table(traces)
    predictions = prediction_table(traces)
    elapsed = time.perf_counter() - start
    print(f"Kernels, predicted from the compiled code (Triton {triton.__version__}). spill: stack + local bytes per "
          "thread (/N i: N LDL/STL instructions); CTA/SM (limiter); SASS: static instructions; loop bodies: warp "
          "instructions per iteration of each innermost loop (cold: a rare path); per element: thread-level SASS "
          "instructions per element in the hot loops, summed over them (the whole kernel where it has none)")
    print(_format_kernels(kernels))
    print()
    print(f"Head fwd+bwd, {predictions[0]['dtype']} training path (bias, disallow_correct, the forward writes the "
          f"gradients), predicted from the compiled code, ms. Assumed: GEMMs at {GEMM_EFFICIENCY:.0%} of dense "
          f"peak, streams at {MEMORY_EFFICIENCY:.0%} of bandwidth, {LAUNCH_OVERHEAD_S * 1e6:g} us per launch; "
          "GEMM-only: 6 N H V flops at the same efficiency")
    print(_format_predictions(predictions))
    print(f"\n({elapsed:.0f} s)")
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"triton": triton.__version__, "torch": torch.__version__, "elapsed_s": elapsed,
                       "assumptions": {"gemm_efficiency": GEMM_EFFICIENCY, "memory_efficiency": MEMORY_EFFICIENCY,
                                       "launch_overhead_s": LAUNCH_OVERHEAD_S},
                       "cards": {k: c._asdict() for k, c in CARDS.items()},
                       "arch_limits": {k: a._asdict() for k, a in ARCH_LIMITS.items()},
                       "register_limits": REGISTER_LIMITS, "kernels": kernels, "predictions": predictions},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
