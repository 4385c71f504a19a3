"""The command line, run as users run it: a subprocess, output and exit status checked."""

import json
import subprocess
import sys

import numpy as np
import pytest

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
        "ok    manifest", "ok    sha256", "ok    load (split decoder)", "ok    smoke decode (split decoder)",
        "ok    load (merged decoder)", "ok    smoke decode (merged decoder)"]
    assert lines[-1].endswith("all 6 checks passed")


def test_check_reports_each_failure_and_exits_1(tiny_v1, tmp_path):
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(tiny_v1.export, copy)
    with open(copy / "decoder_model_merged.onnx", "r+b") as handle:  # damage the merged decoder only
        handle.truncate(1000)
    run = ortdecode("check", str(copy))
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert "FAIL  sha256: " in lines[1] and "decoder_model_merged.onnx does not match" in lines[1]
    assert lines[2].startswith("ok    load (split decoder)") and lines[3].startswith("ok    smoke decode (split")
    assert lines[4].startswith("FAIL  load (merged decoder)") and "decoder_model_merged.onnx" in lines[4]
    assert lines[-1].endswith("2 of 5 checks failed")
