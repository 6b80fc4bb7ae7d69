"""Builds the host-operator kernels (client/ops/_simd.c); everything else is in pyproject.toml.

The extension is optional: where it cannot be compiled, the operators fall back to their
onnxruntime and numpy kernels (slower, same results) and ``benchmarks/cpu_operators.py`` says
which kernels it measured.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("client.ops._simd", ["client/ops/_simd.c"], extra_compile_args=["-O3"], optional=True)])
