"""The encoder computes the cross-attention cache: the pass behind the with-past layout.

Optimum's first-step decoder computes each layer's cross-attention keys and values from the encoder output
(`present.{i}.encoder.key/value`, MatMul -> Reshape -> Transpose). This pass copies those projections into
the encoder graph as extra outputs, so the encoder returns the cross cache itself (ONNX Runtime's T5 beam
search does the same with its "encoder-decoder init" graph). The with-past decoder then serves every step,
the first one with an empty self cache, and the first-step decoder, a second copy of the decoder weights,
is not shipped: on t5-small that is 232 of 594 MB of graphs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ortdecode import manifest as mf

from .ort_optimize import save_with_weights_outside


class CrossCacheError(ValueError):
    """The first-step decoder's cross-attention projections do not have the expected form."""


def _projection_weight(name: str, producer: dict, initializers: dict, hidden: str) -> onnx.TensorProto:
    """The weight of the MatMul that `name` (a present cross key/value) is reshaped and transposed from."""
    node, chain = producer.get(name), []
    while node is not None and node.op_type != "MatMul":
        chain.append(node)
        node = producer.get(node.input[0])
    ops = [n.op_type for n in chain]
    perm = next((list(a.ints) for a in chain[0].attribute if a.name == "perm"), None) if chain else None
    if node is None or ops != ["Transpose", "Reshape"] or perm != [0, 2, 1, 3] or node.input[0] != hidden \
            or node.input[1] not in initializers:
        raise CrossCacheError(f"{name} is not MatMul({hidden}, weight) -> Reshape -> Transpose(0, 2, 1, 3) in the "
                              f"first-step decoder (found {' <- '.join(ops) or 'no'} ops before a MatMul)")
    return initializers[node.input[1]]


def add_cross_cache_outputs(encoder_file: Path, decoder_file: Path, layers: list[mf.LayerCacheNames],
                            num_heads: int, d_kv: int, encoder_output: str = "last_hidden_state",
                            decoder_hidden_input: str = "encoder_hidden_states") -> None:
    """Rewrite `encoder_file` in place: it also outputs every layer's cross-attention key and value,
    [batch, num_heads, source_len, d_kv], under the first-step decoder's `present` names, computed with
    that decoder's weights (read from `decoder_file`)."""
    decoder = onnx.load(str(decoder_file))
    producer = {output: node for node in decoder.graph.node for output in node.output}
    initializers = {tensor.name: tensor for tensor in decoder.graph.initializer}
    encoder = onnx.load(str(encoder_file))
    graph = encoder.graph
    shape_name = "cross_cache/heads_shape"
    # a Constant node, not an initializer: ONNX Runtime infers the Reshape's shape only from data inside the graph
    graph.node.append(helper.make_node("Constant", [], [shape_name], value=numpy_helper.from_array(
        np.array([0, 0, num_heads, d_kv], np.int64))))
    outputs = {output.name: output for output in decoder.graph.output}
    for layer in layers:
        for name in (layer.present_cross_key, layer.present_cross_value):
            if name not in outputs:
                raise CrossCacheError(f"the first-step decoder has no output {name}")
            weight = onnx.TensorProto()
            weight.CopyFrom(_projection_weight(name, producer, initializers, decoder_hidden_input))
            weight.name = f"cross_cache/{name}/weight"
            graph.initializer.append(weight)
            projected, split = f"cross_cache/{name}/projected", f"cross_cache/{name}/heads"
            graph.node.extend([helper.make_node("MatMul", [encoder_output, weight.name], [projected]),
                               helper.make_node("Reshape", [projected, shape_name], [split]),  # [b, s, heads, d_kv]
                               helper.make_node("Transpose", [split], [name], perm=[0, 2, 1, 3])])
            graph.output.append(outputs[name])
    onnx.checker.check_model(encoder)
    onnx.save(encoder, str(encoder_file))


def store_weights_externally(graph_file: Path) -> None:
    """Move a graph's weights into `<graph file>.data` beside it. ONNX Runtime maps external data into memory
    instead of copying it out of the protobuf: weights it prepacks are read once from the mapping and released
    with it, and the embedding rows a Gather never reads are never loaded. Graphs that already keep their
    weights outside (Optimum's > 2 GB graphs) are left as they are."""
    model = onnx.load(str(graph_file), load_external_data=False)  # weights inside the file are read all the same
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return
    save_with_weights_outside(model, graph_file)
