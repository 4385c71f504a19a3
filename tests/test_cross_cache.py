"""The cross-cache pass (export/cross_cache.py) on its own: the encoder returns the first-step decoder's
cross-attention keys and values, the same numbers; a decoder of another form is refused with a message that
names the tensor; and int8 exports decode alike whether the encoder or the first decoder step computes them."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ortdecode
from ortdecode import manifest as mf
from ortdecode_export import export_model
from ortdecode_export.cross_cache import CrossCacheError, add_cross_cache_outputs

from .conftest import TEXTS

HEADS, D_KV, D_MODEL = 2, 4, 8
KINDS = ("key", "value")


def _layer(index: int) -> mf.LayerCacheNames:
    names = {f"{field}": f"unused.{index}.{field}" for field in mf.LayerCacheNames.__dataclass_fields__}
    names.update(present_cross_key=f"present.{index}.encoder.key", present_cross_value=f"present.{index}.encoder.value")
    return mf.LayerCacheNames(**names)


def _save(graph, path):
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _write_graphs(folder, layers: int = 2, decoder_ops=("MatMul", "Reshape", "Transpose")):
    """A two-node encoder and a first-step decoder whose cross keys and values are, per layer,
    Transpose(Reshape(MatMul(encoder_hidden_states, W))): the form of Optimum's T5 export. `decoder_ops`
    leaves some of the three out."""
    rng = np.random.default_rng(0)
    encoder = helper.make_graph(
        [helper.make_node("MatMul", ["inputs", "w_encoder"], ["hidden"]),
         helper.make_node("Tanh", ["hidden"], ["last_hidden_state"])], "encoder",
        [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, ["batch", "source", D_MODEL])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "source", D_MODEL])],
        [numpy_helper.from_array(rng.standard_normal((D_MODEL, D_MODEL)).astype(np.float32), "w_encoder")])
    nodes, outputs = [], []
    weights = [numpy_helper.from_array(np.array([0, 0, HEADS, D_KV], np.int64), "heads_shape")]
    for index in range(layers):
        for kind in KINDS:
            name, tensor = f"present.{index}.encoder.{kind}", f"{index}_{kind}"
            weights.append(numpy_helper.from_array(
                rng.standard_normal((D_MODEL, HEADS * D_KV)).astype(np.float32), f"w_{tensor}"))
            made = "encoder_hidden_states"
            for op in decoder_ops:
                out = name if op == decoder_ops[-1] else f"{op}_{tensor}"
                inputs = {"MatMul": [made, f"w_{tensor}"], "Reshape": [made, "heads_shape"], "Transpose": [made]}[op]
                nodes.append(helper.make_node(op, inputs, [out], **({"perm": [0, 2, 1, 3]} if op == "Transpose" else {})))
                made = out
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", HEADS, "source", D_KV]))
    decoder = helper.make_graph(
        nodes, "decoder", [helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT,
                                                         ["batch", "source", D_MODEL])], outputs, weights)
    _save(encoder, folder / "encoder.onnx")
    _save(decoder, folder / "decoder.onnx")
    return folder / "encoder.onnx", folder / "decoder.onnx"


def test_the_encoder_returns_the_first_step_decoders_cross_cache(tmp_path):
    encoder_file, decoder_file = _write_graphs(tmp_path)
    layers = [_layer(0), _layer(1)]
    add_cross_cache_outputs(encoder_file, decoder_file, layers, num_heads=HEADS, d_kv=D_KV)
    encoder = ort.InferenceSession(str(encoder_file), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(decoder_file), providers=["CPUExecutionProvider"])
    names = [name for layer in layers for name in (layer.present_cross_key, layer.present_cross_value)]
    assert [o.name for o in encoder.get_outputs()] == ["last_hidden_state", *names]
    inputs = np.random.default_rng(1).standard_normal((3, 5, D_MODEL)).astype(np.float32)
    hidden, *cross = encoder.run(None, {"inputs": inputs})
    expected = decoder.run(names, {"encoder_hidden_states": hidden})
    for name, ours, theirs in zip(names, cross, expected):
        assert ours.shape == (3, HEADS, 5, D_KV), name
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("decoder_ops, message", [
    (("MatMul", "Reshape"), r"present\.0\.encoder\.key is not MatMul\(encoder_hidden_states, weight\) -> Reshape -> "
                            r"Transpose\(0, 2, 1, 3\) in the first-step decoder \(found Reshape ops before a MatMul\)"),
    (("MatMul", "Transpose"), r"present\.0\.encoder\.key is not .* \(found Transpose ops before a MatMul\)"),
])
def test_a_decoder_of_another_form_is_refused_naming_the_tensor(tmp_path, decoder_ops, message):
    encoder_file, decoder_file = _write_graphs(tmp_path, layers=1, decoder_ops=decoder_ops)
    before = encoder_file.read_bytes()
    with pytest.raises(CrossCacheError, match=message):
        add_cross_cache_outputs(encoder_file, decoder_file, [_layer(0)], num_heads=HEADS, d_kv=D_KV)
    assert encoder_file.read_bytes() == before  # nothing written


def test_a_decoder_without_the_cross_cache_output_is_refused(tmp_path):
    encoder_file, decoder_file = _write_graphs(tmp_path, layers=1)
    with pytest.raises(CrossCacheError, match=r"the first-step decoder has no output present\.1\.encoder\.key"):
        add_cross_cache_outputs(encoder_file, decoder_file, [_layer(0), _layer(1)], num_heads=HEADS, d_kv=D_KV)


@pytest.fixture(scope="module")
def int8_layouts(tiny_v1, tmp_path_factory):
    """tiny-v1 quantized to int8 twice: the with-past layout (the encoder computes the cross cache, quantized as
    the decoder's projections would be) and the split layout (the first decoder step computes it)."""
    root = tmp_path_factory.mktemp("int8-layouts")
    exports = {layout: root / layout for layout in ("with-past", "split")}
    for layout, folder in exports.items():
        export_model(str(tiny_v1.checkpoint), folder, quantize="int8", layout=layout, progress=False)
    return {layout: ortdecode.load(folder, provider="cpu") for layout, folder in exports.items()}


def test_int8_with_past_decodes_as_the_int8_split_layout(int8_layouts):
    with_past, split = int8_layouts["with-past"], int8_layouts["split"]
    assert with_past.runner.encoder_gives_cross_cache and not split.runner.encoder_gives_cross_cache
    for options in (dict(max_new_tokens=12), dict(max_new_tokens=10, num_beams=3, num_return_sequences=2)):
        ours = with_past.generate(TEXTS, return_scores=True, **options)
        theirs = split.generate(TEXTS, return_scores=True, **options)
        np.testing.assert_array_equal(ours.sequences, theirs.sequences, err_msg=str(options))
        for step, (a, b) in enumerate(zip(ours.scores, theirs.scores)):
            finite = np.isfinite(b)
            np.testing.assert_array_equal(np.isfinite(a), finite)
            np.testing.assert_allclose(a[finite], b[finite], atol=1e-4, err_msg=f"{options} step {step}")
