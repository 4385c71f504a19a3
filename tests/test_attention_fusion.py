"""The attention fusion pass (export/attention_fusion.py) on its own: what it fuses, and that the fused
with-past decoder computes what Optimum's op-by-op graph computes, left-padded rows included.
The parity tests against transformers (test_parity.py) run the fused graph as every export now has it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ortdecode_export.attention_fusion import fuse_attention, fuse_attention_file

DECODER = "decoder_with_past_model.onnx"


@pytest.fixture(scope="module")
def unfused_export(tiny_v1, tmp_path_factory):
    """tiny-v1 exported by the command line with --no-fuse-attention (the default with-past layout) and
    --no-ort-optimize: the graphs as Optimum wrote them, for the pass to run on."""
    out = tmp_path_factory.mktemp("unfused") / "onnx"
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli", "export", str(tiny_v1.checkpoint), str(out),
                          "--no-fuse-attention", "--no-ort-optimize", "--no-validate"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out


@pytest.fixture(scope="module")
def unfused_int8_export(tiny_v1, tmp_path_factory):
    """The same with --quantize int8: the pass runs after quantization, on the graph the quantizer wrote."""
    out = tmp_path_factory.mktemp("unfused-int8") / "onnx"
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli", "export", str(tiny_v1.checkpoint), str(out),
                          "--quantize", "int8", "--no-fuse-attention", "--no-ort-optimize", "--no-validate"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out


def ops(path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]


def session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_every_attention_block_of_the_default_export_is_fused_and_recorded(with_past_export, tiny_v1):
    manifest = json.loads((with_past_export / "ortdecode.json").read_text())
    blocks = 2 * manifest["num_decoder_layers"]  # a self- and a cross-attention block per decoder layer
    assert manifest["export_options"]["attention_fusion"] == (
        f"{DECODER}: {blocks} of {blocks} attention blocks fused into com.microsoft.MultiHeadAttention, "
        f"{blocks // 2} self-attention blocks of them updating their cache in place (com.microsoft.GroupQueryAttention)")
    graph_ops = ops(with_past_export / DECODER)
    assert graph_ops.count("MultiHeadAttention") == graph_ops.count("GroupQueryAttention") == blocks // 2
    assert "Softmax" not in graph_ops and manifest["self_cache_in_place"] is True
    assert manifest["validation"]["passed"] is True


def test_no_fuse_attention_keeps_optimums_graph_with_the_same_inputs_and_outputs(unfused_export, with_past_export):
    manifest = json.loads((unfused_export / "ortdecode.json").read_text())
    assert "attention_fusion" not in manifest["export_options"]
    assert "MultiHeadAttention" not in ops(unfused_export / DECODER) and "Softmax" in ops(unfused_export / DECODER)
    fused = json.loads((with_past_export / "ortdecode.json").read_text())
    assert fused["graphs"]["decoder_with_past"]["inputs"] == manifest["graphs"]["decoder_with_past"]["inputs"]
    assert fused["graphs"]["decoder_with_past"]["outputs"] == manifest["graphs"]["decoder_with_past"]["outputs"]


def decoder_feeds(reference: ort.InferenceSession, rows: int, past: int, new: int, rng) -> dict:
    """Random cache and tokens; row 1 left-padded in its self cache, its source right-padded (a joined row)."""
    source = 7
    feeds = {}
    decoder_mask = np.ones((rows, past + new), np.int64)
    encoder_mask = np.ones((rows, source), np.int64)
    if rows > 1:
        decoder_mask[1, :min(past, 3)] = 0
        encoder_mask[1, -2:] = 0
    for value in reference.get_inputs():
        heads, d_kv = value.shape[1], value.shape[3] if len(value.shape) == 4 else None
        if value.name == "input_ids":
            feeds[value.name] = rng.integers(0, 100, (rows, new))
        elif value.name == "attention_mask":
            feeds[value.name] = decoder_mask
        elif value.name == "encoder_attention_mask":
            feeds[value.name] = encoder_mask
        elif ".decoder." in value.name:
            feeds[value.name] = rng.standard_normal((rows, heads, past, d_kv)).astype(np.float32)
        else:
            feeds[value.name] = rng.standard_normal((rows, heads, source, d_kv)).astype(np.float32)
    return feeds


def fused_copy(unfused_export, folder, in_place: bool):
    """The unfused export's with-past decoder, fused in `folder` (with its cache updated in place or not)."""
    for file in unfused_export.glob(DECODER + "*"):  # the graph and its weights file
        shutil.copy(file, folder / file.name)
    num_heads = json.loads((unfused_export / "ortdecode.json").read_text())["num_heads"]
    report = fuse_attention_file(folder / DECODER, num_heads=num_heads, cache_in_place=in_place)
    assert report.fused == report.blocks > 0 and report.in_place == (report.blocks // 2 if in_place else 0)
    return folder / DECODER


# GroupQueryAttention takes several new tokens after a past only in a batch of one row: ortdecode's steps
# feed one token per row after a past, and several (`score`) only without one.
@pytest.mark.parametrize("export", ["float32", "int8"])
@pytest.mark.parametrize("rows, past, new, in_place", [
    (1, 0, 1, True), (3, 0, 1, True), (3, 5, 1, True), (3, 5, 1, False), (3, 5, 4, False), (1, 5, 4, True),
    (2, 0, 4, True), (2, 0, 4, False)],
    ids=["first-step", "first-step-batch", "left-padded-rows", "left-padded-rows-mha", "left-padded-rows-4-new-mha",
         "one-row-4-new", "whole-target", "whole-target-mha"])
def test_fused_decoder_computes_what_optimums_graph_computes(request, export, tmp_path, rows, past, new, in_place):
    unfused_export = request.getfixturevalue({"float32": "unfused_export", "int8": "unfused_int8_export"}[export])
    fused_graph = fused_copy(unfused_export, tmp_path, in_place)
    reference, fused = session(unfused_export / DECODER), session(fused_graph)
    feeds = decoder_feeds(reference, rows, past, new, np.random.default_rng(rows * 10 + past))
    expected, got = reference.run(None, feeds), fused.run(None, feeds)
    names = [o.name for o in reference.get_outputs()]
    assert names == [o.name for o in fused.get_outputs()]
    for name, want, have in zip(names, expected, got):
        assert have.shape == want.shape, name
        np.testing.assert_allclose(have, want, atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("export", ["float32", "int8"])
@pytest.mark.parametrize("rows, past", [(1, 0), (3, 5)])
def test_a_cache_buffer_with_room_is_updated_in_place_as_the_exact_cache_is_extended(request, export, tmp_path,
                                                                                      rows, past):
    """One buffer per cache tensor bound as past and present, with 7 columns more than the cache (holding
    leftovers): the logits are the unfused graph's, the step's key and value land in column `past`, and
    nothing else in the buffer changes."""
    unfused_export = request.getfixturevalue({"float32": "unfused_export", "int8": "unfused_int8_export"}[export])
    fused = session(fused_copy(unfused_export, tmp_path, in_place=True))
    reference = session(unfused_export / DECODER)
    rng = np.random.default_rng(rows + past)
    feeds = decoder_feeds(reference, rows, past, 1, rng)
    expected = dict(zip([o.name for o in reference.get_outputs()], reference.run(None, feeds)))
    binding = fused.io_binding()
    buffers = {}
    for name, value in feeds.items():
        if ".decoder." in name:  # the cache, then leftovers in the columns it does not hold yet
            rows_, heads, _, d_kv = value.shape
            buffer = rng.standard_normal((rows_, heads, past + 7, d_kv)).astype(np.float32)
            buffer[:, :, :past] = value
            buffers[name] = (buffer, buffer.copy())
            shared = ort.OrtValue.ortvalue_from_numpy(buffer)
            binding.bind_ortvalue_input(name, shared)
            binding.bind_ortvalue_output(name.replace("past_key_values", "present"), shared)
        else:
            binding.bind_cpu_input(name, value)
    binding.bind_output("logits", "cpu")
    fused.run_with_iobinding(binding)
    np.testing.assert_allclose(binding.get_outputs()[-1].numpy(), expected["logits"], atol=1e-5, rtol=0)
    for name, (buffer, before) in buffers.items():
        present = expected[name.replace("past_key_values", "present")]
        np.testing.assert_allclose(buffer[:, :, :past + 1], present, atol=1e-5, rtol=0, err_msg=name)
        np.testing.assert_array_equal(buffer[:, :, :past], before[:, :, :past])
        np.testing.assert_array_equal(buffer[:, :, past + 1:], before[:, :, past + 1:])


def test_the_cache_is_updated_in_place_only_when_d_kv_is_a_multiple_of_8():
    """GroupQueryAttention's kernels take head sizes in multiples of 8: other blocks keep MultiHeadAttention."""
    from ortdecode_export.cache_in_place import update_cache_in_place

    for d_kv in (4, 8):
        past_key = helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["rows", 2, "past", d_kv])
        past_value = helper.make_tensor_value_info("past_value", TensorProto.FLOAT, ["rows", 2, "past", d_kv])
        mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["rows", "total"])
        tokens = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["rows", 1])
        q = helper.make_tensor_value_info("q", TensorProto.FLOAT, ["rows", 1, 2 * d_kv])
        bias = helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["rows", 2, 1, "total"])
        out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["rows", 1, 2 * d_kv])
        node = helper.make_node("MultiHeadAttention", ["q", "q", "q", "", "", "bias", "past_key", "past_value"],
                                ["out", "present_key", "present_value"], domain="com.microsoft", num_heads=2,
                                scale=1.0)
        present = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["rows", 2, "total", d_kv])
                   for n in ("present_key", "present_value")]
        model = helper.make_model(helper.make_graph([node], "g", [q, bias, mask, tokens, past_key, past_value],
                                                    [out, *present]),
                                  opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
        assert update_cache_in_place(model) == (1 if d_kv == 8 else 0)


def hand_built_attention(scaled: bool) -> onnx.ModelProto:
    """One cross-attention block as Optimum writes it, or (scaled) with a Mul on the scores T5 does not have."""
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 1, 8])
    key = helper.make_tensor_value_info("key", TensorProto.FLOAT, [1, 2, 3, 4])
    value = helper.make_tensor_value_info("value", TensorProto.FLOAT, [1, 2, 3, 4])
    bias = helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 2, 1, 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 8])
    shapes = [helper.make_tensor("heads", TensorProto.INT64, [4], [1, -1, 2, 4]),
              helper.make_tensor("merged", TensorProto.INT64, [3], [1, -1, 8]),
              helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])]
    scores = "scaled" if scaled else "scores"
    nodes = [helper.make_node("Reshape", ["q", "heads"], ["q4"]),
             helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["key"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["qh", "kt"], ["scores"]),
             *([helper.make_node("Mul", ["scores", "half"], ["scaled"])] if scaled else []),
             helper.make_node("Add", [scores, "bias"], ["biased"]),
             helper.make_node("Softmax", ["biased"], ["weights"], axis=-1),
             helper.make_node("MatMul", ["weights", "value"], ["context"]),
             helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["context_t", "merged"], ["out"])]
    graph = helper.make_graph(nodes, "attention", [q, key, value, bias], [out], initializer=shapes)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_hand_built_block_is_fused_and_a_block_of_another_form_is_left_as_it_is():
    model = hand_built_attention(scaled=False)
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((1, 1, 8)).astype(np.float32),
             "key": rng.standard_normal((1, 2, 3, 4)).astype(np.float32),
             "value": rng.standard_normal((1, 2, 3, 4)).astype(np.float32),
             "bias": np.array([[[[0, -1e9, 0.5]], [[1, 0, -1e9]]]], np.float32)}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    report = fuse_attention(model, num_heads=2)
    assert (report.fused, report.blocks) == (1, 1)
    assert [node.op_type for node in model.graph.node] == ["MultiHeadAttention"]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)

    scaled = hand_built_attention(scaled=True)
    before = scaled.SerializeToString()
    assert fuse_attention(scaled, num_heads=2).fused == 0
    assert scaled.SerializeToString() == before


def test_an_export_at_opset_14_is_fused_without_opset_15_shape_attributes(tiny_v1, tmp_path):
    """Shape's start/end attributes exist from opset 15: below it the pass slices the whole shape instead."""
    out = tmp_path / "onnx"
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli", "export", str(tiny_v1.checkpoint), str(out),
                          "--opset", "14"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "ortdecode.json").read_text())
    blocks = 2 * manifest["num_decoder_layers"]
    assert manifest["export_options"]["attention_fusion"].startswith(f"{DECODER}: {blocks} of {blocks} ")
    assert manifest["validation"]["passed"] is True  # ONNX Runtime loaded the fused graph and matched PyTorch
    model = onnx.load(str(out / DECODER), load_external_data=False)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [14]
    assert not [node for node in model.graph.node if node.op_type == "Shape" and node.attribute]
