"""Processors and warpers: hand-built cases, transformers' own classes as the reference, properties."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from transformers.generation import logits_process as hf

from ortdecode import GenerationConfig
from ortdecode.numerics import log_softmax
from ortdecode.processors import (MinLength, MinNewTokens, NoRepeatNGram, RepetitionPenalty, Temperature, TopK,
                                  TopP, build_processors)

from .conftest import random_logits

EOS = [1]


def reference(processor, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return processor(torch.from_numpy(input_ids), torch.from_numpy(scores.copy())).numpy()


def assert_same(ours: np.ndarray, theirs: np.ndarray):
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))  # same mask
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6, atol=1e-6)


PAIRS = [
    (lambda: RepetitionPenalty(1.3), lambda: hf.RepetitionPenaltyLogitsProcessor(1.3)),
    (lambda: RepetitionPenalty(0.7), lambda: hf.RepetitionPenaltyLogitsProcessor(0.7)),
    (lambda: NoRepeatNGram(2), lambda: hf.NoRepeatNGramLogitsProcessor(2)),
    (lambda: NoRepeatNGram(3), lambda: hf.NoRepeatNGramLogitsProcessor(3)),
    (lambda: MinLength(12, EOS), lambda: hf.MinLengthLogitsProcessor(12, EOS)),
    (lambda: MinLength(3, EOS), lambda: hf.MinLengthLogitsProcessor(3, EOS)),
    (lambda: MinLength(0, EOS), lambda: hf.MinLengthLogitsProcessor(0, EOS)),
    (lambda: MinNewTokens(1, 12, EOS), lambda: hf.MinNewTokensLengthLogitsProcessor(1, 12, EOS)),
    (lambda: MinNewTokens(4, 6, EOS), lambda: hf.MinNewTokensLengthLogitsProcessor(4, 6, EOS)),  # prompt counted
    (lambda: Temperature(0.7), lambda: hf.TemperatureLogitsWarper(0.7)),
    (lambda: Temperature(1.8), lambda: hf.TemperatureLogitsWarper(1.8)),
    (lambda: TopK(5), lambda: hf.TopKLogitsWarper(5)),
    (lambda: TopK(1), lambda: hf.TopKLogitsWarper(1)),
    (lambda: TopK(3, min_tokens_to_keep=6), lambda: hf.TopKLogitsWarper(3, min_tokens_to_keep=6)),
    (lambda: TopP(0.9), lambda: hf.TopPLogitsWarper(0.9)),
    (lambda: TopP(0.3), lambda: hf.TopPLogitsWarper(0.3)),
    (lambda: TopP(0.05, min_tokens_to_keep=2), lambda: hf.TopPLogitsWarper(0.05, min_tokens_to_keep=2)),
]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_matches_transformers_on_random_logits(ours, theirs, seed):
    rng = np.random.default_rng(seed)
    scores = random_logits(rng, rows=6, vocab=40)
    scores[0, :5] = -np.inf  # already-masked tokens stay masked
    input_ids = rng.integers(0, 40, size=(6, 9))
    input_ids[:, 3:6] = input_ids[:, 0:3]  # repeated n-grams
    assert_same(ours()(input_ids, scores), reference(theirs(), input_ids, scores))


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    scores = np.array([[2.0, -2.0, 1.0]], dtype=np.float32)
    out = RepetitionPenalty(2.0)(np.array([[0, 1]]), scores)
    np.testing.assert_array_equal(out, [[1.0, -4.0, 1.0]])


def test_no_repeat_ngram_bans_the_completing_token():
    out = NoRepeatNGram(2)(np.array([[5, 6, 7, 5]]), np.zeros((1, 10), dtype=np.float32))
    assert np.isneginf(out[0, 6]) and np.isfinite(np.delete(out[0], 6)).all()


def test_min_length_masks_eos_only_while_short():
    scores = np.zeros((2, 5), dtype=np.float32)
    assert np.isneginf(MinLength(3, EOS)(np.zeros((2, 2), np.int64), scores)[:, 1]).all()
    assert np.isfinite(MinLength(3, EOS)(np.zeros((2, 3), np.int64), scores)).all()


def test_top_k_keeps_ties_at_the_boundary():
    out = TopK(2)(None, np.array([[1.0, 3.0, 3.0, 3.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(np.isfinite(out), [[False, True, True, True, False]])


def test_top_p_keeps_at_least_one_token():
    out = TopP(0.01)(None, np.array([[0.0, 10.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(np.isfinite(out), [[False, True, False]])


def test_processor_order_is_transformers_order():
    user = lambda ids, scores: scores  # noqa: E731
    config = GenerationConfig(do_sample=True, temperature=0.5, top_k=10, top_p=0.9, repetition_penalty=1.2,
                              no_repeat_ngram_size=3, min_new_tokens=2, min_length=3)
    kinds = [type(p).__name__ if p is not user else "user" for p in build_processors(config, user_processors=[user])]
    assert kinds == ["RepetitionPenalty", "NoRepeatNGram", "MinLength", "MinNewTokens", "user", "Temperature", "TopK",
                     "TopP"]


def test_greedy_builds_no_warpers():
    config = GenerationConfig(temperature=0.5, top_k=10, top_p=0.9)
    assert build_processors(config) == []


def test_beam_sampling_keeps_two_tokens():
    config = GenerationConfig(do_sample=True, num_beams=3, top_k=1)
    top_k = [p for p in build_processors(config) if isinstance(p, TopK)][0]
    assert top_k.top_k == 2


@pytest.mark.parametrize("make, value", [(lambda: TopP(1.5), "1.5"), (lambda: TopP(0), "0"),
                                         (lambda: TopK(-3), "-3"), (lambda: Temperature(0.0), "0.0"),
                                         (lambda: RepetitionPenalty(-1.0), "-1.0"),
                                         (lambda: NoRepeatNGram(-1), "-1")])
def test_constructors_reject_invalid_values(make, value):
    with pytest.raises(ValueError, match=value):
        make()


@pytest.mark.parametrize("option, value, make", [("top_k", -3, TopK), ("top_p", 1.5, TopP),
                                                 ("no_repeat_ngram_size", -1, NoRepeatNGram),
                                                 ("repetition_penalty", -1.0, RepetitionPenalty)])
def test_an_option_has_one_message_in_the_config_and_the_processor(option, value, make):
    with pytest.raises(ValueError) as from_config:
        GenerationConfig(**{option: value})
    with pytest.raises(ValueError, match=f"^{re.escape(str(from_config.value))}$"):
        make(value)


def test_zero_disables_top_k_and_no_repeat_ngram_as_in_the_config():
    scores = random_logits(np.random.default_rng(0))
    np.testing.assert_array_equal(TopK(0)(None, scores), scores)
    np.testing.assert_array_equal(NoRepeatNGram(0)(np.zeros((4, 5), np.int64), scores), scores)


# ---------------------------------------------------------------- properties
logit_rows = arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(2, 60)),
                    elements=st.floats(-1e4, 1e4, width=32))


@settings(max_examples=200, deadline=None)
@given(scores=logit_rows, k=st.integers(1, 80), p=st.floats(0.01, 1.0), t=st.floats(0.05, 5.0))
def test_warpers_leave_a_valid_distribution_and_do_not_mutate(scores, k, p, t):
    original = scores.copy()
    for warper in (Temperature(t), TopK(k), TopP(p)):
        out = warper(None, scores)
        np.testing.assert_array_equal(scores, original)
        probs = np.exp(log_softmax(out.astype(np.float64)))
        assert np.isfinite(probs).all() and np.allclose(probs.sum(-1), 1.0)
        assert (np.isfinite(out).sum(-1) >= 1).all()


@settings(max_examples=100, deadline=None)
@given(scores=logit_rows)
def test_top_k_1_keeps_only_the_argmax(scores):
    out = TopK(1)(None, scores)
    kept = np.isfinite(out)
    assert kept[np.arange(len(scores)), scores.argmax(-1)].all()
    assert (scores[kept] == np.repeat(scores.max(-1), kept.sum(-1))).all()


@settings(max_examples=100, deadline=None)
@given(scores=logit_rows, extra=st.integers(0, 10))
def test_top_k_at_least_vocab_and_top_p_1_change_nothing(scores, extra):
    np.testing.assert_array_equal(TopK(scores.shape[1] + extra)(None, scores), scores)
    np.testing.assert_array_equal(TopP(1.0)(None, scores), scores)


@settings(max_examples=100, deadline=None)
@given(scores=logit_rows, masked=st.integers(0, 1))
def test_minus_inf_and_large_magnitudes_give_valid_probabilities(scores, masked):
    scores = scores.copy()
    scores[:, : masked * (scores.shape[1] - 1)] = -np.inf
    probs = np.exp(log_softmax(TopP(0.9)(None, scores).astype(np.float64)))
    assert np.isfinite(probs).all() and np.allclose(probs.sum(-1), 1.0)
