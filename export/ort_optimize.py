"""CPU graphs saved as ONNX Runtime optimizes them, so that a load does not optimize them again.

ONNX Runtime rewrites every graph it loads (`GraphOptimizationLevel`): constant folding, then fusions into its
CPU contrib ops (FusedMatMul, SkipSimplifiedLayerNormalization, DynamicQuantizeMatMul...), then, at the last
level, layout changes for the machine it runs on. The first two levels give the same graph on any CPU and are
what ONNX Runtime's docs allow to be saved ahead of time ("offline"); the layout level is hardware-specific, so
the export saves the graph after the extended level and the runner still asks for every level: the
layout passes run at load, over a graph that has nothing else left to fuse.

Measured on t5-small (2 cores, `python -m benchmarks.load_time`): building the encoder and the with-past
decoder sessions side by side took 0.125-0.141 s from the graphs as the passes wrote them against 0.096-0.102 s
from the saved ones (int8, where the fusions of the quantized MatMuls dominate), and 0.213-0.239 against
0.178-0.208 s (float32, where prepacking the weights dominates, which no saved graph avoids).

The saved graph computes what the runner computed before: the same fusions, made once. ONNX Runtime writes
every attribute of the operators it creates, defaults included, and an older onnxruntime refuses an attribute
it does not know (1.22 refused GroupQueryAttention's `k_quant_type`, which 1.32 wrote as its default "NONE"):
attributes equal to their schema's default are left out again, so the graph runs on the onnxruntime versions
that know its operators. The manifest records the version that optimized it (`export_options.ort_optimized`),
which a load names when a graph cannot be read.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

# initializers this large or larger go to the external data file (`save_with_weights_outside`)
_EXTERNAL_MIN_BYTES = 1024


def optimized_by() -> dict:
    """What the manifest records of the optimization (export_options["ort_optimized"], with "graphs")."""
    return {"onnxruntime": ort.__version__, "level": "extended"}


def save_ort_optimized(graph_file: Path) -> str:
    """Replace `graph_file` (and its weights, when they are outside: then in `<name>.data`) with the graph ONNX
    Runtime's CPU provider builds at the extended optimization level; returns what changed, e.g. "412 -> 187
    nodes" (nodes of subgraphs, such as a merged decoder's branches, included)."""
    before = onnx.load(str(graph_file), load_external_data=False)
    old_data = {entry.value for tensor in before.graph.initializer for entry in tensor.external_data
                if entry.key == "location"}
    nodes_before = _count_nodes(before.graph)
    del before
    data_name = graph_file.name + ".data"
    with tempfile.TemporaryDirectory(prefix=".ort-optimized-", dir=graph_file.parent) as work:
        optimized = Path(work) / graph_file.name
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        if old_data:  # outside again, in `<graph>.data` beside the graph
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", data_name)
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             str(_EXTERNAL_MIN_BYTES))
        # the saved graph holds the weights as they are: packing them for this session would only cost time
        options.add_session_config_entry("session.disable_prepacking", "1")
        ort.InferenceSession(str(graph_file), options, providers=["CPUExecutionProvider"])
        model = onnx.load(str(optimized), load_external_data=False)
        drop_default_attributes(model)
        onnx.save(model, str(optimized))
        nodes_after = _count_nodes(model.graph)
        replace_graph_files(graph_file, optimized, old_data)
    return f"{nodes_before} -> {nodes_after} nodes"


def replace_graph_files(graph_file: Path, written: Path, old_data: set[str]) -> None:
    """Put `written` (and its `<name>.data`, when the graph keeps weights outside: `old_data`, the locations the
    former graph read) in place of `graph_file`; then the former weights file, when it had another name (Optimum's
    `<graph>_data` for graphs over 2 GB, named after the graph), goes."""
    data_name = graph_file.name + ".data"
    if old_data:
        shutil.move(str(written) + ".data", str(graph_file.parent / data_name))
    shutil.move(str(written), str(graph_file))
    for name in old_data - {data_name}:
        if Path(name).name == name and name.startswith(graph_file.name):
            (graph_file.parent / name).unlink(missing_ok=True)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds in its attributes (If's branches, Loop's and Scan's bodies)."""
    return [graph for attribute in node.attribute
            for graph in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs))]


def nodes_at_every_depth(graph: onnx.GraphProto):
    """The graph's nodes and, after each, the nodes of the graphs it holds, at every depth."""
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from nodes_at_every_depth(sub)


def _count_nodes(graph: onnx.GraphProto) -> int:
    return sum(1 for _ in nodes_at_every_depth(graph))


def save_with_weights_outside(model: onnx.ModelProto, graph_file: Path) -> None:
    """Save `model` as `graph_file`, its weights of `_EXTERNAL_MIN_BYTES` or more in `<graph file>.data` beside it
    (onnx appends to that file: it must not exist yet)."""
    onnx.save(model, str(graph_file), save_as_external_data=True, all_tensors_to_one_file=True,
              location=graph_file.name + ".data", size_threshold=_EXTERNAL_MIN_BYTES)


def _schemas() -> dict[tuple[str, str], list]:
    """(domain, operator) -> ONNX Runtime's schemas of the operators that are ONNX Runtime's own (contrib ops,
    also those it registers in the ONNX domain, such as SimplifiedLayerNormalization), every version."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    schemas: dict[tuple[str, str], list] = {}
    for schema in ort_c.get_all_operator_schema():
        if schema.domain in ("", "ai.onnx") and onnx.defs.has(schema.name):
            continue  # a standard operator: its attributes are fixed by the opset, every onnxruntime knows them
        schemas.setdefault((schema.domain or "ai.onnx", schema.name), []).append(schema)
    return schemas


def drop_default_attributes(model: onnx.ModelProto) -> int:
    """Remove from every node of ONNX Runtime's own operators, subgraphs included, the attributes whose value is
    their schema's default (for the graph's opset of that domain); returns how many. A newer onnxruntime adds an
    attribute with the default that keeps the operator's former behaviour, so an older one reads the graph as
    the newer one does."""
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    schemas = _schemas()

    def drop(graph: onnx.GraphProto) -> int:
        dropped = 0
        for node in graph.node:
            for sub in _subgraphs(node):
                dropped += drop(sub)
            domain = node.domain or "ai.onnx"
            versions = [s for s in schemas.get((domain, node.op_type), [])
                        if s.since_version <= opsets.get(domain, 1)]
            if not versions:
                continue
            schema = max(versions, key=lambda s: s.since_version)
            kept = []
            for attribute in node.attribute:
                spec = schema.attributes.get(attribute.name)
                default = onnx.AttributeProto.FromString(spec._default_value) if spec is not None else None
                if default is not None and default.type == attribute.type and \
                        onnx.helper.get_attribute_value(default) == onnx.helper.get_attribute_value(attribute):
                    dropped += 1
                else:
                    kept.append(attribute)
            if len(kept) < len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(kept)
        return dropped

    return drop(model.graph)
