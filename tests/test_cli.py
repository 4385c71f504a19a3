"""The command line, run as users run it: a subprocess, output and exit status checked."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from ortdecode import load
from ortdecode.manifest import sha256_of

from .conftest import TEXTS, transformers_token_logprobs


def ortdecode(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ortdecode.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=600)


def assert_one_line_error(run, *fragments):
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_generate_json_and_plain(tiny_v1):
    plain = ortdecode("generate", "--model", str(tiny_v1.export), "--provider", "cpu", "--max-new-tokens", "6",
                      TEXTS[0], TEXTS[1])
    assert plain.returncode == 0, plain.stderr
    as_json = ortdecode("generate", "--model", str(tiny_v1.export), "--max-new-tokens", "6", "--json",
                        TEXTS[0], TEXTS[1])
    data = json.loads(as_json.stdout)
    assert [r["input"] for r in data["results"]] == TEXTS[:2]
    assert [r["outputs"][0] for r in data["results"]] == plain.stdout.splitlines()


def test_generate_reads_stdin(tiny_v1):
    run = ortdecode("generate", "--model", str(tiny_v1.export), "--max-new-tokens", "4", "-",
                    stdin="\n".join(TEXTS[:3]) + "\n")
    assert run.returncode == 0 and len(run.stdout.splitlines()) == 3


def test_generate_options_reach_the_engine(tiny_v1):
    run = ortdecode("generate", "--model", str(tiny_v1.export), "--max-new-tokens", "5", "--num-beams", "3",
                    "--num-return-sequences", "3", "--json", TEXTS[2])
    assert len(json.loads(run.stdout)["results"][0]["outputs"]) == 3


def test_generate_flags_for_transformers_processors_match_the_python_api(tiny_v1):
    import ortdecode as api

    flags = ["--suppress-tokens", "4,5", "--forced-bos-token-id", "7", "--encoder-repetition-penalty", "1.5",
             "--exponential-decay-length-penalty", "2,1.5", "--forced-eos-token-id", "1", "--renormalize-logits",
             "--do-sample", "--min-p", "1.0", "--typical-p", "0.99", "--epsilon-cutoff", "1e-4", "--eta-cutoff", "1e-3"]
    run = ortdecode("generate", "--model", str(tiny_v1.export), "--max-new-tokens", "6", "--json", *flags, TEXTS[1])
    assert run.returncode == 0, run.stderr
    expected = api.load(tiny_v1.export, provider="cpu").generate(
        TEXTS[1], max_new_tokens=6, suppress_tokens=[4, 5], forced_bos_token_id=7, encoder_repetition_penalty=1.5,
        exponential_decay_length_penalty=(2, 1.5), forced_eos_token_id=[1], renormalize_logits=True, do_sample=True,
        min_p=1.0, typical_p=0.99, epsilon_cutoff=1e-4, eta_cutoff=1e-3)
    assert json.loads(run.stdout)["results"][0]["outputs"] == expected.texts


@pytest.mark.parametrize("flags, fragment", [
    (["--suppress-tokens", "4,x"], "argument --suppress-tokens: takes token ids separated by commas (e.g. 3,7,9), "
                                   "but is '4,x'"),
    (["--exponential-decay-length-penalty", "10"], "argument --exponential-decay-length-penalty: takes START,FACTOR "
                                                   "(an integer and a float, e.g. 10,1.05), but is '10'"),
    # Checked against the manifest's vocabulary before the model loads.
    (["--forced-bos-token-id", "999"], "`forced_bos_token_id` has to hold token ids in [0, 160), but holds [999]"),
])
def test_generate_flags_with_bad_values_exit_2(tiny_v1, flags, fragment):
    run = ortdecode("generate", "--model", str(tiny_v1.export), *flags, TEXTS[0])
    assert run.returncode == 2
    assert_one_line_error(run, fragment)


def test_score_prints_transformers_log_probs(tiny_v1):
    run = ortdecode("score", "--model", str(tiny_v1.export), "--source", TEXTS[0], "--target", "seventy-one",
                    "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    [(labels, logprobs)] = transformers_token_logprobs(tiny_v1.checkpoint, [TEXTS[0]], ["seventy-one"])
    assert data["token_ids"] == labels and len(data["tokens"]) == len(labels)
    np.testing.assert_allclose(data["token_logprobs"], logprobs, atol=1e-4)
    assert data["total_logprob"] == pytest.approx(logprobs.sum(), abs=1e-3)


def test_missing_model_folder(tmp_path):
    assert_one_line_error(ortdecode("generate", "--model", str(tmp_path / "nope"), "hi"), "does not exist")


def test_folder_that_is_not_an_export(tmp_path):
    assert_one_line_error(ortdecode("generate", "--model", str(tmp_path), "hi"), "is not an ortdecode export")


@pytest.mark.parametrize("args, fragment", [
    (["--top-p", "1.5", "--do-sample"], "`top_p` has to be a float in (0, 1], but is 1.5"),
    (["--num-beams", "0"], "`num_beams` has to be an integer >= 1, but is 0"),
    (["--max-new-tokens", "0"], "`max_new_tokens` has to be an integer >= 1, but is 0"),
    (["--temperature", "0", "--do-sample"], "`temperature`"),
])
def test_invalid_options(tiny_v1, args, fragment):
    assert_one_line_error(ortdecode("generate", "--model", str(tiny_v1.export), *args, "hi"), fragment)


def test_malformed_command_line_is_one_line_too():
    assert_one_line_error(ortdecode("generate", "--max-new-tokens", "many", "hi"), "invalid int value")


def test_export_refuses_a_non_empty_folder(tiny_v1, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    run = ortdecode("export", str(tiny_v1.checkpoint), str(tmp_path))
    assert_one_line_error(run, "is not empty; pass --force")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_export_of_a_missing_model(tmp_path):
    assert_one_line_error(ortdecode("export", str(tmp_path / "no-such-model"), str(tmp_path / "out")), "cannot load MODEL")


def test_verify(tiny_v1):
    run = ortdecode("verify", str(tiny_v1.export))
    assert run.returncode == 0 and "match their sha256" in run.stdout


def test_export_of_a_hub_id_without_network_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub on this machine: fail fast, not after timeouts
    assert_one_line_error(ortdecode("export", "google/flan-t5-small", str(tmp_path / "out")),
                          "cannot load MODEL 'google/flan-t5-small'")


def test_check_passes_on_a_good_export(tiny_v1):
    run = ortdecode("check", str(tiny_v1.export))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "ok    manifest", "ok    validation", "ok    sha256",
        "ok    load (with-past decoder)", "ok    smoke decode (with-past decoder)",
        "ok    load (merged decoder)", "ok    smoke decode (merged decoder)",
        "ok    load (split decoder)", "ok    smoke decode (split decoder)"]
    assert lines[-1].endswith("all 9 checks passed")


def test_check_reports_each_failure_and_exits_1(tiny_v1, tmp_path):
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(tiny_v1.export, copy)
    with open(copy / "decoder_model_merged.onnx", "r+b") as handle:  # damage the merged decoder only
        handle.truncate(1000)
    run = ortdecode("check", str(copy))
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert "FAIL  sha256: " in lines[2] and "decoder_model_merged.onnx does not match" in lines[2]
    assert lines[3].startswith("ok    load (with-past decoder)") and lines[4].startswith("ok    smoke decode (with-past")
    assert lines[5].startswith("FAIL  load (merged decoder)") and "decoder_model_merged.onnx" in lines[5]
    assert lines[6].startswith("ok    load (split decoder)") and lines[7].startswith("ok    smoke decode (split")
    assert lines[-1].endswith("2 of 8 checks failed")


def test_an_unexpected_exception_is_one_line_internal_error(tiny_v1, tmp_path, monkeypatch):
    import shutil

    from ortdecode.cli import main

    broken = tmp_path / "broken"
    shutil.copytree(tiny_v1.checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    run = ortdecode("export", str(broken), str(tmp_path / "out"), "--no-validate")
    last = run.stderr.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("ortdecode: internal error: SafetensorError: ") and "Traceback" not in run.stderr
    assert last.endswith("; set ORTDECODE_DEBUG=1 for the traceback")
    assert run.returncode == 1 and not (tmp_path / "out").exists()
    monkeypatch.setenv("ORTDECODE_DEBUG", "1")  # the exception itself, for its traceback
    with pytest.raises(Exception, match="header too large"):
        main(["export", str(broken), str(tmp_path / "out"), "--no-validate"])


def test_export_while_another_process_exports_into_the_same_folder(tiny_v1, tmp_path):
    from ortdecode_export.out_dir import export_lock

    with export_lock(tmp_path / "out"):
        run = ortdecode("export", str(tiny_v1.checkpoint), str(tmp_path / "out"), "--no-validate")
    assert_one_line_error(run, "another export into", "is running")
    assert run.returncode == 2


def test_failed_and_unvalidated_exports_fail_check_and_need_allow_unvalidated(tiny_v1, tmp_path):
    import shutil

    from .test_manifest import edit_manifest

    failed, unvalidated = tmp_path / "failed", tmp_path / "unvalidated"
    for folder, record in ((failed, {"status": "failed", "passed": False, "reason": "max |...| = 3 > 0.01"}),
                           (unvalidated, {"status": "skipped"})):
        shutil.copytree(tiny_v1.export, folder)
        edit_manifest(folder, lambda d: d.update(validation=record))
        run = ortdecode("check", str(folder))
        assert run.returncode == 1 and run.stdout.splitlines()[1].startswith("FAIL  validation: "), run.stdout
    assert_one_line_error(ortdecode("generate", "--model", str(failed), TEXTS[0]), "--atol", "--allow-unvalidated")
    run = ortdecode("generate", "--model", str(failed), "--allow-unvalidated", "--max-new-tokens", "3", TEXTS[0])
    assert run.returncode == 0 and run.stdout.strip(), run.stderr
    run = ortdecode("score", "--model", str(unvalidated), "--provider", "cpu", "--source", TEXTS[0],
                    "--target", "seven")
    assert run.returncode == 0 and run.stderr.startswith("ortdecode: warning: ") and "never compared" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- rough edges (issue 10)
def test_version_is_the_installed_distributions():
    from importlib import metadata

    import ortdecode as package

    run = ortdecode("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"ortdecode {package.__version__}"
    assert package.__version__ == metadata.version("ortdecode")


def test_generation_interrupted_is_public_and_documented():
    from pathlib import Path

    import ortdecode as package
    from ortdecode.errors import GenerationInterrupted

    assert package.GenerationInterrupted is GenerationInterrupted and "GenerationInterrupted" in package.__all__
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    finish_line = next(line for line in readme.splitlines() if "result.finish_reasons" in line)
    assert "interrupted" in finish_line


def test_stdin_keeps_one_output_per_line_and_refuses_a_blank_line_by_number(tiny_v1):
    run = ortdecode("generate", "--model", str(tiny_v1.export), "--max-new-tokens", "4", "-",
                    stdin=f"{TEXTS[0]}\n \n{TEXTS[1]}\n")
    assert_one_line_error(run, "stdin line 2 is empty or whitespace only")
    assert run.returncode == 2 and run.stdout == ""


def test_stream_json_prints_json_lines_ending_with_the_finish_reason(tiny_v1):
    model = ("--model", str(tiny_v1.export), "--max-new-tokens", "6")
    run = ortdecode("generate", *model, "--stream", "--json", TEXTS[0], TEXTS[1])
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    plain = ortdecode("generate", *model, "--json", TEXTS[0], TEXTS[1])
    expected = json.loads(plain.stdout)["results"]
    for index in (0, 1):
        mine = [r for r in records if r["input"] == index]
        assert "".join(r["piece"] for r in mine[:-1]) == mine[-1]["text"] == expected[index]["outputs"][0]
        assert mine[-1]["finish_reason"] == expected[index]["finish_reasons"][0]


def test_stream_with_beams_is_refused_without_printing_anything(tiny_v1):
    run = ortdecode("generate", "--model", str(tiny_v1.export), "--stream", "--num-beams", "2", TEXTS[0])
    assert_one_line_error(run, "`stream` decodes one sequence")
    assert run.stdout == ""


def test_too_long_input_names_the_command_line_flags(tiny_v1):
    run = ortdecode("generate", "--model", str(tiny_v1.export), "--max-input-tokens", "3", TEXTS[0], TEXTS[1])
    length = len(tiny_v1.hf_tokenizer()(TEXTS[0]).input_ids)  # the first TEXT, counted from 1 as stdin lines are
    assert_one_line_error(run, f"input 1 has {length} tokens, more than --max-input-tokens (3)", "--truncate-input")
    assert run.returncode == 2


def test_truncation_notice_is_one_stderr_line(tiny_v1):
    run = ortdecode("generate", "--model", str(tiny_v1.export), "--provider", "cpu", "--max-new-tokens", "3",
                    "--max-input-tokens", "3", "--truncate-input", TEXTS[1])
    assert run.returncode == 0 and len(run.stdout.splitlines()) == 1
    assert run.stderr.splitlines() == ["ortdecode: warning: 1 input(s) longer than max_input_tokens=3 tokens were "
                                       "truncated"]


def test_score_refuses_a_repeated_source(tiny_v1):
    run = ortdecode("score", "--model", str(tiny_v1.export), "--source", "a", "--source", "b", "--target", "c")
    assert_one_line_error(run, "--source was given 2 times; score takes one --source and one --target")
    assert run.returncode == 2


@pytest.mark.parametrize("layout", ["with-past", "split", "merged"])
def test_decoder_layout_picks_the_graphs(tiny_v1, layout):
    run = ortdecode("generate", "--model", str(tiny_v1.export), "--provider", "cpu", "--decoder-layout", layout, "-v",
                    "--max-new-tokens", "6", TEXTS[0])
    assert run.returncode == 0 and f"({layout} decoder) on cpu" in run.stderr
    auto = ortdecode("generate", "--model", str(tiny_v1.export), "--max-new-tokens", "6", TEXTS[0])
    assert run.stdout == auto.stdout


def test_decoder_layout_that_was_not_exported_is_one_line():
    run = ortdecode("generate", "--decoder-layout", "merged", "spell out: 4")  # the default model is split only
    assert_one_line_error(run, "decoder_layout='merged' but the export has no decoder_merged graph")
    assert run.returncode == 1


def test_split_layout_stores_the_decoder_weights_twice(tiny_v1):
    """What the README says of --layout split: the pair holds the decoder weights twice, the merged graph once."""
    import onnx
    from onnx import numpy_helper

    def weight_bytes(file):
        graph = onnx.load(str(tiny_v1.export / file)).graph
        return sum(numpy_helper.to_array(t).nbytes for t in graph.initializer if np.prod(t.dims) >= 1024)

    first, with_past = weight_bytes("decoder_model.onnx"), weight_bytes("decoder_with_past_model.onnx")
    merged = weight_bytes("decoder_model_merged.onnx")
    assert first == merged  # every decoder weight, as the merged graph holds them once
    assert first + with_past > 1.8 * merged  # with-past: all but the cross-attention key/value projections


def test_export_prints_one_summary_line_and_defaults_to_the_with_past_layout(tiny_v1, tmp_path):
    """The default CPU export: the encoder outputs the cross cache, one with-past decoder, weights in external
    data files the manifest checksums; it decodes as the split pair of the same checkpoint does."""
    out = tmp_path / "export"
    run = ortdecode("export", str(tiny_v1.checkpoint), str(out))
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "ortdecode.json").read_text())
    assert manifest["export_options"]["layout"] == "with-past"
    assert set(manifest["graphs"]) == {"encoder", "decoder_with_past", "cache_reorder"}
    assert not (out / "decoder_model.onnx").exists()
    for role in ("encoder", "decoder_with_past"):
        graph = manifest["graphs"][role]
        assert graph["external_data"] == {graph["file"] + ".data": sha256_of(out / (graph["file"]
                                                                                                      + ".data"))}
        tensors = onnx.load(str(out / graph["file"]), load_external_data=False).graph.initializer
        assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors if np.prod(t.dims) * 4 >= 1024)
    assert "present.0.encoder.key" in manifest["graphs"]["encoder"]["outputs"]
    ours = load(out).generate(TEXTS, max_new_tokens=8, num_beams=2)
    split = load(tiny_v1.export, decoder_layout="split").generate(TEXTS, max_new_tokens=8, num_beams=2)
    np.testing.assert_array_equal(ours.sequences, split.sequences)
    np.testing.assert_allclose(ours.sequences_scores, split.sequences_scores, atol=1e-5)
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    assert run.stdout.splitlines() == [
        f"ortdecode: exported {out} ({size_mb:.1f} MB, 3 graphs); validation: "
        + ", ".join(f"{k} {v:.3g}" for k, v in manifest["validation"].items()
                    if isinstance(v, float) and ("diff" in k or "error" in k))]


def test_missing_export_extra_names_both_install_forms(tmp_path):
    code = ("import sys; sys.modules['ortdecode_export'] = None; from ortdecode.cli import main; "
            f"sys.exit(main(['export', 'some-model', {str(tmp_path / 'out')!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert_one_line_error(run, 'pip install "ortdecode[export]"', 'pip install -e ".[export]"')


def test_license_is_an_spdx_string_for_setuptools_77():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # a TOML table is deprecated from setuptools 77
    assert "setuptools>=77" in project["build-system"]["requires"]
