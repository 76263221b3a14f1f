"""Every Triton kernel compiles for a Hopper GPU with the launchers' GPU configurations, ahead of time and
without a GPU. The interpreter (which runs the other tests on a CPU) accepts code the compiler rejects — loop
variables that change type, unsupported shapes — so this is the CPU-side guard for the compiled path."""
import os
import subprocess
import sys

import pytest

REPORT = os.path.join(os.path.dirname(__file__), "..", "bench", "kernel_report.py")


def test_all_kernels_compile_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, REPORT, "--arch", "90", "--preset", "small"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "all kernels compiled" in run.stdout
