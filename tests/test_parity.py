"""Parity with PyTorch/transformers on tiny exported T5s, in minGPT's three steps: logits allclose, then
identical token ids, then identical strings. Every comparison runs transformers' own `generate` on the
checkpoint the export was made from, with the same inputs: a padded batch of 10 texts of different lengths."""

import numpy as np
import pytest
import torch

import ortdecode
from ortdecode_export.validate import pytorch_reference, stepwise_logits

from .conftest import TEXTS
from .test_search import chi_square_p


@pytest.fixture(scope="module")
def reference(tiny):
    """(ortdecode generator, torch model, HF tokenizer, padded input tensors) for one tiny preset."""
    tokenizer = tiny.hf_tokenizer()
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert len(set(encoded["attention_mask"].sum(1).tolist())) >= 5  # really different lengths
    return ortdecode.load(tiny.export, provider="cpu"), tiny.torch_model(), tokenizer, encoded


def hf_generate(model, encoded, **options):
    with torch.no_grad():
        return model.generate(**encoded, return_dict_in_generate=True, output_scores=True, output_logits=True,
                              **options)


# Every way the runner can hold the graphs: each decoder layout, with and without weights shared between sessions.
SESSION_SETUPS = [("with-past", False), ("split", False), ("merged", False), ("with-past", True), ("split", True),
                  ("merged", True)]


@pytest.mark.parametrize("layout,share_weights", SESSION_SETUPS)
def test_per_step_logits_match_pytorch(tiny, layout, share_weights):
    generator = ortdecode.load(tiny.export, provider="cpu", decoder_layout=layout, share_weights=share_weights)
    tokenizer = tiny.hf_tokenizer()
    encoded = tokenizer(TEXTS, padding=True, return_tensors="np")
    ids, mask = encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
    decoder_input_ids, expected = pytorch_reference(tiny.torch_model(), ids, mask, steps=12)
    ours = stepwise_logits(generator.runner, ids, mask, decoder_input_ids)
    assert np.abs(ours - expected).max() <= 1e-4
    single_pass = generator.runner.teacher_forced_logits(ids, mask, decoder_input_ids)
    assert np.abs(single_pass - expected).max() <= 1e-4


@pytest.mark.parametrize("layout,share_weights", SESSION_SETUPS)
def test_greedy_sequences_and_texts_are_identical(reference, tiny, layout, share_weights):
    _, model, tokenizer, encoded = reference
    generator = ortdecode.load(tiny.export, provider="cpu", decoder_layout=layout, share_weights=share_weights)
    expected = hf_generate(model, encoded, max_new_tokens=16, do_sample=False)
    result = generator.generate(TEXTS, max_new_tokens=16, return_logits=True, return_scores=True)
    np.testing.assert_array_equal(result.sequences, expected.sequences.numpy())
    assert result.texts == tokenizer.batch_decode(expected.sequences, skip_special_tokens=True)
    assert len(result.logits) == len(expected.logits)
    for ours, theirs in zip(result.logits, expected.logits):
        assert np.abs(ours - theirs.numpy()).max() <= 1e-4


@pytest.mark.parametrize("layout,share_weights", SESSION_SETUPS)
def test_beam_search_sequences_and_scores_are_identical(reference, tiny, layout, share_weights):
    _, model, _, encoded = reference
    generator = ortdecode.load(tiny.export, provider="cpu", decoder_layout=layout, share_weights=share_weights)
    expected = hf_generate(model, encoded, max_new_tokens=16, num_beams=4)
    result = generator.generate(TEXTS, max_new_tokens=16, num_beams=4, return_scores=True)
    np.testing.assert_array_equal(result.sequences, expected.sequences.numpy())
    np.testing.assert_allclose(result.sequences_scores, expected.sequences_scores.numpy(), atol=1e-4)
    for ours, theirs in zip(result.scores, expected.scores):  # processed log-probs, [batch * beams, vocab]
        finite = np.isfinite(theirs.numpy())
        np.testing.assert_array_equal(np.isfinite(ours), finite)
        assert np.abs(ours[finite] - theirs.numpy()[finite]).max() <= 1e-4


OPTION_TABLE = [
    dict(max_new_tokens=12, num_beams=3, num_return_sequences=3),
    dict(max_new_tokens=12, num_beams=4, length_penalty=0.3, early_stopping=True),
    dict(max_new_tokens=12, num_beams=4, length_penalty=2.0, early_stopping="never", num_return_sequences=2),
    dict(max_new_tokens=12, num_beams=2, no_repeat_ngram_size=2, repetition_penalty=1.5),
    dict(max_new_tokens=12, repetition_penalty=1.8),
    dict(max_new_tokens=12, no_repeat_ngram_size=2),
    dict(max_new_tokens=12, min_new_tokens=10),
    dict(max_new_tokens=12, min_length=8, num_beams=3),
    dict(),  # max_length=20 from the defaults
]


@pytest.mark.parametrize("options", OPTION_TABLE, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_option_table_matches_transformers(reference, options):
    generator, model, tokenizer, encoded = reference
    expected = hf_generate(model, encoded, **options)
    result = generator.generate(TEXTS, return_scores=True, **options)
    np.testing.assert_array_equal(result.sequences, expected.sequences.numpy())
    assert result.texts == tokenizer.batch_decode(expected.sequences, skip_special_tokens=True)
    if options.get("num_beams", 1) > 1:
        np.testing.assert_allclose(result.sequences_scores, expected.sequences_scores.numpy(), atol=1e-4)
    else:
        for ours, theirs in zip(result.scores, expected.scores):
            np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs.numpy()))


def warped_two_step_distribution(model, tokenizer, text, temperature, top_k, top_p):
    """transformers' probabilities of the first two sampled tokens, float64[vocab * vocab] (a * vocab + b):
    p(a) p(b | a), each from transformers' logits with EOS banned (min_new_tokens=2), through transformers'
    warpers in transformers' order."""
    from transformers.generation import logits_process as hf

    warpers = [hf.TemperatureLogitsWarper(temperature), hf.TopKLogitsWarper(top_k), hf.TopPLogitsWarper(top_p)]

    def warp(logits):
        logits[:, 1] = -float("inf")  # min_new_tokens=2: no EOS in the first two tokens
        for warper in warpers:
            logits = warper(None, logits)
        return torch.softmax(logits.double(), -1)

    encoded = tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        first = warp(model(**encoded, decoder_input_ids=torch.zeros((1, 1), dtype=torch.long)).logits[:, -1])[0]
        support = torch.nonzero(first).flatten()
        prefixes = torch.stack([torch.zeros_like(support), support], 1)
        repeated = {k: v.repeat(len(support), 1) for k, v in encoded.items()}
        second = warp(model(**repeated, decoder_input_ids=prefixes).logits[:, -1])
    joint = torch.zeros((len(first), len(first)), dtype=torch.float64)
    joint[support] = first[support, None] * second
    return joint.flatten().numpy()


@pytest.mark.parametrize("options", [dict(temperature=0.8, top_k=8, top_p=1.0),
                                     dict(temperature=0.7, top_k=30, top_p=0.9)], ids=str)
def test_sampling_follows_the_processed_distribution(tiny_v1, options):
    """Frequencies of the first two tokens, 20,000 samples for each of 3 prompts, vs the distribution that
    transformers' warpers make from transformers' logits (one chi-square over prompts and token pairs).
    Seeded, so deterministic. It has the power to reject (checked by the mutation script): a temperature
    3% off, the temperature applied after top-k/top-p, top-k keeping k + 1 tokens."""
    generator = ortdecode.load(tiny_v1.export, provider="cpu")
    model, tokenizer = tiny_v1.torch_model(), tiny_v1.hf_tokenizer()
    texts, draws, vocab = TEXTS[:3], 20_000, generator.manifest.vocab_size
    sequences = generator.generate(texts, do_sample=True, max_new_tokens=2, min_new_tokens=2,
                                   num_return_sequences=draws, seed=0, **options).sequences
    pairs = (sequences[:, 1] * vocab + sequences[:, 2]).reshape(len(texts), draws)
    counts = np.concatenate([np.bincount(row, minlength=vocab * vocab) for row in pairs])
    probs = np.concatenate([warped_two_step_distribution(model, tokenizer, text, **options) for text in texts])
    assert counts[probs == 0].sum() == 0  # nothing outside the top-k / top-p sets
    assert chi_square_p(counts, probs) > 1e-3


def test_padded_rows_decode_like_unpadded_ones(reference):
    generator = reference[0]
    batched = generator.generate(TEXTS, max_new_tokens=10)
    for i in (0, 4):
        alone = generator.generate(TEXTS[i], max_new_tokens=10)
        assert alone.texts[0] == batched.texts[i]
