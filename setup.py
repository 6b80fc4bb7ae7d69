"""Builds the C extension client/ops/_simd.c; everything else is in pyproject.toml.

It is optional: where it cannot be compiled, the host operators fall back to their numpy
kernels (slower, same results); ``benchmarks/cpu_operators.py`` says which it measured.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("client.ops._simd", ["client/ops/_simd.c"], extra_compile_args=["-O3"], optional=True),
])
