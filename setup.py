"""The namespace and the C extension; everything else is in pyproject.toml.

The code stays in the folders the design fixes (``services/``, ``compiler_svc/``,
``npu_daemon/``, ``client/``); installed, they are ``npusim.services``, ``npusim.compiler_svc``,
``npusim.npu_daemon`` and ``npusim.client``, beside the SDK-shaped modules in ``npusim/``, so
nothing with a common name lands at the top of site-packages.

The extension client/ops/_simd.c is optional: where it cannot be compiled, the host operators
fall back to their numpy kernels (slower, same results); ``benchmarks/cpu_operators.py`` says
which it measured.
"""

from setuptools import Extension, find_packages, setup

FOLDERS = ("services", "compiler_svc", "npu_daemon", "client")

package_dir = {"npusim": "npusim"}
for pkg in find_packages(include=["npusim", "npusim.*"]):
    package_dir[pkg] = pkg.replace(".", "/")
for folder in FOLDERS:
    for pkg in find_packages(include=[folder, f"{folder}.*"]):
        package_dir[f"npusim.{pkg}"] = pkg.replace(".", "/")

setup(
    package_dir=package_dir,
    packages=sorted(package_dir),
    package_data={"npusim.services": ["timing.json"]},
    ext_modules=[Extension("npusim.client.ops._simd", ["client/ops/_simd.c"], extra_compile_args=["-O3"],
                           optional=True)],
)
