"""ortdecode's byte tokenizer against transformers' ByT5Tokenizer: encoding and decoding of arbitrary text,
special tokens and extra ids inside text, invalid UTF-8 in decode (errors="ignore")."""

import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ortdecode.errors import ModelFolderError
from ortdecode.tokenizer import ByteTokenizer, TextTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def byt5(tmp_path_factory):
    """(transformers' ByT5Tokenizer, ortdecode's tokenizer of the folder it saved)."""
    from transformers import ByT5Tokenizer

    folder = tmp_path_factory.mktemp("byt5-tokenizer")
    reference = ByT5Tokenizer()
    reference.save_pretrained(folder)
    return reference, load_tokenizer(folder, pad_token_id=0)


SPECIALS = ["<pad>", "</s>", "<unk>", "<extra_id_0>", "<extra_id_7>", "<extra_id_124>", "<extra_id_125>", "<pad",
            "extra_id_1>"]
# Arbitrary Unicode text (no lone surrogates: they cannot be UTF-8), with special tokens and spaces mixed in.
TEXT = st.lists(st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
                          st.sampled_from(SPECIALS), st.sampled_from([" ", "  ", "\t", "\n", "\u3000"])),
                max_size=8).map("".join)


def hf_encode(reference, text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "This sequence already has </s>"
        return reference(text).input_ids


def test_folder_with_byt5_tokenizer_class_gets_the_byte_tokenizer(byt5, default_model_dir):
    assert isinstance(byt5[1], ByteTokenizer)
    assert isinstance(load_tokenizer(default_model_dir, pad_token_id=0), TextTokenizer)


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_encoding_matches_transformers(byt5, text):
    reference, ours = byt5
    assert ours.encode_one(text) == hf_encode(reference, text)


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_round_trip_matches_transformers(byt5, text):
    reference, ours = byt5
    ids = hf_encode(reference, text)
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 383), max_size=24))
def test_decoding_any_ids_matches_transformers_including_invalid_utf8(byt5, ids):
    reference, ours = byt5
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)


def test_batch_encoding_pads_with_the_pad_id(byt5):
    input_ids, attention_mask = byt5[1].encode(["ab", "abcd"])
    assert input_ids.tolist() == [[100, 101, 1, 0, 0], [100, 101, 102, 103, 1]]
    assert attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert byt5[1].decode_batch(input_ids) == ["ab", "abcd"]


def test_ids_outside_the_vocabulary_are_refused(byt5):
    with pytest.raises(ValueError, match="token id 384 is neither a byte"):
        byt5[1].decode([100, 384])


def test_a_byt5_config_without_added_tokens_is_refused(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    with pytest.raises(ModelFolderError, match="needs `added_tokens_decoder`"):
        load_tokenizer(tmp_path, pad_token_id=0)
