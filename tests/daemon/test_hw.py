"""``npusim daemon --hw``: a what-if chip re-costs execution exactly as ``npusim estimate --hw`` does.

One engine (services/cost) prices a program for the compiler, for ``estimate`` and for the
daemon, so a daemon started with a hardware knob must time each job as ``estimate`` predicts
for that knob — the execution, not only the PCIe transfers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from npusim.compiler_svc.estimate import estimate_program
from npusim.compiler_svc.pipeline import CompileOptions, compile_model
from npusim.services.hw import WARBOY, Hardware, with_overrides
from npusim.services.program import Program
from npusim.services.protocol import Kind
from npusim.services.rpc import Peer
from npusim.services.zoo import mnist
from tests.helpers import start_stack

pytestmark = pytest.mark.timeout(120)

KNOBS = ("sram_per_slice=65536", "dram_bytes_per_s=8e9", "pcie_bytes_per_s=7.875e9", "clock_hz=1e9")


@pytest.fixture(scope="module")
def program() -> Program:
    p, _ = compile_model(mnist().SerializeToString(), CompileOptions(target_npu="warboy", batch_size=4,
                                                                    calibration_samples=1))
    return p


def _run_once(endpoint: str, program: Program) -> dict[str, int]:
    peer = Peer(endpoint, name="npu0", timeout_s=30)
    try:
        handle = peer.request(Kind.OPEN, {"pe": "pe0", "session": "hw", "client_pid": None},
                              [("program", np.frombuffer(program.to_bytes(), np.uint8))]).body["handle"]
        stage = program.stages[0]
        feeds = [(t.name, np.zeros(t.shape, np.dtype(t.dtype))) for t in stage.device_inputs]
        timing = peer.request(Kind.RUN, {"handle": handle, "stage": 0}, feeds).body["timing"]
        peer.request(Kind.CLOSE, {"handle": handle})
        return timing
    finally:
        peer.close()


@pytest.fixture(scope="module", params=[(), KNOBS], ids=["spec-sheet", "what-if"])
def daemon(request: pytest.FixtureRequest) -> Iterator[tuple[str, Hardware | None]]:
    knobs: tuple[str, ...] = request.param
    args = ("--timing-only", *[a for k in knobs for a in ("--hw", k)])
    with start_stack(compiler=False, daemon_args=args) as stack:
        yield stack.daemons["npu0"], with_overrides(WARBOY, list(knobs)) if knobs else None  # type: ignore[misc]


def test_the_daemon_times_a_job_as_estimate_predicts_on_the_same_hardware(
        daemon: tuple[str, Hardware | None], program: Program) -> None:
    endpoint, hw = daemon
    timing = _run_once(endpoint, program)
    predicted = estimate_program(program, hw).as_dict()
    assert timing["exec_ns"] == predicted["exec_ns"]
    assert timing["h2d_ns"] == predicted["dma"]["h2d_ns"] and timing["d2h_ns"] == predicted["dma"]["d2h_ns"]
    assert timing["emulated_ns"] == predicted["modes"]["pe0"]["device_latency_ns"]


def test_a_what_if_chip_changes_the_execution_not_only_the_transfers(program: Program) -> None:
    base = estimate_program(program).as_dict()
    slow = estimate_program(program, with_overrides(WARBOY, list(KNOBS))).as_dict()  # type: ignore[arg-type]
    assert slow["exec_ns"] > 1.5 * base["exec_ns"]  # half the clock, an eighth of the DRAM, a quarter of the SRAM
    assert slow["dma"]["h2d_ns"] > base["dma"]["h2d_ns"]
