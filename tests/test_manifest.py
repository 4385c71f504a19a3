"""Loading an export: what is checked, and the messages when something is wrong."""

import json
import shutil

import pytest

import ortdecode
from ortdecode.errors import ModelFolderError


@pytest.fixture
def export_copy(tmp_path, tiny_v1):
    copy = tmp_path / "export"
    shutil.copytree(tiny_v1.export, copy)
    return copy


def edit_manifest(folder, change):
    path = folder / "ortdecode.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_missing_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="model folder .*nope does not exist"):
        ortdecode.load(tmp_path / "nope")


def test_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelFolderError, match="is not an ortdecode export: ortdecode.json is missing"):
        ortdecode.load(tmp_path)


def test_missing_graph_file(export_copy):
    (export_copy / "decoder_with_past_model.onnx").unlink()
    with pytest.raises(ModelFolderError, match="graph files listed in ortdecode.json are missing: decoder_with_past_model.onnx"):
        ortdecode.load(export_copy)


def test_newer_format_version(export_copy):
    edit_manifest(export_copy, lambda d: d.update(format_version=99))
    with pytest.raises(ModelFolderError, match="format_version 99 is not supported"):
        ortdecode.load(export_copy)


def test_manifest_names_are_checked_against_the_graph(export_copy):
    edit_manifest(export_copy, lambda d: d["layers"][1].update(past_self_key="past.1.self.k"))
    with pytest.raises(ModelFolderError, match="lacks what the manifest names: input past.1.self.k"):
        ortdecode.load(export_copy, decoder_layout="split")


def test_malformed_manifest(export_copy):
    (export_copy / "ortdecode.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="is not valid JSON"):
        ortdecode.load(export_copy)


def test_checksums_match_and_tampering_is_found(export_copy):
    ortdecode.verify_checksums(export_copy)
    with open(export_copy / "encoder_model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelFolderError, match="sha256 of encoder_model.onnx does not match"):
        ortdecode.verify_checksums(export_copy)


def test_manifest_round_trips(tiny_v1):
    manifest = ortdecode.read_manifest(tiny_v1.export)
    assert ortdecode.Manifest.from_dict(json.loads(manifest.to_json())) == manifest
