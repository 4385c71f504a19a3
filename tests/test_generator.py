"""The Python API: generate, stream, score, user processors, inputs and errors."""

import numpy as np
import pytest

import ortdecode
from ortdecode.errors import NonFiniteLogitsError
from ortdecode.numerics import log_softmax

from .conftest import TEXTS, transformers_token_logprobs


@pytest.fixture(scope="module")
def generator(tiny_v1):
    return ortdecode.load(tiny_v1.export, provider="cpu")


def test_texts_and_token_ids_give_the_same_result(generator):
    ids, mask = generator.tokenizer.encode(TEXTS[:3])
    from_text = generator.generate(TEXTS[:3], max_new_tokens=8)
    from_ids = generator.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8)
    np.testing.assert_array_equal(from_text.sequences, from_ids.sequences)


def test_attention_mask_defaults_to_non_padding(generator):
    ids, mask = generator.tokenizer.encode(TEXTS[:3])
    np.testing.assert_array_equal(generator.generate(input_ids=ids, max_new_tokens=6).sequences,
                                  generator.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6).sequences)


def test_result_shapes(generator):
    result = generator.generate(TEXTS[:3], max_new_tokens=5, num_beams=3, num_return_sequences=2,
                                return_logits=True, return_scores=True)
    assert len(result.texts) == len(result.finish_reasons) == result.sequences.shape[0] == 6
    assert result.sequences[:, 0].tolist() == [0] * 6  # decoder start token first
    assert result.sequences_scores.shape == (6,)
    assert all(step.shape == (9, generator.manifest.vocab_size) for step in result.logits)  # [batch * beams, vocab]
    # Random weights rarely end by EOS: each reason must match the sequence it names.
    ends = (result.sequences[:, 1:] == 1).any(axis=1)
    assert result.finish_reasons == ["eos" if e else "length" for e in ends]


def test_finish_reason_length_when_the_budget_runs_out(generator):
    result = generator.generate(TEXTS[0], max_new_tokens=2, min_new_tokens=2)
    assert result.finish_reasons == ["length"] and result.sequences.shape == (1, 3)


def test_each_row_stops_at_its_own_eos(generator):
    def force_early_eos_on_row_0(input_ids, scores):
        scores = scores.copy()
        if input_ids.shape[1] == 2:
            scores[0, 1] = 1e4
        return scores

    result = generator.generate(TEXTS[:2], max_new_tokens=6, min_new_tokens=0,
                                logits_processors=[force_early_eos_on_row_0])
    assert result.finish_reasons[0] == "eos"
    assert result.sequences[0, 2] == 1 and (result.sequences[0, 3:] == 0).all()  # pad after EOS


def test_user_processors_run_after_built_ins_and_see_the_running_ids(generator):
    seen = []

    def ban_token_5(input_ids, scores):
        seen.append(input_ids.shape)
        out = scores.copy()
        out[:, 5] = -np.inf
        return out

    result = generator.generate(TEXTS[:2], max_new_tokens=4, min_new_tokens=4, logits_processors=[ban_token_5],
                                return_scores=True)
    assert seen == [(2, 1), (2, 2), (2, 3), (2, 4)]
    assert (result.sequences[:, 1:] != 5).all()
    assert all(np.isneginf(step[:, 5]).all() for step in result.scores)


def test_nan_from_a_processor_names_the_step(generator):
    def poison_step_2(input_ids, scores):
        return scores * np.nan if input_ids.shape[1] == 3 else scores

    with pytest.raises(NonFiniteLogitsError, match="step 2: processed scores contain NaN"):
        generator.generate(TEXTS[0], max_new_tokens=5, min_new_tokens=5, logits_processors=[poison_step_2])


def test_stream_yields_pieces_that_add_up_to_generate(generator):
    pieces = list(generator.stream(TEXTS[1], max_new_tokens=12))
    assert len(pieces) > 1
    assert "".join(pieces) == generator.generate(TEXTS[1], max_new_tokens=12).texts[0]


def test_stream_refuses_beam_search(generator):
    with pytest.raises(ValueError, match="`num_beams` and `num_return_sequences` have to be 1"):
        next(generator.stream(TEXTS[0], num_beams=2))


TARGETS = ["seven", "4521", "one hundred twenty-three thousand four hundred fifty-six"]


def test_score_matches_transformers_teacher_forcing(generator, tiny_v1):
    """Each target token's log-probability equals transformers' (`model(..., labels=...)`, log-softmax
    at the label positions): catches a wrong shift of the labels or a wrong position."""
    scored = generator.score(TEXTS[:3], TARGETS, return_logits=True)
    reference = transformers_token_logprobs(tiny_v1.checkpoint, TEXTS[:3], TARGETS)
    for row, (labels, logprobs) in enumerate(reference):
        assert scored.tokens[row] == labels and labels[-1] == 1  # the target ends with EOS
        np.testing.assert_allclose(scored.token_logprobs[row], logprobs, atol=1e-4)
        assert scored.logits[row].shape == (len(labels), generator.manifest.vocab_size)
    np.testing.assert_allclose(scored.sequence_logprobs, [lp.sum() for _, lp in reference], atol=1e-3)


def test_score_equals_the_step_log_probs_of_a_forced_decode(generator):
    """Teacher forcing in one pass gives the log-probs that a step-by-step decode forced through the same
    tokens gives."""
    scored = generator.score(TEXTS[:3], TARGETS)
    longest = max(len(t) for t in scored.tokens)

    def force_targets(input_ids, scores):
        step = input_ids.shape[1] - 1
        forced = np.full_like(scores, -np.inf)
        for row, tokens in enumerate(scored.tokens):
            forced[row, tokens[step] if step < len(tokens) else 0] = 0.0
        return forced

    result = generator.generate(TEXTS[:3], max_new_tokens=longest, logits_processors=[force_targets],
                                return_logits=True)
    for row, (tokens, logprobs) in enumerate(zip(scored.tokens, scored.token_logprobs)):
        assert result.sequences[row, 1:1 + len(tokens)].tolist() == tokens
        stepwise = [log_softmax(result.logits[t][row])[token] for t, token in enumerate(tokens)]
        np.testing.assert_allclose(logprobs, stepwise, atol=1e-4)


def test_score_needs_matching_sources_and_targets(generator):
    with pytest.raises(ValueError, match="as many targets as sources.*2 sources and 1 targets"):
        generator.score(TEXTS[:2], TEXTS[:1])


def test_sampling_is_repeatable_with_a_seed_and_varies_without(generator):
    a = generator.generate(TEXTS[:2], do_sample=True, seed=3, max_new_tokens=8).sequences
    b = generator.generate(TEXTS[:2], do_sample=True, seed=3, max_new_tokens=8).sequences
    np.testing.assert_array_equal(a, b)
    many = {tuple(generator.generate(TEXTS[1], do_sample=True, max_new_tokens=8, top_k=0).sequences[0])
            for _ in range(5)}
    assert len(many) > 1
