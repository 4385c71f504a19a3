"""Parity with transformers where sequences really end: a briefly trained tiny T5 whose rows end by EOS
at different lengths, so beam search's finished hypotheses, `early_stopping` (True, False, "never"),
`length_penalty` and `num_return_sequences` all decide the output. Compared sequence by sequence,
score by score, and step by step: the number of decoder steps must match too (an early stop that comes
too soon or too late changes it even when the sequences agree)."""

import numpy as np
import pytest
import torch

import ortdecode

from .conftest import TEXTS

EOS = 1


@pytest.fixture(scope="module")
def reference(ending_model):
    tokenizer = ending_model.hf_tokenizer()
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return ortdecode.load(ending_model.export, provider="cpu"), ending_model.torch_model(), tokenizer, encoded


def hf_generate(model, encoded, **options):
    with torch.no_grad():
        return model.generate(**encoded, return_dict_in_generate=True, output_scores=True, **options)


def ended_by_eos(sequences: np.ndarray) -> np.ndarray:
    return (sequences[:, 1:] == EOS).any(axis=1)


def assert_same_steps_and_scores(ours, theirs):
    assert len(ours.scores) == len(theirs.scores), "a different number of decoder steps"
    for step, (a, b) in enumerate(zip(ours.scores, theirs.scores)):
        b = b.numpy()
        finite = np.isfinite(b)
        np.testing.assert_array_equal(np.isfinite(a), finite, err_msg=f"step {step}")
        assert np.abs(a[finite] - b[finite]).max() <= 1e-4, f"step {step}"


BEAM_TABLE = [
    # (options, the smallest share of returned rows that must end by EOS, so the test keeps its teeth).
    # With 5 beams the three early-stopping modes take 9, 12 and 18 steps here; with length_penalty=2
    # they return different scores.
    (dict(num_beams=5, early_stopping=True), 0.8),
    (dict(num_beams=5, early_stopping=False), 0.8),
    (dict(num_beams=5, early_stopping="never"), 0.8),
    (dict(num_beams=4, early_stopping=False, length_penalty=2.0, num_return_sequences=2), 0.5),
    (dict(num_beams=4, early_stopping="never", length_penalty=2.0, num_return_sequences=2), 0.5),
    (dict(num_beams=5, early_stopping="never", length_penalty=-0.5, num_return_sequences=3), 0.8),
    (dict(num_beams=3, early_stopping=True, length_penalty=0.0, num_return_sequences=3), 0.8),
]


@pytest.mark.parametrize("options, eos_share", BEAM_TABLE,
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) if isinstance(o, dict) else "")
def test_beam_search_that_ends_matches_transformers(reference, options, eos_share):
    generator, model, tokenizer, encoded = reference
    options = dict(max_new_tokens=20, **options)
    theirs = hf_generate(model, encoded, **options)
    ours = generator.generate(TEXTS, return_scores=True, **options)
    expected = theirs.sequences.numpy()
    np.testing.assert_array_equal(ours.sequences, expected)
    np.testing.assert_allclose(ours.sequences_scores, theirs.sequences_scores.numpy(), atol=1e-4)
    assert ours.texts == tokenizer.batch_decode(expected, skip_special_tokens=True)
    assert_same_steps_and_scores(ours, theirs)
    ends = ended_by_eos(expected)
    assert ours.finish_reasons == ["eos" if e else "length" for e in ends]
    assert ends.mean() >= eos_share, f"only {ends.mean():.0%} of the rows end by EOS: the test lost its power"


@pytest.mark.parametrize("options", [dict(), dict(min_new_tokens=4), dict(repetition_penalty=1.3)], ids=str)
def test_greedy_rows_end_by_eos_at_their_own_step(reference, options):
    generator, model, _, encoded = reference
    theirs = hf_generate(model, encoded, max_new_tokens=20, **options)
    ours = generator.generate(TEXTS, max_new_tokens=20, return_scores=True, **options)
    expected = theirs.sequences.numpy()
    np.testing.assert_array_equal(ours.sequences, expected)
    assert_same_steps_and_scores(ours, theirs)
    ends = ended_by_eos(expected)
    assert ours.finish_reasons == ["eos" if e else "length" for e in ends]
    assert ends.mean() >= 0.8
    assert len({int(np.argmax(row[1:] == EOS)) for row in expected[ends]}) >= 3  # rows end at different steps


def test_default_model_beam_search_takes_the_steps_transformers_takes(default_model_dir):
    """On the trained default model with early_stopping="never": same outputs and the same number of steps
    (30: "never" keeps going while a longer hypothesis could still win under length_penalty=2)."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    prompts = ["spell out: 4567", "ordinal: 21"]
    model = T5ForConditionalGeneration.from_pretrained(default_model_dir).eval()
    encoded = AutoTokenizer.from_pretrained(default_model_dir)(prompts, padding=True, return_tensors="pt")
    options = dict(max_new_tokens=30, num_beams=3, early_stopping="never", length_penalty=2.0, num_return_sequences=2)
    theirs = hf_generate(model, encoded, **options)
    ours = ortdecode.load(default_model_dir, provider="cpu").generate(prompts, return_scores=True, **options)
    np.testing.assert_array_equal(ours.sequences, theirs.sequences.numpy())
    np.testing.assert_allclose(ours.sequences_scores, theirs.sequences_scores.numpy(), atol=1e-4)
    assert len(ours.scores) == len(theirs.scores) == 30
    assert ours.finish_reasons == ["eos" if e else "length" for e in ended_by_eos(theirs.sequences.numpy())]
    assert ended_by_eos(theirs.sequences.numpy()).sum() >= 3
