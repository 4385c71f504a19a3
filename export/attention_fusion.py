"""Fused attention for the CPU with-past decoder: each T5 attention block becomes one MultiHeadAttention.

Optimum's decoder computes attention op by op. Per self-attention block: the q, k and v projections, a
Reshape and a Transpose each (with the Shape/Gather/Unsqueeze/Concat chains that build their shapes), two
Concats appending the new key and value to the cache, the transposed key, the score MatMul, the bias Add,
Softmax, the MatMul with the values, and a Transpose and Reshape back; a cross-attention block has the same
without k and v. ONNX Runtime's own T5 fusion (`onnxruntime.transformers.optimizer`) does not match these
graphs (it fuses the layer norms and emits `RelativePositionBias`, which has no CPU kernel).

This pass replaces each block, from the projections' outputs to the merged heads, with one
`com.microsoft.MultiHeadAttention` node, which has a CPU kernel:

- self-attention: MHA(q, k, v, attention_bias, past_key, past_value) -> (output, present_key, present_value),
  the presents under Optimum's names, so the graph's inputs and outputs do not change;
- cross-attention: MHA(q, cached cross key, cached cross value) with the keys and values given as
  [rows, heads, source, d_kv], as the cache holds them.

`attention_bias` is the tensor the block added to its scores: for self-attention the relative position bias
plus the decoder attention mask (computed once per step in the graph, in layer 0, and shared by every layer),
for cross-attention the encoder mask (broadcast to [1, heads, new, source]). So left-padded rows (continuous
batching) stay masked exactly as before. `scale` is 1: T5 does not scale its scores. A block that does not
have this form is left as it is; should the rewritten graph not order (a form of cache read this pass does not
know), none is fused.

Measured on t5-small's shape (`python -m benchmarks.attention_fusion`, benchmarks/results/attention-fusion.md:
2 cores, the with-past decoder alone, this fused graph against Optimum's, in turns): outputs bit-identical; a
step takes 0.91-1.00 of the unfused step's time at 1-128 rows, float32 and int8. The encoder is
not fused: the same rewrite of its self-attention measured no faster (batch 1 and 32 x 40 tokens even, batch 8
slower), MultiHeadAttention's CPU kernel gaining nothing over MLAS GEMMs at encoder lengths.

The pass runs after int8 quantization (the quantizer cannot type a contrib op's outputs); the attention
MatMuls it replaces are float in int8 graphs too (`quantize.py`), so the same blocks match.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

MHA_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class FusionReport:
    fused: int  # attention blocks replaced
    blocks: int  # Softmax nodes in the graph (one per attention block)
    in_place: int = 0  # self-attention blocks that update their cache in place (`cache_in_place`)

    def __str__(self) -> str:
        fused = f"{self.fused} of {self.blocks} attention blocks fused into com.microsoft.MultiHeadAttention"
        if self.in_place:
            fused += f", {self.in_place} self-attention blocks of them updating their cache in place " \
                     "(com.microsoft.GroupQueryAttention)"
        return fused


class _Graph:
    """Producer and consumer lookups over a graph's nodes."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {output: node for node in graph.node for output in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.inputs = {value.name for value in graph.input}

    def made_by(self, name: str, op_type: str, perm: list[int] | None = None) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        if node is None or node.op_type != op_type:
            return None
        if perm is not None and _attribute(node, "perm") != perm:
            return None
        return node

    def only_consumer(self, name: str, op_type: str, perm: list[int] | None = None) -> onnx.NodeProto | None:
        nodes = self.consumers.get(name, [])
        if len(nodes) != 1 or nodes[0].op_type != op_type:
            return None
        if perm is not None and _attribute(nodes[0], "perm") != perm:
            return None
        return nodes[0]

    def split_heads_input(self, name: str) -> str | None:
        """x when `name` is Transpose(0, 2, 1, 3)(Reshape(x)): [rows, length, heads * d_kv] -> BNSH."""
        transpose = self.made_by(name, "Transpose", [0, 2, 1, 3])
        reshape = transpose and self.made_by(transpose.input[0], "Reshape")
        return reshape.input[0] if reshape else None


def _attribute(node: onnx.NodeProto, name: str):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


@dataclass
class _Block:
    """One attention block as it is, and the MultiHeadAttention node that replaces it."""

    replaced: list[onnx.NodeProto]  # the nodes whose outputs the fused node now produces
    fused: onnx.NodeProto
    caches: list[tuple[str, str, str]]  # self-attention: (present, past, new projection) for key and value


def _match(g: _Graph, softmax: onnx.NodeProto, num_heads: int, index: int) -> _Block | None:
    """The block around `softmax`, or None when it does not have Optimum's T5 form."""
    if _attribute(softmax, "axis") not in (-1, 3, None):
        return None
    scores = softmax.input[0]
    cast = g.made_by(scores, "Cast")  # T5 computes the softmax in float32: a no-op Cast in float32 graphs
    if cast is not None:
        if _attribute(cast, "to") != TensorProto.FLOAT:
            return None
        scores = cast.input[0]
    add = g.made_by(scores, "Add")
    if add is None:
        return None
    product, bias = add.input
    qk = g.made_by(product, "MatMul")
    if qk is None:
        bias, product = add.input
        qk = g.made_by(product, "MatMul")
    if qk is None:
        return None
    query = g.split_heads_input(qk.input[0])
    weighted = g.only_consumer(softmax.output[0], "MatMul")
    merged = weighted and g.only_consumer(weighted.output[0], "Transpose", [0, 2, 1, 3])
    output = merged and g.only_consumer(merged.output[0], "Reshape")
    if query is None or output is None or weighted.input[0] != softmax.output[0]:
        return None
    key, value = qk.input[1], weighted.input[1]
    transposed_key = g.made_by(key, "Transpose", [0, 1, 3, 2])
    if transposed_key is None:
        return None
    key = transposed_key.input[0]
    attributes = {"num_heads": num_heads, "scale": 1.0}
    name = f"attention_fusion/MultiHeadAttention_{index}"
    if key in g.inputs and value in g.inputs:  # cross-attention over the cached [rows, heads, source, d_kv]
        fused = helper.make_node("MultiHeadAttention", [query, key, value, "", "", bias], [output.output[0]],
                                 name=name, domain=MHA_DOMAIN, **attributes)
        return _Block([output], fused, [])
    key_concat, value_concat = g.made_by(key, "Concat"), g.made_by(value, "Concat")
    if key_concat is None or value_concat is None:
        return None
    caches = []
    for concat in (key_concat, value_concat):
        if len(concat.input) != 2 or _attribute(concat, "axis") not in (2, -2) or concat.input[0] not in g.inputs:
            return None
        projection = g.split_heads_input(concat.input[1])
        if projection is None:
            return None
        caches.append((concat.output[0], concat.input[0], projection))
    (_, past_key, new_key), (_, past_value, new_value) = caches
    fused = helper.make_node("MultiHeadAttention", [query, new_key, new_value, "", "", bias, past_key, past_value],
                             [output.output[0], key, value], name=name, domain=MHA_DOMAIN, **attributes)
    return _Block([output, key_concat, value_concat], fused, caches)


def _cache_shape_nodes(g: _Graph, block: _Block, opset: int) -> tuple[list[onnx.NodeProto], set[str]]:
    """Shape(present) elsewhere in the graph (T5 reads the key length from layer 0's present key to build the
    position bias the fused node takes: a cycle once the fused node makes it) computed from what the block
    takes instead: [rows, heads, past + new, d_kv]. Returns the nodes and the Shape outputs they replace."""
    nodes, replaced = [], set()
    for present, past, projection in block.caches:
        for shape in g.consumers.get(present, []):
            if shape.op_type != "Shape" or shape.attribute:
                continue
            out = shape.output[0]
            nodes += [*_dims(past, 0, 2, f"{out}/rows_heads", opset), *_dims(past, 2, 3, f"{out}/past", opset),
                      *_dims(projection, 1, 2, f"{out}/new", opset),
                      helper.make_node("Add", [f"{out}/past", f"{out}/new"], [f"{out}/length"]),
                      *_dims(past, 3, 4, f"{out}/d_kv", opset),
                      helper.make_node("Concat", [f"{out}/rows_heads", f"{out}/length", f"{out}/d_kv"], [out],
                                       axis=0)]
            replaced.add(out)
    return nodes, replaced


def _dims(tensor: str, start: int, end: int, out: str, opset: int) -> list[onnx.NodeProto]:
    """Dimensions start..end of `tensor`'s shape: Shape's start/end attributes from opset 15, Shape + Slice before."""
    if opset >= 15:
        return [helper.make_node("Shape", [tensor], [out], start=start, end=end)]
    bounds = [helper.make_node("Constant", [], [f"{out}/{name}"], value=helper.make_tensor(name, TensorProto.INT64,
                                                                                            [1], [bound]))
              for name, bound in (("start", start), ("end", end))]
    return [helper.make_node("Shape", [tensor], [f"{out}/shape"]), *bounds,
            helper.make_node("Slice", [f"{out}/shape", f"{out}/start", f"{out}/end"], [out])]


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto] | None:
    """The nodes in an order where each comes after what it reads; None when they form a cycle."""
    available = {value.name for value in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered, pending = [], list(graph.node)
    while pending:
        waiting = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            return None
        pending = waiting
    return ordered


def _without_dead_nodes(graph: onnx.GraphProto) -> None:
    while True:
        used = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
        alive = [node for node in graph.node if any(name in used for name in node.output)]
        if len(alive) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(alive)


def fuse_attention(model: onnx.ModelProto, num_heads: int) -> FusionReport:
    """Rewrite `model` (a float32 with-past T5 decoder) in place; every block that matches is fused."""
    graph = model.graph
    g = _Graph(graph)
    softmaxes = [node for node in graph.node if node.op_type == "Softmax"]
    blocks = [block for index, softmax in enumerate(softmaxes)
              if (block := _match(g, softmax, num_heads, index)) is not None]
    if not blocks:
        return FusionReport(0, len(softmaxes))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    replaced_outputs, added = set(), []
    for block in blocks:
        shapes, shape_outputs = _cache_shape_nodes(g, block, opset)
        added += [block.fused, *shapes]
        replaced_outputs |= shape_outputs | {output for node in block.replaced for output in node.output}
    before = list(graph.node)
    kept = [node for node in before if not replaced_outputs & set(node.output)]
    del graph.node[:]
    graph.node.extend(kept + added)
    _without_dead_nodes(graph)
    ordered = _topological(graph)
    if ordered is None:  # a form this pass does not know: leave the graph as Optimum wrote it
        del graph.node[:]
        graph.node.extend(before)
        return FusionReport(0, len(softmaxes))
    del graph.node[:]
    graph.node.extend(ordered)
    if not any(opset.domain == MHA_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MHA_DOMAIN, 1))
    return FusionReport(len(blocks), len(softmaxes))


def fuse_attention_file(path: Path, num_heads: int, cache_in_place: bool = True) -> FusionReport:
    """`fuse_attention` on a graph file, then (`cache_in_place`) `cache_in_place.update_cache_in_place`;
    the file is rewritten in place (its external weights, if any, are not touched)."""
    from .cache_in_place import update_cache_in_place

    model = onnx.load(str(path), load_external_data=False)
    report = fuse_attention(model, num_heads)
    if report.fused == report.blocks and cache_in_place:  # every layer's cache then takes a buffer with room
        report = dataclasses.replace(report, in_place=update_cache_in_place(model))
    if report.fused:
        onnx.save(model, str(path))
    return report
