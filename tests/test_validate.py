"""Validation you can trust: the float64 parity judge, `ortdecode validate`, and adopting Optimum exports."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import ortdecode
from ortdecode_export import adopt_optimum_export, export_model, validate_export
from ortdecode_export.checkpoints import make_random_t5
from ortdecode_export.parity import greedy_disagreements, judge

from .conftest import TEXTS


def ortdecode_cli(*args):
    return subprocess.run([sys.executable, "-m", "ortdecode.cli", *args], capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------- the judge on hand-made logits
def test_a_greedy_difference_is_excused_only_at_a_near_tie():
    reference = np.array([[5.0, 4.99, 0.0], [5.0, 3.0, 0.0]])
    export = np.array([[4.99, 5.0, 0.0], [3.0, 5.0, 0.0]])  # both rows flip their argmax
    # Row 0: float64's gap 0.01 <= 2 x the row's error 0.01, a near-tie; row 1: gap 2, error 2 > tolerance 0.05.
    assert greedy_disagreements(export, reference, tolerance=0.05) == (1, 1)
    assert greedy_disagreements(reference.astype(np.float32), reference, tolerance=0.05) == (0, 0)


def test_the_judge_scales_with_what_float32_costs_and_atol_overrides_it():
    rng = np.random.default_rng(0)
    exact = rng.standard_normal((4, 50)) * 100
    torch32 = exact + 1e-3  # PyTorch float32 is 1e-3 away from float64 here
    verdict = judge(exact + 2e-3, torch32, exact)
    assert verdict.passed and verdict.rule == "parity" and verdict.err_vs_float64 == pytest.approx(2e-3)
    assert not judge(exact + 1.0, torch32, exact).passed  # a real defect: 1000 x float32's own error
    strict = judge(exact + 2e-3, torch32, exact, atol=1e-4)
    assert not strict.passed and strict.rule == "atol" and "atol 0.0001" in strict.reason
    assert judge(exact + 1.0, torch32, exact, judged=False).passed is None  # int8: measured, not judged
    with pytest.raises(ValueError, match="`dtype` has to be one of float32, float16, but is 'int8'"):
        judge(exact, torch32, exact, dtype="int8")


# ---------------------------------------------------------------- the shapes
@pytest.fixture(scope="module")
def flan_t5_small_layout(tmp_path_factory, default_model_dir):
    """flan-t5-small's layer shapes (d_model 512, 6 heads x d_kv 64, gated-GELU, untied), one layer each
    side, initializer_factor 1.5 so the logits reach ~100-200 as a trained model's do."""
    root = tmp_path_factory.mktemp("flan")
    return make_random_t5(root / "ckpt", "tiny-v1.1", tokenizer_dir=default_model_dir, initializer_factor=1.5,
                          d_model=512, num_heads=6, d_kv=64, d_ff=1024, num_layers=1, num_decoder_layers=1)


def test_a_correct_float32_export_with_large_logits_passes_where_atol_1e4_refused_it(flan_t5_small_layout, tmp_path):
    manifest = export_model(str(flan_t5_small_layout), tmp_path / "onnx", progress=False)
    record = manifest.validation
    assert record["passed"] is True and record["rule"] == "parity" and record["logits_scale"] > 50
    # The old judge (max |export - PyTorch float32| <= 1e-4) fails this correct export: PyTorch float32
    # itself is as far from float64.
    assert record["max_abs_diff"] > 1e-4 and record["torch_float32_vs_float64"] > 1e-4
    assert record["max_abs_diff_float64"] <= record["tolerance"] and record["greedy_mismatches"] == 0
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ortdecode_export.validate import compare_with_pytorch

    model = AutoModelForSeq2SeqLM.from_pretrained(flan_t5_small_layout).eval()
    strict = compare_with_pytorch(tmp_path / "onnx", model, AutoTokenizer.from_pretrained(tmp_path / "onnx"), atol=1e-4)
    assert strict.passed is False and "> atol 0.0001" in strict.reason


def test_validation_of_a_deeper_decoder_uses_the_uncached_reference(tmp_path, default_model_dir):
    """t5-efficient "DL" shapes: 2 encoder, 3 decoder layers; transformers 4.57's cached generate raises
    IndexError on them."""
    checkpoint = make_random_t5(tmp_path / "ckpt", "tiny-v1.1", seed=3, tokenizer_dir=default_model_dir,
                                num_layers=2, num_decoder_layers=3)
    manifest = export_model(str(checkpoint), tmp_path / "onnx", progress=False)
    assert manifest.validation["passed"] is True and manifest.num_decoder_layers == 3
    report = validate_export(tmp_path / "onnx", checkpoint, texts=TEXTS[:3], num_beams=2, max_new_tokens=6, steps=4)
    assert report.passed and report.greedy_identical == 1.0 and report.beam_identical == 1.0


# ---------------------------------------------------------------- ortdecode validate
def test_validate_command_table_passes_on_the_right_checkpoint(tiny_v1, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:3]) + "\n")
    run = ortdecode_cli("validate", str(tiny_v1.export), "--reference", str(tiny_v1.checkpoint), "--texts", str(texts),
                        "--num-beams", "2", "--max-new-tokens", "6", "--steps", "4")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["step", "vs", "float32", "vs", "float64"] and len(lines) == 1 + 4 + 4
    assert "greedy outputs identical to transformers': 100% of 3" in run.stdout
    assert "beam search (2 beams) outputs identical: 100% of 3" in run.stdout
    assert lines[-1].startswith("PASSED: max |logits - float64 logits| = ")


def test_validate_command_json_fails_against_another_checkpoint(tiny_models):
    run = ortdecode_cli("validate", str(tiny_models["tiny-v1"].export), "--reference",
                        str(tiny_models["tiny-v1.1"].checkpoint), "--json", "--max-new-tokens", "4", "--steps", "3")
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert report["status"] == "failed" and report["passed"] is False
    assert report["max_abs_diff_float64"] > report["tolerance"] and len(report["step_errors_float64"]) == 3


def test_validate_export_refuses_bad_arguments(tiny_v1):
    with pytest.raises(ValueError, match="`num_beams`, `max_new_tokens` and `steps` have to be >= 1, but are 0"):
        validate_export(tiny_v1.export, tiny_v1.checkpoint, num_beams=0)
    with pytest.raises(ValueError, match="`texts` has to be a non-empty list of non-empty strings"):
        validate_export(tiny_v1.export, tiny_v1.checkpoint, texts=[" "])


# ---------------------------------------------------------------- adopting Optimum exports
@pytest.fixture(scope="module")
def optimum_export(tmp_path_factory, tiny_v1):
    from optimum.exporters.onnx import main_export

    folder = tmp_path_factory.mktemp("optimum") / "tiny-v1-optimum"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(tiny_v1.checkpoint), output=folder, task="text2text-generation-with-past", device="cpu")
    return folder


def test_an_optimum_export_is_adopted_and_decodes_like_ortdecodes_own(optimum_export, tiny_v1, tmp_path):
    assert not (optimum_export / "ortdecode.json").exists()
    run = ortdecode_cli("generate", "--model", str(optimum_export), TEXTS[0])
    assert run.returncode == 1 and f"run `ortdecode adopt {optimum_export} OUT_DIR`" in run.stderr
    manifest = adopt_optimum_export(optimum_export, tmp_path / "adopted", reference=tiny_v1.checkpoint, progress=False)
    assert manifest.validation["passed"] is True and manifest.export_options["adopted_from"] == str(optimum_export)
    ours = ortdecode.load(tiny_v1.export, decoder_layout="split").generate(TEXTS, max_new_tokens=8, num_beams=2)
    adopted = ortdecode.load(tmp_path / "adopted", decoder_layout="split").generate(TEXTS, max_new_tokens=8,
                                                                                    num_beams=2)
    np.testing.assert_array_equal(adopted.sequences, ours.sequences)
    assert sorted(p.name for p in optimum_export.iterdir()) == sorted(  # the Optimum folder is left as it was
        p.name for p in optimum_export.iterdir() if p.name != "ortdecode.json")


def test_export_of_an_optimum_folder_adopts_it_unvalidated(optimum_export, tmp_path):
    run = ortdecode_cli("export", str(optimum_export), str(tmp_path / "adopted"))
    assert run.returncode == 0, run.stderr
    assert ortdecode.read_manifest(tmp_path / "adopted").validation == {"status": "skipped"}
    with pytest.warns(ortdecode.UnvalidatedExportWarning, match="never compared with PyTorch"):
        ortdecode.load(tmp_path / "adopted")
    with pytest.raises(ValueError, match="is an Optimum export: it is adopted as it is"):
        export_model(str(optimum_export), tmp_path / "int8", quantize="int8", progress=False)


def test_validate_command_refuses_a_missing_texts_file(tiny_v1, tmp_path):
    run = ortdecode_cli("validate", str(tiny_v1.export), "--reference", str(tiny_v1.checkpoint), "--texts",
                        str(tmp_path / "missing.txt"))
    assert run.returncode == 2 and run.stderr.startswith("ortdecode: error: --texts ") and "cannot read" in run.stderr
