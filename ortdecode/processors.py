"""Logits processors and sampling warpers on NumPy arrays, with transformers' semantics and order.

Every processor is a callable ``(input_ids, scores) -> scores``:

- ``input_ids``: int64[rows, cur_len], the decoder tokens so far, decoder start token first;
- ``scores``: float[rows, vocab]; a new array is returned, the input is never modified.

`build_processors` returns them in the order transformers' `generate` applies them: repetition penalty,
no-repeat-ngram, min-length, min-new-tokens, then the user's processors, then (when sampling)
temperature, top-k, top-p. Masked tokens get -inf.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .config import GenerationConfig
from .numerics import first_crossing, without_overflow

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]


class RepetitionPenalty:
    """Penalize every token already in ``input_ids`` (CTRL, Keskar et al. 2019):
    score / penalty where the score is positive, score * penalty where it is negative."""

    def __init__(self, penalty: float):
        if not (isinstance(penalty, (int, float)) and penalty > 0):
            raise ValueError(f"`repetition_penalty` has to be a float > 0, but is {penalty!r}")
        self.penalty = float(penalty)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        def penalize(values, rows):
            ids = input_ids[rows]
            seen = np.take_along_axis(values, ids, axis=1)
            penalized = np.where(seen < 0, seen * self.penalty, seen / self.penalty).astype(values.dtype, copy=False)
            out = values.copy()
            np.put_along_axis(out, ids, penalized, axis=1)
            return out

        return without_overflow(scores, penalize)


class NoRepeatNGram:
    """Ban every token that would complete an n-gram already present in the row (fairseq's rule):
    if the last n-1 tokens occurred before, followed by token t, then t gets -inf."""

    def __init__(self, ngram_size: int):
        if not (isinstance(ngram_size, int) and ngram_size >= 0):
            raise ValueError(f"`no_repeat_ngram_size` has to be a non-negative integer, but is {ngram_size!r}")
        self.n = ngram_size  # 0 bans nothing, as in GenerationConfig

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        cur_len = input_ids.shape[1]
        if self.n == 0 or cur_len < self.n:  # disabled, or no complete n-gram yet
            return out
        for row, tokens in enumerate(input_ids):
            ngrams = sliding_window_view(tokens, self.n)  # [cur_len - n + 1, n]
            prefix = tokens[cur_len - self.n + 1:]  # the last n-1 tokens
            repeats = (ngrams[:, :-1] == prefix).all(axis=1)
            out[row, ngrams[repeats, -1]] = -np.inf
        return out


class MinLength:
    """Forbid EOS while the row (decoder start token included) is shorter than ``min_length``."""

    def __init__(self, min_length: int, eos_token_ids: Sequence[int]):
        if not (isinstance(min_length, int) and min_length >= 0):
            raise ValueError(f"`min_length` has to be a non-negative integer, but is {min_length!r}")
        self.min_length = min_length
        self.eos = np.asarray(eos_token_ids, dtype=np.int64)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        if input_ids.shape[1] < self.min_length:
            out[:, self.eos] = -np.inf
        return out


class MinNewTokens:
    """Forbid EOS until ``min_new_tokens`` tokens follow the ``prompt_length`` decoder prompt tokens."""

    def __init__(self, prompt_length: int, min_new_tokens: int, eos_token_ids: Sequence[int]):
        if not (isinstance(min_new_tokens, int) and min_new_tokens >= 0):
            raise ValueError(f"`min_new_tokens` has to be a non-negative integer, but is {min_new_tokens!r}")
        self.prompt_length = prompt_length
        self.min_new_tokens = min_new_tokens
        self.eos = np.asarray(eos_token_ids, dtype=np.int64)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        if input_ids.shape[1] - self.prompt_length < self.min_new_tokens:
            out[:, self.eos] = -np.inf
        return out


class Temperature:
    """scores / temperature: > 1 flattens the distribution, < 1 sharpens it."""

    def __init__(self, temperature: float):
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"`temperature` has to be a float > 0, but is {temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return without_overflow(scores, lambda values, rows: (values / self.temperature).astype(values.dtype, copy=False))


class TopK:
    """Keep the tokens whose score is >= the k-th largest (ties at the boundary are kept); -inf elsewhere.
    k is raised to ``min_tokens_to_keep`` and capped at the vocabulary size; 0 keeps everything, as in
    GenerationConfig."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        if not (isinstance(top_k, int) and top_k >= 0):
            raise ValueError(f"`top_k` has to be a non-negative integer (0 disables it), but is {top_k!r}")
        self.top_k = max(top_k, min_tokens_to_keep) if top_k else 0

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.top_k == 0:
            return scores.copy()
        k = min(self.top_k, scores.shape[-1])
        kth_largest = np.partition(scores, -k, axis=-1)[:, -k:].min(axis=-1, keepdims=True)
        return np.where(scores < kth_largest, -np.inf, scores).astype(scores.dtype, copy=False)


class TopP:
    """Nucleus filtering (Holtzman et al. 2019), transformers' rule: sort ascending, remove the tokens
    whose cumulative probability is <= 1 - top_p, keep at least ``min_tokens_to_keep``. Equivalently: keep
    the m most likely tokens, where m is the smallest count whose probability mass reaches top_p. One
    sort of the row (no argsort), then a two-level cumulative search. Sums are float64 (transformers:
    float32), so the mask can differ from transformers' only where rounding crosses the threshold.
    Tokens tied with the last kept one are kept."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"`top_p` has to be a float in (0, 1], but is {top_p!r}")
        if not (isinstance(min_tokens_to_keep, int) and min_tokens_to_keep >= 1):
            raise ValueError(f"`min_tokens_to_keep` has to be a positive integer, but is {min_tokens_to_keep!r}")
        self.top_p = float(top_p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.top_p >= 1.0:  # keep everything, even tokens whose probability underflows to 0
            return scores.copy()
        descending = -np.sort(-scores, axis=-1)  # contiguous, unlike a reversed view
        # A row masked entirely (-inf - -inf = NaN) stays masked: NaN thresholds compare false below.
        # Differences below -3.4e38 become -inf, weight 0.
        with np.errstate(invalid="ignore", over="ignore"):
            weights = np.exp(descending - descending[:, :1])
        total = weights.sum(axis=-1, dtype=np.float64)
        # kept = 1 + index of the first token at which the cumulative mass reaches top_p; a crossing
        # "> target" at the float64 value just below top_p * total is the same as ">= top_p * total".
        kept = 1 + first_crossing(weights, np.nextafter(self.top_p * total, 0))
        kept = np.clip(kept, self.min_tokens_to_keep, scores.shape[-1])
        threshold = descending[np.arange(len(scores)), kept - 1]
        return np.where(scores < threshold[:, None], -np.inf, scores).astype(scores.dtype, copy=False)


def build_processors(config: GenerationConfig, prompt_length: int = 1,
                     user_processors: Sequence[LogitsProcessor] = ()) -> list[LogitsProcessor]:
    """The processor list `generate` applies each step, in transformers' order.

    ``prompt_length`` is the number of decoder prompt tokens (1: the decoder start token)."""
    processors: list[LogitsProcessor] = []
    if config.repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(config.repetition_penalty))
    if config.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGram(config.no_repeat_ngram_size))
    if config.effective_min_length > 0:
        processors.append(MinLength(config.effective_min_length, config.eos_token_id))
    if config.min_new_tokens:
        processors.append(MinNewTokens(prompt_length, config.min_new_tokens, config.eos_token_id))
    processors.extend(user_processors)
    if config.do_sample:
        # Beam sampling keeps one token beyond the EOS ids so a beam can always continue.
        min_tokens_to_keep = len(config.eos_token_id) + 1 if config.num_beams > 1 else 1
        if config.temperature != 1.0:
            processors.append(Temperature(config.temperature))
        if config.top_k != 0:
            processors.append(TopK(config.top_k, min_tokens_to_keep))
        if config.top_p < 1.0:
            processors.append(TopP(config.top_p, min_tokens_to_keep))
    return processors


def apply_processors(processors: Sequence[LogitsProcessor], input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores
