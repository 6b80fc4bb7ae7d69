"""The compiled program container (``.enf``, format v2): round trip and every refusal as InvalidModel."""

from __future__ import annotations

import struct

import msgpack
import pytest

from npusim.services.errors import InvalidModel
from npusim.services.program import (
    FORMAT_VERSION,
    MAGIC,
    CpuStep,
    NpuStage,
    NpuStep,
    OpStep,
    Program,
    TensorSpec,
    is_program,
)

pytestmark = pytest.mark.timeout(30)

PREFIX = struct.Struct("<8sHHI")  # magic, format version, reserved, header length


def make_program(graph: bytes = b"\x08\x07onnx-graph-bytes" * 20, cpu_graph: bytes = b"CPUGRAPH") -> Program:
    inp = TensorSpec("input", "float32", (1, 3, 8, 8), "NCHW")
    q = TensorSpec("input_q", "int8", (1, 3, 8, 8), "NCHW", "logical", pad=-3)
    low = TensorSpec("logits_q:lowered", "int8", (1, 1, 10, 32), "NC", "lowered", pad=41)
    logical = TensorSpec("logits_q", "int8", (1, 10), "NC", pad=41)
    out = TensorSpec("logits", "float32", (1, 10), "NC")
    stage = NpuStage(graph, [q], [low], [q], [logical], ops=[{"op_type": "Conv", "macs": 1000, "cycles": 10.0}],
                     estimate={"npu_ns": 1234.5, "npu_cycles": 2000, "fits_sram": True})
    return Program(
        target="warboy-2pe", batch_size=1, inputs=[inp], outputs=[out],
        steps=[
            OpStep("Quantize", {"scale": 0.05, "zero_point": -3}, "input", "input_q", "the NPU computes in int8"),
            NpuStep(0, ["input_q"], ["logits_q:lowered"]),
            OpStep("Unlower", {"axes": "NC", "shape": [1, 10]}, "logits_q:lowered", "logits_q_raw", "not width"),
            CpuStep(cpu_graph, ["logits_q_raw"], ["logits_q"], [{"name": "erf", "op_type": "Erf", "reason": "no"}]),
            OpStep("Dequantize", {"scale": 0.1, "zero_point": 41}, "logits_q", "logits"),
        ],
        stages=[stage], meta={"model": "m", "warnings": ["calibrated on random data"]},
    )


def raw(header: object, sections: bytes = b"", *, version: int = FORMAT_VERSION, hlen: int | None = None,
        magic: bytes = MAGIC) -> bytes:
    head = msgpack.packb(header, use_bin_type=True)
    return PREFIX.pack(magic, version, 0, len(head) if hlen is None else hlen) + head + sections


def test_round_trip() -> None:
    p = make_program()
    data = p.to_bytes()
    assert data.startswith(MAGIC) and bytes(p) == data
    back = Program.from_bytes(data)
    assert back == p
    assert back.inputs[0].shape == (1, 3, 8, 8) and isinstance(back.inputs[0].shape, tuple)
    assert back.stages[0].device_outputs[0].layout == "lowered" and back.stages[0].device_outputs[0].pad == 41
    assert [s.kind for s in back.steps] == ["op", "npu", "op", "cpu", "op"]
    assert back.steps[-1].reason == ""
    assert back.to_bytes() == data


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_from_any_buffer(wrap: type) -> None:
    p = make_program()
    assert Program.from_bytes(wrap(p.to_bytes())) == p


def test_graphs_are_sections_after_the_header() -> None:
    data = make_program(graph=b"GRAPH", cpu_graph=b"CPU").to_bytes()
    assert data.endswith(b"CPUGRAPH") or data.endswith(b"GRAPHCPU")
    _, version, _, hlen = PREFIX.unpack(data[:PREFIX.size])
    assert version == FORMAT_VERSION
    header = msgpack.unpackb(data[PREFIX.size:PREFIX.size + hlen])
    assert header["format"] == "npusim-enf"
    assert sorted(length for _, length in header["sections"]) == [3, 5]


def test_estimate_sums_the_stages() -> None:
    p = make_program()
    p.stages.append(NpuStage(b"g", [], [], [], [], estimate={"npu_ns": 100.0, "fits_sram": False}))
    assert p.estimate["npu_ns"] == pytest.approx(1334.5)
    assert p.estimate["stages"] == 2 and p.estimate["fits_sram"] is False


def test_tensor_spec_sizes() -> None:
    t = TensorSpec("x", "float32", (2, 3, 4), "NCW")
    assert (t.length, t.size) == (24, 96)
    assert TensorSpec.from_dict(t.to_dict()) == t


def test_is_program() -> None:
    assert is_program(make_program().to_bytes())
    assert is_program(memoryview(MAGIC + b"anything"))
    assert not is_program(b"")
    assert not is_program(MAGIC[:-1])
    assert not is_program(b"\x08\x01\x12\x04onnx")  # what an ONNX protobuf starts like


# -- refusals ------------------------------------------------------------------------------
def test_wrong_magic() -> None:
    data = bytearray(make_program().to_bytes())
    data[:8] = b"NPUSIMEX"
    with pytest.raises(InvalidModel, match="not an npusim program"):
        Program.from_bytes(bytes(data))


@pytest.mark.parametrize("data", [b"", b"NPU", MAGIC, MAGIC + b"\x01\x00"], ids=["empty", "3", "magic", "magic+2"])
def test_shorter_than_the_prefix(data: bytes) -> None:
    with pytest.raises(InvalidModel, match="not an npusim program"):
        Program.from_bytes(data)


def test_onnx_bytes_are_not_a_program() -> None:
    with pytest.raises(InvalidModel):
        Program.from_bytes(b"\x08\x07\x12\x07pytorch" + bytes(100))


@pytest.mark.parametrize("keep", [-1, -10, 0.5, 0.0], ids=["minus-1", "minus-10", "half", "prefix-only"])
def test_truncated_header(keep: float) -> None:
    """The file ends inside the header (the sections come after it)."""
    p = make_program(graph=b"", cpu_graph=b"")
    data = p.to_bytes()
    hlen = len(data) - PREFIX.size
    end = len(data) + int(keep) if keep < 0 else PREFIX.size + int(hlen * keep)
    with pytest.raises(InvalidModel, match="header is cut off"):
        Program.from_bytes(data[:end])


def test_header_length_beyond_the_file() -> None:
    with pytest.raises(InvalidModel, match="header is cut off"):
        Program.from_bytes(raw(make_program().header(), hlen=2**32 - 1))


@pytest.mark.parametrize("cut", [1, 50, 200])
def test_truncated_graph_section(cut: int) -> None:
    data = make_program(graph=bytes(range(200)) * 2).to_bytes()
    with pytest.raises(InvalidModel, match="section is cut off"):
        Program.from_bytes(data[:-cut])


def test_section_pointing_past_the_end() -> None:
    h = make_program().header()
    h["sections"] = [[10, 5], [0, 1]]
    with pytest.raises(InvalidModel, match="section is cut off"):
        Program.from_bytes(raw(h, b"0123456789abc"))


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0xFFFF])
def test_newer_format_version(version: int) -> None:
    data = bytearray(make_program().to_bytes())
    struct.pack_into("<H", data, 8, version)
    with pytest.raises(InvalidModel, match=f"format v{version} is newer"):
        Program.from_bytes(bytes(data))


def test_older_format_version_asks_to_recompile() -> None:
    data = bytearray(make_program().to_bytes())
    struct.pack_into("<H", data, 8, 1)
    with pytest.raises(InvalidModel, match="recompile"):
        Program.from_bytes(bytes(data))


CORRUPT = {
    "not-msgpack": b"\xc1\xc1\xc1",
    "truncated-msgpack": msgpack.packb({"target": "warboy", "inputs": [1, 2, 3]})[:-2],
    "header-is-list": msgpack.packb([1, 2, 3]),
    "header-is-int": msgpack.packb(7),
    "header-is-str": msgpack.packb("sections"),
    "empty-map": msgpack.packb({}),
    "non-str-key": msgpack.packb({1: 2}),
}


@pytest.mark.parametrize("head", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_msgpack_header(head: bytes) -> None:
    data = PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(head)) + head
    with pytest.raises(InvalidModel, match="corrupt .enf header"):
        Program.from_bytes(data)


def _header_with(**changes: object) -> dict[str, object]:
    h = make_program().header()
    for k, v in changes.items():
        if v is KeyError:
            del h[k]
        else:
            h[k] = v
    return h


def _sections() -> bytes:
    p = make_program()
    return p.stages[0].graph + p.steps[3].graph  # type: ignore[union-attr]


BAD_FIELDS = {
    "no-sections": _header_with(sections=KeyError),
    "sections-not-list": _header_with(sections={"npu_graph": [0, 0]}),
    "section-not-pair": _header_with(sections=[[0, 0, 0]]),
    "section-negative": _header_with(sections=[[-1, 5], [0, 1]]),
    "no-target": _header_with(target=KeyError),
    "no-inputs": _header_with(inputs=KeyError),
    "inputs-not-list": _header_with(inputs=5),
    "spec-not-map": _header_with(outputs=[[1, 2]]),
    "spec-shape-int": _header_with(outputs=[{"name": "x", "dtype": "int8", "shape": 3, "axes": "C"}]),
    "batch-size-str": _header_with(batch_size="one"),
    "batch-size-nan": _header_with(batch_size=float("nan")),
    "batch-size-inf": _header_with(batch_size=float("inf")),
    "steps-not-list": _header_with(steps=3),
    "step-unknown-kind": _header_with(steps=[{"kind": "gpu"}]),
    "step-missing-field": _header_with(steps=[{"kind": "op", "op": "Pad"}]),
    "step-bad-stage": _header_with(steps=[{"kind": "npu", "stage": 7, "inputs": [], "outputs": []}]),
    "step-bad-section": _header_with(steps=[{"kind": "cpu", "graph": 9, "inputs": [], "outputs": [], "ops": []}]),
    "stages-not-list": _header_with(stages="x"),
    "stage-missing-specs": _header_with(stages=[{"graph": 0}]),
}


@pytest.mark.parametrize("header", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_header_with_bad_fields(header: dict[str, object]) -> None:
    with pytest.raises(InvalidModel, match="corrupt .enf header|corrupt program|section"):
        Program.from_bytes(raw(header, _sections()))
