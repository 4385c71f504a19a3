"""The projection fusion pass (export/projection_fusion.py) on its own: what it fuses and records, that the fused
graphs compute bit-identical outputs, and the forms it leaves as they are (int8 graphs' quantized projections:
test_ort_optimize.py). The parity tests
against transformers (test_parity.py) run the fused graphs as every CPU export now has them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ortdecode
from ortdecode.manifest import sha256_of
from ortdecode_export.projection_fusion import fuse_projections, fuse_projections_file

from .test_attention_fusion import decoder_feeds
from .test_manifest import edit_manifest, rehash

ENCODER, DECODER = "encoder_model.onnx", "decoder_with_past_model.onnx"
TEXTS = ["spell out: 12", "ordinal: 3 and a much longer input than the first one, padded less"]


@pytest.fixture(scope="module")
def separate_and_fused(tiny_v1, tmp_path_factory):
    """tiny-v1 exported with --no-fuse-projections, and a copy the pass then rewrote."""
    separate = tmp_path_factory.mktemp("separate") / "onnx"
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli", "export", str(tiny_v1.checkpoint), str(separate),
                          "--no-fuse-projections", "--no-validate"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    fused = separate.parent / "fused"
    shutil.copytree(separate, fused)
    reports = {file: fuse_projections_file(fused / file) for file in (ENCODER, DECODER)}
    for file in (ENCODER, DECODER):
        rehash(fused, file)
    edit_manifest(fused, lambda data: [graph["external_data"].update({name: sha256_of(fused / name)})
                                       for graph in data["graphs"].values() for name in graph["external_data"]])
    return separate, fused, reports


def graph(path) -> onnx.GraphProto:
    return onnx.load(str(path), load_external_data=False).graph


def projections_by_input(path) -> dict[str, int]:
    """input -> how many MatMuls (float or int8) with a constant weight read it."""
    g = graph(path)
    weights = {tensor.name for tensor in g.initializer}
    counts: dict[str, int] = {}
    for node in g.node:
        if node.op_type in ("MatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat") and node.input[1] in weights:
            counts[node.input[0]] = counts.get(node.input[0], 0) + 1
    return counts


def test_the_default_export_fuses_and_records_the_projections(with_past_export):
    manifest = json.loads((with_past_export / "ortdecode.json").read_text())
    layers = manifest["num_decoder_layers"]
    encoder_layers = manifest["num_layers"]
    assert manifest["export_options"]["projection_fusion"] == {
        # q, k and v per encoder layer; the cross cache's key and value per decoder layer, from one hidden state
        ENCODER: f"{3 * encoder_layers + 2 * layers} projections fused into {encoder_layers + 1} GEMMs",
        DECODER: f"{3 * layers} projections fused into {layers} GEMMs, {layers} of them GroupQueryAttention's "
                 "packed query, key and value"}
    for file in (ENCODER, DECODER):
        assert max(projections_by_input(with_past_export / file).values()) == 1  # nothing left to fuse
    attention = [n for n in graph(with_past_export / DECODER).node if n.op_type == "GroupQueryAttention"]
    assert len(attention) == layers and all(list(n.input[1:3]) == ["", ""] for n in attention)
    assert manifest["validation"]["passed"] is True


def test_no_fuse_projections_keeps_one_matmul_per_projection(separate_and_fused):
    separate, _, _ = separate_and_fused
    manifest = json.loads((separate / "ortdecode.json").read_text())
    assert "projection_fusion" not in manifest["export_options"]
    assert max(projections_by_input(separate / DECODER).values()) == 3  # q, k, v


def encoder_feeds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Three inputs of 9 positions, the second right-padded (3 real tokens)."""
    mask = np.ones((3, 9), np.int64)
    mask[1, 3:] = 0
    return {"input_ids": rng.integers(3, 100, (3, 9)) * mask, "attention_mask": mask}


def test_the_fused_graphs_compute_bit_identical_outputs(separate_and_fused):
    separate, fused, reports = separate_and_fused
    assert reports[ENCODER].groups > 1 and reports[DECODER].packed_attention > 0
    rng = np.random.default_rng(0)
    for file in (ENCODER, DECODER):
        before, after = (ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
                         for folder in (separate, fused))
        # the decoder: 3 rows, 5 cached steps, row 1 left-padded and its source right-padded (a joined row)
        feeds = encoder_feeds(rng) if file == ENCODER else decoder_feeds(before, rows=3, past=5, new=1, rng=rng)
        for expected, got in zip(before.run(None, feeds), after.run(None, feeds), strict=True):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}, {"do_sample": True, "seed": 4, "top_k": 20}],
                         ids=["greedy", "beam", "sampling"])
def test_the_fused_export_decodes_exactly_as_the_separate_one(separate_and_fused, options):
    separate, fused = separate_and_fused[:2]
    results = [ortdecode.load(folder, provider="cpu").generate(TEXTS, max_new_tokens=8, min_new_tokens=8,
                                                                return_logits=True, **options)
               for folder in (separate, fused)]
    np.testing.assert_array_equal(results[1].sequences, results[0].sequences)
    for after, before in zip(results[1].logits, results[0].logits, strict=True):
        np.testing.assert_array_equal(after, before)


def test_a_rewritten_graph_keeps_its_weights_in_one_data_file_with_the_same_permissions(separate_and_fused):
    separate, fused, _ = separate_and_fused
    for file in (ENCODER, DECODER):
        data = [p.name for p in fused.iterdir() if p.name.startswith(file)]
        assert sorted(data) == [file, file + ".data"]
        assert (fused / (file + ".data")).stat().st_mode == (separate / (file + ".data")).stat().st_mode


def projection_graph(readers_of_k: list[onnx.NodeProto] = (), attention: bool = True, v_reads: str = "x",
                     v_width: int = 8, opset: int = 17) -> onnx.ModelProto:
    """x [rows, positions, 8] projected by three weights (q, k, v; k's MatMul first; v's `v_width` wide, reading
    `v_reads`) into a GroupQueryAttention of one head (`attention`; else q, k and v are the outputs), plus
    `readers_of_k` reading k (their outputs are graph outputs too)."""
    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(rng.standard_normal((8, v_width if i == 2 else 8)).astype(np.float32), f"w{i}")
               for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["k"]), helper.make_node("MatMul", ["x", "w0"], ["q"]),
             helper.make_node("MatMul", [v_reads, "w2"], ["v"])]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["rows", "positions", 8])
              for name in dict.fromkeys(["x", v_reads])]
    if attention:
        nodes.append(helper.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens_k", "total"],
                                      ["attention", "present_k", "present_v"], domain="com.microsoft",
                                      num_heads=1, kv_num_heads=1))
        inputs += [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["rows"]),
                   helper.make_tensor_value_info("total", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
               for name in (["attention", "present_k", "present_v"] if attention else ["q", "k", "v"])]
    nodes += readers_of_k
    outputs += [helper.make_tensor_value_info(r.output[0], TensorProto.INT64 if r.op_type == "Shape" else
                                              TensorProto.FLOAT, None) for r in readers_of_k]
    return helper.make_model(helper.make_graph(nodes, "projections", inputs, outputs, weights),
                             opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])


def fused_and_compared(model: onnx.ModelProto, **feeds: np.ndarray):
    """The pass's report on `model`, after checking that the rewritten graph loads and gives the same outputs,
    to the bit, on random x (3 rows of 5 positions) and `feeds`."""
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((3, 5, 8)).astype(np.float32), **feeds}
    if any(i.name == "seqlens_k" for i in model.graph.input):
        feeds |= {"seqlens_k": np.full(3, 4, np.int32), "total": np.array(5, np.int32)}
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {name: value for name, value in feeds.items() if name in {i.name for i in before.get_inputs()}}
    expected = before.run(None, feeds)
    report = fuse_projections(model)
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for want, got in zip(expected, after.run(None, feeds), strict=True):
        np.testing.assert_array_equal(got, want)
    return report


def test_a_group_feeding_attention_is_packed_only_when_its_other_readers_read_the_leading_axes():
    leading = projection_graph([helper.make_node("Shape", ["k"], ["length"], start=1, end=2)])
    report = fused_and_compared(leading)
    assert (report.groups, report.projections, report.packed_attention) == (1, 3, 1)
    nodes = {n.op_type: n for n in leading.graph.node}
    assert "Split" not in nodes
    assert list(nodes["GroupQueryAttention"].input[:3]) == [nodes["MatMul"].output[0], "", ""]
    assert nodes["Shape"].input[0] == nodes["MatMul"].output[0]
    fused_weight = numpy_helper.to_array(next(t for t in leading.graph.initializer
                                              if t.name == nodes["MatMul"].input[1]))
    originals = {t.name: numpy_helper.to_array(t) for t in projection_graph().graph.initializer}
    # q (w0), k (w1), v (w2): the attention's order, not the graph's
    np.testing.assert_array_equal(fused_weight, np.concatenate([originals["w0"], originals["w1"], originals["w2"]],
                                                               axis=1))
    assert {t.name for t in leading.graph.initializer}.isdisjoint(originals)  # the separate weights are gone

    for reader in (helper.make_node("Shape", ["k"], ["shape"]),  # the last axis too
                   helper.make_node("Identity", ["k"], ["k_again"])):  # not a Shape
        model = projection_graph([reader])
        report = fused_and_compared(model)
        assert (report.groups, report.packed_attention) == (1, 0)
        split = next(n for n in model.graph.node if n.op_type == "Split")
        assert list(split.output) == ["k", "q", "v"]  # in the graph's order; the attention reads them by name


@pytest.mark.parametrize("v_reads, projections, fused", [("x", 3, ["MatMul", "Split"]),
                                                          ("y", 2, ["MatMul", "Split", "MatMul"])],
                         ids=["one-input", "v-reads-another-input"])
def test_the_split_gives_each_projection_its_own_result(v_reads, projections, fused):
    model = projection_graph(attention=False, v_reads=v_reads, v_width=12)  # widths 8, 8 and 12
    report = fused_and_compared(model, y=np.random.default_rng(3).standard_normal((3, 5, 8)).astype(np.float32))
    assert (report.groups, report.projections) == (1, projections)
    assert [n.op_type for n in model.graph.node] == fused


def test_what_the_pass_leaves_or_renames_so_that_the_graph_stays_valid():
    # a projection that is a graph output keeps its tensor: the attention is not given the packed form
    model = projection_graph()
    model.graph.output.append(helper.make_tensor_value_info("q", TensorProto.FLOAT, None))
    assert fused_and_compared(model).packed_attention == 0
    # a weight that is also a graph input can be fed another value: it stays a projection of its own
    model = projection_graph()
    model.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [8, 8]))
    report = fused_and_compared(model, w1=np.ones((8, 8), np.float32))
    assert (report.projections, report.packed_attention) == (2, 0) and "w1" in {t.name for t in model.graph.initializer}
    # names the graph already has are not taken again
    model = projection_graph()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "projection_fusion/0/weight"))
    fused_and_compared(model)
    assert "projection_fusion/1/weight" in {t.name for t in model.graph.initializer}
    # before opset 13 Split has no widths input: nothing is fused
    assert fused_and_compared(projection_graph(attention=False, opset=11)).groups == 0
