"""The compiled program (``.enf``): what the compiler produces and the daemon and workers load.

File layout (little-endian)::

    b"NPUSIMEF"  u16 format version  u16 reserved  u32 header length
    header      msgpack map: every field of Program except the graph, plus a section table
    sections    raw bytes; today one: the NPU part as an ONNX graph with int8 boundaries

The header is self-describing (``npusim explain`` reads it with no compiler), and loading
needs only msgpack: the workers never import onnx. Tensors at the CPU/NPU boundary are
described twice: as the device receives them (``npu_inputs``: layout after the CPU
pre-operators) and as the NPU graph computes on them (``graph_inputs``, logical layout);
:mod:`services.layout` converts between the two.
"""

from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import numpy as np

from services.errors import InvalidModel

__all__ = ["TensorSpec", "CpuOp", "Program", "MAGIC", "FORMAT_VERSION", "is_program"]

MAGIC = b"NPUSIMEF"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHHI")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor at a program boundary.

    ``layout`` is ``logical`` (shape as the model declares it), ``padded`` (last axis padded
    to a multiple of 32) or ``lowered`` (``N,H,C,Wp``); ``axes`` gives the logical axis
    letters; ``pad`` is the value padding holds (the zero point, so it dequantizes to 0).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    axes: str
    layout: str = "logical"
    pad: int = 0

    @property
    def length(self) -> int:
        return math.prod(self.shape)

    @property
    def size(self) -> int:
        return self.length * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]), d["axes"], d.get("layout", "logical"), d.get("pad", 0))


@dataclass(frozen=True)
class CpuOp:
    """One host operator: registry name, attributes, and why it is not on the NPU."""

    op: str
    attrs: dict[str, Any]
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "attrs": dict(self.attrs), "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CpuOp:
        return cls(d["op"], dict(d.get("attrs", {})), d.get("reason", ""))


@dataclass
class Program:
    target: str
    batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    pre_ops: list[list[CpuOp]]
    post_ops: list[list[CpuOp]]
    npu_inputs: list[TensorSpec]
    npu_outputs: list[TensorSpec]
    graph_inputs: list[TensorSpec]
    graph_outputs: list[TensorSpec]
    npu_graph: bytes = b""
    npu_ops: list[dict[str, Any]] = field(default_factory=list)
    estimate: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- (de)serialisation ---------------------------------------------------------
    def header(self) -> dict[str, Any]:
        return {
            "format": "npusim-enf",
            "target": self.target,
            "batch_size": self.batch_size,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "pre_ops": [[op.to_dict() for op in ops] for ops in self.pre_ops],
            "post_ops": [[op.to_dict() for op in ops] for ops in self.post_ops],
            "npu_inputs": [t.to_dict() for t in self.npu_inputs],
            "npu_outputs": [t.to_dict() for t in self.npu_outputs],
            "graph_inputs": [t.to_dict() for t in self.graph_inputs],
            "graph_outputs": [t.to_dict() for t in self.graph_outputs],
            "npu_ops": self.npu_ops,
            "estimate": self.estimate,
            "meta": self.meta,
            "sections": {"npu_graph": [0, len(self.npu_graph)]},
        }

    def to_bytes(self) -> bytes:
        head = msgpack.packb(self.header(), use_bin_type=True)
        return _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(head)) + head + self.npu_graph

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Program:
        buf = memoryview(data)
        if buf.nbytes < _PREFIX.size or bytes(buf[:8]) != MAGIC:
            raise InvalidModel("not an npusim program: an .enf file starts with NPUSIMEF")
        _, version, _, hlen = _PREFIX.unpack(buf[: _PREFIX.size])
        if version > FORMAT_VERSION:
            raise InvalidModel(f"program format v{version} is newer than this npusim reads (v{FORMAT_VERSION}); "
                               "upgrade npusim or recompile the model")
        start = _PREFIX.size + hlen
        if buf.nbytes < start:
            raise InvalidModel("truncated .enf file: the header is cut off")
        try:
            h = msgpack.unpackb(buf[_PREFIX.size:start], raw=False)
            off, length = h["sections"]["npu_graph"]
            if type(off) is not int or type(length) is not int or off < 0 or length < 0:
                raise InvalidModel("corrupt .enf header: bad section table")
            if start + off + length > buf.nbytes:
                raise InvalidModel("truncated .enf file: the NPU graph section is cut off")
            specs = {k: [TensorSpec.from_dict(t) for t in h[k]]
                     for k in ("inputs", "outputs", "npu_inputs", "npu_outputs", "graph_inputs", "graph_outputs")}
            return cls(
                target=h["target"],
                batch_size=int(h["batch_size"]),
                pre_ops=[[CpuOp.from_dict(o) for o in ops] for ops in h["pre_ops"]],
                post_ops=[[CpuOp.from_dict(o) for o in ops] for ops in h["post_ops"]],
                npu_graph=bytes(buf[start + off:start + off + length]),
                npu_ops=list(h.get("npu_ops", [])),
                estimate=dict(h.get("estimate", {})),
                meta=dict(h.get("meta", {})),
                **specs,
            )
        except InvalidModel:
            raise
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError, msgpack.UnpackException) as e:
            raise InvalidModel(f"corrupt .enf header: {type(e).__name__}: {e}") from None


def is_program(data: bytes | bytearray | memoryview) -> bool:
    return bytes(memoryview(data)[:8]) == MAGIC
