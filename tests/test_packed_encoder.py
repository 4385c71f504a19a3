"""The packed-encoder pass (export/packed_encoder.py) on its own: the encoder's per-token work runs on the real
tokens only, and its outputs at the real positions are those of Optimum's graph, which computes the padding too.
The parity tests against transformers (test_parity.py) run the packed encoder as every CPU export now has it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ortdecode_export.packed_encoder import pack_encoder_tokens, pack_encoder_tokens_file

ENCODER = "encoder_model.onnx"


def session(path, profile_prefix: str | None = None) -> ort.InferenceSession:
    """profile_prefix: profile the graph's own nodes (no optimization renaming or fusing them)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def mixed_batch(vocab: int, lengths=(3, 17, 1, 9, 17, 5)) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded inputs of very different lengths (EOS last), as the runner feeds the encoder."""
    rng = np.random.default_rng(0)
    width = max(lengths)
    ids, mask = np.zeros((len(lengths), width), np.int64), np.zeros((len(lengths), width), np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = np.append(rng.integers(3, vocab, length - 1), 1)
        mask[row, :length] = 1
    return ids, mask


def real_positions(name: str, value: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The values at the real positions: hidden states [rows, positions, d] or a cross cache [rows, heads, positions, d_kv]."""
    return value[mask.astype(bool)] if value.ndim == 3 else value.transpose(0, 2, 1, 3)[mask.astype(bool)]


@pytest.fixture(scope="module")
def encoders(unpacked_encoder_export, tmp_path_factory):
    """Optimum's encoder (with the cross-cache outputs) and the same graph packed by the pass."""
    folder = tmp_path_factory.mktemp("packed")
    shutil.copy(unpacked_encoder_export / ENCODER, folder / "unpacked.onnx")
    shutil.copy(unpacked_encoder_export / ENCODER, folder / "packed.onnx")
    report = pack_encoder_tokens_file(folder / "packed.onnx")
    return folder / "unpacked.onnx", folder / "packed.onnx", report


def test_the_packed_encoder_computes_optimums_outputs_at_every_real_position(encoders, tiny_v1):
    unpacked, packed, report = encoders
    assert report.packed_nodes > 0 and report.unpacked > 0
    vocab = json.loads((tiny_v1.export / "ortdecode.json").read_text())["vocab_size"]
    ids, mask = mixed_batch(vocab)
    feed = {"input_ids": ids, "attention_mask": mask}
    before, after = session(unpacked), session(packed)
    names = [o.name for o in before.get_outputs()]
    assert names == [o.name for o in after.get_outputs()] and len(names) > 1  # hidden states and the cross cache
    for name, want, got in zip(names, before.run(None, feed), after.run(None, feed)):
        assert want.shape == got.shape, name
        np.testing.assert_allclose(real_positions(name, got, mask), real_positions(name, want, mask), atol=1e-6,
                                   err_msg=name)
        assert np.isfinite(got).all(), name  # padded positions: a real token's values, never read
    alone = after.run(None, {"input_ids": ids[2:3, :1], "attention_mask": mask[2:3, :1]})
    np.testing.assert_allclose(after.run(None, feed)[0][2, :1], alone[0][0], atol=1e-6)
    everything_padding = {"input_ids": ids[:2], "attention_mask": np.zeros_like(mask[:2])}
    assert all(np.isfinite(value).all() for value in after.run(None, everything_padding))


def test_the_packed_encoders_projections_compute_the_real_tokens_only(encoders, tiny_v1, tmp_path):
    """ONNX Runtime's profile gives each kernel's output size: every MatMul with weights writes one row per
    real token (Optimum's graph: one per position), whatever the padding."""
    unpacked, packed, _ = encoders
    vocab = json.loads((tiny_v1.export / "ortdecode.json").read_text())["vocab_size"]
    ids, mask = mixed_batch(vocab)
    weights = {t.name: list(t.dims) for t in onnx.load(str(packed), load_external_data=False).graph.initializer}
    rows = {}
    for label, path in (("unpacked", unpacked), ("packed", packed)):
        model = onnx.load(str(path), load_external_data=False)
        projections = {n.name: weights[n.input[1]][1] for n in model.graph.node
                       if n.op_type == "MatMul" and n.input[1] in weights}
        graph = session(path, str(tmp_path / label))
        graph.run(None, {"input_ids": ids, "attention_mask": mask})
        rows[label] = {}
        for event in json.loads(open(graph.end_profiling()).read()):
            node = event["name"].removesuffix("_kernel_time")
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and node in projections:
                rows[label][node] = int(event["args"]["output_size"]) // (4 * projections[node])  # float32 rows
        assert rows[label], f"no projection in the {label} profile"
    assert set(rows["unpacked"].values()) == {ids.size}
    # (the packed graph names every projection; the cross-cache ones Optimum's graph leaves unnamed are not in its rows)
    assert set(rows["packed"].values()) == {int(mask.sum())} and len(rows["packed"]) >= len(rows["unpacked"])


def test_int8_encoders_are_packed_after_quantization_and_decode(tiny_v1, tmp_path):
    """The pass runs on the quantizer's graph (DynamicQuantizeLinear, MatMulInteger): its ranges then come from
    the real tokens; the export is recorded as packed and generates."""
    import ortdecode

    out = tmp_path / "int8"
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli", "export", str(tiny_v1.checkpoint), str(out),
                          "--quantize", "int8", "--no-ort-optimize", "--no-validate"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "ortdecode.json").read_text())
    assert manifest["encoder_packs_tokens"] is True and "operations on packed tokens" in \
        manifest["export_options"]["packed_encoder"]
    model = onnx.load(str(out / ENCODER), load_external_data=False)
    quantizers = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]
    assert quantizers and all(n.input[0].startswith("packed_encoder/") for n in quantizers)
    with pytest.warns(ortdecode.UnvalidatedExportWarning):
        generator = ortdecode.load(out, provider="cpu")
    texts = ["spell out: 12", "ordinal: 3 and a much longer input than the first one, padded less"]
    batch = generator.generate(texts, max_new_tokens=6, min_new_tokens=6, return_logits=True)
    assert batch.sequences.shape == (2, 7) and all(np.isfinite(step).all() for step in batch.logits)


def test_no_pack_encoder_keeps_optimums_encoder(unpacked_encoder_export, with_past_export):
    manifest = json.loads((unpacked_encoder_export / "ortdecode.json").read_text())
    assert manifest["encoder_packs_tokens"] is False and "packed_encoder" not in manifest["export_options"]
    assert not any(n.name.startswith("packed_encoder/") for n in
                   onnx.load(str(unpacked_encoder_export / ENCODER), load_external_data=False).graph.node)
    default = json.loads((with_past_export / "ortdecode.json").read_text())
    assert default["encoder_packs_tokens"] is True and default["validation"]["passed"] is True


def test_a_graph_without_the_encoders_inputs_is_left_as_it_is(encoders):
    model = onnx.load(str(encoders[0]), load_external_data=False)
    before = model.SerializeToString()
    assert pack_encoder_tokens(model, ids="token_ids").packed_nodes == 0
    assert model.SerializeToString() == before
