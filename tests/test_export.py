"""The exporter: what it writes, what it records, and when it refuses."""

import json
import shutil

import numpy as np
import onnx
import pytest

import ortdecode
from ortdecode_export import ExportError, export_model

from .conftest import TEXTS


def test_manifest_records_the_export(tiny):
    manifest = ortdecode.read_manifest(tiny.export)
    config = json.loads((tiny.checkpoint / "config.json").read_text())
    assert manifest.num_layers == config["num_layers"]
    assert manifest.num_decoder_layers == config["num_decoder_layers"] == len(manifest.layers)
    assert (manifest.num_heads, manifest.d_kv, manifest.d_model) == (config["num_heads"], config["d_kv"], config["d_model"])
    assert (manifest.pad_token_id, manifest.eos_token_id, manifest.decoder_start_token_id) == (0, (1,), 0)
    assert {"torch", "transformers", "optimum", "onnx", "onnxruntime", "ortdecode"} <= set(manifest.versions)
    assert manifest.export_options["layout"] == "all" and manifest.opset >= 13
    assert manifest.decoder_layouts == ["with-past", "merged", "split"]
    assert manifest.validation["passed"] is True and manifest.validation["max_abs_diff"] <= 1e-4
    assert manifest.names.decoder_attention_mask == "attention_mask" and manifest.export_options["decoder_mask"]
    assert 0 <= manifest.validation["joined_batch_max_abs_diff"] <= 1e-4
    for role in ("decoder", "decoder_with_past", "decoder_merged"):
        assert manifest.names.decoder_attention_mask in manifest.graphs[role].inputs
    for role, graph in manifest.graphs.items():
        model = onnx.load(str(tiny.export / graph.file), load_external_data=False)
        assert tuple(i.name for i in model.graph.input) == graph.inputs
    for name in ("tokenizer.json", "config.json", "generation_config.json"):
        assert (tiny.export / name).exists()
    ortdecode.verify_checksums(tiny.export)
    assert manifest.source == tiny.checkpoint.name  # the folder's name, not this machine's path


def test_manifest_source_is_never_a_machine_path(tmp_path, monkeypatch):
    from ortdecode_export.pipeline import _recorded_source

    (tmp_path / "models" / "work").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert _recorded_source(str(tmp_path / "models" / "work")) == "models/work"  # inside the repository
    assert _recorded_source("models/work") == "models/work"
    monkeypatch.chdir(tmp_path / "models" / "work")
    assert _recorded_source(str(tmp_path / "models")) == "models"  # outside it: the folder's name
    assert _recorded_source("google/flan-t5-small") == "google/flan-t5-small"  # a hub id as given


def test_validation_failure_names_atol_and_the_folder_is_kept_marked_failed(tiny_v1, tmp_path):
    with pytest.raises(ExportError, match=r"validation failed: max \|logits - PyTorch float32 logits\| = [0-9.e-]+ > "
                                          r"atol 1e-12 .* marked failed \(--atol sets"):
        export_model(str(tiny_v1.checkpoint), tmp_path / "strict", atol=1e-12, progress=False)
    manifest = json.loads((tmp_path / "strict" / "ortdecode.json").read_text())
    assert manifest["validation"]["passed"] is False and manifest["validation"]["rule"] == "atol"
    with pytest.raises(ortdecode.ModelFolderError,
                       match="validation against PyTorch failed.*--atol.*--allow-unvalidated"):
        ortdecode.load(tmp_path / "strict")
    assert ortdecode.load(tmp_path / "strict", allow_unvalidated=True).generate(TEXTS[0], max_new_tokens=2).texts


def test_int8_export_is_smaller_recorded_and_still_correct(default_model_int8, default_model_dir):
    """The embedded model's folder is also its PyTorch checkpoint: quantize it and decode the fixed prompts."""
    int8 = ortdecode.read_manifest(default_model_int8)
    fp32 = ortdecode.read_manifest(default_model_dir)
    assert int8.quantization == "int8-dynamic" and fp32.quantization is None
    assert int8.validation["passed"] is None and int8.validation["max_abs_diff"] > 0  # measured, not judged
    nodes = {n.op_type for n in onnx.load(str(default_model_int8 / "decoder_with_past_model.onnx")).graph.node}
    assert nodes & {"MatMulInteger", "DynamicQuantizeMatMul"}
    # fused after quantizing (attention_fusion), the self cache updated in place (cache_in_place)
    assert {"MultiHeadAttention", "GroupQueryAttention"} <= nodes and "Softmax" not in nodes
    assert int8.export_options["attention_fusion"].endswith(
        ": 6 of 6 attention blocks fused into com.microsoft.MultiHeadAttention, 3 self-attention blocks of them "
        "updating their cache in place (com.microsoft.GroupQueryAttention)") and int8.self_cache_in_place
    def size(manifest, folder):  # the graph and its external data (int8 exports default to the with-past layout)
        graph = manifest.graphs["decoder_with_past"]
        return sum((folder / name).stat().st_size for name in [graph.file, *graph.external_data])

    assert int8.export_options["layout"] == "with-past" and int8.graphs["decoder_with_past"].external_data
    assert size(int8, default_model_int8) < 0.5 * size(fp32, default_model_dir)
    prompts = ["spell out: 4521", "to digits: seventy thousand three", "ordinal: 21"]
    assert ortdecode.load(default_model_int8).generate(prompts).texts == [
        "four thousand five hundred twenty-one", "70003", "twenty-first"]


@pytest.mark.parametrize("options, match", [
    (dict(fp16=True), "--fp16 needs --target cuda"),
    (dict(quantize="int8", target="cuda"), "--quantize int8 is for CPU exports"),
    (dict(layout="merged", quantize="int8"), "use --layout with-past or split"),
    (dict(layout="with-past", target="cuda"), "use --layout split"),
    (dict(target="tpu"), "`target`.*'tpu'"),
])
def test_incompatible_options(tiny_v1, tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        export_model(str(tiny_v1.checkpoint), tmp_path / "out", progress=False, **options)


def test_mt5_checkpoints_export_and_decode_like_transformers(tmp_path, default_model_dir):
    import torch
    from transformers import AutoTokenizer, MT5Config, MT5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = MT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                       decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    MT5ForConditionalGeneration(config).save_pretrained(tmp_path / "mt5")
    tokenizer.save_pretrained(tmp_path / "mt5")
    manifest = export_model(str(tmp_path / "mt5"), tmp_path / "mt5-onnx", progress=False)
    assert manifest.model_type == "mt5" and manifest.validation["passed"]
    model = MT5ForConditionalGeneration.from_pretrained(tmp_path / "mt5").eval()
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**encoded, max_new_tokens=10, num_beams=3)
    result = ortdecode.load(tmp_path / "mt5-onnx").generate(TEXTS, max_new_tokens=10, num_beams=3)
    np.testing.assert_array_equal(result.sequences, expected.numpy())


def test_refuses_non_t5_models(tmp_path):
    from transformers import BartConfig

    BartConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16).save_pretrained(tmp_path / "bart")
    with pytest.raises(ExportError, match="is a 'bart' model; ortdecode exports t5, mt5"):
        export_model(str(tmp_path / "bart"), tmp_path / "out", progress=False)


def test_cache_reorder_graph_is_a_gather_per_kv_tensor(tiny):
    manifest = ortdecode.read_manifest(tiny.export)
    graph = onnx.load(str(tiny.export / manifest.graphs["cache_reorder"].file)).graph
    assert [n.op_type for n in graph.node] == ["Gather"] * (2 * manifest.num_decoder_layers)
    generator = ortdecode.load(tiny.export, provider="cpu")
    ids, mask = generator.tokenizer.encode(TEXTS[:3])
    state = generator.runner.encode(ids, mask)
    generator.runner.step(state, np.zeros(3, np.int64))
    past = state.past  # a cache updated in place has spare columns past it, whose content is not the cache's
    before = state.self_cache[0].numpy()[:, :, :past].copy()
    generator.runner.select(state, np.array([2, 0, 0]))
    np.testing.assert_array_equal(state.self_cache[0].numpy()[:, :, :past], before[[2, 0, 0]])


def test_dtype_fp16_writes_float16_cuda_graphs_with_float32_logits(tiny_v1, tmp_path):
    """The export side of the GPU path, which runs anywhere; decoding these graphs needs CUDA (test_cuda.py)."""
    import subprocess
    import sys

    out = tmp_path / "fp16"
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli", "export", str(tiny_v1.checkpoint), str(out),
                          "--dtype", "fp16", "--no-validate"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    manifest = ortdecode.read_manifest(out)
    assert (manifest.dtype, manifest.target) == ("float16", "cuda")
    float16, float32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    for role in ("decoder", "decoder_with_past"):
        graph = onnx.load(out / manifest.graphs[role].file).graph
        types = {o.name: o.type.tensor_type.elem_type for o in graph.output}
        assert types.pop("logits") == float32
        assert set(types.values()) == {float16}  # the KV cache
    assert {node.domain for node in onnx.load(out / "decoder_model.onnx").graph.node} >= {"com.microsoft"}


# ---------------------------------------------------------------- the output folder
def test_force_replaces_a_previous_export(tiny_v1, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_v1.export, out)
    (out / "old.txt").write_text("old")
    export_model(str(tiny_v1.checkpoint), out, force=True, validate=False, progress=False)
    assert not (out / "old.txt").exists() and (out / "ortdecode.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder or lock file left


@pytest.mark.parametrize("where, match", [
    ("parent", "contains the model folder"),  # the issue's `ortdecode export sand/model sand --force`
    ("same", "is the model folder itself"),
    ("inside", "lies inside the model folder"),
    ("other-files", "--force only replaces a previous ortdecode export or an empty folder"),
])
def test_force_never_removes_what_ortdecode_did_not_make(tiny_v1, tmp_path, where, match):
    sand = tmp_path / "sand"
    shutil.copytree(tiny_v1.checkpoint, sand / "model")
    (sand / "notes.txt").write_text("mine")
    out = {"parent": sand, "same": sand / "model", "inside": sand / "model" / "onnx", "other-files": sand}[where]
    source = sand / "model" if where != "other-files" else tiny_v1.checkpoint
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=match):
        export_model(str(source), out, force=True, validate=False, progress=False)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_failed_export_leaves_no_folder(tiny_v1, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_v1.checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):  # noqa: B017  (whatever transformers raises; the folder is what is tested)
        export_model(str(broken), tmp_path / "out", validate=False, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_a_second_concurrent_export_into_the_same_folder_is_refused(tiny_v1, tmp_path):
    from ortdecode_export.out_dir import export_lock

    out = tmp_path / "out"
    with export_lock(out):  # another export is running (its lock is held by a different open file)
        with pytest.raises(ValueError, match=r"another export into .*out is running"):
            export_model(str(tiny_v1.checkpoint), out, validate=False, progress=False)
    assert not out.exists()
    export_model(str(tiny_v1.checkpoint), out, validate=False, progress=False)  # free again
    assert (out / "ortdecode.json").exists()


# ---------------------------------------------------------------- CUDA export (graphs built on CPU)
def test_cuda_fusion_is_given_heads_times_d_kv_not_d_model(tmp_path, default_model_dir):
    """flan-t5-small's layout in small: 3 heads x d_kv 16 = 48 != d_model 64, and 64 % 3 != 0. Given
    d_model, ONNX Runtime's T5 fusion stopped on a bare AssertionError (`hidden_size % num_heads`)."""
    from ortdecode_export.checkpoints import make_random_t5

    checkpoint = make_random_t5(tmp_path / "ckpt", "tiny-v1.1", tokenizer_dir=default_model_dir, num_heads=3, d_kv=16,
                                d_model=64, num_layers=1, num_decoder_layers=1)
    manifest = export_model(str(checkpoint), tmp_path / "cuda", fp16=True, target="cuda", validate=False,
                            progress=False)
    assert manifest.export_options["cuda_fusion"] == "fused"
    for role in ("encoder", "decoder", "decoder_with_past"):
        graph = onnx.load(str(tmp_path / "cuda" / manifest.graphs[role].file)).graph
        ops = {node.op_type for node in graph.node if node.domain == "com.microsoft"}
        assert "SkipSimplifiedLayerNormalization" in ops
    encoder = onnx.load(str(tmp_path / "cuda" / "encoder_model.onnx")).graph
    attention = [n for n in encoder.node if n.op_type == "Attention"]
    assert attention and all(onnx.helper.get_attribute_value(a) == 3 for n in attention for a in n.attribute
                             if a.name == "num_heads")


def test_fp16_export_falls_back_to_unfused_graphs_when_the_fusion_fails(tiny_v1, tmp_path, monkeypatch):
    """The issue's failure (flan-t5-small given d_model: `hidden_size % num_heads` AssertionError) cannot be
    made with real parameters any more, so ONNX Runtime's optimizer is made to raise it here."""
    from ortdecode_export import ExportWarning, cuda_fusion

    def failing_fusion(*args, **kwargs):
        raise AssertionError

    monkeypatch.setattr(cuda_fusion, "optimize_model", failing_fusion)
    with pytest.warns(ExportWarning, match="fusion failed \\(AssertionError: no message\\); wrote the unfused float16"):
        manifest = export_model(str(tiny_v1.checkpoint), tmp_path / "fp16", fp16=True, target="cuda", validate=False,
                                progress=False)
    assert "unfused" in manifest.export_options["cuda_fusion"] and manifest.dtype == "float16"
    for role in ("encoder", "decoder", "decoder_with_past"):
        graph = onnx.load(str(tmp_path / "fp16" / manifest.graphs[role].file)).graph
        assert not {node.domain for node in graph.node} & {"com.microsoft"}
        types = {o.name: o.type.tensor_type.elem_type for o in graph.output}
        assert types.pop("logits", onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT
        assert set(types.values()) == {onnx.TensorProto.FLOAT16}


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
                    reason="CUDA can validate here")
def test_cuda_export_that_cannot_be_validated_here_is_refused_before_it_starts(tiny_v1, tmp_path):
    with pytest.raises(ExportError, match="validated on ONNX Runtime's CUDA provider, which this install lacks.*"
                                          "--no-validate"):
        export_model(str(tiny_v1.checkpoint), tmp_path / "fp16", fp16=True, target="cuda", progress=False)
    assert not any(tmp_path.iterdir())
