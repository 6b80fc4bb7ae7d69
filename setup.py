"""Builds the C extensions (client/ops/_simd.c, services/_lane.c); everything else is in pyproject.toml.

Both are optional: where they cannot be compiled, the operators fall back to their onnxruntime
and numpy kernels and the services' loops to pyzmq (slower, same results);
``benchmarks/cpu_operators.py`` and ``benchmarks/daemon_capacity.py`` say which they measured.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("client.ops._simd", ["client/ops/_simd.c"], extra_compile_args=["-O3"], optional=True),
    # The serving loop's compiled path; optional too: services then read and write through pyzmq.
    Extension("services._lane", ["services/_lane.c"], extra_compile_args=["-O2"], optional=True),
])
