"""The installed namespace: everything under ``npusim``, nothing with a common name at the top of
site-packages, and the SDK-shaped modules exporting exactly the SDK's names."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.timeout(60)

OLD = ("client", "services", "compiler_svc", "npu_daemon")

SDK = {  # module → its names, as the vendor SDK's counterpart (furiosa.*) has them
    "npusim.runtime.session": ["create", "create_async"],
    "npusim.runtime.profiler": ["profile"],
    "npusim.runtime": ["create_queue", "create_runner", "sync"],
    "npusim.runtime.sync": ["create_queue", "create_runner"],
    "npusim.quantizer": ["CalibrationMethod", "Calibrator", "ModelEditor", "TensorType", "quantize"],
    "npusim.optimizer": ["optimize_model"],
    "npusim.server.model": ["NuxModel", "NuxModelConfig"],
}


def test_nothing_with_a_common_name_is_importable_outside_the_checkout() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import importlib.util, json; "
            f"print(json.dumps([n for n in {OLD!r} if importlib.util.find_spec(n) is not None]))")
    with tempfile.TemporaryDirectory() as outside:
        found = subprocess.run([sys.executable, "-c", code], cwd=outside, env=env, capture_output=True, text=True,
                               timeout=50)
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout) == []
        ok = subprocess.run([sys.executable, "-c", "import npusim.services, npusim.compiler_svc, npusim.npu_daemon, "
                             "npusim.client, npusim.runtime.session"], cwd=outside, env=env, capture_output=True,
                            text=True, timeout=50)
        assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("module", sorted(SDK))
def test_an_sdk_shaped_module_exports_the_sdks_names(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == SDK[module]
    for name in mod.__all__:
        assert getattr(mod, name) is not None


def test_the_sdk_shaped_names_are_npusims_own_objects() -> None:
    from npusim import client, compiler_svc
    from npusim.client import serving, sync
    from npusim.optimizer import optimize_model
    from npusim.quantizer import quantize
    from npusim.runtime import create_runner
    from npusim.runtime import sync as rt_sync
    from npusim.runtime.profiler import profile
    from npusim.runtime.session import create
    from npusim.server.model import NuxModel

    assert create is client.create and profile is client.profile and create_runner is client.create_runner
    assert rt_sync.create_runner is sync.create_runner
    assert quantize is compiler_svc.quantize and optimize_model is compiler_svc.optimize_model
    assert NuxModel is serving.NuxModel
