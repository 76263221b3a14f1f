"""Build of electra-fast: the Python package, the Triton kernels (shipped as electra_fast.kernels) and the
C++ CPU kernels (electra_fast._C, pybind11 + OpenMP, no libtorch link so one build serves any torch)."""
import os

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

# Set ELECTRA_FAST_PORTABLE=1 to build without -march=native (for a wheel that runs on other CPUs).
arch = [] if os.environ.get("ELECTRA_FAST_PORTABLE") == "1" else ["-march=native"]

setup(
    # Every package under electra_fast/, and the top-level kernels/ folder shipped as electra_fast.kernels.
    packages=find_packages(include=["electra_fast", "electra_fast.*"]) + ["electra_fast.kernels"],
    package_dir={"electra_fast": "electra_fast", "electra_fast.kernels": "kernels"},
    ext_modules=[
        Pybind11Extension(
            "electra_fast._C",
            ["csrc/electra_cpu.cpp"],
            cxx_std=17,
            extra_compile_args=["-O3", "-fopenmp", *arch],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": build_ext},
)
