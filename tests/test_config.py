import dataclasses
import json

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
    (tmp_path / "generation_config.json").write_text(json.dumps({"forced_bos_token_id": 5}))
    with pytest.warns(OrtDecodeNotice, match="sets forced_bos_token_id, which ortdecode does not implement; ignored"):
        GenerationConfig.from_model_folder(tmp_path)


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
])
def test_invalid_options_name_the_option_and_value(options, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**options)


def test_temperature_zero_is_fine_without_sampling():
    assert GenerationConfig(temperature=0.0).temperature == 0.0


def test_sampling_may_return_more_sequences_than_beams():
    assert GenerationConfig(do_sample=True, num_return_sequences=4).rows_per_input == 4


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'top_k'"):
        GenerationConfig().top_k = 3
