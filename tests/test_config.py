import dataclasses
import json
import warnings

import pytest

from ortdecode import GenerationConfig
from ortdecode.errors import OrtDecodeNotice


def test_defaults_are_transformers_defaults():
    config = GenerationConfig()
    assert (config.max_length, config.top_k, config.top_p, config.temperature, config.num_beams) == (20, 50, 1.0, 1.0, 1)


def test_untouched_default_max_length_means_20_new_tokens():
    assert GenerationConfig().for_call().new_token_budget == 20


def test_explicit_max_length_counts_the_start_token():
    assert GenerationConfig().for_call(max_length=20).new_token_budget == 19
    assert GenerationConfig(max_length=50).for_call().new_token_budget == 49


def test_min_new_tokens_wins_over_min_length():
    assert GenerationConfig(min_length=9, min_new_tokens=2).effective_min_length == 3
    assert GenerationConfig(min_length=9).effective_min_length == 9


def test_max_new_tokens_wins_over_max_length():
    assert GenerationConfig(max_new_tokens=7, max_length=100).new_token_budget == 7


def test_model_generation_config_overrides_class_defaults(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"decoder_start_token_id": 0, "eos_token_id": [1, 5], "pad_token_id": 0, "num_beams": 3, "max_length": 50,
         "transformers_version": "4.57.6"}))
    config = GenerationConfig.from_model_folder(tmp_path)
    assert config.num_beams == 3 and config.max_length == 50 and config.eos_token_id == (1, 5)


def test_unsupported_model_generation_fields_are_reported(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"penalty_alpha": 0.6, "forced_bos_token_id": 5}))
    with pytest.warns(OrtDecodeNotice, match="sets penalty_alpha, which ortdecode does not implement; ignored") as seen:
        GenerationConfig.from_model_folder(tmp_path)
    assert not any("forced_bos_token_id" in str(w.message) for w in seen)


def test_model_generation_config_sets_the_new_processors_and_warpers(tmp_path):
    fields = {"bad_words_ids": [[5, 6], [7]], "sequence_bias": [[[8], -1.5], [[9, 10], 2.0]], "suppress_tokens": [3],
              "begin_suppress_tokens": [4], "forced_bos_token_id": 5, "forced_eos_token_id": 1,
              "exponential_decay_length_penalty": [4, 1.5], "encoder_repetition_penalty": 1.2,
              "encoder_no_repeat_ngram_size": 3, "renormalize_logits": True, "min_p": 0.1, "typical_p": 0.9,
              "epsilon_cutoff": 3e-4, "eta_cutoff": 2e-3, "do_sample": True}
    (tmp_path / "generation_config.json").write_text(json.dumps(fields))
    with warnings.catch_warnings():
        warnings.simplefilter("error", OrtDecodeNotice)  # nothing reported as unsupported
        config = GenerationConfig.from_model_folder(tmp_path)
    assert config.bad_words_ids == ((5, 6), (7,)) and config.sequence_bias == (((8,), -1.5), ((9, 10), 2.0))
    assert config.forced_eos_token_id == (1,) and config.exponential_decay_length_penalty == (4, 1.5)
    assert (config.min_p, config.typical_p, config.epsilon_cutoff, config.eta_cutoff) == (0.1, 0.9, 3e-4, 2e-3)
    assert config.suppress_tokens == (3,) and config.begin_suppress_tokens == (4,) and config.renormalize_logits


def test_empty_lists_in_the_model_generation_config_mean_unset(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"bad_words_ids": [], "suppress_tokens": [],
                                                                 "sequence_bias": {}}))
    config = GenerationConfig.from_model_folder(tmp_path)
    assert (config.bad_words_ids, config.suppress_tokens, config.sequence_bias) == (None, None, None)


def test_call_only_options_are_not_read_from_the_model_folder(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"stopping_criteria": "x",
                                                                 "prefix_allowed_tokens_fn": "y"}))
    config = GenerationConfig.from_model_folder(tmp_path)
    assert config.stopping_criteria == () and config.prefix_allowed_tokens_fn is None


def test_sequence_bias_accepts_transformers_dict_and_list_forms():
    as_dict = GenerationConfig(sequence_bias={(4, 5): -2.0, (6,): 1})
    as_list = GenerationConfig(sequence_bias=[[[4, 5], -2.0], [[6], 1.0]])
    assert as_dict.sequence_bias == as_list.sequence_bias == (((4, 5), -2.0), ((6,), 1.0))


@pytest.mark.parametrize("name, value", [("temperature", 0.7), ("top_p", 0.9), ("top_k", 10), ("min_p", 0.1),
                                         ("typical_p", 0.5), ("epsilon_cutoff", 0.01), ("eta_cutoff", 0.01)])
def test_sampling_options_without_do_sample_warn_once(name, value):
    message = f"`do_sample` is set to `False`. However, `{name}` is set to `{value}` -- this flag is only used in"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            GenerationConfig(**{name: value})
        GenerationConfig(do_sample=True, **{name: value})
    assert [str(w.message).startswith(message) for w in caught] == [True]
    assert caught[0].category is UserWarning


def test_defaults_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GenerationConfig().for_call(num_beams=3, max_new_tokens=4)


def test_replace_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown generation option.*num_beam\\b"):
        GenerationConfig().replace(num_beam=4)


@pytest.mark.parametrize("options, match", [
    (dict(do_sample=True, temperature=0.0), "`temperature`.*0.0"),
    (dict(do_sample=True, temperature=-1.0), "`temperature`.*-1.0"),
    (dict(top_p=0.0), "`top_p`.*0.0"),
    (dict(top_p=1.5), "`top_p`.*1.5"),
    (dict(top_k=-1), "`top_k`.*-1"),
    (dict(num_beams=0), "`num_beams`.*0"),
    (dict(num_beams=2, num_return_sequences=3), "`num_return_sequences` \\(3\\).*`num_beams` \\(2\\)"),
    (dict(num_return_sequences=2), "`num_return_sequences` \\(2\\)"),
    (dict(max_new_tokens=0), "`max_new_tokens`.*0"),
    (dict(max_new_tokens=2.5), "`max_new_tokens`.*2.5"),
    (dict(repetition_penalty=0.0), "`repetition_penalty`.*0.0"),
    (dict(no_repeat_ngram_size=-2), "`no_repeat_ngram_size`.*-2"),
    (dict(min_new_tokens=-1), "`min_new_tokens`.*-1"),
    (dict(min_length=-1), "`min_length`.*-1"),
    (dict(early_stopping="sometimes"), "`early_stopping`.*sometimes"),
    (dict(seed="42"), "`seed`.*42"),
    (dict(do_sample="yes"), "`do_sample`.*yes"),
    (dict(min_p=1.5), "`min_p` has to be a float in the \\[0, 1\\] interval.*1.5"),
    (dict(min_p=-0.1), "`min_p`.*-0.1"),
    (dict(typical_p=0.0), "`typical_p`.*0.0"),
    (dict(typical_p=1.2), "`typical_p`.*1.2"),
    (dict(epsilon_cutoff=1.0), "`epsilon_cutoff`.*1.0"),
    (dict(epsilon_cutoff=-0.5), "`epsilon_cutoff`.*-0.5"),
    (dict(eta_cutoff=2.0), "`eta_cutoff`.*2.0"),
    (dict(encoder_repetition_penalty=0.0), "`encoder_repetition_penalty`.*0.0"),
    (dict(encoder_no_repeat_ngram_size=-1), "`encoder_no_repeat_ngram_size`.*-1"),
    (dict(bad_words_ids=[]), "`bad_words_ids`.*\\[\\]"),
    (dict(bad_words_ids=[1, 2]), "`bad_words_ids` has to be a non-empty list of non-empty lists.*\\[1, 2\\]"),
    (dict(bad_words_ids=[[1], []]), "`bad_words_ids`.*\\[\\[1\\], \\[\\]\\]"),
    (dict(bad_words_ids=[[1, -3]]), "`bad_words_ids`.*-3"),
    (dict(sequence_bias={(1,): "big"}), "`sequence_bias`.*big"),
    (dict(sequence_bias=[[[1], float("nan")]]), "`sequence_bias`.*nan"),
    (dict(sequence_bias=[[[], 1.0]]), "`sequence_bias`.*\\[\\[\\[\\], 1.0\\]\\]"),
    (dict(sequence_bias={}), "`sequence_bias`.*\\{\\}"),
    (dict(suppress_tokens=[1, "a"]), "`suppress_tokens` has to be a list of token ids.*'a'"),
    (dict(begin_suppress_tokens=5), "`begin_suppress_tokens`.*5"),
    (dict(forced_bos_token_id=-1), "`forced_bos_token_id`.*-1"),
    (dict(forced_eos_token_id=[]), "`forced_eos_token_id`.*\\[\\]"),
    (dict(forced_eos_token_id=1.5), "`forced_eos_token_id`.*1.5"),
    (dict(exponential_decay_length_penalty=(5,)), "`exponential_decay_length_penalty`.*\\(5,\\)"),
    (dict(exponential_decay_length_penalty=(5, -1.0)), "`exponential_decay_length_penalty`.*-1.0"),
    (dict(exponential_decay_length_penalty=(-2, 1.5)), "`exponential_decay_length_penalty`.*-2"),
    (dict(renormalize_logits="yes"), "`renormalize_logits`.*yes"),
    (dict(prefix_allowed_tokens_fn=[1, 2]), "`prefix_allowed_tokens_fn`.*\\[1, 2\\]"),
    (dict(stopping_criteria=[print, 3]), "`stopping_criteria`.*3"),
])
def test_invalid_options_name_the_option_and_value(options, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**options)


@pytest.mark.parametrize("options, match", [
    (dict(eos_token_id=[1, 200]), "`eos_token_id` has to hold token ids in \\[0, 160\\), but holds \\[200\\]"),
    (dict(forced_bos_token_id=160), "`forced_bos_token_id`.*\\[160\\]"),
    (dict(forced_eos_token_id=[1, 999]), "`forced_eos_token_id`.*\\[999\\]"),
    (dict(suppress_tokens=[3, 170]), "`suppress_tokens`.*\\[170\\]"),
    (dict(begin_suppress_tokens=[161]), "`begin_suppress_tokens`.*\\[161\\]"),
    (dict(bad_words_ids=[[4, 300]]), "`bad_words_ids`.*\\[300\\]"),
    (dict(sequence_bias={(500, 4): 1.0}), "`sequence_bias`.*\\[500\\]"),
])
def test_token_ids_outside_the_vocabulary_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**options).check_token_ids(160)


def test_temperature_zero_is_fine_without_sampling():
    assert GenerationConfig(temperature=0.0).temperature == 0.0


def test_sampling_may_return_more_sequences_than_beams():
    assert GenerationConfig(do_sample=True, num_return_sequences=4).rows_per_input == 4


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'top_k'"):
        GenerationConfig().top_k = 3
