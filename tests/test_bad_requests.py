"""Bad requests get a clear ValueError from the API, and one line with exit status 2 from the CLI.
Samplers and processors keep a valid distribution for any finite logits, masks and option combination.

What was tried is counted in the "reliability figures" printed at the end of the run."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ortdecode
from ortdecode import GenerationConfig
from ortdecode.errors import NonFiniteLogitsError
from ortdecode.numerics import check_scores, log_softmax, softmax_weights
from ortdecode.processors import apply_processors, build_processors
from ortdecode.search import sample_rows

from .conftest import TEXTS
from .test_cli import assert_one_line_error, ortdecode as run_cli


@pytest.fixture(scope="module")
def generator(tiny_v1):
    return ortdecode.load(tiny_v1.export, provider="cpu")


LONG_TEXT = "spell out: " + " ".join(["123"] * 400)  # about 1,200 tokens, more than the default 512
VOCAB = 160

BAD_CALLS = {
    # kind: (keyword arguments of generate, message)
    "no texts": (dict(texts=[]), "`texts` is empty"),
    "empty text": (dict(texts=""), r"`texts\[0\]` is empty or whitespace only"),
    "whitespace-only text": (dict(texts=" \t\n "), r"`texts\[0\]` is empty or whitespace only"),
    "one empty text in a batch": (dict(texts=["spell out: 3", ""]), r"`texts\[1\]` is empty"),
    "text that is not a string": (dict(texts=["spell out: 3", 7]), r"`texts\[1\]` has to be a string, but is a int"),
    "bytes instead of text": (dict(texts=b"spell out: 3"), "`texts` has to be a string or a list of strings"),
    "lone surrogate (non-UTF-8 bytes)": (dict(texts="spell out: \udcff"), r"`texts\[0\]` is not valid Unicode"),
    "text longer than max_input_tokens": (dict(texts=LONG_TEXT), "more than `max_input_tokens` \\(512\\)"),
    "text longer than a per-call limit": (dict(texts=TEXTS[1], max_input_tokens=4),
                                          "more than `max_input_tokens` \\(4\\)"),
    "neither texts nor ids": (dict(texts=None), "needs `texts` or `input_ids`"),
    "texts and ids": (dict(texts="spell out: 1", input_ids=np.ones((1, 3), np.int64)), "either `texts` or `input_ids`"),
    "ids 1-D": (dict(input_ids=np.zeros((2,), np.int64)), "`input_ids` has to be a non-empty 2-D array"),
    "ids 3-D": (dict(input_ids=np.zeros((1, 2, 3), np.int64)), "`input_ids` has to be a non-empty 2-D array"),
    "batch of zero ids": (dict(input_ids=np.zeros((0, 4), np.int64)), "non-empty 2-D array .* shape \\(0, 4\\)"),
    "ids of length zero": (dict(input_ids=np.zeros((2, 0), np.int64)), "non-empty 2-D array"),
    "float ids": (dict(input_ids=np.ones((1, 3), np.float32)), "has to hold integers"),
    "id above the vocabulary": (dict(input_ids=np.full((1, 3), 10_000)), "`input_ids` has to lie in \\[0, 160\\)"),
    "negative id": (dict(input_ids=np.array([[5, -1, 1]])), "`input_ids` has to lie in \\[0, 160\\)"),
    "mask of the wrong shape": (dict(input_ids=np.ones((1, 3), np.int64), attention_mask=np.ones((1, 4))),
                                "`attention_mask` has shape \\(1, 4\\), but `input_ids` has \\(1, 3\\)"),
    "mask with values other than 0/1": (dict(input_ids=np.ones((1, 3), np.int64), attention_mask=np.full((1, 3), 2)),
                                        "only 0 \\(padding\\) and 1"),
    "mask hiding a whole row": (dict(input_ids=np.ones((2, 3), np.int64), attention_mask=np.array([[1, 1, 1], [0, 0, 0]])),
                                "masks every token of rows \\[1\\]"),
    "ids longer than the limit": (dict(input_ids=np.ones((1, 600), np.int64)), "600 tokens, more than"),
    "top_p out of range": (dict(texts="spell out: 1", top_p=2.0), "`top_p`.*2.0"),
    "temperature 0 when sampling": (dict(texts="spell out: 1", do_sample=True, temperature=0.0), "`temperature`"),
    "misspelled option": (dict(texts="spell out: 1", temprature=0.5), "unknown generation option"),
    "num_beams 0": (dict(texts="spell out: 1", num_beams=0), "`num_beams` has to be an integer >= 1"),
    "more sequences than beams": (dict(texts="spell out: 1", num_beams=2, num_return_sequences=3),
                                  "`num_return_sequences` \\(3\\) has to be <= `num_beams` \\(2\\)"),
    "negative max_time": (dict(texts="spell out: 1", max_time=-1), "`max_time` has to be a number of seconds > 0"),
    "empty stop string": (dict(texts="spell out: 1", stop=""), "`stop` has to be a non-empty string"),
    "stop that is not a string": (dict(texts="spell out: 1", stop=[3]), "`stop` has to be"),
    "eos id above the vocabulary": (dict(texts="spell out: 1", eos_token_id=[1, 999]),
                                    "`eos_token_id` has to hold token ids in \\[0, 160\\)"),
    "eos id not a number": (dict(texts="spell out: 1", eos_token_id="x"), "`eos_token_id` has to be a token id"),
    "max_input_tokens 0": (dict(texts="spell out: 1", max_input_tokens=0), "`max_input_tokens` has to be an integer >= 1"),
    "truncate_input not a bool": (dict(texts="spell out: 1", truncate_input="yes"), "`truncate_input` has to be True"),
    "seed not an integer": (dict(texts="spell out: 1", do_sample=True, seed="abc"), "`seed` has to be an integer"),
    "max_new_tokens 0": (dict(texts="spell out: 1", max_new_tokens=0), "`max_new_tokens` has to be an integer >= 1"),
}


@pytest.mark.parametrize("kind", BAD_CALLS)
def test_a_bad_generate_call_is_a_value_error(generator, kind, record):
    kwargs, message = BAD_CALLS[kind]
    kwargs = dict(kwargs)
    texts = kwargs.pop("texts", None)
    with pytest.raises(ValueError, match=message):
        generator.generate(texts, **kwargs)
    record("bad requests: generate() raised a ValueError naming the problem", kind)


@pytest.mark.parametrize("kind, sources, targets, message", [
    ("score: empty target", ["spell out: 1"], [""], r"`targets\[0\]` is empty"),
    ("score: empty source", ["  "], ["one"], r"`texts\[0\]` is empty"),
    ("score: no pairs", [], [], "at least one"),
])
def test_a_bad_score_call_is_a_value_error(generator, kind, sources, targets, message, record):
    with pytest.raises(ValueError, match=message):
        generator.score(sources, targets)
    record("bad requests: generate() raised a ValueError naming the problem", kind)


def test_stream_checks_its_text_too(generator):
    with pytest.raises(ValueError, match="is empty or whitespace only"):
        next(generator.stream("   "))


def test_truncate_input_cuts_to_the_limit_and_warns(generator):
    ids, _ = generator.tokenizer.encode([TEXTS[4]])
    limit = 6
    with pytest.warns(UserWarning, match="1 input\\(s\\) longer than max_input_tokens=6 tokens were truncated"):
        cut = generator.generate(TEXTS[4], max_input_tokens=limit, truncate_input=True, max_new_tokens=5)
    # As transformers' truncation: the first limit - 1 tokens, then the EOS the tokenizer appended.
    expected_ids = np.concatenate([ids[:, :limit - 1], ids[:, -1:]], axis=1)
    assert expected_ids[0, -1] == 1
    reference = generator.generate(input_ids=expected_ids, max_new_tokens=5)
    np.testing.assert_array_equal(cut.sequences, reference.sequences)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inputs within the limit: no warning
        generator.generate(TEXTS[0], max_input_tokens=limit, truncate_input=True, max_new_tokens=2)


def test_the_default_input_limit_comes_from_the_tokenizer_or_is_512(generator, tiny_v1, tmp_path):
    assert generator.max_input_tokens == 512  # the tokenizer's model_max_length is "unlimited" (1e30)
    import json
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(tiny_v1.export, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 8}))
    limited = ortdecode.load(copy, provider="cpu")
    assert limited.max_input_tokens == 8
    with pytest.raises(ValueError, match="more than `max_input_tokens` \\(8\\)"):
        limited.generate(TEXTS[4])


# ---------------------------------------------------------------- the CLI: one line, exit status 2
BAD_COMMAND_LINES = {
    "empty text": (["generate", ""], None, r"`texts[0]` is empty or whitespace only"),
    "whitespace-only text": (["generate", "   "], None, "is empty or whitespace only"),
    "stdin that is not UTF-8": (["generate", "-"], b"spell out: 3\n\xff\xfe bad\n", "stdin is not UTF-8 text: byte 0xff"),
    "empty stdin": (["generate", "-"], b"", "no input text (stdin was empty)"),
    "blank stdin line": (["generate", "-"], b"spell out: 3\n  \n\n", "stdin line 2 is empty or whitespace only"),
    "text longer than the limit": (["generate", "--provider", "cpu", "--max-input-tokens", "5", TEXTS[1]], None,
                                   "more than --max-input-tokens (5); raise it or pass --truncate-input"),
    "non-UTF-8 bytes in an argument": (["generate", b"spell out: \xff"], None, "is not valid Unicode"),
    "max-time 0": (["generate", "--max-time", "0", "hi"], None, "`max_time` has to be a number of seconds > 0"),
    "empty --stop": (["generate", "--stop", "", "hi"], None, "`stop` has to be a non-empty string"),
    "top-p 1.5": (["generate", "--do-sample", "--top-p", "1.5", "hi"], None, "`top_p` has to be a float in (0, 1]"),
    "malformed number": (["generate", "--max-new-tokens", "many", "hi"], None, "invalid int value"),
    "unknown flag": (["generate", "--beams", "4", "hi"], None, "unrecognized arguments"),
}


@pytest.mark.parametrize("kind", BAD_COMMAND_LINES)
def test_a_bad_command_line_is_one_line_and_exit_status_2(tiny_v1, kind, record):
    args, stdin, message = BAD_COMMAND_LINES[kind]
    command, *rest = args
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli", command, "--model", str(tiny_v1.export), *rest],
                         input=stdin, capture_output=True, timeout=600)
    stderr = run.stderr.decode("utf-8", "replace")
    assert run.returncode == 2, stderr
    assert_one_line_error(subprocess.CompletedProcess(run.args, run.returncode, "", stderr), message)
    record("bad requests: the CLI printed one line and exited with status 2", kind)


def test_a_broken_model_folder_is_exit_status_1_not_2(tmp_path):
    run = run_cli("generate", "--model", str(tmp_path), "hi")
    assert run.returncode == 1
    assert_one_line_error(run, "is not an ortdecode export")


# ---------------------------------------------------------------- any finite logits: a valid distribution
finite_float32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def logits_and_options(draw):
    rows, vocab = draw(st.integers(1, 4)), draw(st.integers(3, 40))
    scale = draw(st.sampled_from(["any", "huge", "normal"]))
    if scale == "any":  # anything a float32 can hold, subnormals and +-3.4e38 included
        logits = draw(arrays(np.float32, (rows, vocab), elements=finite_float32))
    else:
        base = draw(arrays(np.float32, (rows, vocab), elements=st.floats(-1, 1, width=32)))
        logits = base * np.float32(3e38 if scale == "huge" else 10.0)
    masked = draw(arrays(np.bool_, (rows, vocab)))
    masked[np.arange(rows), draw(arrays(np.int64, rows, elements=st.integers(0, vocab - 1)))] = False
    logits[masked] = -np.inf
    beams = draw(st.sampled_from([1, 1, 2]))
    options = dict(
        do_sample=draw(st.booleans()),
        num_beams=beams,
        temperature=draw(st.floats(0.01, 100)),
        top_k=draw(st.integers(0, vocab + 3)),
        top_p=draw(st.floats(0.01, 1.0)),
        repetition_penalty=draw(st.floats(0.1, 10)),
        no_repeat_ngram_size=draw(st.integers(0, 3)),
        min_new_tokens=draw(st.integers(0, 3)),
        eos_token_id=draw(st.sampled_from([1, [1, 2]])),
        max_new_tokens=8,
        min_p=draw(st.sampled_from([None, 0.0, 0.05, 0.5, 1.0])),
        typical_p=draw(st.sampled_from([1.0, 0.9, 0.2, 1e-6])),
        epsilon_cutoff=draw(st.sampled_from([0.0, 3e-4, 0.2, 0.99])),
        eta_cutoff=draw(st.sampled_from([0.0, 2e-3, 0.5])),
        encoder_repetition_penalty=draw(st.floats(0.1, 10)),
        exponential_decay_length_penalty=draw(st.sampled_from([None, (0, 1.5), (2, 0.5)])),
        renormalize_logits=draw(st.booleans()),
    )
    cur_len = draw(st.integers(1, 6))
    input_ids = draw(arrays(np.int64, (rows, cur_len), elements=st.integers(0, vocab - 1)))
    input_ids[:, 0] = 0
    return logits, input_ids, options


@settings(max_examples=400, deadline=None)
@given(case=logits_and_options(), seed=st.integers(0, 2**32 - 1))
def test_any_finite_logits_and_options_give_a_distribution_and_a_valid_token(case, seed):
    logits, input_ids, options = case
    config = GenerationConfig(**options)
    scores = log_softmax(logits) if config.is_beam_search else logits
    processed = apply_processors(build_processors(config, encoder_input_ids=input_ids[:, ::-1]), input_ids, scores)
    assert not np.isnan(processed).any() and not np.isposinf(processed).any()
    if not np.isfinite(processed).any(axis=-1).all():
        # The processors banned every token the mask left (EOS before min_new_tokens, a repeated n-gram):
        # no distribution exists, and the loop says so instead of sampling from NaN.
        with pytest.raises(NonFiniteLogitsError, match="mask every token"):
            check_scores(processed, 0, "processed scores")
        return
    check_scores(processed, 0, "processed scores")
    weights, total = softmax_weights(processed)
    probabilities = weights / total[:, None]
    assert (probabilities >= 0).all() and np.all(probabilities[np.isneginf(processed)] == 0)
    assert np.abs(probabilities.sum(axis=-1) - 1).max() <= 1e-6
    token = sample_rows(processed, np.random.default_rng(seed)) if config.do_sample else processed.argmax(-1)
    rows = np.arange(len(token))
    assert np.isfinite(processed[rows, token]).all() and (probabilities[rows, token] > 0).all()
    assert (np.isfinite(logits[rows, token])).all()  # never a token the caller masked
