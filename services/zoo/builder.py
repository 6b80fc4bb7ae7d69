"""Graph construction for the built-in models, and what makes random weights behave like trained ones.

A network with plain random weights is not a realistic workload: activations explode or collapse
with depth, ReLUs die, and every input gets the same top-1 class. A trained network keeps each
BatchNormalization's input statistics close to the running statistics it stores, so its
activations stay near N(beta, gamma²) layer after layer. :func:`calibrate` reproduces that with
one onnxruntime run: every BatchNormalization is temporarily replaced by its training-mode form
(normalise with the batch's own per-channel mean and variance, the exact statistics the layer
will see once the layers before it are set), the batch statistics are read back and written into
the inference-mode graph. Classifier heads are then whitened and scaled on the same run so the
logits have a spread of a few units around a data-dependent centre, and top-1 changes with the
input.

Everything is deterministic for a seed. Statistics are rounded to 12 significant bits so that
tiny, thread-count-dependent float differences inside onnxruntime do not change the bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .inputs import META_LAYOUT, META_PREPROCESS, image_batch

__all__ = ["GraphBuilder", "Head", "OPSET", "IR_VERSION", "calibrate", "fold_batchnorm", "nhwc_input",
           "finalize", "macs", "params", "BN_EPS"]

OPSET = 13
IR_VERSION = 8
BN_EPS = 1e-5
_ACTS = ("relu", "relu6", "silu", "hardswish", None)


@dataclass(frozen=True)
class Head:
    """A linear classifier head whose weights :func:`calibrate` scales from data.

    ``kind`` is ``"gemm"`` (Gemm, transB=1, weight [cout, cin]) or ``"matmul"`` (MatMul with a
    [cin, cout] weight followed by an Add of the bias); ``x`` is the head's [N, cin] input.
    """

    kind: str
    x: str
    w: str
    b: str


@dataclass
class GraphBuilder:
    """Accumulates nodes and initialisers; names are generated and unique."""

    seed: int = 0
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    heads: list[Head] = field(default_factory=list)
    _n: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self._consts: dict[tuple[str, bytes], str] = {}

    def _name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}_{self._n}"

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def const(self, value: float | Sequence[float] | np.ndarray, dtype: type = np.float32) -> str:
        """A shared constant initialiser (Clip bounds, Resize scales, Reshape shapes...)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str + str(arr.shape), arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self._name("const"), arr)
        return self._consts[key]

    def node(self, op: str, inputs: list[str], *, out: str | None = None, **attrs: object) -> str:
        name = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out or name], name=name, **attrs))
        return out or name

    def _normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    # --- layers ------------------------------------------------------------------------------

    def conv(self, x: str, cin: int, cout: int, k: int = 3, *, stride: int = 1, group: int = 1,
             relu: bool = True) -> str:
        """Conv with bias (He initialisation), optionally followed by a ReLU."""
        fan_in = cin // group * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32)
        name = self._name("conv")
        y = self.node("Conv", [x, self.init(name + "_w", w), self.init(name + "_b", b)],
                      kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride], group=group)
        return self.node("Relu", [y]) if relu else y

    def conv_bn(self, x: str, cin: int, cout: int, k: int = 3, *, stride: int = 1, group: int = 1,
                act: str | None = "relu", gamma: float = 1.0, beta: float = 0.1, pad: int | None = None) -> str:
        """Conv (no bias, padding ``pad`` or k//2) + BatchNormalization + activation: the torch export shape.

        The BatchNormalization gets gamma ≈ ``gamma`` and beta ~ N(0, ``beta``); its mean and
        variance are placeholders until :func:`calibrate` sets them from data.
        """
        assert act in _ACTS, act
        fan_in = cin // group * k * k
        name = self._name("conv")
        w = self._normal((cout, cin // group, k, k), np.sqrt(2.0 / fan_in))
        y = self.node("Conv", [x, self.init(name + "_w", w)], kernel_shape=[k, k],
                      pads=[k // 2 if pad is None else pad] * 4, strides=[stride, stride], group=group)
        return self.act(self.bn(y, cout, gamma=gamma, beta=beta), act)

    def bn(self, x: str, c: int, *, gamma: float = 1.0, beta: float = 0.1) -> str:
        name = self._name("bn")
        g = (gamma * (1.0 + 0.1 * self.rng.standard_normal(c))).clip(0.5 * gamma, 1.5 * gamma)
        b = beta * self.rng.standard_normal(c)
        return self.node("BatchNormalization", [
            x, self.init(name + "_scale", g.astype(np.float32)), self.init(name + "_bias", b.astype(np.float32)),
            self.init(name + "_mean", np.zeros(c, np.float32)), self.init(name + "_var", np.ones(c, np.float32)),
        ], epsilon=BN_EPS)

    def act(self, x: str, kind: str | None) -> str:
        if kind is None:
            return x
        if kind == "relu":
            return self.node("Relu", [x])
        if kind == "relu6":
            return self.node("Clip", [x, self.const(0.0), self.const(6.0)])
        if kind == "silu":  # x * sigmoid(x), as torch exports nn.SiLU at opset 13
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        if kind == "hardswish":  # x * hardsigmoid(x), as torch exports nn.Hardswish below opset 14
            return self.node("Mul", [x, self.node("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)])
        raise ValueError(f"unknown activation {kind!r}")

    def gemm(self, x: str, cin: int, cout: int, *, out: str | None = None) -> str:
        w = (self.rng.standard_normal((cout, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32)
        name = self._name("fc")
        return self.node("Gemm", [x, self.init(name + "_w", w), self.init(name + "_b", b)], transB=1, out=out)

    def head(self, x: str, cin: int, cout: int, *, kind: str = "gemm", out: str | None = None) -> str:
        """A classifier head on a [N, cin] tensor that :func:`calibrate` scales from data."""
        name = self._name("fc")
        b = self.init(name + "_b", np.zeros(cout, np.float32))
        if kind == "gemm":
            w = self.init(name + "_w", self._normal((cout, cin), np.sqrt(1.0 / cin)))
            y = self.node("Gemm", [x, w, b], transB=1, out=out)
        elif kind == "matmul":
            w = self.init(name + "_w", self._normal((cin, cout), np.sqrt(1.0 / cin)))
            y = self.node("Add", [self.node("MatMul", [x, w]), b], out=out)
        else:
            raise ValueError(f"unknown head kind {kind!r}")
        self.heads.append(Head(kind, x, w, b))
        return y

    # --- finishing -------------------------------------------------------------------------

    def graph_model(self, name: str, inputs: dict[str, list[int]], outputs: list[str],
                    *, dtype: int = TensorProto.FLOAT, doc: str = "") -> onnx.ModelProto:
        """The model as built, not yet shape-inferred or checked."""
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(k, dtype, v) for k, v in inputs.items()],
            [helper.make_tensor_value_info(k, dtype, None) for k in outputs],
            self.inits, doc_string=doc,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="npusim.zoo")
        model.ir_version = IR_VERSION
        return model

    def model(self, name: str, inputs: dict[str, list[int]], outputs: list[str],
              *, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
        """The model, shape-inferred and checked, with the weights as drawn (no calibration)."""
        return finalize(self.graph_model(name, inputs, outputs, dtype=dtype))

    def finish(self, name: str, inputs: dict[str, list[int]], outputs: list[str], *,
               calib_shape: dict[str, list[int]] | None = None, n_calib: int = 8,
               preprocess: str = "imagenet", fold_bn: bool = False, nhwc: bool = False,
               spread: float = 3.0, doc: str = "") -> onnx.ModelProto:
        """The model made realistic: BatchNorm statistics and heads calibrated, then checked.

        Calibration runs on ``n_calib`` images of ``calib_shape`` (default: the input shapes),
        one per sample, drawn from a seed derived from the builder's: a fully convolutional
        model calibrated at a fixed size has the same weights whatever input size it is built
        for. ``fold_bn`` then folds every BatchNormalization into its Conv; ``nhwc`` makes the
        input NHWC with a Transpose in front (same weights as the NCHW model).
        """
        model = self.graph_model(name, inputs, outputs, doc=doc)
        if self.heads or any(n.op_type == "BatchNormalization" for n in self.nodes):
            shapes = calib_shape or inputs
            batches = [[image_batch(np.random.default_rng([self.seed, 0xCA1, i]), [1, *s[1:]],
                                    preprocess=preprocess) for s in shapes.values()] for i in range(n_calib)]
            model = calibrate(model, batches, self.heads, spread=spread, seed=self.seed)
        if fold_bn:
            model = fold_batchnorm(model)
        if nhwc:
            model = nhwc_input(model, next(iter(inputs)))
        return finalize(model, {META_PREPROCESS: preprocess, META_LAYOUT: "NHWC" if nhwc else "NCHW"})


# --- calibration -------------------------------------------------------------------------------


def _round_bits(x: np.ndarray, bits: int = 12) -> np.ndarray:
    """Round to ``bits`` significant bits: stable bytes despite float noise in the last places."""
    m, e = np.frexp(np.asarray(x, np.float64))
    return np.ldexp(np.round(m * (1 << bits)) / (1 << bits), e).astype(np.float32)


def _training_mode(model: onnx.ModelProto, heads: Sequence[Head]
                   ) -> tuple[onnx.ModelProto, list[tuple[onnx.NodeProto, str, str]]]:
    """A copy that normalises every BatchNormalization with batch statistics, and returns them.

    Inputs get symbolic dimensions so calibration batches of any size (and spatial size, for
    fully convolutional models) can be fed.
    """
    cal = onnx.ModelProto()
    cal.CopyFrom(model)
    g = cal.graph
    del g.value_info[:]
    for i, vi in enumerate(g.input):
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            d.Clear()
            d.dim_param = f"cal_{i}_{k}"
    for vi in g.output:
        vi.type.tensor_type.ClearField("shape")
    inits = {t.name: t for t in g.initializer}
    nodes: list[onnx.NodeProto] = []
    stats: list[tuple[onnx.NodeProto, str, str]] = []
    extra_inits = []
    for node in g.node:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        x, scale, bias = node.input[0], node.input[1], node.input[2]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        c = int(np.prod(inits[scale].dims))
        p = f"__cal_{node.name}"
        axes = [0, 2, 3]  # the zoo's BatchNormalizations all follow 4-D convolutions
        for nm, src in ((p + "_g", scale), (p + "_b", bias)):
            extra_inits.append(numpy_helper.from_array(
                numpy_helper.to_array(inits[src]).reshape(c, 1, 1), nm))
        extra_inits.append(numpy_helper.from_array(np.array(eps, np.float32), p + "_eps"))
        nodes += [
            helper.make_node("ReduceMean", [x], [p + "_mean"], axes=axes, keepdims=1),
            helper.make_node("Sub", [x, p + "_mean"], [p + "_d"]),
            helper.make_node("Mul", [p + "_d", p + "_d"], [p + "_d2"]),
            helper.make_node("ReduceMean", [p + "_d2"], [p + "_var"], axes=axes, keepdims=1),
            helper.make_node("Add", [p + "_var", p + "_eps"], [p + "_ve"]),
            helper.make_node("Sqrt", [p + "_ve"], [p + "_std"]),
            helper.make_node("Div", [p + "_d", p + "_std"], [p + "_n"]),
            helper.make_node("Mul", [p + "_n", p + "_g"], [p + "_ng"]),
            helper.make_node("Add", [p + "_ng", p + "_b"], [node.output[0]]),
        ]
        stats.append((node, p + "_mean", p + "_var"))
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(extra_inits)
    wanted = [m for _, m, v in stats] + [v for _, m, v in stats] + [h.x for h in heads]
    present = {o.name for o in g.output}
    for name in dict.fromkeys(wanted):
        if name not in present:
            g.output.append(helper.make_empty_tensor_value_info(name))
    return cal, stats


def _whitening(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and (regularised) standard deviation of [N, C] features."""
    mu = _round_bits(f.mean(0)).astype(np.float64)
    sd = _round_bits(f.std(0)).astype(np.float64)
    return mu, sd + 0.1 * float(np.median(sd)) + 1e-6


def calibrate(model: onnx.ModelProto, batches: Sequence[Sequence[np.ndarray]], heads: Sequence[Head] = (),
              *, spread: float = 3.0, seed: int = 0) -> onnx.ModelProto:
    """Set BatchNormalization statistics and classifier-head scales from sample inputs.

    ``batches`` is a list of samples, each a list with one array per graph input (the format of
    :func:`npusim.services.zoo.sample_inputs`); they are concatenated along axis 0 and run as one batch.
    After this, on inputs like these, each BatchNormalization's output is ≈ N(beta, gamma²) per
    channel, and each head's logits are centred, with a standard deviation of about ``spread``.
    """
    cal, stats = _training_mode(model, heads)
    feed_names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    feed = {n: np.concatenate([b[i] for b in batches], axis=0) for i, n in enumerate(feed_names)}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(cal.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, feed)))

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}

    def put(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))

    for node, m, v in stats:
        put(node.input[3], _round_bits(values[m].reshape(-1)))
        put(node.input[4], _round_bits(np.maximum(values[v].reshape(-1), 0.0)))

    rng = np.random.default_rng([seed, 0x4EAD])
    for h in heads:
        f = values[h.x].reshape(values[h.x].shape[0], -1).astype(np.float64)
        w = numpy_helper.to_array(inits[h.w]).astype(np.float64)
        w = w.T if h.kind == "gemm" else w  # [cin, cout]
        mu, sd = _whitening(f)
        # The scale that gives logits a std of `spread` on inputs *not* in the calibration batch:
        # each sample is centred and whitened with statistics of the others (leave-one-out), since
        # with few samples the in-sample spread is optimistic.
        loo = []
        for i in range(len(f)):
            others = np.delete(f, i, axis=0)
            m_i, s_i = _whitening(others) if len(others) > 1 else (mu, sd)
            loo.append(((f[i] - m_i) / s_i) @ w)
        s = spread / max(float(_round_bits(np.std(loo))), 1e-12)
        wt = _round_bits(w / sd[:, None] * s).astype(np.float64)
        b = -(mu @ wt) + 0.1 * rng.standard_normal(wt.shape[1])
        put(h.w, wt.T if h.kind == "gemm" else wt)
        put(h.b, _round_bits(b))
    return out


# --- graph rewrites -----------------------------------------------------------------------------


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every BatchNormalization that is the only consumer of a Conv into that Conv's weights."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for o in g.output:
        uses[o.name] = uses.get(o.name, 0) + 1
    drop_nodes: set[str] = set()
    drop_inits: set[str] = set()
    new_inits: list[onnx.TensorProto] = []
    for bn in g.node:
        if bn.op_type != "BatchNormalization":
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or uses[bn.input[0]] != 1 or conv.input[1] not in inits:
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 else 0.0
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(
            (w * scale[:, None, None, None]).astype(np.float32), conv.input[1]))
        bias = ((b - mean) * scale + beta).astype(np.float32)
        if len(conv.input) > 2:
            inits[conv.input[2]].CopyFrom(numpy_helper.from_array(bias, conv.input[2]))
        else:
            bname = conv.input[1][:-2] + "_b" if conv.input[1].endswith("_w") else conv.input[1] + "_bias"
            new_inits.append(numpy_helper.from_array(bias, bname))
            conv.input.append(bname)
        conv.output[0] = bn.output[0]
        drop_nodes.add(bn.name)
        drop_inits.update(bn.input[1:5])
    kept = [n for n in g.node if n.name not in drop_nodes]
    del g.node[:]
    g.node.extend(kept)
    still_used = {i for n in g.node for i in n.input}
    kept_inits = [t for t in g.initializer if t.name not in drop_inits or t.name in still_used] + new_inits
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    del g.value_info[:]
    return out


def nhwc_input(model: onnx.ModelProto, name: str = "input") -> onnx.ModelProto:
    """Make the NCHW input ``name`` an NHWC input followed by Transpose(perm=[0, 3, 1, 2])."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    vi = next(i for i in g.input if i.name == name)
    n, c, h, w = (d.dim_value for d in vi.type.tensor_type.shape.dim)
    inner = name + "_nchw"
    for node in g.node:
        for k, i in enumerate(node.input):
            if i == name:
                node.input[k] = inner
    g.node.insert(0, helper.make_node("Transpose", [name], [inner], name="input_to_nchw", perm=[0, 3, 1, 2]))
    vi.CopyFrom(helper.make_tensor_value_info(name, vi.type.tensor_type.elem_type, [n, h, w, c]))
    del g.value_info[:]
    return out


def finalize(model: onnx.ModelProto, meta: dict[str, str] | None = None) -> onnx.ModelProto:
    """Shape inference, metadata, and the checker: every zoo model leaves through here."""
    del model.graph.value_info[:]
    if meta:
        helper.set_model_props(model, dict(meta))
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


# --- accounting ---------------------------------------------------------------------------------


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    m = model if len(model.graph.value_info) else onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for t in m.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul, from the inferred shapes."""
    shapes = _shapes(model)
    total = 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            w = shapes[n.input[1]]
            total += int(np.prod(shapes[n.output[0]])) * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose":
            w = shapes[n.input[1]]  # (Cin, Cout/group, k...)
            total += int(np.prod(shapes[n.input[0]])) * int(np.prod(w[1:]))
        elif n.op_type in ("Gemm", "MatMul"):
            a = shapes[n.input[0]]
            k = a[-2] if n.op_type == "Gemm" and any(x.name == "transA" and x.i for x in n.attribute) else a[-1]
            total += int(np.prod(shapes[n.output[0]])) * k
    return total


def params(model: onnx.ModelProto) -> int:
    """Trainable parameters, counted like torch: initialisers minus BatchNorm running statistics."""
    running = {i for n in model.graph.node if n.op_type == "BatchNormalization" for i in n.input[3:5]}
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.name not in running and t.data_type == TensorProto.FLOAT and not t.name.startswith("const_"))
