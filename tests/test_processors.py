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
from ortdecode.processors import (EncoderNoRepeatNGram, EncoderRepetitionPenalty, EpsilonCutoff, EtaCutoff,
                                  ExponentialDecayLengthPenalty, ForcedTokens, LogitNormalization, MinLength, MinNewTokens,
                                  MinP, NoBadWords, NoRepeatNGram, PrefixAllowedTokens, RepetitionPenalty, SequenceBias,
                                  SuppressTokens, Temperature, TopK, TopP, Typical, build_processors)

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


# ---------------------------------------------------------------- transformers' other processors and warpers
# Three inputs, two rows each (beams or samples). Encoder rows: ids of each input, the first one right-padded
# (pad 0), holding the bigram (11, 12) that the even decoder rows end with.
ENCODER = np.random.default_rng(99).integers(3, 40, size=(3, 8))
ENCODER[:, 3:5] = [11, 12]
ENCODER[0, -2:] = 0
ENCODER_ROWS = np.repeat(ENCODER, 2, axis=0)


def allowed_tokens(batch_id, ids):
    return [batch_id, (int(ids[-1]) * 7) % 40, 39]


BIAS = {(12, 8): 2.5, (9,): -1.0, (11, 12, 13): -3.0, (1,): 0.5, tuple([4] * 12): 1.0}  # the last: longer than input
BAD_WORDS = [[12, 5], [11, 12, 6], [7], [1]]  # [1] is EOS: ignored
NEW_PAIRS = [
    (lambda: SequenceBias(list(BIAS.items())), lambda: hf.SequenceBiasLogitsProcessor(BIAS)),
    (lambda: NoBadWords(BAD_WORDS, EOS), lambda: hf.NoBadWordsLogitsProcessor(BAD_WORDS, EOS)),
    (lambda: EncoderRepetitionPenalty(1.5, ENCODER_ROWS),
     lambda: hf.EncoderRepetitionPenaltyLogitsProcessor(1.5, torch.from_numpy(ENCODER_ROWS))),
    (lambda: EncoderRepetitionPenalty(0.6, ENCODER_ROWS),
     lambda: hf.EncoderRepetitionPenaltyLogitsProcessor(0.6, torch.from_numpy(ENCODER_ROWS))),
    # transformers' class takes one encoder row per input and finds the rows per input itself.
    (lambda: EncoderNoRepeatNGram(2, ENCODER_ROWS), lambda: hf.EncoderNoRepeatNGramLogitsProcessor(2, torch.from_numpy(ENCODER))),
    (lambda: EncoderNoRepeatNGram(3, ENCODER_ROWS), lambda: hf.EncoderNoRepeatNGramLogitsProcessor(3, torch.from_numpy(ENCODER))),
    (lambda: EncoderNoRepeatNGram(1, ENCODER_ROWS), lambda: hf.EncoderNoRepeatNGramLogitsProcessor(1, torch.from_numpy(ENCODER))),
    (lambda: PrefixAllowedTokens(allowed_tokens, 2), lambda: hf.PrefixConstrainedLogitsProcessor(allowed_tokens, 2)),
    (lambda: ForcedTokens(1, [5]), lambda: hf.ForcedBOSTokenLogitsProcessor(5)),
    (lambda: ForcedTokens(8, [1, 3]), lambda: hf.ForcedEOSTokenLogitsProcessor(9, [1, 3])),
    (lambda: ExponentialDecayLengthPenalty(2, 1.5, [1, 3], 1),
     lambda: hf.ExponentialDecayLengthPenalty((2, 1.5), [1, 3], 1)),
    (lambda: ExponentialDecayLengthPenalty(0, 0.8, EOS, 1), lambda: hf.ExponentialDecayLengthPenalty((0, 0.8), EOS, 1)),
    (lambda: SuppressTokens([3, 7, 39]), lambda: hf.SuppressTokensLogitsProcessor([3, 7, 39])),
    (lambda: SuppressTokens([3, 7], at_length=1), lambda: hf.SuppressTokensAtBeginLogitsProcessor([3, 7], 1)),
    (lambda: SuppressTokens([3, 7], at_length=3), lambda: hf.SuppressTokensAtBeginLogitsProcessor([3, 7], 3)),
    (lambda: LogitNormalization(), lambda: hf.LogitNormalization()),
    (lambda: MinP(0.1), lambda: hf.MinPLogitsWarper(0.1)),
    (lambda: MinP(0.0), lambda: hf.MinPLogitsWarper(0.0)),
    (lambda: MinP(1.0), lambda: hf.MinPLogitsWarper(1.0)),
    (lambda: MinP(0.3, min_tokens_to_keep=4), lambda: hf.MinPLogitsWarper(0.3, min_tokens_to_keep=4)),
    (lambda: Typical(0.9), lambda: hf.TypicalLogitsWarper(0.9)),
    (lambda: Typical(0.2), lambda: hf.TypicalLogitsWarper(0.2)),
    (lambda: Typical(0.5, min_tokens_to_keep=3), lambda: hf.TypicalLogitsWarper(0.5, min_tokens_to_keep=3)),
    (lambda: EpsilonCutoff(0.05), lambda: hf.EpsilonLogitsWarper(0.05)),
    (lambda: EpsilonCutoff(0.5, min_tokens_to_keep=4), lambda: hf.EpsilonLogitsWarper(0.5, min_tokens_to_keep=4)),
    (lambda: EtaCutoff(0.05), lambda: hf.EtaLogitsWarper(0.05)),
    (lambda: EtaCutoff(0.9, min_tokens_to_keep=3), lambda: hf.EtaLogitsWarper(0.9, min_tokens_to_keep=3)),
]


@pytest.mark.parametrize("scale", [3.0, 2e4])  # 2e4: float16-sized logits, probabilities underflow to 0
@pytest.mark.parametrize("length", [1, 3, 9])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ours, theirs", NEW_PAIRS)
def test_new_processors_match_transformers_on_random_logits(ours, theirs, seed, length, scale):
    rng = np.random.default_rng(seed)
    scores = random_logits(rng, rows=6, vocab=40, scale=scale)
    scores[0, :5] = -np.inf  # already-masked tokens stay masked (EOS among them)
    input_ids = rng.integers(0, 40, size=(6, length))
    input_ids[::2, -2:] = [11, 12][-length:]  # ends of biased / banned / encoder n-grams
    original = scores.copy()
    out, expected = ours()(input_ids, scores), reference(theirs(), input_ids, scores)
    # transformers' exponential decay computes -inf + inf = NaN on a masked EOS; it stays masked here.
    assert np.isneginf(out[np.isnan(expected)]).all()
    expected[np.isnan(expected)] = -np.inf
    assert_same(out, expected)
    np.testing.assert_array_equal(scores, original)  # not modified in place


@pytest.mark.parametrize("processor", [MinP(0.2), Typical(0.5), EpsilonCutoff(0.1), EtaCutoff(0.1), LogitNormalization(),
                                       SequenceBias([((5,), 2.0)]), ExponentialDecayLengthPenalty(0, 1.5, EOS, 1),
                                       EncoderRepetitionPenalty(1.5, ENCODER_ROWS[:2])],
                         ids=lambda p: type(p).__name__)
def test_a_row_masked_entirely_stays_masked_without_nan(processor):
    scores = random_logits(np.random.default_rng(0), rows=2, vocab=40)
    scores[1] = -np.inf
    with np.errstate(all="raise"):  # no floating-point warnings either
        out = processor(np.zeros((2, 4), dtype=np.int64), scores)
    assert np.isneginf(out[1]).all() and np.isfinite(out[0]).any() and not np.isnan(out).any()


def test_exponential_decay_keeps_a_masked_eos_masked():
    """transformers adds |-inf| * growth to a masked EOS (NaN); the mask of min_new_tokens has to hold."""
    scores = np.zeros((1, 5), dtype=np.float32)
    scores[0, 1] = -np.inf
    out = ExponentialDecayLengthPenalty(0, 2.0, EOS, 1)(np.zeros((1, 6), dtype=np.int64), scores)
    assert np.isneginf(out[0, 1]) and not np.isnan(out).any()


def test_exponential_decay_grows_eos_scores_of_either_sign():
    scores = np.array([[0.0, -2.0, 3.0], [0.0, 4.0, 3.0]], dtype=np.float32)
    out = ExponentialDecayLengthPenalty(1, 2.0, EOS, 1)(np.zeros((2, 4), dtype=np.int64), scores)  # 2 tokens past
    np.testing.assert_allclose(out[:, 1], [-2.0 + 2.0 * 3, 4.0 + 4.0 * 3])


@pytest.mark.parametrize("warper", [MinP(0.9, min_tokens_to_keep=5), Typical(0.01, min_tokens_to_keep=5),
                                    EpsilonCutoff(0.9, min_tokens_to_keep=5), EtaCutoff(0.9, min_tokens_to_keep=5)],
                         ids=lambda w: type(w).__name__)
def test_warpers_keep_min_tokens_to_keep(warper):
    scores = random_logits(np.random.default_rng(3), rows=4, vocab=30, scale=10.0)
    kept = np.isfinite(warper(None, scores))
    assert (kept.sum(axis=-1) >= 5).all()
    top5 = np.argsort(-scores, axis=-1)[:, :5]
    assert np.take_along_axis(kept, top5, axis=-1).all()


def test_prefix_allowed_tokens_fn_sees_the_input_index_and_its_row():
    seen = []

    def fn(batch_id, ids):
        seen.append((batch_id, ids.tolist()))
        return [batch_id + 2]

    input_ids = np.arange(12).reshape(6, 2)
    out = PrefixAllowedTokens(fn, rows_per_input=3)(input_ids, np.zeros((6, 8), dtype=np.float32))
    assert seen == [(row // 3, [2 * row, 2 * row + 1]) for row in range(6)]
    np.testing.assert_array_equal(np.isfinite(out).argmax(-1), [2, 2, 2, 3, 3, 3])


@pytest.mark.parametrize("returned, match", [
    ([], "`prefix_allowed_tokens_fn` returned an empty list for batch ID 0"),
    ([3, 50], "`prefix_allowed_tokens_fn` returned token ids outside \\[0, 8\\) for batch ID 0: \\[50\\]"),
])
def test_prefix_allowed_tokens_fn_errors(returned, match):
    with pytest.raises(ValueError, match=match):
        PrefixAllowedTokens(lambda batch_id, ids: returned, 1)(np.zeros((1, 1), np.int64), np.zeros((1, 8), np.float32))


def test_bad_words_ban_only_the_completing_token():
    out = NoBadWords([[5, 6], [7], [1]], EOS)(np.array([[0, 5], [0, 4]]), np.zeros((2, 9), dtype=np.float32))
    np.testing.assert_array_equal(np.isneginf(out), [[i in (6, 7) for i in range(9)], [i == 7 for i in range(9)]])


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


def test_every_processor_in_transformers_order():
    """transformers 4.57 `_get_logits_processor`, every option this library implements at once."""
    user = lambda ids, scores: scores  # noqa: E731
    config = GenerationConfig(
        do_sample=True, temperature=0.5, top_k=10, top_p=0.9, min_p=0.05, typical_p=0.9, epsilon_cutoff=1e-4,
        eta_cutoff=1e-3, sequence_bias={(4,): 1.0}, encoder_repetition_penalty=1.1, repetition_penalty=1.2,
        no_repeat_ngram_size=3, encoder_no_repeat_ngram_size=2, bad_words_ids=[[5]], min_length=3, min_new_tokens=2,
        prefix_allowed_tokens_fn=allowed_tokens, forced_bos_token_id=6, forced_eos_token_id=1,
        exponential_decay_length_penalty=(3, 1.1), suppress_tokens=[7], begin_suppress_tokens=[8],
        renormalize_logits=True)
    processors = build_processors(config, user_processors=[user], encoder_input_ids=ENCODER_ROWS)
    kinds = [type(p).__name__ if p is not user else "user" for p in processors]
    assert kinds == ["SequenceBias", "EncoderRepetitionPenalty", "RepetitionPenalty", "NoRepeatNGram",
                     "EncoderNoRepeatNGram", "NoBadWords", "MinLength", "MinNewTokens", "PrefixAllowedTokens",
                     "ForcedTokens", "ForcedTokens", "ExponentialDecayLengthPenalty", "SuppressTokens", "SuppressTokens",
                     "user", "Temperature", "TopK", "TopP", "MinP", "Typical", "EpsilonCutoff", "EtaCutoff",
                     "LogitNormalization"]
    forced_bos, forced_eos, begin_suppress = processors[9], processors[10], processors[13]
    assert forced_bos.at_length == 1 and forced_eos.at_length == config.new_token_budget  # max_length - 1
    assert begin_suppress.at_length == 2  # after the forced BOS, as transformers' begin_index


def test_begin_suppress_tokens_apply_at_the_first_step_without_forced_bos():
    config = GenerationConfig(begin_suppress_tokens=[8])
    assert build_processors(config)[0].at_length == 1


def test_beam_sampling_keeps_eos_count_plus_one_in_every_new_warper():
    config = GenerationConfig(do_sample=True, num_beams=3, top_k=0, min_p=0.5, typical_p=0.5, epsilon_cutoff=0.5,
                              eta_cutoff=0.5, eos_token_id=[1, 2])
    assert [p.min_tokens_to_keep for p in build_processors(config)] == [3, 3, 3, 3]


@pytest.mark.parametrize("option", ["encoder_repetition_penalty", "encoder_no_repeat_ngram_size"])
def test_encoder_options_need_the_encoder_ids(option):
    config = GenerationConfig(**{option: 2})
    with pytest.raises(ValueError, match=f"`{option}` needs the encoder's input ids"):
        build_processors(config)


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
                                         (lambda: NoRepeatNGram(-1), "-1"),
                                         (lambda: MinP(1.5), "`min_p` has to be a float in the \\[0, 1\\] interval, but is 1.5"),
                                         (lambda: MinP(0.1, min_tokens_to_keep=0), "`min_tokens_to_keep`.*0"),
                                         (lambda: Typical(1.0), "`typical_p` has to be a float > 0 and < 1, but is 1.0"),
                                         (lambda: Typical(0.5, min_tokens_to_keep=-1), "`min_tokens_to_keep`.*-1"),
                                         (lambda: EpsilonCutoff(0.0), "`epsilon_cutoff` has to be a float > 0 and < 1, but is 0.0"),
                                         (lambda: EtaCutoff(1.0), "`eta_cutoff` has to be a float > 0 and < 1, but is 1.0"),
                                         (lambda: EtaCutoff(0.1, min_tokens_to_keep=2.5), "`min_tokens_to_keep`.*2.5"),
                                         (lambda: EncoderRepetitionPenalty(0, ENCODER_ROWS), "`encoder_repetition_penalty`.* 0"),
                                         (lambda: EncoderNoRepeatNGram(0, ENCODER_ROWS), "`encoder_no_repeat_ngram_size`.* 0")])
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
    for warper in (Temperature(t), TopK(k), TopP(p), MinP(p), Typical(min(p, 0.99)), EpsilonCutoff(min(p, 0.99)),
                   EtaCutoff(min(p, 0.99)), LogitNormalization()):
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
