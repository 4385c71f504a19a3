"""The benchmark's inputs: texts of the synthetic t5-small vocabulary ("w<i>" words, one token each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MIN_TOKENS, MAX_TOKENS = 5, 200


def input_lengths(count: int, seed: int = 0) -> np.ndarray:
    """Token counts (EOS included) from a log-normal mix, median 40, clipped to [5, 200]: many short
    inputs, a long tail, as in real corpora (sentences, then paragraphs)."""
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.normal(np.log(40), 0.75, size=count)).round().astype(int)
    return np.clip(lengths, MIN_TOKENS, MAX_TOKENS)


def make_texts(count: int, vocab_words: int, seed: int = 0) -> list[str]:
    """`count` texts whose tokenization (EOS appended) has `input_lengths` tokens."""
    rng = np.random.default_rng([seed, 1])
    words = rng.integers(3, vocab_words, size=int(input_lengths(count, seed).sum()))
    texts, start = [], 0
    for length in input_lengths(count, seed):
        texts.append(" ".join(f"w{w}" for w in words[start:start + length - 1]))
        start += length - 1
    return texts


def write_jsonl(texts: list[str], path: Path) -> Path:
    with open(path, "w") as handle:
        for index, text in enumerate(texts):
            handle.write(json.dumps({"id": index, "text": text}) + "\n")
    return path
