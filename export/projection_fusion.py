"""One GEMM for the projections that read the same activations, in CPU graphs (CTranslate2 fuses them too).

Optimum's T5 graphs project one tensor with several weights, one MatMul each: every self-attention block's
query, key and value read the same normed hidden states, and the with-past encoder's cross-attention cache
(export/cross_cache.py) projects the last hidden state with a key and a value weight per decoder layer. This
pass gives each such group one MatMul over its weights side by side ([in, out_1 + out_2 + ...]) and a Split
on the last axis into the tensors the group made, under their names:

- float MatMuls with a constant 2-D right-hand side. int8 graphs keep their quantized projections apart
  (`MatMulInteger`, which ONNX Runtime fuses into `DynamicQuantizeMatMul`/`MatMulIntegerToFloat`): fused on
  the saved graph, with each weight's scale given per column, their outputs were bit-identical but the
  t5-small int8 generations took 1.00-1.08x as long (greedy, batch 1, 8 and 32, in turns), where float32's
  took 0.89-0.97x;
- where a group is exactly a `GroupQueryAttention`'s query, key and value (export/cache_in_place.py), the
  attention takes the packed projection as its query input, ONNX Runtime's packed-QKV form, and no Split is
  needed; `Shape` nodes that read only the leading axes of the key read the packed tensor instead.

Every output column is computed over the same inputs in the same order as before, so the graph's outputs are
bit-identical; fewer, wider GEMMs (per t5-small decoder step 18 projections become 6, and the encoder's 12
cross-cache projections one) cost fewer kernel launches and split better over the threads.

It runs after the attention fusion and before ONNX Runtime's optimization is saved (export/ort_optimize.py),
which leaves the wide MatMul, the Split and the packed attention as they are. Nodes inside subgraphs (the
merged decoder's branches) are left as they are.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from .ort_optimize import _subgraphs, nodes_at_every_depth, replace_graph_files, save_with_weights_outside

_PREFIX = "projection_fusion/"


@dataclass(frozen=True)
class ProjectionReport:
    groups: int  # projections fused: one GEMM each
    projections: int  # the MatMuls they replace
    packed_attention: int  # groups given to GroupQueryAttention as its packed query, key and value

    def __str__(self) -> str:
        text = f"{self.projections} projections fused into {self.groups} GEMMs"
        return text + (f", {self.packed_attention} of them GroupQueryAttention's packed query, key and value"
                       if self.packed_attention else "")


def fuse_projections(model: onnx.ModelProto) -> ProjectionReport:
    """Rewrite `model`'s top graph in place (its initializers must hold their data)."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # Split takes its widths as an input from opset 13
        return ProjectionReport(0, 0, 0)
    boundary = {value.name for value in [*graph.input, *graph.output]}
    # constant weights only: an initializer that is also a graph input can be fed, one that is an output is read
    weights = {tensor.name: tensor for tensor in graph.initializer if tensor.name not in boundary}
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    # tensors the packed attention would no longer produce must have no reader but the graph's own nodes
    outside_readers = {o.name for o in graph.output} | {
        name for node in graph.node for sub in _subgraphs(node) for inner in nodes_at_every_depth(sub)
        for name in inner.input}
    taken = {tensor.name for tensor in graph.initializer} | {name for node in nodes_at_every_depth(graph)
                                                             for name in [*node.input, *node.output, node.name]}
    names = (f"{_PREFIX}{n}" for n in itertools.count() if not any(t.startswith(f"{_PREFIX}{n}/") or
                                                                    t == f"{_PREFIX}{n}" for t in taken))
    groups = defaultdict(list)  # input -> indices of the MatMuls that project it
    for index, node in enumerate(graph.node):
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.input[1] in weights \
                and len(weights[node.input[1]].dims) == 2:
            groups[node.input[0]].append(index)
    replaced, added_at, packed, fused_groups, fused_nodes = set(), {}, 0, 0, 0
    for indices in groups.values():
        nodes = [graph.node[i] for i in indices]
        if len(nodes) < 2 or len({weights[n.input[1]].data_type for n in nodes}) != 1:
            continue
        attention = _attention_fed_by(nodes, consumers, outside_readers)
        if attention is not None:  # the query, key and value in GroupQueryAttention's order
            nodes.sort(key=lambda n: list(attention.input[:3]).index(n.output[0]))
        new = _fused_nodes(nodes, next(names), weights, graph, attention, consumers)
        packed += attention is not None
        fused_groups += 1
        fused_nodes += len(nodes)
        replaced |= {id(n) for n in nodes}
        added_at[min(indices)] = new
    if not fused_groups:
        return ProjectionReport(0, 0, 0)
    kept = []
    for index, node in enumerate(graph.node):
        kept += added_at.get(index, [])
        if id(node) not in replaced:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in nodes_at_every_depth(graph) for name in node.input}  # branches read the top's too
    used |= boundary
    unused = [tensor for tensor in graph.initializer if tensor.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return ProjectionReport(fused_groups, fused_nodes, packed)


def fuse_projections_file(path: Path) -> ProjectionReport:
    """`fuse_projections` on a graph file, rewritten in place; weights kept outside stay outside, in
    `<graph>.data` (`ort_optimize.replace_graph_files`)."""
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}
    load_external_data_for_model(model, str(path.parent))
    report = fuse_projections(model)
    if not report.groups:
        return report
    with tempfile.TemporaryDirectory(prefix=".projection-fusion-", dir=path.parent) as work:
        written = Path(work) / path.name
        if locations:
            save_with_weights_outside(model, written)
            shutil.copymode(path, str(written) + ".data")  # onnx makes it readable by its owner only
        else:
            onnx.save(model, str(written))
        shutil.copymode(path, written)
        replace_graph_files(path, written, locations)
    return report


def _attention_fed_by(nodes: list, consumers: dict, outside_readers: set[str]) -> onnx.NodeProto | None:
    """The GroupQueryAttention whose query, key and value are exactly these projections' outputs, when every
    other reader of them is a Shape of the leading two axes (the packed tensor has the same ones), and none is
    a graph output or read inside a subgraph."""
    outputs = {n.output[0] for n in nodes}
    if outputs & outside_readers:
        return None
    attention = [c for n in nodes for c in consumers[n.output[0]] if c.op_type == "GroupQueryAttention"]
    if len(nodes) != 3 or not attention or any(a is not attention[0] for a in attention):
        return None
    attention = attention[0]
    if set(attention.input[:3]) != outputs or attention.input[:3] != list(dict.fromkeys(attention.input[:3])):
        return None
    for node in nodes:
        for reader in consumers[node.output[0]]:
            if reader is attention:
                continue
            axes = {a.name: a.i for a in reader.attribute}
            if reader.op_type != "Shape" or not (0 <= axes.get("start", 0) and 0 < axes.get("end", 99) <= 2):
                return None
    return attention


def _fused_nodes(nodes: list, name: str, weights: dict, graph: onnx.GraphProto,
                 attention: onnx.NodeProto | None, consumers: dict) -> list[onnx.NodeProto]:
    parts = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
    widths = [part.shape[1] for part in parts]

    def constant(suffix: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), f"{name}/{suffix}"))
        return f"{name}/{suffix}"

    projected = f"{name}/projected"
    gemm = helper.make_node("MatMul", [nodes[0].input[0], constant("weight", np.concatenate(parts, axis=1))],
                            [projected], name=name)
    if attention is not None:  # GroupQueryAttention's packed form: the query input holds q, k and v
        for node in nodes:
            for reader in consumers[node.output[0]]:
                if reader is not attention:
                    reader.input[0] = projected
        attention.input[0], attention.input[1], attention.input[2] = projected, "", ""
        return [gemm]
    split = helper.make_node("Split", [projected, constant("widths", np.array(widths, np.int64))],
                             [n.output[0] for n in nodes], name=f"{name}/split", axis=-1)
    return [gemm, split]
