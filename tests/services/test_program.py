"""The compiled program container (``.enf``): round trip and every refusal as InvalidModel."""

from __future__ import annotations

import struct

import msgpack
import pytest

from services.errors import InvalidModel
from services.program import FORMAT_VERSION, MAGIC, CpuOp, Program, TensorSpec, is_program

pytestmark = pytest.mark.timeout(30)

PREFIX = struct.Struct("<8sHHI")  # magic, format version, reserved, header length


def make_program(graph: bytes = b"\x08\x07onnx-graph-bytes" * 20) -> Program:
    inp = TensorSpec("input", "float32", (1, 3, 8, 8), "NCHW")
    q = TensorSpec("input_q", "int8", (1, 3, 8, 8), "NCHW", "logical", pad=-3)
    low = TensorSpec("logits_q", "int8", (1, 1, 10, 32), "NC", "lowered", pad=41)
    logical = TensorSpec("logits_q", "int8", (1, 10), "NC")
    out = TensorSpec("logits", "float32", (1, 10), "NC")
    return Program(
        target="warboy-2pe",
        batch_size=1,
        inputs=[inp],
        outputs=[out],
        pre_ops=[[CpuOp("Quantize", {"scale": 0.05, "zero_point": -3}, "the NPU computes in int8")]],
        post_ops=[[CpuOp("Unlower", {"axes": "NC", "shape": [1, 10]}, "logits are not width-major"),
                   CpuOp("Dequantize", {"scale": 0.1, "zero_point": 41})]],
        npu_inputs=[q],
        npu_outputs=[low],
        graph_inputs=[q],
        graph_outputs=[logical],
        npu_graph=graph,
        npu_ops=[{"op": "Conv", "macs": 1000}, {"op": "Relu"}],
        estimate={"npu_ns": 1234.5, "npu_cycles": 2000},
        meta={"model": "m", "warnings": ["calibrated on random data"]},
    )


def raw(header: object, graph: bytes = b"", *, version: int = FORMAT_VERSION, hlen: int | None = None,
        magic: bytes = MAGIC) -> bytes:
    head = msgpack.packb(header, use_bin_type=True)
    return PREFIX.pack(magic, version, 0, len(head) if hlen is None else hlen) + head + graph


def test_round_trip() -> None:
    p = make_program()
    data = p.to_bytes()
    assert data.startswith(MAGIC)
    back = Program.from_bytes(data)
    assert back == p
    assert back.inputs[0].shape == (1, 3, 8, 8) and isinstance(back.inputs[0].shape, tuple)
    assert back.npu_outputs[0].layout == "lowered" and back.npu_outputs[0].pad == 41
    assert back.post_ops[0][1].reason == ""
    assert back.to_bytes() == data


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_from_any_buffer(wrap: type) -> None:
    p = make_program()
    assert Program.from_bytes(wrap(p.to_bytes())) == p


def test_round_trip_empty_graph_and_defaults() -> None:
    t = TensorSpec("x", "uint8", (4,), "C")
    p = Program("warboy", 1, [t], [t], [[]], [[]], [t], [t], [t], [t])
    back = Program.from_bytes(p.to_bytes())
    assert back == p and back.npu_graph == b""


def test_graph_is_the_section_after_the_header() -> None:
    p = make_program(graph=b"GRAPH")
    data = p.to_bytes()
    assert data.endswith(b"GRAPH")
    _, version, _, hlen = PREFIX.unpack(data[:PREFIX.size])
    assert version == FORMAT_VERSION
    header = msgpack.unpackb(data[PREFIX.size:PREFIX.size + hlen])
    assert header["format"] == "npusim-enf"
    assert header["sections"] == {"npu_graph": [0, 5]}


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
    """The file ends inside the header (there is no graph section to blame)."""
    data = make_program(graph=b"").to_bytes()
    hlen = len(data) - PREFIX.size
    end = len(data) + int(keep) if keep < 0 else PREFIX.size + int(hlen * keep)
    with pytest.raises(InvalidModel, match="header is cut off"):
        Program.from_bytes(data[:end])


def test_header_length_beyond_the_file() -> None:
    with pytest.raises(InvalidModel, match="header is cut off"):
        Program.from_bytes(raw(make_program().header(), hlen=2**32 - 1))


@pytest.mark.parametrize("cut", [1, 50, 399])
def test_truncated_graph_section(cut: int) -> None:
    p = make_program(graph=bytes(range(200)) * 2)
    data = p.to_bytes()
    with pytest.raises(InvalidModel, match="NPU graph section is cut off"):
        Program.from_bytes(data[:-cut])


def test_section_pointing_past_the_end() -> None:
    h = make_program().header()
    h["sections"] = {"npu_graph": [10, 5]}
    with pytest.raises(InvalidModel, match="NPU graph section is cut off"):
        Program.from_bytes(raw(h, b"0123456789abc"))


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0xFFFF])
def test_newer_format_version(version: int) -> None:
    data = bytearray(make_program().to_bytes())
    struct.pack_into("<H", data, 8, version)
    with pytest.raises(InvalidModel, match=f"format v{version} is newer"):
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


BAD_FIELDS = {
    "no-sections": _header_with(sections=KeyError),
    "sections-not-map": _header_with(sections=[0, 0]),
    "section-not-pair": _header_with(sections={"npu_graph": [0, 0, 0]}),
    "section-int": _header_with(sections={"npu_graph": 5}),
    "no-target": _header_with(target=KeyError),
    "no-inputs": _header_with(inputs=KeyError),
    "inputs-not-list": _header_with(inputs=5),
    "spec-not-map": _header_with(outputs=[[1, 2]]),
    "spec-missing-name": _header_with(npu_inputs=[{"dtype": "int8", "shape": [1], "axes": "C"}]),
    "spec-shape-int": _header_with(graph_outputs=[{"name": "x", "dtype": "int8", "shape": 3, "axes": "C"}]),
    "batch-size-str": _header_with(batch_size="one"),
    "batch-size-nan": _header_with(batch_size=float("nan")),
    "pre-ops-not-nested": _header_with(pre_ops=[{"op": "Pad"}]),
    "cpu-op-missing-op": _header_with(post_ops=[[{"attrs": {}}]]),
    "estimate-not-map": _header_with(estimate="fast"),
    "npu-ops-int": _header_with(npu_ops=3),
}


@pytest.mark.parametrize("header", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_header_with_bad_fields(header: dict[str, object]) -> None:
    with pytest.raises(InvalidModel, match="corrupt .enf header"):
        Program.from_bytes(raw(header, make_program().npu_graph))


def test_infinite_batch_size_is_invalid_model() -> None:
    with pytest.raises(InvalidModel):
        Program.from_bytes(raw(_header_with(batch_size=float("inf")), make_program().npu_graph))
