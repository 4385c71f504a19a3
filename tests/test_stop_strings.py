"""Stop strings match special tokens as transformers' `StopStringCriteria` does (it works on the text of
every vocabulary entry, special tokens included): a stop string "<extra_id_0>" stops on that sentinel.

The embedded model's tokenizer has no sentinels and cannot spell the probe "abcdef" that
`StopStringCriteria` needs, so these tests add both (two sentinels, "abcdef" as a token) and make a tiny
random T5 on that vocabulary; transformers' own `StopStringCriteria` is then the reference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import StoppingCriteriaList, StopStringCriteria

import ortdecode
from ortdecode.stopping import RUNNING, STOP, StopRules

from .conftest import TEXTS
from .test_parity import hf_generate

SENTINELS = ["<extra_id_0>", "<extra_id_1>"]


@pytest.fixture(scope="module")
def sentinel_model(tmp_path_factory, default_model_dir):
    from transformers import T5TokenizerFast

    from ortdecode_export import export_model
    from ortdecode_export.checkpoints import make_random_t5

    root = tmp_path_factory.mktemp("sentinels")
    tokenizer = T5TokenizerFast.from_pretrained(str(default_model_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": SENTINELS})
    tokenizer.add_tokens(["abcdef"])  # what StopStringCriteria probes the vocabulary with
    tokenizer.save_pretrained(root / "tokenizer")
    checkpoint = make_random_t5(root / "checkpoint", "tiny-v1", seed=5, tokenizer_dir=root / "tokenizer")
    export_model(str(checkpoint), root / "onnx", layout="split", progress=False)
    hf_tokenizer = T5TokenizerFast.from_pretrained(str(checkpoint))
    return ortdecode.load(root / "onnx", provider="cpu"), checkpoint, hf_tokenizer


def first_stop(rules_or_criteria, sequence) -> int | None:
    """The first length at which a growing sequence stops, or None."""
    for length in range(2, len(sequence) + 1):
        if rules_or_criteria(sequence[:length]):
            return length
    return None


STOP_STRINGS = [SENTINELS[0], "d" + SENTINELS[1], "thou", "sand f", "e-", "hundred"]


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(2, 161), min_size=1, max_size=12), stops=st.sets(st.sampled_from(STOP_STRINGS),
                                                                                     min_size=1))
def test_stop_strings_end_where_transformers_stop_string_criteria_ends(sentinel_model, tokens, stops):
    generator, _, hf_tokenizer = sentinel_model
    stops = sorted(stops)
    config = generator.defaults.replace(stop=tuple(stops))
    rules = StopRules(config, model_eos=[1], decode=lambda ids: generator.tokenizer.decode(ids, skip_special_tokens=False))
    reference = StopStringCriteria(hf_tokenizer, stops)
    sequence = np.array([0, *tokens], dtype=np.int64)

    def ours(prefix):
        return rules.ended(prefix[None, :])[0] == STOP

    def theirs(prefix):  # the generated tokens: the decoder start token is not text
        return bool(reference(torch.from_numpy(prefix[None, 1:]), None)[0])

    assert first_stop(ours, sequence) == first_stop(theirs, sequence)


def test_a_sentinel_stop_string_stops_on_the_sentinel(sentinel_model):
    generator = sentinel_model[0]
    sentinel = generator.tokenizer._tokenizer.token_to_id(SENTINELS[0])
    rules = StopRules(generator.defaults.replace(stop=(SENTINELS[0],)), model_eos=[1],
                      decode=lambda ids: generator.tokenizer.decode(ids, skip_special_tokens=False))
    sequences = np.array([[0, 60, sentinel], [0, sentinel, 60], [0, 60, 18]])
    assert rules.ended(sequences).tolist() == [STOP, RUNNING, RUNNING]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_stops_on_special_tokens_and_strings_inside_tokens_as_transformers(sentinel_model, num_beams):
    generator, checkpoint, hf_tokenizer = sentinel_model
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(checkpoint).eval()
    encoded = hf_tokenizer(TEXTS, padding=True, return_tensors="pt")
    quiet = dict(max_new_tokens=10, num_beams=num_beams, suppress_tokens=[0, 2])  # this model likes <pad> and <unk>
    plain = generator.generate(TEXTS, **quiet)
    sentinel = hf_tokenizer.convert_tokens_to_ids(SENTINELS[0])
    # Make the sentinel follow the second token of input 0, and stop on a string that starts and ends
    # inside the tokens of the longest other text.
    bias = {(int(plain.sequences[0, 2]), sentinel): 30.0}
    longest = 1 + int(np.argmax([len(text) for text in plain.texts[1:]]))
    inside = plain.texts[longest][2:7]
    options = dict(sequence_bias=bias, **quiet)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # generate(stop_strings=..., tokenizer=...) builds this criterion, then hands `tokenizer` on to T5's
        # forward, which refuses it (transformers 4.57): pass the criterion itself.
        criterion = StopStringCriteria(hf_tokenizer, [SENTINELS[0], inside])
        expected = hf_generate(model, encoded, stopping_criteria=StoppingCriteriaList([criterion]), **options)
    finally:
        torch.set_num_threads(threads)
    result = generator.generate(TEXTS, stop=[SENTINELS[0], inside], **options)
    np.testing.assert_array_equal(result.sequences, expected.sequences.numpy())
    assert result.finish_reasons[0] == "stop" and sentinel in result.sequences[0]
    if num_beams == 1:  # beam search may rank a longer hypothesis first
        assert result.finish_reasons[longest] == "stop" and inside in result.texts[longest]
