"""transformers' `generate` options beyond the basics, end to end against transformers' own `generate` on a
tiny exported T5 (the padded batch of 10 texts): bad words, sequence bias, suppressed and forced tokens,
exponential decay, the encoder's repetition penalty and no-repeat-ngram, renormalization, prefix-allowed
tokens, user stopping criteria, the sampling warpers where sampling is deterministic (or their first-step
masks where it is not), and beam_indices.

Token ids for the options are taken from an unconstrained greedy run, so each option really changes the
output; every row also checks that it did."""

import numpy as np
import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation import logits_process as hf

import ortdecode

from .conftest import TEXTS
from .test_parity import hf_generate


@pytest.fixture(scope="module")
def setup(tiny_v1):
    generator = ortdecode.load(tiny_v1.export, provider="cpu")
    tokenizer = tiny_v1.hf_tokenizer()
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    baseline = generator.generate(TEXTS, max_new_tokens=12)
    # One torch thread: on the shared 2-core machine two threads make transformers' reference ~5x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield generator, tiny_v1.torch_model(), tokenizer, encoded, baseline.sequences
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def plain(setup):
    """Sequences without the options under test, by number of beams."""
    runs = {}

    def plain(num_beams):
        if num_beams not in runs:
            runs[num_beams] = setup[0].generate(TEXTS, max_new_tokens=12, num_beams=num_beams).sequences
        return runs[num_beams]
    return plain


def common_tokens(sequences, count):
    """The `count` most frequent generated tokens (EOS and padding aside)."""
    generated = sequences[:, 1:].reshape(-1)
    generated = generated[generated > 2]
    return [int(t) for t in np.bincount(generated).argsort()[::-1][:count]]


def allowed_tokens(batch_id, ids):
    """A constraint that depends on the input and on the last token."""
    return [1] + [t for t in range(3, 160) if (t + batch_id + int(ids[-1])) % 3 != 0]


def options_table(baseline):
    first, second, third = common_tokens(baseline, 3)
    bigram = [int(t) for t in baseline[1, 1:3]]
    opening = sorted({int(t) for t in baseline[:, 1]})
    return [
        dict(bad_words_ids=[[first], bigram]),
        dict(sequence_bias={(first,): -4.0, (second,): 2.5, (bigram[0], third): 3.0}),
        dict(suppress_tokens=[first, second]),
        dict(begin_suppress_tokens=opening),
        dict(forced_bos_token_id=third, begin_suppress_tokens=[first]),
        dict(forced_eos_token_id=[1], max_new_tokens=6),
        dict(exponential_decay_length_penalty=(2, 3.0)),
        dict(encoder_repetition_penalty=3.0),
        dict(encoder_repetition_penalty=0.3, repetition_penalty=1.5),
        dict(encoder_no_repeat_ngram_size=1),
        dict(encoder_no_repeat_ngram_size=2, no_repeat_ngram_size=2),
        dict(renormalize_logits=True, repetition_penalty=2.0),
        dict(prefix_allowed_tokens_fn=allowed_tokens),
        # Beam search.
        dict(num_beams=3, bad_words_ids=[[first], bigram], sequence_bias={(second,): 2.0}),
        dict(num_beams=3, num_return_sequences=2, suppress_tokens=[first], forced_bos_token_id=second),
        dict(num_beams=4, forced_eos_token_id=[1], max_new_tokens=7, length_penalty=0.5),
        dict(num_beams=3, exponential_decay_length_penalty=(1, 2.0), renormalize_logits=True),
        dict(num_beams=3, encoder_no_repeat_ngram_size=2, begin_suppress_tokens=opening),
        dict(num_beams=2, prefix_allowed_tokens_fn=allowed_tokens, early_stopping=True),
        dict(num_beams=3, repetition_penalty=1.4, renormalize_logits=True, length_penalty=2.0),
        # Sampling that leaves one token per step is deterministic: min_p=1 keeps only the most likely token,
        # a tiny typical_p only the most typical one.
        dict(do_sample=True, min_p=1.0, top_k=0),
        dict(do_sample=True, typical_p=1e-6, top_k=0, suppress_tokens=[first]),
    ]


def option_id(options):
    return ",".join(f"{k}={v.__name__ if callable(v) else v}" for k, v in options.items())


TABLE_SIZE = 22


@pytest.mark.parametrize("row", range(TABLE_SIZE))
def test_options_match_transformers_generate(setup, plain, row):
    generator, model, tokenizer, encoded, baseline = setup
    table = options_table(baseline)
    assert len(table) == TABLE_SIZE
    options = {"max_new_tokens": 12, **table[row]}
    expected = hf_generate(model, encoded, **options)
    result = generator.generate(TEXTS, return_scores=True, **options)
    np.testing.assert_array_equal(result.sequences, expected.sequences.numpy(), err_msg=option_id(options))
    assert result.texts == tokenizer.batch_decode(expected.sequences, skip_special_tokens=True)
    if options.get("num_beams", 1) > 1:
        np.testing.assert_allclose(result.sequences_scores, expected.sequences_scores.numpy(), atol=1e-4)
        np.testing.assert_array_equal(result.beam_indices, expected.beam_indices.numpy())
    else:
        for ours, theirs in zip(result.scores, expected.scores):
            np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs.numpy()))
            finite = np.isfinite(theirs.numpy())
            np.testing.assert_allclose(ours[finite], theirs.numpy()[finite], atol=1e-4)
    if "max_new_tokens" not in table[row] and "do_sample" not in options:  # the option did something
        assert not np.array_equal(plain(options.get("num_beams", 1)), result.sequences)


@pytest.mark.parametrize("options", [dict(min_p=0.2), dict(typical_p=0.7), dict(epsilon_cutoff=0.02),
                                     dict(eta_cutoff=0.02), dict(min_p=0.1, typical_p=0.9, temperature=0.7, top_k=40),
                                     dict(epsilon_cutoff=0.01, eta_cutoff=0.05, top_p=0.95)], ids=option_id)
def test_sampling_warpers_mask_the_first_step_as_transformers(setup, options):
    """Samples differ from transformers' (another random generator), but the first step's processed
    scores depend on the logits only: same mask, same values."""
    generator, model, _, encoded, _ = setup
    expected = hf_generate(model, encoded, do_sample=True, max_new_tokens=1, **options)
    ours = generator.generate(TEXTS, do_sample=True, max_new_tokens=1, return_scores=True, seed=0, **options).scores[0]
    theirs = expected.scores[0].numpy()
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    assert (np.isfinite(theirs).sum(-1) < theirs.shape[-1]).all()  # the warpers did cut
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], atol=1e-4)
    samples = generator.generate(TEXTS, do_sample=True, max_new_tokens=1, seed=1, **options).sequences[:, 1]
    assert np.isfinite(theirs[np.arange(len(TEXTS)), samples]).all()  # drawn inside the kept set


@pytest.mark.parametrize("options", [dict(num_beams=4), dict(num_beams=4, num_return_sequences=3, length_penalty=0.3),
                                     dict(num_beams=3, early_stopping=True, max_new_tokens=16),
                                     dict(num_beams=2, early_stopping="never", no_repeat_ngram_size=2)],
                         ids=option_id)
def test_beam_indices_are_transformers_beam_indices(setup, options):
    generator, model, _, encoded, _ = setup
    options = {"max_new_tokens": 12, **options}
    expected = hf_generate(model, encoded, **options)
    result = generator.generate(TEXTS, **options)
    np.testing.assert_array_equal(result.sequences, expected.sequences.numpy())
    assert result.beam_indices.dtype == np.int64
    np.testing.assert_array_equal(result.beam_indices, expected.beam_indices.numpy())


def end_even_inputs_early(batch_id, ids):
    """EOS is the only choice for even inputs after 3 tokens; never for odd ones."""
    return [1] if batch_id % 2 == 0 and len(ids) > 3 else list(range(2, 160))


def test_beam_indices_of_sequences_that_end_early_are_minus_one_padded(setup):
    generator, model, _, encoded, _ = setup
    options = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, prefix_allowed_tokens_fn=end_even_inputs_early)
    expected = hf_generate(model, encoded, **options)
    result = generator.generate(TEXTS, **options)
    np.testing.assert_array_equal(result.sequences, expected.sequences.numpy())
    np.testing.assert_array_equal(result.beam_indices, expected.beam_indices.numpy())
    assert result.finish_reasons == ["eos", "eos", "length", "length"] * 5
    assert (result.beam_indices[0::4, 4:] == -1).all() and (result.beam_indices[2::4] >= 0).all()


def test_greedy_results_have_no_beam_indices(setup):
    assert setup[0].generate(TEXTS[:2], max_new_tokens=3).beam_indices is None


def test_encoder_repetition_penalty_in_beam_search_uses_each_rows_input(setup):
    """transformers' `generate` gathers one encoder row per input against num_beams rows per input (a bug:
    rows and inputs mix up). Each beam here uses its own input's ids: transformers' processor fed the ids
    repeated per beam gives the same result."""
    generator, model, _, encoded, _ = setup
    rows = encoded["input_ids"].repeat_interleave(3, dim=0)
    with torch.no_grad():
        expected = model.generate(**encoded, max_new_tokens=12, num_beams=3, return_dict_in_generate=True,
                                  output_scores=True,
                                  logits_processor=[hf.EncoderRepetitionPenaltyLogitsProcessor(2.5, rows)])
    result = generator.generate(TEXTS, max_new_tokens=12, num_beams=3, encoder_repetition_penalty=2.5)
    np.testing.assert_array_equal(result.sequences, expected.sequences.numpy())
    np.testing.assert_allclose(result.sequences_scores, expected.sequences_scores.numpy(), atol=1e-4)


# ---------------------------------------------------------------- user stopping criteria
class StopAfterToken(StoppingCriteria):
    """Stop a row once its last token is `token` and it has at least `length` tokens; works on torch tensors
    (transformers) and NumPy arrays (ortdecode) alike."""

    def __init__(self, token, length):
        self.token, self.length = token, length
        self.calls = []

    def __call__(self, input_ids, scores, **kwargs):
        if isinstance(scores, np.ndarray):  # transformers passes its tuple of all scores, or None
            self.calls.append((input_ids.shape, scores.shape))
        done = (input_ids[:, -1] == self.token) & (input_ids.shape[1] >= self.length)
        return done if isinstance(done, torch.Tensor) else np.asarray(done)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_stopping_criteria_stop_rows_as_in_transformers(setup, plain, num_beams):
    generator, model, _, encoded, baseline = setup
    token = common_tokens(baseline, 1)[0]
    expected = hf_generate(model, encoded, max_new_tokens=12, num_beams=num_beams,
                           stopping_criteria=StoppingCriteriaList([StopAfterToken(token, 3)]))
    criterion = StopAfterToken(token, 3)
    result = generator.generate(TEXTS, max_new_tokens=12, num_beams=num_beams, stopping_criteria=[criterion])
    np.testing.assert_array_equal(result.sequences, expected.sequences.numpy())
    assert not np.array_equal(result.sequences, plain(num_beams))  # the criterion stopped sequences
    stopped = [i for i, row in enumerate(result.sequences) if token in row[2:].tolist()]
    assert all(result.finish_reasons[i] == "stop" for i in stopped) and (stopped or num_beams > 1)
    rows = len(TEXTS) * (1 if num_beams == 1 else 2 * num_beams)  # beam search asks about its 2 * beams candidates
    assert criterion.calls[0] == ((rows, 2), (rows, 160))


def test_a_stopping_criterion_returning_one_bool_stops_every_row(setup):
    generator = setup[0]
    result = generator.generate(TEXTS[:3], max_new_tokens=12, stopping_criteria=lambda ids, scores: ids.shape[1] > 4)
    assert result.sequences.shape[1] == 5 and result.finish_reasons == ["stop"] * 3


@pytest.mark.parametrize("criterion, match", [
    (lambda ids, scores: "yes", "`stopping_criteria\\[0\\]` has to return a bool or one bool per row \\(3\\), but "
                                "returned <U3"),
    (lambda ids, scores: np.zeros(2, dtype=bool), "`stopping_criteria\\[0\\]`.*shape \\(2,\\)"),
])
def test_stopping_criteria_with_wrong_results_are_refused(setup, criterion, match):
    with pytest.raises(ValueError, match=match):
        setup[0].generate(TEXTS[:3], max_new_tokens=4, stopping_criteria=[criterion])


def test_token_id_options_outside_the_vocabulary_are_refused_before_decoding(setup):
    with pytest.raises(ValueError, match="`suppress_tokens` has to hold token ids in \\[0, 160\\), but holds \\[999\\]"):
        setup[0].generate(TEXTS[:1], suppress_tokens=[3, 999])
