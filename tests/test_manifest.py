"""Loading an export: what is checked, and the messages when something is wrong."""

import json
import os
import shutil
from pathlib import Path

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


def count_hashes(monkeypatch) -> list[str]:
    from ortdecode import manifest

    hashed, sha256_of = [], manifest.sha256_of
    monkeypatch.setattr(manifest, "sha256_of", lambda path: hashed.append(Path(path).name) or sha256_of(path))
    return hashed


def test_load_hashes_a_graph_again_only_when_it_changed(export_copy, monkeypatch, tmp_path):
    """`load` remembers the files that matched (by size, times, inode: ortdecode.verified) and hashes only
    the ones changed since; an explicit check hashes every file."""
    monkeypatch.setenv("ORTDECODE_CACHE_DIR", str(tmp_path / "cache"))
    hashed = count_hashes(monkeypatch)
    roles = ["encoder", "decoder", "decoder_with_past", "cache_reorder"]
    files = sorted(ortdecode.read_manifest(export_copy).graphs[role].file for role in roles)
    ortdecode.load(export_copy, provider="cpu", decoder_layout="split")
    assert sorted(hashed) == files
    hashed.clear()
    ortdecode.load(export_copy, provider="cpu", decoder_layout="split")
    assert hashed == []
    os.utime(export_copy / "encoder_model.onnx")  # touched, same bytes: hashed again, and it matches
    ortdecode.load(export_copy, provider="cpu", decoder_layout="split")
    assert hashed == ["encoder_model.onnx"]
    hashed.clear()
    ortdecode.verify_checksums(export_copy)
    assert sorted(hashed) == sorted(g.file for g in ortdecode.read_manifest(export_copy).graphs.values())
    garble(export_copy / "decoder_model.onnx")  # same size, other bytes
    with pytest.raises(ModelFolderError, match="sha256 of decoder_model.onnx does not match"):
        ortdecode.load(export_copy, provider="cpu", decoder_layout="split")
    # A manifest whose sha256 changed is not vouched for by a match with the old one.
    edit_manifest(export_copy, lambda d: d["graphs"]["encoder"].update(sha256="0" * 64))
    with pytest.raises(ModelFolderError, match="sha256 of encoder_model.onnx, decoder_model.onnx does not match"):
        ortdecode.load(export_copy, provider="cpu", decoder_layout="split")


def test_load_reads_a_graphs_external_data_names_once_and_not_again_while_it_is_unchanged(export_copy, monkeypatch,
                                                                                        tmp_path):
    """Reading the names walks the whole graph in Python: once per graph and load (the checksums read them;
    the check before ONNX Runtime reads the graph takes the manifest's names they matched), and not at all on
    later loads of unchanged graphs, whose names the record of verified files keeps; a graph touched since is
    read again."""
    from ortdecode import manifest

    monkeypatch.setenv("ORTDECODE_CACHE_DIR", str(tmp_path / "cache"))
    scanned = []
    real_scan = manifest.external_data_files
    monkeypatch.setattr(manifest, "external_data_files",
                        lambda path: scanned.append(Path(path).name) or real_scan(path))
    files = sorted(g.file for role, g in ortdecode.read_manifest(export_copy).graphs.items()
                   if role in ("encoder", "decoder", "decoder_with_past", "cache_reorder"))
    ortdecode.load(export_copy, provider="cpu", decoder_layout="split")
    assert sorted(scanned) == files
    scanned.clear()
    ortdecode.load(export_copy, provider="cpu", decoder_layout="split")
    assert scanned == []
    ortdecode.load(export_copy, provider="cpu", decoder_layout="split", verify=False)
    assert sorted(scanned) == files  # unverified: the runner reads each graph's names before ONNX Runtime does
    scanned.clear()
    os.utime(export_copy / "encoder_model.onnx")
    from ortdecode.manifest import verify_checksums

    verify_checksums(export_copy, roles=["encoder", "decoder_with_past"], trust_unchanged=True)
    assert scanned == ["encoder_model.onnx"]  # the touched graph; the other one's names came from the record


def test_load_works_when_the_record_of_verified_files_cannot_be_written(export_copy, monkeypatch, tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("ORTDECODE_CACHE_DIR", str(tmp_path / "not-a-folder"))
    hashed = count_hashes(monkeypatch)
    for _ in range(2):
        ortdecode.load(export_copy, provider="cpu", decoder_layout="split")
    assert len(hashed) == 8  # hashed both times, nothing failed


def test_manifest_round_trips(tiny_v1):
    manifest = ortdecode.read_manifest(tiny_v1.export)
    assert ortdecode.Manifest.from_dict(json.loads(manifest.to_json())) == manifest


# ---------------------------------------------------------------- broken folders: each named at load
def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def garble(path):
    """Overwrite the protobuf framing at the start (garbled weights would only be a different model)."""
    data = bytearray(path.read_bytes())
    data[:64] = bytes(range(200, 256)) + bytes(8)
    path.write_bytes(bytes(data))


def rehash(folder, file):
    """Make the manifest agree with a changed file, so the damage itself has to be caught."""
    from ortdecode.manifest import sha256_of

    def change(data):
        for graph in data["graphs"].values():
            if graph["file"] == file:
                graph["sha256"] = sha256_of(folder / file)
    edit_manifest(folder, change)


def drop_last_layer(data):
    data["layers"].pop()
    data["num_decoder_layers"] -= 1


BROKEN_FOLDERS = {
    "graph truncated": (lambda f: truncate(f / "decoder_model.onnx"),
                        "sha256 of decoder_model.onnx does not match"),
    "graph truncated, manifest rehashed": (lambda f: (truncate(f / "decoder_model.onnx"),
                                                      rehash(f, "decoder_model.onnx")), "decoder_model.onnx"),
    "graph garbled, manifest rehashed": (lambda f: (garble(f / "encoder_model.onnx"), rehash(f, "encoder_model.onnx")),
                                         "encoder_model.onnx"),
    "graph empty": (lambda f: ((f / "cache_reorder.onnx").write_bytes(b""), rehash(f, "cache_reorder.onnx")),
                    "cache_reorder.onnx"),
    "graph missing": (lambda f: (f / "encoder_model.onnx").unlink(), "missing: encoder_model.onnx"),
    "sha256 edited": (lambda f: edit_manifest(f, lambda d: d["graphs"]["encoder"].update(sha256="0" * 64)),
                      "sha256 of encoder_model.onnx does not match"),
    "manifest lists fewer layers": (lambda f: edit_manifest(f, drop_last_layer),
                                    "has inputs the manifest does not name"),
    "layer count disagrees with layers": (lambda f: edit_manifest(f, lambda d: d.update(num_decoder_layers=7)),
                                          "`num_decoder_layers` is 7, but `layers` names the cache tensors of 2"),
    "wrong head count": (lambda f: edit_manifest(f, lambda d: d.update(num_heads=3)),
                         "cache tensor .* but the manifest says tensor\\(float\\)\\[rows, 3, length"),
    "wrong vocab size": (lambda f: edit_manifest(f, lambda d: d.update(vocab_size=999)),
                         "logits have 160 entries, but the manifest says vocab_size 999"),
    "output name edited": (lambda f: edit_manifest(f, lambda d: d["names"].update(logits="scores")),
                           "lacks what the manifest names: output scores"),
    "graph input list edited": (lambda f: edit_manifest(f, lambda d: d["graphs"]["encoder"]["inputs"].append("x")),
                                "differ from those ortdecode.json lists"),
    "manifest field missing": (lambda f: edit_manifest(f, lambda d: d.pop("d_kv")), "incomplete or malformed"),
    "manifest not an object": (lambda f: (f / "ortdecode.json").write_text("[1, 2]"), "has to hold a JSON object"),
    "tokenizer missing": (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "tokenizer corrupt": (lambda f: (f / "tokenizer.json").write_text('{"version": "1.0", "model": 3}'),
                          "tokenizer.json is not a readable tokenizer"),
    "generation_config.json corrupt": (lambda f: (f / "generation_config.json").write_text("{eos"),
                                       "generation_config.json is not valid JSON"),
    "manifest names ../": (lambda f: edit_manifest(f, lambda d: d["graphs"]["encoder"].update(file="../enc.onnx")),
                           "'../enc.onnx' is not a plain path inside the model folder"),
    "manifest names an absolute path": (
        lambda f: edit_manifest(f, lambda d: d["graphs"]["encoder"].update(file=str(f / "encoder_model.onnx"))),
        "is not a plain path inside the model folder"),
}


@pytest.mark.parametrize("breakage", BROKEN_FOLDERS)
def test_a_broken_folder_is_refused_at_load_naming_the_problem(export_copy, breakage, record):
    breaker, message = BROKEN_FOLDERS[breakage]
    breaker(export_copy)
    with pytest.raises(ModelFolderError, match=message):
        ortdecode.load(export_copy, provider="cpu", decoder_layout="split")
    record("bad model folders refused at load", breakage)


def test_symlinks_out_of_the_folder_are_refused(export_copy, tmp_path, record):
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("encoder_model.onnx", "tokenizer.json"):
        shutil.move(export_copy / name, outside / name)
        (export_copy / name).symlink_to(outside / name)
        with pytest.raises(ModelFolderError, match=f"'{name}' leads outside the model folder"):
            ortdecode.load(export_copy, provider="cpu", decoder_layout="split")
        (export_copy / name).unlink()
        shutil.move(outside / name, export_copy / name)
        record("bad model folders refused at load", f"symlink out: {name}")
    ortdecode.load(export_copy, provider="cpu", decoder_layout="split")  # restored: loads again


@pytest.fixture
def external_data_export(export_copy):
    """The copy with the encoder's weights moved to an external-data file, as > 2 GB exports have them."""
    import onnx

    from ortdecode.manifest import sha256_of

    model = onnx.load(export_copy / "encoder_model.onnx")
    # onnx's threshold, as the exporters use it: ONNX Runtime cannot infer shapes from a small shape constant
    # stored outside (the saved graphs hold those as initializers)
    onnx.save(model, export_copy / "encoder_model.onnx", save_as_external_data=True, location="encoder.weights",
              size_threshold=1024)

    def change(data):
        data["graphs"]["encoder"].update(sha256=sha256_of(export_copy / "encoder_model.onnx"),
                                         external_data={"encoder.weights": sha256_of(export_copy / "encoder.weights")})
    edit_manifest(export_copy, change)
    return export_copy


def point_external_data_at(folder, location):
    import onnx

    model = onnx.load(folder / "encoder_model.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, folder / "encoder_model.onnx")
    rehash(folder, "encoder_model.onnx")


def test_external_data_is_hashed_and_checked(external_data_export, tiny_v1, record):
    reference = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout="split").generate("ordinal: 3")
    generator = ortdecode.load(external_data_export, provider="cpu", decoder_layout="split")
    assert generator.generate("ordinal: 3").texts == reference.texts
    with open(external_data_export / "encoder.weights", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelFolderError, match="sha256 of encoder.weights does not match"):
        ortdecode.load(external_data_export, provider="cpu", decoder_layout="split")
    record("bad model folders refused at load", "external data changed")


@pytest.mark.parametrize("where", ["../encoder.weights", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(external_data_export, tmp_path, where, record):
    outside = tmp_path / "encoder.weights"
    shutil.move(external_data_export / "encoder.weights", outside)
    if where == "absolute":
        location = str(outside)
    elif where == "symlink":
        (external_data_export / "link.weights").symlink_to(outside)
        location = "link.weights"
    else:
        location = where
    point_external_data_at(external_data_export, location)
    message = "leads outside the model folder" if where == "symlink" else "is not a plain path inside the model folder"
    with pytest.raises(ModelFolderError, match=message):
        ortdecode.load(external_data_export, provider="cpu", decoder_layout="split", verify=False)
    record("bad model folders refused at load", f"external data outside: {where}")


# ---------------------------------------------------------------- the validation record
@pytest.mark.parametrize("record, match", [
    ({"status": "failed", "passed": False, "reason": "max |logits - float64 logits| = 3 > 0.01"},
     "validation against PyTorch failed: max \\|logits - float64 logits\\| = 3 > 0.01.*--atol.*--allow-unvalidated"),
    ({"passed": False, "max_abs_diff": 0.5}, "validation against PyTorch failed: .* = 0.5"),  # before the judge
    ({"status": "crashed", "passed": False, "error": "IndexError: list index out of range"},
     "did not finish \\(IndexError: list index out of range\\).*Re-export"),
    ({"status": "running"}, "did not finish \\(no result recorded\\)"),
])
def test_an_export_whose_validation_failed_or_did_not_finish_is_refused(export_copy, record, match):
    edit_manifest(export_copy, lambda d: d.update(validation=record))
    with pytest.raises(ModelFolderError, match=match):
        ortdecode.load(export_copy)
    assert ortdecode.load(export_copy, allow_unvalidated=True).generate("spell out: 7", max_new_tokens=2).texts


def test_an_unvalidated_export_loads_with_one_warning(export_copy, recwarn):
    import warnings

    edit_manifest(export_copy, lambda d: d.update(validation={"status": "skipped"}))
    warnings.simplefilter("default")  # Python's default: each warning once per place
    for _ in range(3):
        ortdecode.load(export_copy)
    unvalidated = [w for w in recwarn if issubclass(w.category, ortdecode.UnvalidatedExportWarning)]
    assert len(unvalidated) == 1 and "never compared with PyTorch" in str(unvalidated[0].message)
    ortdecode.load(export_copy, allow_unvalidated=True)
    assert len([w for w in recwarn if issubclass(w.category, ortdecode.UnvalidatedExportWarning)]) == 1


def test_the_record_of_verified_files_lives_in_the_users_cache_folder(monkeypatch, tmp_path):
    from ortdecode.verified import RECORD_FILE, VerifiedFiles, cache_dir

    monkeypatch.setenv("ORTDECODE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("ORTDECODE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert VerifiedFiles().path == tmp_path / "xdg" / "ortdecode" / RECORD_FILE
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "ortdecode"
