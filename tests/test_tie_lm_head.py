"""The export pass that makes the LM head read the shared embedding (export/tie_lm_head.py). Logits parity
of the tied graphs with PyTorch is test_parity.py's (the fixtures' exports run this pass)."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import ortdecode

DECODERS = ("decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx")


def _nodes(graph):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attribute.g)


@pytest.mark.parametrize("graph_file", DECODERS)
def test_tied_decoders_hold_the_embedding_once(tiny_v1, graph_file):
    model = onnx.load(str(tiny_v1.export / graph_file))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # the embedding table: the Gather's (Optimum's merge renames it shared.weight_merged_0)
    name = next(n.input[0] for n in _nodes(model.graph) if n.op_type == "Gather" and n.input[0] in weights)
    table = weights[name]
    assert not [w for w in weights.values() if w.shape == table.T.shape and np.array_equal(w, table.T)]
    heads = [n for n in _nodes(model.graph) if n.op_type == "FusedMatMul" and n.input[1] == name]
    assert heads and all(onnx.helper.get_attribute_value(a) == 1 for n in heads for a in n.attribute
                         if a.name == "transB")
    assert ortdecode.read_manifest(tiny_v1.export).export_options["lm_head_tied_to_embedding"] is True


def test_untied_checkpoints_keep_their_own_lm_head(tiny_models):
    export = tiny_models["tiny-v1.1"].export  # T5 v1.1: tie_word_embeddings is false
    model = onnx.load(str(export / "decoder_with_past_model.onnx"))
    assert not [n for n in _nodes(model.graph) if n.op_type == "FusedMatMul" and n.input[1] == "shared.weight"]
    assert ortdecode.read_manifest(export).export_options["lm_head_tied_to_embedding"] is False
