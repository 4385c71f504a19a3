"""The cache-reorder graph: one Gather over the batch axis for every self-attention KV tensor.

Beam search keeps, duplicates or drops cache rows after each step. Running that as an ONNX graph lets
ONNX Runtime do it on the device that holds the cache (the GPU on CUDA), in one call for all layers.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from ortdecode.manifest import LayerCacheNames

_ELEMENT_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def reorder_names(layer: int) -> dict[str, str]:
    """Input and output names of one layer's key and value in the reorder graph."""
    return {"reorder_in_key": f"self.{layer}.key", "reorder_in_value": f"self.{layer}.value",
            "reorder_out_key": f"reordered.{layer}.key", "reorder_out_value": f"reordered.{layer}.value"}


def build_cache_reorder_graph(layers: list[LayerCacheNames], num_heads: int, d_kv: int, dtype: str,
                              indices_name: str, opset: int = 17) -> onnx.ModelProto:
    element = _ELEMENT_TYPES[dtype]
    kv_shape = ["rows", num_heads, "past_length", d_kv]
    out_shape = ["kept_rows", num_heads, "past_length", d_kv]
    inputs = [helper.make_tensor_value_info(indices_name, TensorProto.INT64, ["kept_rows"])]
    outputs, nodes = [], []
    for layer in layers:
        for source, target in ((layer.reorder_in_key, layer.reorder_out_key),
                               (layer.reorder_in_value, layer.reorder_out_value)):
            inputs.append(helper.make_tensor_value_info(source, element, kv_shape))
            outputs.append(helper.make_tensor_value_info(target, element, out_shape))
            nodes.append(helper.make_node("Gather", [source, indices_name], [target], axis=0,
                                          name=f"gather_{target}"))
    graph = helper.make_graph(nodes, "ortdecode_cache_reorder", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="ortdecode")
    model.ir_version = min(model.ir_version, 9)  # readable by older ONNX Runtime releases too
    onnx.checker.check_model(model)
    return model


def write_cache_reorder_graph(path: Path, **kwargs) -> Path:
    onnx.save(build_cache_reorder_graph(**kwargs), str(path))
    return path
