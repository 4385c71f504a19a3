"""Packed tokens for the CPU encoder: its per-token work runs on the real tokens only, not on the padding.

A batch of inputs of different lengths is padded to the longest; Optimum's encoder then computes every layer
norm, projection and feed-forward layer on the padding too. With 32 inputs of 16 to 48 tokens, a third of the
positions are padding, and the projections are nearly all of the encoder's time.

This pass rewrites the encoder so that every operation that works token by token takes the real tokens only,
gathered into rows [tokens, features]:

- the graph computes, from `attention_mask`, the flat positions of the real tokens (`rows`) and, for every
  position, the packed row that stands for it (`place`: a real token's own row; a padded position takes the
  row of the real token before it, so its values stay finite and, being masked, unused);
- the token ids are gathered first, so the embedding lookup already gives packed rows;
- the per-token operations (layer norms, projections with weights, activations, residual additions, int8
  dynamic quantization) are rewritten to work on packed rows, the reductions over the last axis included;
- attention, the one operation that needs [inputs, positions], gets its query, key and value unpacked
  (a Gather through `place` and a Reshape to [inputs, positions, features]); its output is packed again
  before the output projection. So do the graph's outputs (the hidden states, the cross-attention cache),
  whose values at padded positions are then those of a real token, where PyTorch computes the padding too:
  the decoder never reads them (the encoder mask covers them);
- `Shape` of a rewritten tensor is computed as [inputs, positions] + the packed shape's tail.

The graph's inputs and outputs do not change, nor its results at the real positions: rows of a GEMM do not
depend on other rows. int8 graphs' dynamic quantization takes its range from the real tokens only.

The manifest's `encoder_packs_tokens` tells the runner to group inputs by length only where attention over the
padding would cost more than the extra calls (`runner._PACKED_ENCODER_COSTS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper

from .attention_fusion import _attribute, _dims, _without_dead_nodes

_PREFIX = "packed_encoder/"
# Operations applied element by element (broadcasting over the last axis) that may take packed rows.
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Cast", "Relu", "Sqrt", "Reciprocal", "Neg",
                "Erf", "Tanh", "Sigmoid", "Softplus", "Identity", "Gelu", "FastGelu"}
_WEIGHT_MATMULS = {"MatMul", "MatMulInteger"}  # (activations, 2-D weights, ...): per row of the activations
_LAST_AXIS_REDUCTIONS = {"ReduceMean", "ReduceSum"}


@dataclass(frozen=True)
class PackingReport:
    packed_nodes: int  # operations now on the real tokens only
    unpacked: int  # tensors given back their [inputs, positions, ...] form (attention inputs, outputs)

    def __str__(self) -> str:
        return f"{self.packed_nodes} operations on packed tokens, {self.unpacked} tensors unpacked"


class _Packer:
    def __init__(self, model: onnx.ModelProto, ids: str, mask: str):
        self.model, self.ids, self.mask = model, ids, mask
        graph = model.graph
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
        self.rank: dict[str, int] = {}
        for value in [*inferred.value_info, *inferred.input, *inferred.output]:
            if value.type.tensor_type.HasField("shape"):
                self.rank[value.name] = len(value.type.tensor_type.shape.dim)
        self.initializers = {t.name: t for t in graph.initializer}
        for t in graph.initializer:
            self.rank[t.name] = len(t.dims)
        self.constants = {node.output[0]: node for node in graph.node if node.op_type == "Constant"}
        self.producer = {output: node for node in graph.node for output in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self.packed: dict[str, str] = {}  # tensor -> its packed rows
        self.unpacked: set[str] = set()  # tensors whose unpacking has been emitted
        self.nodes: list[onnx.NodeProto] = []
        self.packed_nodes = self.unpack_count = 0

    # -- what a tensor is ----------------------------------------------------------------------------------
    def _constant_value(self, name: str):
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.constants.get(name)
        value = node is not None and _attribute(node, "value")
        return numpy_helper.to_array(value) if value else None

    def _broadcast_operand(self, name: str) -> bool:
        """A scalar or a vector: it broadcasts over the last axis of packed rows as of the unpacked tensor."""
        return name == "" or self.rank.get(name, 99) <= 1

    def _weight(self, name: str) -> bool:
        return name in self.initializers and len(self.initializers[name].dims) == 2

    def _from_ids(self, name: str) -> bool:
        """`name` is input_ids, or a Reshape/Cast/Identity of it keeping its rows x positions."""
        while name != self.ids:
            node = self.producer.get(name)
            if node is None or node.op_type not in ("Reshape", "Cast", "Identity"):
                return False
            if node.op_type == "Reshape" and self.rank.get(node.output[0]) != 2:
                return False
            name = node.input[0]
        return True

    # -- the index tensors ---------------------------------------------------------------------------------
    def _add(self, op: str, inputs: list[str], name: str, **attributes) -> str:
        out = _PREFIX + name
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attributes))
        return out

    def _const(self, name: str, values: list[int]) -> str:
        out = _PREFIX + "const/" + name
        if any(node.name == out for node in self.nodes):
            return out
        self.nodes.append(helper.make_node("Constant", [], [out], name=out,
                                           value=helper.make_tensor(out, TensorProto.INT64, [len(values)], values)))
        return out

    def _indices(self) -> None:
        """rows: int64[tokens], the flat positions of the real tokens (position 0 always among them, so that
        an all-padding batch still has one row); place: int64[inputs x positions], each position's row."""
        flat = self._add("Reshape", [self.mask, self._const("flat", [-1])], "flat_mask")
        real = self._add("Cast", [flat], "real", to=TensorProto.BOOL)
        positions = self._add("Shape", [flat], "positions")
        zero, one = self._const("zero", [0]), self._const("one", [1])
        count, zero_scalar = self._add("Squeeze", [positions], "count"), self._add("Squeeze", [zero], "zero_scalar")
        index = self._add("Range", [zero_scalar, count, self._add("Squeeze", [one], "one_scalar")], "index")
        first = self._add("Equal", [index, zero], "first")
        kept = self._add("Or", [real, first], "kept")
        self.rows = self._add("Reshape", [self._add("NonZero", [kept], "nonzero"), self._const("rows_shape", [-1])],
                              "rows")
        counted = self._add("CumSum", [self._add("Cast", [kept], "kept_int", to=TensorProto.INT64), zero_scalar],
                            "counted")
        self.place = self._add("Max", [self._add("Sub", [counted, one], "counted_less_one"), zero], "place")
        self.batch_shape = self._add("Shape", [self.mask], "batch_shape")

    # -- packing and unpacking -----------------------------------------------------------------------------
    def _pack(self, name: str) -> str:
        """Packed rows of a [inputs, positions, features] tensor that is not packed yet."""
        if name not in self.packed:
            flat = self._add("Flatten", [name], f"flatten/{name}", axis=2)
            self.packed[name] = self._add("Gather", [flat, self.rows], f"pack/{name}", axis=0)
            self.unpacked.add(name)  # it exists in its own form
        return self.packed[name]

    def _unpack(self, name: str) -> None:
        """Emit `name` in its own form, from its packed rows."""
        if name in self.unpacked or name not in self.packed:
            return
        rows = self._add("Gather", [self.packed[name], self.place], f"unpack/{name}", axis=0)
        shape = self._unpacked_shape(name, _PREFIX + f"shape/{name}")
        self.nodes.append(helper.make_node("Reshape", [rows, shape], [name], name=_PREFIX + f"reshape/{name}"))
        self.unpacked.add(name)
        self.unpack_count += 1

    def _unpacked_shape(self, name: str, out: str) -> str:
        """Emit `out` = the shape `name` has unpacked: [inputs, positions] + its packed rows' shape past the first axis."""
        tail = _PREFIX + f"tail/{out}"
        self.nodes += _dims(self.packed[name], 1, self.rank.get(name, 3) - 1, tail, self.opset)
        self.nodes.append(helper.make_node("Concat", [self.batch_shape, tail], [out], axis=0, name=_PREFIX + out))
        return out

    def _packed_clone(self, node: onnx.NodeProto, inputs: list[str], packed_outputs: list[int]) -> None:
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        del clone.input[:]
        clone.input.extend(inputs)
        for index in packed_outputs:
            self.packed[node.output[index]] = clone.output[index] = _PREFIX + "rows/" + node.output[index]
        clone.name = _PREFIX + (node.name or node.output[0])
        self.nodes.append(clone)
        self.packed_nodes += 1

    # -- the rewrite of one node ---------------------------------------------------------------------------
    def _rewrite(self, node: onnx.NodeProto) -> bool:
        """Emit `node` on packed rows when it works token by token; False to emit it as it is."""
        op, inputs = node.op_type, list(node.input)
        if node.domain not in ("", "ai.onnx"):
            return False
        if op == "Gather" and len(inputs) == 2 and self._weight(inputs[0]) and _attribute(node, "axis") in (0, None) \
                and self._from_ids(inputs[1]):  # the embedding lookup
            if self.ids not in self.packed:
                flat_ids = self._add("Reshape", [self.ids, self._const("flat_ids", [-1])], "flat_ids")
                self.packed[self.ids] = self._add("Gather", [flat_ids, self.rows], "ids", axis=0)
            self._packed_clone(node, [inputs[0], self.packed[self.ids]], [0])
            return True
        if op in _WEIGHT_MATMULS and self._weight(inputs[1]) and all(map(self._broadcast_operand, inputs[2:])):
            if inputs[0] in self.packed or self.rank.get(inputs[0]) == 3:
                self._packed_clone(node, [self._pack(inputs[0]), *inputs[1:]], [0])
                return True
            return False
        if op == "DynamicQuantizeLinear":
            users = self.consumers.get(node.output[0], [])
            feeds_weights = users and all(u.op_type == "MatMulInteger" and self._weight(u.input[1]) for u in users)
            if inputs[0] in self.packed or (feeds_weights and self.rank.get(inputs[0]) == 3):
                self._packed_clone(node, [self._pack(inputs[0])], [0])
                return True
            return False
        if op in _LAST_AXIS_REDUCTIONS and inputs and inputs[0] in self.packed:
            rank = self.rank.get(node.output[0])
            axes = self._constant_value(inputs[1]) if len(inputs) > 1 else _attribute(node, "axes")
            if rank is None or axes is None or _attribute(node, "keepdims") == 0 or \
                    [int(a) % rank for a in list(getattr(axes, "flat", axes))] != [rank - 1]:
                return False
            clone = onnx.NodeProto()  # the same reduction over axis -1 of the packed rows
            clone.CopyFrom(node)
            if len(inputs) > 1:  # axes as an input (ReduceMean from opset 18, ReduceSum from 13)
                self._packed_clone(clone, [self.packed[inputs[0]], self._const("last_axis", [-1])], [0])
            else:
                del clone.attribute[:]
                clone.attribute.extend([*(a for a in node.attribute if a.name != "axes"),
                                        helper.make_attribute("axes", [-1])])
                self._packed_clone(clone, [self.packed[inputs[0]]], [0])
            return True
        if op in _ELEMENTWISE and any(name in self.packed for name in inputs):
            rewritten = []
            for name in inputs:
                if name in self.packed or self._broadcast_operand(name):
                    rewritten.append(self.packed.get(name, name))
                elif self.rank.get(name) == 3 == self.rank.get(node.output[0]) and name not in self.initializers \
                        and name not in self.constants:  # computed [inputs, positions, d]: a residual not packed yet
                    rewritten.append(self._pack(name))
                else:
                    return False
            self._packed_clone(node, rewritten, [0])
            return True
        if op == "Shape" and inputs[0] in self.packed and inputs[0] not in self.unpacked and not node.attribute:
            self._unpacked_shape(inputs[0], node.output[0])
            return True
        return False

    def run(self) -> PackingReport:
        graph = self.model.graph
        self._indices()
        for node in graph.node:
            if not self._rewrite(node):
                for name in node.input:
                    self._unpack(name)
                self.nodes.append(node)
        for value in graph.output:
            self._unpack(value.name)
        del graph.node[:]
        graph.node.extend(self.nodes)
        _without_dead_nodes(graph)
        return PackingReport(self.packed_nodes, self.unpack_count)


def pack_encoder_tokens(model: onnx.ModelProto, ids: str = "input_ids", mask: str = "attention_mask") -> PackingReport:
    """Rewrite `model` (an Optimum T5 encoder, float32 or int8) in place; see the module's docstring."""
    names = {value.name for value in model.graph.input}
    if ids not in names or mask not in names:
        return PackingReport(0, 0)
    return _Packer(model, ids, mask).run()


def pack_encoder_tokens_file(path: Path) -> PackingReport:
    """`pack_encoder_tokens` on a graph file, rewritten in place (its external weights are not touched)."""
    model = onnx.load(str(path), load_external_data=False)
    report = pack_encoder_tokens(model)
    if report.packed_nodes:
        onnx.save(model, str(path))
    return report
