"""The with-past decoder's self-attention cache, updated in place: each fused self-attention block becomes
`com.microsoft.GroupQueryAttention`, which writes the step's key and value into the buffer it reads.

After `attention_fusion`, a self-attention block is MultiHeadAttention(q, k, v, bias, past_key, past_value)
-> (output, present_key, present_value): every step ONNX Runtime allocates the present tensors and copies the
whole past into them before appending one column, so a step reads and writes the whole cache once more than
attention needs. Measured on t5-small's shape (2 cores, the with-past decoder alone): at 32 rows and 150 cached
steps a step took 23.8-26.2 ms with that copy, 21.1-22.5 ms without it; int8 14.8-19.3 against 12.1-15.5 ms.

GroupQueryAttention (here with as many key/value heads as query heads: plain multi-head attention) has the
same inputs plus `seqlens_k` (int32[rows], tokens in each row's cache after this step, minus one) and
`total_sequence_length` (int32 scalar). When the caller binds ONE buffer [rows, heads, capacity, d_kv] as both
past and present, the operator writes the new column at position `seqlens_k` and attends over the first
`total_sequence_length` columns, whatever the capacity. Rows of a continuous batch keep the left-padded layout:
every row's cache has the same length, `past`, the decoder attention mask [rows, past + 1] masks the padding
through the attention bias as before, and both new inputs are computed in the graph from the mask's width:

- total_sequence_length = mask width, seqlens_k = mask width - 1 for every row;
- the graph's other reads of the past's shape (T5 builds its position bias from the past length) read
  [rows, heads, mask width - new tokens, d_kv] instead, which is the past's shape when the buffer is exact.

So the graph keeps its inputs and outputs: bound with exact-size pasts and presents it computes what it did
(ONNX Runtime then copies, as before); the manifest's `self_cache_in_place` tells the runner that it may bind
one buffer with room to spare instead. The pass needs the decoder attention mask; without it nothing changes.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .attention_fusion import MHA_DOMAIN, _attribute, _dims

_PREFIX = "cache_in_place"


def update_cache_in_place(model: onnx.ModelProto, mask: str = "attention_mask", tokens: str = "input_ids") -> int:
    """Rewrite `model` (a with-past decoder after `fuse_attention`) in place; returns how many self-attention
    blocks now update their cache in place: all of them, or 0 when the graph does not have the expected form
    (no decoder mask input, a self cache read by something else than its attention block and Shape) or a
    head size (d_kv) that GroupQueryAttention does not take (a multiple of 8)."""
    graph = model.graph
    inputs = {value.name for value in graph.input}
    if mask not in inputs or tokens not in inputs:
        return 0
    blocks = [node for node in graph.node if node.op_type == "MultiHeadAttention" and node.domain == MHA_DOMAIN
              and len(node.input) >= 8 and node.input[6] in inputs and node.input[7] in inputs]
    pasts = {name for node in blocks for name in node.input[6:8]}
    if not blocks:
        return 0
    head_sizes = {value.type.tensor_type.shape.dim[3].dim_value for value in graph.input if value.name in pasts}
    if any(size <= 0 or size % 8 for size in head_sizes):  # GroupQueryAttention's kernels take multiples of 8
        return 0
    for node in graph.node:
        if node not in blocks and pasts & set(node.input) and node.op_type != "Shape":
            return 0  # read as data elsewhere: leave the graph as it is
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    first_past = blocks[0].input[6]
    p = _PREFIX
    one = helper.make_tensor(f"{p}/one", TensorProto.INT32, [1], [1])
    graph.initializer.append(one)
    added = [*_dims(mask, 1, 2, f"{p}/total", opset), *_dims(tokens, 1, 2, f"{p}/new", opset),
             helper.make_node("Sub", [f"{p}/total", f"{p}/new"], [f"{p}/past"]),
             *_dims(first_past, 0, 2, f"{p}/rows_heads", opset), *_dims(first_past, 3, 4, f"{p}/d_kv", opset),
             # what Shape(past) is when the buffer holds exactly the cached columns
             helper.make_node("Concat", [f"{p}/rows_heads", f"{p}/past", f"{p}/d_kv"], [f"{p}/past_shape"], axis=0),
             helper.make_node("Cast", [f"{p}/total"], [f"{p}/total_int32"], to=TensorProto.INT32),
             helper.make_node("Squeeze", [f"{p}/total_int32"], [f"{p}/total_sequence_length"]),
             *_dims(mask, 0, 1, f"{p}/rows", opset),
             helper.make_node("Sub", [f"{p}/total_int32", one.name], [f"{p}/last"]),
             helper.make_node("Expand", [f"{p}/last", f"{p}/rows"], [f"{p}/seqlens_k"])]
    rewritten = []
    for node in graph.node:
        if node.op_type == "Shape" and node.input[0] in pasts:
            rewritten += _slice_of_past_shape(node, f"{p}/past_shape")
        elif node in blocks:
            query, key, value, _, _, bias, past_key, past_value = node.input[:8]
            rewritten.append(helper.make_node(
                "GroupQueryAttention",
                [query, key, value, past_key, past_value, f"{p}/seqlens_k", f"{p}/total_sequence_length",
                 "", "", "", bias], list(node.output), name=node.name.replace("MultiHeadAttention", "GroupQueryAttention"),
                domain=MHA_DOMAIN, num_heads=_attribute(node, "num_heads"), kv_num_heads=_attribute(node, "num_heads"),
                scale=_attribute(node, "scale")))
        else:
            rewritten.append(node)
    del graph.node[:]
    graph.node.extend(added + rewritten)
    # The cache's length axis is the buffer's capacity now, on both sides: one name for it.
    presents = {output for node in blocks for output in node.output[1:3]}
    for value in [*graph.input, *graph.output]:
        if value.name in pasts or value.name in presents:
            value.type.tensor_type.shape.dim[2].dim_param = "self_cache_capacity"
    return len(blocks)


def _slice_of_past_shape(shape: onnx.NodeProto, past_shape: str) -> list[onnx.NodeProto]:
    """Shape(past)[start:end] as a Slice of the exact past shape (Shape's start/end clamp as Slice's do)."""
    start, end = _attribute(shape, "start") or 0, _attribute(shape, "end")
    out = shape.output[0]
    bounds = [("starts", start), ("ends", 4 if end is None else end)]
    constants = [helper.make_node("Constant", [], [f"{out}/{name}"],
                                  value=helper.make_tensor(name, TensorProto.INT64, [1], [bound]))
                 for name, bound in bounds]
    return [*constants, helper.make_node("Slice", [past_shape, f"{out}/starts", f"{out}/ends"], [out])]
