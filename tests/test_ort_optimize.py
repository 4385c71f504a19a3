"""CPU exports save their graphs as ONNX Runtime's CPU provider optimizes them (export/ort_optimize.py), so that
a load does not optimize them again: what the export records and saves, that the saved graphs decode as the
graphs the passes wrote, and what a load says when another onnxruntime cannot read them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import ortdecode
from ortdecode.errors import ModelFolderError
from ortdecode.model_files import external_data_files
from ortdecode_export.ort_optimize import save_ort_optimized

from .test_manifest import edit_manifest, rehash

GRAPHS = ("encoder_model.onnx", "decoder_with_past_model.onnx")
TEXTS = ["spell out: 12", "ordinal: 3 and a much longer input than the first one, padded less"]


@pytest.fixture(scope="module")
def unoptimized_export(tiny_v1, tmp_path_factory):
    """tiny-v1 exported by the command line with --no-ort-optimize (the default with-past layout)."""
    out = tmp_path_factory.mktemp("unoptimized") / "onnx"
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli", "export", str(tiny_v1.checkpoint), str(out),
                          "--no-ort-optimize"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out


def op_types(path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]


def test_the_export_saves_and_records_the_graphs_onnx_runtime_optimized(with_past_export, unoptimized_export):
    manifest = json.loads((with_past_export / "ortdecode.json").read_text())
    recorded = manifest["export_options"]["ort_optimized"]
    assert {key: recorded[key] for key in ("onnxruntime", "level")} == {"onnxruntime": ort.__version__,
                                                                         "level": "extended"}
    assert set(recorded["graphs"]) == set(GRAPHS)
    roles = {"encoder_model.onnx": "encoder", "decoder_with_past_model.onnx": "decoder_with_past"}
    for file in GRAPHS:
        before, after = op_types(unoptimized_export / file), op_types(with_past_export / file)
        assert recorded["graphs"][file] == f"{len(before)} -> {len(after)} nodes" and len(after) < len(before)
        # T5's layer norm (Pow, ReduceMean, Add, Sqrt, Div, Mul) fused into one operator
        assert "SimplifiedLayerNormalization" in after and "Pow" not in after and "Pow" in before
        # the weights stay in the external data file the manifest lists
        assert external_data_files(with_past_export / file) == list(manifest["graphs"][roles[file]]["external_data"]) \
            == [file + ".data"]
    # attributes at their defaults are left out (onnxruntime 1.32 writes GroupQueryAttention's
    # k_quant_type="NONE", which 1.22 refuses), the others kept
    attention = [node for node in onnx.load(str(with_past_export / GRAPHS[1]), load_external_data=False).graph.node
                 if node.op_type == "GroupQueryAttention"]
    assert attention and all({a.name for a in node.attribute} == {"num_heads", "kv_num_heads", "scale"}
                             for node in attention)
    unoptimized = json.loads((unoptimized_export / "ortdecode.json").read_text())
    assert "ort_optimized" not in unoptimized["export_options"] and unoptimized["validation"]["passed"] is True
    assert manifest["validation"]["passed"] is True


def test_int8_exports_save_the_quantized_matmuls_fused(tiny_v1, tmp_path):
    out = tmp_path / "int8"
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli", "export", str(tiny_v1.checkpoint), str(out),
                          "--quantize", "int8", "--no-validate"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for file in GRAPHS:
        ops = op_types(out / file)
        assert "DynamicQuantizeMatMul" in ops and "MatMulInteger" not in ops
    # the quantized projections stay one per weight (export/projection_fusion.py: fused, no faster)
    assert json.loads((out / "ortdecode.json").read_text())["export_options"]["projection_fusion"] == {
        file: "0 projections fused into 0 GEMMs" for file in GRAPHS}


def test_optimizing_a_saved_graph_again_changes_nothing(with_past_export, tmp_path):
    for file in with_past_export.glob("decoder_with_past_model.onnx*"):
        shutil.copy(file, tmp_path / file.name)
    nodes = len(op_types(tmp_path / "decoder_with_past_model.onnx"))
    assert save_ort_optimized(tmp_path / "decoder_with_past_model.onnx") == f"{nodes} -> {nodes} nodes"


def nodes_at_every_depth(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                yield from nodes_at_every_depth(sub)


def test_graphs_with_their_weights_inside_stay_so_and_subgraphs_are_optimized_too(tiny_v1):
    """--layout all (the tiny models' export) keeps the weights inside the graphs, optimized or not; the merged
    decoder is one If node whose branches ONNX Runtime optimized (its counts and defaults include them)."""
    manifest = json.loads((tiny_v1.export / "ortdecode.json").read_text())
    graphs = manifest["export_options"]["ort_optimized"]["graphs"]
    assert set(graphs) == {"encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx",
                           "decoder_model_merged.onnx"}
    assert all(not graph["external_data"] for graph in manifest["graphs"].values())
    merged = onnx.load(str(tiny_v1.export / "decoder_model_merged.onnx"))
    nodes = list(nodes_at_every_depth(merged.graph))
    assert graphs["decoder_model_merged.onnx"].endswith(f" -> {len(nodes)} nodes") and len(nodes) > 100
    norms = [node for node in nodes if node.op_type == "SimplifiedLayerNormalization"]
    # axis=-1 and stash_type=1 are its defaults, left out; T5's epsilon (1e-6) is not
    assert norms and all([a.name for a in node.attribute] == ["epsilon"] for node in norms)


def test_a_graph_keeping_its_weights_in_optimums_data_file_keeps_them_in_one_file(with_past_export, tmp_path):
    """Optimum writes the weights of graphs over 2 GB to `<graph>_data`: the saved graph's go to `<graph>.data`,
    and the former file does not stay behind (an export would ship every weight twice)."""
    graph = tmp_path / "decoder_with_past_model.onnx"
    onnx.save(onnx.load(str(with_past_export / graph.name)), str(graph), save_as_external_data=True,
              location=graph.name + "_data", size_threshold=1024)
    save_ort_optimized(graph)
    assert sorted(path.name for path in tmp_path.iterdir()) == [graph.name, graph.name + ".data"]
    ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("options", [{"do_sample": False}, {"num_beams": 3}],
                         ids=["greedy", "beam"])
def test_the_saved_graphs_decode_as_the_graphs_the_passes_wrote(with_past_export, unoptimized_export, options):
    optimized = ortdecode.load(with_past_export, provider="cpu").generate(
        TEXTS, max_new_tokens=8, min_new_tokens=8, return_logits=True, **options)
    written = ortdecode.load(unoptimized_export, provider="cpu").generate(
        TEXTS, max_new_tokens=8, min_new_tokens=8, return_logits=True, **options)
    np.testing.assert_array_equal(optimized.sequences, written.sequences)
    for step_optimized, step_written in zip(optimized.logits, written.logits, strict=True):
        np.testing.assert_allclose(step_optimized, step_written, rtol=0, atol=1e-5)


def broken_copy(with_past_export, folder, optimized_by: str):
    """The export with an operator no onnxruntime has in its encoder, and a manifest that says which
    onnxruntime optimized its graphs."""
    shutil.copytree(with_past_export, folder)
    model = onnx.load(str(folder / "encoder_model.onnx"), load_external_data=False)
    next(node for node in model.graph.node if node.op_type == "SimplifiedLayerNormalization").op_type = "NoSuchOp"
    onnx.save(model, str(folder / "encoder_model.onnx"))
    rehash(folder, "encoder_model.onnx")
    edit_manifest(folder, lambda data: data["export_options"]["ort_optimized"].update(onnxruntime=optimized_by))
    return folder


def test_a_graph_a_newer_onnxruntime_optimized_says_so_when_it_cannot_load(with_past_export, tmp_path):
    folder = broken_copy(with_past_export, tmp_path / "newer", "99.0.0")
    with pytest.raises(ModelFolderError, match=(
            rf"onnxruntime could not load .*encoder_model.onnx \(encoder\): .*NoSuchOp.* \(the export's graphs were "
            rf"optimized by onnxruntime 99\.0\.0, this is {ort.__version__}: install onnxruntime 99\.0\.0 or "
            r"newer, or export again with --no-ort-optimize\)$")):
        ortdecode.load(folder, provider="cpu")
    for made_by in (ort.__version__, "1.0.0"):  # this onnxruntime, an older one: the hint would mislead
        same = broken_copy(with_past_export, tmp_path / made_by, made_by)
        with pytest.raises(ModelFolderError) as raised:
            ortdecode.load(same, provider="cpu")
        assert "NoSuchOp" in str(raised.value) and "optimized by" not in str(raised.value)
