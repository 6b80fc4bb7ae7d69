"""The compiled program (``.enf``): what the compiler produces and the daemon and workers load.

A program is a list of *steps* over named tensors, run in order by a worker:

- ``op``: one host operator from the registry (Quantize, QuantizeUint8, Lower, Pad, Unlower, Slice,
  Dequantize);
- ``npu``: one NPU stage — the worker sends its inputs to the device daemon, which runs it;
- ``cpu``: operators the chip does not run, executed on the host with onnxruntime.

Most models compile to ``Quantize → Lower? → npu → Unlower? → Dequantize``; an operator the
chip cannot run splits the NPU part into stages with a ``cpu`` step between them.

File layout (little-endian)::

    b"NPUSIMEF"  u16 format version  u16 reserved  u32 header length
    header      msgpack map: everything but the graphs, plus a section table
    sections    raw bytes: one ONNX graph per NPU stage and per cpu step

The header is self-describing (``npusim explain`` reads it with no compiler) and loading
needs only msgpack. An NPU stage describes each boundary tensor twice: as the device
receives it (``device_inputs``: the layout after the host's layout operators) and as its
ONNX graph computes on it (``graph_inputs``); :mod:`npusim.services.layout` converts between them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import numpy as np

from npusim.services.errors import InvalidModel

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "CpuStep",
    "NpuStage",
    "NpuStep",
    "OpStep",
    "Program",
    "TensorSpec",
    "is_program",
]

MAGIC = b"NPUSIMEF"
FORMAT_VERSION = 2
_PREFIX = struct.Struct("<8sHHI")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor at a program or stage boundary.

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
class OpStep:
    """A host operator: registry name, attributes, tensors, and why it is not on the NPU."""

    op: str
    attrs: dict[str, Any]
    input: str
    output: str
    reason: str = ""
    kind: str = field(default="op", init=False)


@dataclass(frozen=True)
class CpuStep:
    """Operators the chip does not run, executed on the host (``ops``: name, op_type, reason)."""

    graph: bytes
    inputs: list[str]
    outputs: list[str]
    ops: list[dict[str, str]]
    kind: str = field(default="cpu", init=False)


@dataclass(frozen=True)
class NpuStep:
    """Run NPU stage ``stage`` on the device: env tensors ``inputs`` in, ``outputs`` out."""

    stage: int
    inputs: list[str]
    outputs: list[str]
    kind: str = field(default="npu", init=False)


Step = OpStep | CpuStep | NpuStep


@dataclass
class NpuStage:
    graph: bytes
    device_inputs: list[TensorSpec]
    device_outputs: list[TensorSpec]
    graph_inputs: list[TensorSpec]
    graph_outputs: list[TensorSpec]
    ops: list[dict[str, Any]] = field(default_factory=list)
    estimate: dict[str, Any] = field(default_factory=dict)


@dataclass
class Program:
    target: str
    batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    steps: list[Step]
    stages: list[NpuStage]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def estimate(self) -> dict[str, Any]:
        """Totals over the NPU stages (each stage is one job on the device)."""
        keys = ("npu_cycles", "npu_ns", "job_overhead_ns", "macs", "weight_bytes")
        out: dict[str, Any] = {k: sum(s.estimate.get(k, 0) for s in self.stages) for k in keys}
        out["stages"] = len(self.stages)
        out["fits_sram"] = all(s.estimate.get("fits_sram", True) for s in self.stages)
        return out

    def validate(self) -> None:
        """Every step reads only what the program's inputs or an earlier step made, and every
        output is made: a worker running the steps in order never meets a missing tensor."""
        have = {t.name for t in self.inputs}
        for k, st in enumerate(self.steps):
            if isinstance(st, OpStep):
                reads, makes = [st.input], [st.output]
            else:
                reads, makes = list(st.inputs), list(st.outputs)
            if isinstance(st, NpuStep):
                if not 0 <= st.stage < len(self.stages):
                    raise InvalidModel(f"corrupt program: step {k} refers to NPU stage {st.stage}")
                stage = self.stages[st.stage]
                if len(st.inputs) != len(stage.device_inputs) or len(st.outputs) != len(stage.device_outputs):
                    raise InvalidModel(f"corrupt program: step {k} does not match NPU stage {st.stage}'s tensors")
            missing = [t for t in reads if t not in have]
            if missing:
                raise InvalidModel(f"corrupt program: step {k} reads {missing[0]!r} before anything makes it")
            have.update(makes)
        missing = [t.name for t in self.outputs if t.name not in have]
        if missing:
            raise InvalidModel(f"corrupt program: nothing makes output {missing[0]!r}")

    def cpu_steps(self) -> list[OpStep | CpuStep]:
        return [s for s in self.steps if not isinstance(s, NpuStep)]

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    # -- (de)serialisation ---------------------------------------------------------
    def header(self) -> dict[str, Any]:
        """The self-describing header (what ``npusim explain`` reads)."""
        return self._encode()[0]

    def to_bytes(self) -> bytes:
        header, sections = self._encode()
        head = msgpack.packb(header, use_bin_type=True)
        return _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(head)) + head + b"".join(sections)

    def _encode(self) -> tuple[dict[str, Any], list[bytes]]:
        sections: list[bytes] = []

        def section(blob: bytes) -> int:
            sections.append(blob)
            return len(sections) - 1

        steps = []
        for st in self.steps:
            if isinstance(st, OpStep):
                steps.append({"kind": "op", "op": st.op, "attrs": dict(st.attrs), "input": st.input,
                              "output": st.output, "reason": st.reason})
            elif isinstance(st, CpuStep):
                steps.append({"kind": "cpu", "graph": section(st.graph), "inputs": list(st.inputs),
                              "outputs": list(st.outputs), "ops": list(st.ops)})
            else:
                steps.append({"kind": "npu", "stage": st.stage, "inputs": list(st.inputs),
                              "outputs": list(st.outputs)})
        stages = [{"graph": section(s.graph), "device_inputs": [t.to_dict() for t in s.device_inputs],
                   "device_outputs": [t.to_dict() for t in s.device_outputs],
                   "graph_inputs": [t.to_dict() for t in s.graph_inputs],
                   "graph_outputs": [t.to_dict() for t in s.graph_outputs],
                   "ops": s.ops, "estimate": s.estimate} for s in self.stages]
        offsets, off = [], 0
        for blob in sections:
            offsets.append([off, len(blob)])
            off += len(blob)
        header = {"format": "npusim-enf", "target": self.target, "batch_size": self.batch_size,
                  "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                  "steps": steps, "stages": stages, "meta": self.meta, "sections": offsets}
        return header, sections

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Program:
        buf = memoryview(data)
        if buf.nbytes < _PREFIX.size or bytes(buf[:8]) != MAGIC:
            raise InvalidModel("not an npusim program: an .enf file starts with NPUSIMEF")
        _, version, _, hlen = _PREFIX.unpack(buf[: _PREFIX.size])
        if version != FORMAT_VERSION:
            newer = "newer than this npusim reads" if version > FORMAT_VERSION else "from an older npusim"
            raise InvalidModel(f"program format v{version} is {newer} (v{FORMAT_VERSION}); recompile the model")
        start = _PREFIX.size + hlen
        if buf.nbytes < start:
            raise InvalidModel("truncated .enf file: the header is cut off")
        try:
            h = msgpack.unpackb(buf[_PREFIX.size:start], raw=False)
            blobs = []
            for off, length in h["sections"]:
                if type(off) is not int or type(length) is not int or off < 0 or length < 0:
                    raise InvalidModel("corrupt .enf header: bad section table")
                if start + off + length > buf.nbytes:
                    raise InvalidModel("truncated .enf file: a graph section is cut off")
                blobs.append(bytes(buf[start + off:start + off + length]))

            def specs(items: list[dict[str, Any]]) -> list[TensorSpec]:
                return [TensorSpec.from_dict(t) for t in items]

            steps: list[Step] = []
            for st in h["steps"]:
                if st["kind"] == "op":
                    steps.append(OpStep(st["op"], dict(st["attrs"]), st["input"], st["output"], st.get("reason", "")))
                elif st["kind"] == "cpu":
                    steps.append(CpuStep(blobs[st["graph"]], list(st["inputs"]), list(st["outputs"]),
                                         list(st["ops"])))
                elif st["kind"] == "npu":
                    steps.append(NpuStep(int(st["stage"]), list(st["inputs"]), list(st["outputs"])))
                else:
                    raise InvalidModel(f"corrupt .enf header: unknown step kind {st['kind']!r}")
            stages = [NpuStage(blobs[s["graph"]], specs(s["device_inputs"]), specs(s["device_outputs"]),
                               specs(s["graph_inputs"]), specs(s["graph_outputs"]), list(s.get("ops", [])),
                               dict(s.get("estimate", {}))) for s in h["stages"]]
            program = cls(target=h["target"], batch_size=int(h["batch_size"]), inputs=specs(h["inputs"]),
                          outputs=specs(h["outputs"]), steps=steps, stages=stages, meta=dict(h.get("meta", {})))
            program.validate()
            return program
        except InvalidModel:
            raise
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError,
                msgpack.UnpackException) as e:
            raise InvalidModel(f"corrupt .enf header: {type(e).__name__}: {e}") from None


def is_program(data: bytes | bytearray | memoryview) -> bool:
    return bytes(memoryview(data)[:8]) == MAGIC
