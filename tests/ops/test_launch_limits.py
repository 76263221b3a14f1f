"""Every shipped Triton launch configuration fits the per-block shared memory of sm_80, sm_86, sm_89 and sm_90,
checked ahead of time without a GPU (contract §7), with the runtime's specialisation; and the check rejects the
configuration that failed to launch on an H200."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton.backends.nvidia")

_HERE = os.path.dirname(os.path.abspath(__file__))
# Compiling needs the real compiler, not the interpreter this test session runs under: a fresh process.
_ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_ENV, cwd=_HERE,
                          timeout=600)


def test_every_shipped_launch_fits_every_target():
    run = _run("import sys; from electra_fast.ops import launch_limits; sys.exit(launch_limits.main())")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith(("OK", "FAIL"))]
    kernels = {line.split()[6] for line in rows}
    assert {"_fold_rows_kernel", "_softmax_grad_kernel", "_sample_kernel", "_rtd_kernel", "_replace_kernel"} <= kernels
    assert {line.split()[1] for line in rows} == {"sm_80", "sm_86", "sm_89", "sm_90"}
    assert any("[bf16/fp32]" in line for line in rows) and any("[fp16/fp32]" in line for line in rows)


def test_the_retired_backward_is_rejected_on_sm90():
    code = """
import torch
from electra_fast.ops import launch_limits
from retired_atomic_backward import RETIRED_CONFIG, retired_grad_atomic_kernel

n, h, v = 2458, 128, 30522  # ELECTRA-Small's head in bfloat16
meta = torch.device("meta")
def empty(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device=meta)
hidden, weight = empty(n, h, dtype=torch.bfloat16), empty(v, h, dtype=torch.bfloat16)
args = (hidden, h, 1, weight, h, 1, empty(v, dtype=torch.bfloat16), empty(n, dtype=torch.int64), empty(n, 2),
        empty(n), empty(n, h), empty(v, h), empty(v), n, v, h)
launch = launch_limits.specialise(retired_grad_atomic_kernel, args, RETIRED_CONFIG)
(label, arch, shared, limit, error), = launch_limits.check([launch], archs=(90,))
print(shared, limit, error)
"""
    run = _run(code)
    assert run.returncode == 0, run.stderr[-4000:]
    shared, limit, *error = run.stdout.split()
    assert int(shared) > int(limit) == 232_448 and " ".join(error) == "over the limit", run.stdout
