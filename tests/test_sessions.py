"""SharedWeights (ortdecode.sessions): one buffer for the weights several graphs hold, under every name they
give it, and never for a name whose content differs between graphs. Run against real ONNX Runtime sessions;
logits parity with PyTorch under shared weights is in test_parity.py."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ortdecode
from ortdecode import manifest as mf
from ortdecode.sessions import SharedWeights, graph_initializers

from .conftest import TEXTS


def _onnx_initializers(path):
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("role", [mf.ENCODER, mf.DECODER, mf.DECODER_WITH_PAST, mf.DECODER_MERGED])
def test_protobuf_walk_finds_the_initializers_onnx_reads(tiny_v1, role):
    path = tiny_v1.export / ortdecode.read_manifest(tiny_v1.export).graphs[role].file
    with open(path, "rb") as handle:
        data = handle.read()
    found = graph_initializers(path, data)
    expected = _onnx_initializers(path)
    assert found, "the walk found no initializer"
    for name, tensor in found.items():
        array = np.frombuffer(data, dtype=tensor.dtype, count=tensor.nbytes // np.dtype(tensor.dtype).itemsize,
                              offset=tensor.offset).reshape(tensor.dims)
        np.testing.assert_array_equal(array, expected[name])
    large_raw = {t.name for t in onnx.load(str(path)).graph.initializer if t.raw_data and len(t.raw_data) >= 1024}
    assert set(found) == large_raw


def test_the_decoder_pair_and_the_embedding_are_held_once(tiny_v1):
    files = [tiny_v1.export / f for f in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")]
    shared = SharedWeights(files)
    encoder, first, with_past = (_onnx_initializers(f) for f in files)
    # every with-past weight that the first-step graph also holds (by content) is shared under its name,
    # unless another graph uses that name for other content
    def unambiguous(name, array):
        return all(np.array_equal(graph[name], array) for graph in (encoder, first) if name in graph)

    expected = {name for name, array in with_past.items() if array.nbytes >= 1024 and unambiguous(name, array) and
                any(other.shape == array.shape and np.array_equal(other, array) for other in first.values())}
    assert expected and expected <= set(shared.values)
    assert "shared.weight" in shared.values  # the embedding, held by the encoder and the decoders
    for name in shared.values:
        for graph in (first, with_past):
            if name in graph:
                np.testing.assert_array_equal(shared.values[name].numpy(), graph[name])
    assert shared.nbytes < sum(shared.arrays[n].nbytes for n in shared.arrays)  # some content under several names


def _matmul_graph(path, weights: dict, weight_name: str):
    """y = x @ weights[weight_name] + (the other initializers summed into a scalar, so all are used)."""
    nodes = [helper.make_node("MatMul", ["x", weight_name], ["y0"])]
    last = "y0"
    for i, name in enumerate(n for n in weights if n != weight_name):
        nodes += [helper.make_node("ReduceSum", [name], [f"s{i}"], keepdims=0),
                  helper.make_node("Add", [last, f"s{i}"], [f"y{i + 1}"])]
        last = f"y{i + 1}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_names_with_different_content_are_not_shared_and_results_do_not_change(tmp_path):
    rng = np.random.default_rng(0)
    same = rng.standard_normal((32, 32), dtype=np.float32)
    twos = np.full((32, 32), 2, np.float32)
    _matmul_graph(tmp_path / "a.onnx", {"w": np.ones((32, 32), np.float32), "e": same}, "e")
    _matmul_graph(tmp_path / "b.onnx", {"w": twos, "f": same}, "f")
    _matmul_graph(tmp_path / "c.onnx", {"w": twos, "g": same}, "g")
    shared = SharedWeights([tmp_path / f for f in ("a.onnx", "b.onnx", "c.onnx")])
    # b and c hold the same "w", but a's "w" is other content under that name: not shared
    assert set(shared.values) == {"e", "f", "g"}
    assert shared.values["e"] is shared.values["f"] is shared.values["g"]
    assert shared.nbytes == same.nbytes
    x = rng.standard_normal((2, 32), dtype=np.float32)
    options = ort.SessionOptions()
    shared.apply(options)
    for graph in ("a.onnx", "b.onnx", "c.onnx"):
        alone = ort.InferenceSession(str(tmp_path / graph), providers=["CPUExecutionProvider"])
        with_shared = ort.InferenceSession(str(tmp_path / graph), options, providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(with_shared.run(None, {"x": x})[0], alone.run(None, {"x": x})[0])


@pytest.mark.parametrize("layout", ["split", "merged"])
def test_generation_with_shared_weights_is_identical(tiny_v1, layout):
    plain = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout=layout)
    shared = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout=layout, share_weights=True)
    assert shared.runner.shared_weights.values
    for options in ({"max_new_tokens": 12}, {"max_new_tokens": 12, "num_beams": 3}):
        np.testing.assert_array_equal(shared.generate(TEXTS, **options).sequences,
                                      plain.generate(TEXTS, **options).sequences)


def _mapping_flags(files) -> list[str]:
    """VmFlags of this process's mappings of `files` (/proc/self/smaps)."""
    import os

    paths, flags, current = {os.path.realpath(f) for f in files}, [], None
    with open("/proc/self/smaps") as handle:
        for line in handle:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
                current = fields[5] if len(fields) > 5 else None
            elif line.startswith("VmFlags:") and current in paths:
                flags.append(line)
    return flags


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="madvise and /proc are Linux's")
def test_embeddings_read_from_mapped_external_data_are_advised_random_access(with_past_export, tiny_v1):
    """ONNX Runtime keeps the weights it does not prepack (the embeddings) mapped from the external-data files;
    the runner advises those mappings random access (`rr` in VmFlags: no read-ahead), and decodes as before."""
    manifest = ortdecode.read_manifest(with_past_export)
    files = [with_past_export / name for graph in manifest.graphs.values() for name in graph.external_data]
    assert files
    generator = ortdecode.load(with_past_export, provider="cpu")
    flags = _mapping_flags(files)
    assert generator.runner.sparse_mappings == len(flags) >= 2  # at least the encoder's and the decoder's embedding
    assert all(" rr" in line for line in flags), flags
    split = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout="split")
    assert split.runner.sparse_mappings == 0  # weights inside the graph files: nothing mapped
    assert generator.generate(TEXTS, max_new_tokens=8).texts == split.generate(TEXTS, max_new_tokens=8).texts
