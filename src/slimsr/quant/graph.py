"""A network as a list of plain ops, the common ground of QAT and the TFLite rebuild.

Full-integer deployment (TFLite INT8, the Mobile AI setting ABPN was built for) is offered for
*plain-conv* networks: Conv2d (stride 1, "same" padding, no groups), ReLU, add, multiply by a
constant, channel concat, `repeat_interleave` anchors, pixel shuffle and clamp. `plain_graph`
traces the network with torch.fx and either returns those ops in execution order or raises a
one-line `UnsupportedOpError` naming the first module or function outside the set.

Two facts are worked out here once, for both consumers:

- *Channel layout.* PyTorch's PixelShuffle reads channels in CRD order (`c*s^2 + i*s + j`), TF's
  `depth_to_space` in DCR order (`(i*s + j)*C + c`). The rebuild keeps `depth_to_space` (one
  fast TFLite op) and instead stores every tensor that feeds a shuffle in DCR order: the convs
  producing it get their output channels permuted, and an anchor `repeat_interleave(s^2)`
  becomes a plain 9-way channel concat of the input, which is the official ABPN graph.
- *Quantisation points.* Which tensors carry their own INT8 range and which share one: a conv
  followed by its only ReLU is one point (TFLite fuses them), pixel shuffle and the anchor
  repeat reuse their input's range (they only move values), and the network input and final
  output are fixed to the uint8 pixel grid. So is the tensor that reaches the output only
  through pixel shuffles and clamps that keep all of [0, r] (ABPN's anchor add): the output's
  clip and rounding would follow anyway, and a range of its own (ABPN x3: [-28, 315], 1.35 per
  level) would round it twice, the second time onto the output grid. docs/export.md measures it.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from slimsr.archs.blocks import crd_to_dcr
from slimsr.errors import SlimsrError
from slimsr.model import SRModel

SUPPORTED = "Conv2d, ReLU, add, concat, pixel shuffle, clamp"
"""Named in every refusal, so the user sees what would be accepted."""

KINDS = ("input", "conv", "relu", "add", "mul", "cat", "repeat", "shuffle", "clamp")


class QuantError(SlimsrError):
    """A quantisation or deployment export that cannot be done as asked."""


class UnsupportedOpError(QuantError):
    """The network has an op outside the plain-conv set (attention, GELU, pooling, ...)."""


@dataclass
class Op:
    """One op of the plain graph. `name` is also the name of the tensor it produces."""

    name: str
    kind: str
    inputs: list[str] = field(default_factory=list)
    module: str = ""
    """conv: the Conv2d's path inside the network (for its weights)."""
    relu: bool = False
    """conv: followed by a ReLU that is folded into it."""
    value: float = 0.0
    """mul: the constant; repeat: the repeat count; shuffle: the upscale factor."""
    bounds: tuple[float | None, float | None] = (None, None)
    """clamp: (min, max)."""
    channels: int = 0
    """Channels of the output tensor."""


@dataclass
class PlainGraph:
    """Ops in execution order; the first is the input, `output` names the result tensor."""

    ops: list[Op]
    output: str
    input_range: float
    dcr: dict[str, tuple[int, int]]
    """Tensors stored in DCR order for a later depth_to_space: name -> (C, s)."""
    points: dict[str, str]
    """Tensor -> the quantisation point (a tensor name) whose range it uses."""
    fixed: dict[str, tuple[float, float]]
    """Points whose range is fixed to the uint8 pixel grid: the input, the final output and
    the point that feeds the output through pixel shuffles and clamps alone."""
    output_point: str
    """The point of the network output; "output" when a separate final quantiser is needed."""

    def op(self, name: str) -> Op:
        return self._by_name[name]

    def __post_init__(self) -> None:
        self._by_name = {op.name: op for op in self.ops}

    @property
    def own_points(self) -> list[str]:
        """Quantisation points in execution order (the extra "output" point last)."""
        seen = list(dict.fromkeys(self.points.values()))
        return seen + (["output"] if self.output_point == "output" else [])


# -- tracing -----------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """Keeps the supported modules whole; slimsr's own modules are traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.ReLU, nn.PixelShuffle)):
            return True
        return super().is_leaf_module(m, qualname)


_ADD = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__"}
_RELU = {F.relu, torch.relu, "relu", "relu_"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_CLAMP = {torch.clamp, torch.clip, "clamp", "clamp_", "clip", "clip_"}
_REPEAT = {torch.repeat_interleave, "repeat_interleave"}
_SHUFFLE = {F.pixel_shuffle, torch.pixel_shuffle}


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def plain_graph(model: SRModel | nn.Module, input_range: float | None = None) -> PlainGraph:
    """Trace `model` (an SRModel, or a bare network with `input_range`) into plain ops."""
    if isinstance(model, SRModel):
        name, net, r = model.name, model.net, model.info.input_range
    else:
        name, net, r = type(model).__name__, model, float(input_range or 255.0)
    try:
        traced = _Tracer().trace(net)
    except Exception as exc:  # fx raises TraceError, TypeError, ... on dynamic Python code
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UnsupportedOpError(
            f"{name}: not a plain-conv network (tracing it failed: {first}); full-integer "
            f"export supports {SUPPORTED}"
        ) from None
    builder = _Builder(name, net)
    for node in traced.nodes:
        builder.add(node)
    graph = builder.finish(r)
    if isinstance(model, SRModel) and (model.info.size_multiple > 1 or model.info.min_size > 1):
        info = model.info
        raise UnsupportedOpError(
            f"{name}: needs its input padded (to a multiple of {info.size_multiple}, at least "
            f"{info.min_size} px), which full-integer export does not do"
        )
    return graph


class _Builder:
    def __init__(self, name: str, net: nn.Module) -> None:
        self.name = name
        self.net = net
        self.ops: list[Op] = []
        self.alias: dict[str, str] = {}
        self.channels: dict[str, int] = {}
        self.output = ""

    def refuse(self, what: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"{self.name}: {what} is not supported for full-integer export "
            f"(plain-conv models only: {SUPPORTED})"
        )

    def ref(self, arg: Any, node: fx.Node) -> str:
        if not isinstance(arg, fx.Node):
            raise self.refuse(f"{_target_name(node)} with a constant operand ({arg!r})")
        return self.alias.get(arg.name, arg.name)

    def emit(self, node: fx.Node, kind: str, inputs: list[str], channels: int, **kw: Any) -> None:
        self.ops.append(Op(node.name, kind, inputs, channels=channels, **kw))
        self.channels[node.name] = channels

    def add(self, node: fx.Node) -> None:
        op = node.op
        if op == "placeholder":
            if self.ops:
                raise self.refuse("a second network input")
            first = next((m for m in self.net.modules() if isinstance(m, nn.Conv2d)), None)
            self.emit(node, "input", [], first.in_channels if first is not None else 3)
        elif op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise self.refuse("more than one network output")
            self.output = self.ref(node.args[0], node)
        elif op == "get_attr":
            raise self.refuse(f"a tensor constant outside a Conv2d ({node.target})")
        elif op == "call_module":
            self.add_module(node, self.net.get_submodule(str(node.target)))
        else:
            self.add_function(node)

    def add_module(self, node: fx.Node, m: nn.Module) -> None:
        path = str(node.target)
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size
            same = m.padding == "same" or tuple(m.padding) == (k[0] // 2, k[1] // 2)
            if not (
                m.groups == 1
                and tuple(m.stride) == (1, 1)
                and tuple(m.dilation) == (1, 1)
                and k[0] % 2 == 1
                and k[1] % 2 == 1
                and same
                and m.padding_mode == "zeros"
            ):
                raise self.refuse(
                    f"Conv2d {path!r} (groups={m.groups}, stride={tuple(m.stride)}, "
                    f"dilation={tuple(m.dilation)}, padding={m.padding}, {m.padding_mode})"
                )
            self.emit(node, "conv", [self.ref(node.args[0], node)], m.out_channels, module=path)
        elif isinstance(m, nn.ReLU):
            src = self.ref(node.args[0], node)
            self.emit(node, "relu", [src], self.channels[src])
        elif isinstance(m, nn.PixelShuffle):
            self.shuffle(node, self.ref(node.args[0], node), int(m.upscale_factor))
        else:
            raise self.refuse(f"{type(m).__name__} ({path!r})")

    def shuffle(self, node: fx.Node, src: str, s: int) -> None:
        c = self.channels[src]
        if c % (s * s):
            raise self.refuse(f"pixel shuffle by {s} of {c} channels")
        self.emit(node, "shuffle", [src], c // (s * s), value=s)

    def add_function(self, node: fx.Node) -> None:
        target = node.target
        args, kwargs = node.args, node.kwargs
        if target in _ADD:
            a, b = self.ref(args[0], node), self.ref(args[1], node)
            if self.channels[a] != self.channels[b]:
                raise self.refuse("an add with broadcasting")
            self.emit(node, "add", [a, b], self.channels[a])
        elif target in _MUL:
            tensor, const = args[0], args[1]
            if isinstance(tensor, (int, float)):
                tensor, const = const, tensor
            src = self.ref(tensor, node)
            if isinstance(const, fx.Node) or not isinstance(const, (int, float)):
                raise self.refuse("a multiplication of two tensors")
            if float(const) == 1.0:
                self.alias[node.name] = src
            else:
                self.emit(node, "mul", [src], self.channels[src], value=float(const))
        elif target in _RELU:
            src = self.ref(args[0], node)
            self.emit(node, "relu", [src], self.channels[src])
        elif target in _CAT:
            tensors = args[0]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if dim not in (1, -3):
                raise self.refuse(f"a concat along dim {dim}")
            names = [self.ref(t, node) for t in tensors]
            self.emit(node, "cat", names, sum(self.channels[n] for n in names))
        elif target in _REPEAT:
            repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
            dim = args[2] if len(args) > 2 else kwargs.get("dim")
            if not isinstance(repeats, int) or dim not in (1, -3):
                raise self.refuse("repeat_interleave other than an int count along channels")
            src = self.ref(args[0], node)
            self.emit(node, "repeat", [src], self.channels[src] * repeats, value=repeats)
        elif target in _SHUFFLE:
            self.shuffle(node, self.ref(args[0], node), int(args[1]))
        elif target in _CLAMP:
            lo = args[1] if len(args) > 1 else kwargs.get("min")
            hi = args[2] if len(args) > 2 else kwargs.get("max")
            if any(isinstance(v, fx.Node) for v in (lo, hi)):
                raise self.refuse("a clamp with tensor bounds")
            src = self.ref(args[0], node)
            bounds = (None if lo is None else float(lo), None if hi is None else float(hi))
            self.emit(node, "clamp", [src], self.channels[src], bounds=bounds)
        else:
            raise self.refuse(f"{_target_name(node)} (node {node.name!r})")

    # -- after tracing ---------------------------------------------------------------------------

    def finish(self, input_range: float) -> PlainGraph:
        if not self.ops or self.ops[0].kind != "input" or not self.output:
            raise self.refuse("a network without one tensor input and output")
        users: dict[str, list[Op]] = {op.name: [] for op in self.ops}
        for op in self.ops:
            for src in op.inputs:
                users[src].append(op)
        # A conv whose only user is a ReLU absorbs it (one op and one range in TFLite).
        keep: list[Op] = []
        fused: dict[str, str] = {}
        for op in self.ops:
            op.inputs = [fused.get(i, i) for i in op.inputs]
            if op.kind == "relu":
                src = self.by_name(keep, op.inputs[0])
                if src.kind == "conv" and not src.relu and len(users[src.name]) == 1:
                    src.relu = True
                    fused[op.name] = src.name
                    continue
            keep.append(op)
        output = fused.get(self.output, self.output)
        self.ops = keep
        dcr = self.plan_layout(output)
        points, fixed, output_point = self.plan_points(output, input_range)
        return PlainGraph(keep, output, input_range, dcr, points, fixed, output_point)

    @staticmethod
    def by_name(ops: list[Op], name: str) -> Op:
        return next(op for op in reversed(ops) if op.name == name)

    def plan_layout(self, output: str) -> dict[str, tuple[int, int]]:
        """Which tensors are stored in DCR order; refuses graphs where that cannot be kept."""
        by_name = {op.name: op for op in self.ops}
        need: dict[str, tuple[int, int]] = {}
        stack = [
            (op.inputs[0], (op.channels, int(op.value))) for op in self.ops if op.kind == "shuffle"
        ]
        while stack:
            name, layout = stack.pop()
            if name in need:
                if need[name] != layout:
                    raise self.refuse("a tensor feeding two different pixel shuffles")
                continue
            need[name] = layout
            op = by_name[name]
            if op.kind in ("add", "relu", "mul", "clamp"):
                stack += [(src, layout) for src in op.inputs]
            elif op.kind == "repeat":
                c, s = layout
                if int(op.value) != s * s or by_name[op.inputs[0]].channels != c:
                    raise self.refuse("a repeat_interleave that is not a pixel-shuffle anchor")
            elif op.kind != "conv":
                raise self.refuse(f"a pixel shuffle fed by {op.kind} {op.name!r}")
        for op in self.ops:
            layouts = {need.get(src) for src in op.inputs}
            if op.kind in ("add", "relu", "mul", "clamp") and layouts != {need.get(op.name)}:
                raise self.refuse(f"{op.kind} {op.name!r} mixing pixel-shuffle channel orders")
            if op.kind in ("cat", "repeat", "shuffle") and any(
                need.get(src) and op.kind != "shuffle" for src in op.inputs
            ):
                raise self.refuse(f"{op.kind} {op.name!r} of a tensor bound for a pixel shuffle")
            if op.kind == "repeat" and op.name not in need:
                raise self.refuse(f"repeat_interleave {op.name!r} not feeding a pixel shuffle")
        if output in need:
            raise self.refuse("a network whose output is bound for a pixel shuffle")
        return need

    def plan_points(
        self, output: str, r: float
    ) -> tuple[dict[str, str], dict[str, tuple[float, float]], str]:
        points: dict[str, str] = {}
        for op in self.ops:
            shares = op.kind in ("shuffle", "repeat")
            points[op.name] = points[op.inputs[0]] if shares else op.name
        fixed = {self.ops[0].name: (0.0, r)}
        feed = self.output_feed(output, r)
        if feed != output and points[feed] == feed and feed != self.ops[0].name:
            fixed[feed] = (0.0, r)
        if points[output] == output:
            # The last op's range is the uint8 output grid (raw pixels; values outside [0, r]
            # saturate, as a clamp to the pixel range would).
            fixed[output] = (0.0, r)
            return points, fixed, output
        # The output shares its producer's range (e.g. a final pixel shuffle): a clip to
        # [0, r] is added to carry the output grid.
        fixed["output"] = (0.0, r)
        return points, fixed, "output"

    def output_feed(self, output: str, r: float) -> str:
        """The tensor from which the output follows by pixel shuffles and clamps that keep all
        of [0, r], each the only user of its input: on the output grid, its values are the
        output's values moved (see the module docstring). `output` itself when there is none."""
        by_name = {op.name: op for op in self.ops}
        users = Counter(src for op in self.ops for src in op.inputs)
        name = output
        while True:
            op = by_name[name]
            lo, hi = op.bounds
            keeps_grid = op.kind == "shuffle" or (
                op.kind == "clamp" and (lo is None or lo <= 0.0) and (hi is None or hi >= r)
            )
            if not keeps_grid or users[op.inputs[0]] != 1:
                return name
            name = op.inputs[0]


def conv_weights(graph: PlainGraph, net: nn.Module, op: Op) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight OIHW, bias) of a conv op, with the DCR permutations of its output and input."""
    m = net.get_submodule(op.module)
    assert isinstance(m, nn.Conv2d)
    w = m.weight.detach().float()
    b = m.bias.detach().float() if m.bias is not None else torch.zeros(m.out_channels)
    if op.name in graph.dcr:
        perm = crd_to_dcr(*graph.dcr[op.name])
        w, b = w[perm], b[perm]
    src = op.inputs[0]
    if src in graph.dcr:
        w = w[:, crd_to_dcr(*graph.dcr[src])]
    return w, b
