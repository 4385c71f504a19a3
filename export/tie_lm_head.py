"""Export pass: the LM head reads the shared embedding instead of its own transposed copy.

T5 ties its LM head to the shared embedding, but Optimum's decoder graphs hold both: `shared.weight`
[vocab, d_model] for the Gather and a transposed copy [d_model, vocab] for the LM head's MatMul, 63 MiB each
for t5-small. This pass replaces that MatMul with com.microsoft FusedMatMul(x, shared.weight, transB=1)
and drops the copy, so a graph holds the embedding once (and, with ortdecode.sessions, a runner holds it
once for all its graphs). Only a MatMul whose constant B equals the transpose of a Gather's constant
table is rewritten; float32 graphs only (int8 exports quantize the LM head to a quarter of the size).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _graphs(graph: onnx.GraphProto):
    """The graph and every subgraph (the merged decoder's If branches)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)


def tie_lm_head(source: Path, target: Path) -> int:
    """Rewrite `source` into `target` (`source` is consumed); return how many MatMuls now read the
    embedding (0: nothing tied, `source` moved to `target` as it was)."""
    model = onnx.load(str(source), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        shutil.move(str(source), str(target))  # > 2 GB graphs keep their layout: the rewrite would inline it
        return 0
    initializers = {t.name: t for t in model.graph.initializer}
    tables = {node.input[0] for g in _graphs(model.graph) for node in g.node
              if node.op_type == "Gather" and node.input[0] in initializers}
    transposed = {}
    for name in tables:
        table = initializers[name]
        if table.data_type == onnx.TensorProto.FLOAT and len(table.dims) == 2:
            transposed[(table.dims[1], table.dims[0])] = (name, numpy_helper.to_array(table))
    rewrites = []
    for graph in _graphs(model.graph):
        for index, node in enumerate(graph.node):
            weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
            match = transposed.get(tuple(weight.dims)) if weight is not None else None
            if match is not None and np.array_equal(numpy_helper.to_array(weight), match[1].T):
                rewrites.append((graph, index, node, match[0], weight.name))
    if not rewrites:
        shutil.move(str(source), str(target))
        return 0
    for graph, index, node, table, _ in rewrites:
        fused = helper.make_node("FusedMatMul", [node.input[0], table], list(node.output), name=node.name,
                                 domain="com.microsoft", transA=0, transB=1, alpha=1.0)
        graph.node.remove(node)
        graph.node.insert(index, fused)
    dropped = {weight for *_, weight in rewrites}
    tied = len(rewrites)
    still_used = {i for g in _graphs(model.graph) for node in g.node for i in node.input}
    for name in dropped - still_used:
        model.graph.initializer.remove(initializers[name])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(target))
    return tied
