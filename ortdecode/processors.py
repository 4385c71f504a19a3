"""Logits processors and sampling warpers on NumPy arrays, with transformers' semantics and order.

Every processor is a callable ``(input_ids, scores) -> scores``:

- ``input_ids``: int64[rows, cur_len], the decoder tokens so far, decoder start token first;
- ``scores``: float[rows, vocab]; a new array is returned, the input is never modified.

`build_processors` returns them in the order transformers' `generate` (4.57 `_get_logits_processor`)
applies them: sequence bias, encoder repetition penalty, repetition penalty, no-repeat-ngram, encoder
no-repeat-ngram, bad words, min-length, min-new-tokens, prefix-allowed tokens, forced BOS, forced EOS,
exponential decay length penalty, suppress tokens, begin-suppress tokens, then the user's processors,
then (when sampling) temperature, top-k, top-p, min-p, typical-p, epsilon, eta, and last the
renormalization (log-softmax). Masked tokens get -inf.

Processors that look at the input (encoder repetition penalty, encoder no-repeat-ngram) get the encoder's
ids repeated per row, padding included, as transformers gives them its padded input ids.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .config import GenerationConfig
from .numerics import kth_largest, log_softmax, nucleus_floor, softmax_weights, without_overflow

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _penalize(scores: np.ndarray, ids: np.ndarray, factor: float) -> np.ndarray:
    """CTRL's penalty on the tokens ``ids`` [rows, n] of each row: score * factor where the score is
    negative, score / factor elsewhere (float64 for rows that would overflow)."""
    def penalize(values, rows):
        row_ids = ids[rows]
        seen = np.take_along_axis(values, row_ids, axis=1)
        penalized = np.where(seen < 0, seen * factor, seen / factor).astype(values.dtype, copy=False)
        out = values.copy()
        np.put_along_axis(out, row_ids, penalized, axis=1)
        return out

    return without_overflow(scores, penalize)


class RepetitionPenalty:
    """Penalize every token already in ``input_ids`` (CTRL, Keskar et al. 2019):
    score / penalty where the score is positive, score * penalty where it is negative."""

    def __init__(self, penalty: float):
        if not (isinstance(penalty, (int, float)) and penalty > 0):
            raise ValueError(f"`repetition_penalty` has to be a float > 0, but is {penalty!r}")
        self.penalty = float(penalty)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return _penalize(scores, input_ids, self.penalty)


class EncoderRepetitionPenalty:
    """The repetition penalty inverted, on the tokens of the input: a penalty > 1 makes every token of
    the row's encoder input more likely (score * penalty where positive, score / penalty where negative).
    encoder_input_ids: int64[rows, src_len], the input ids of each row's input."""

    def __init__(self, penalty: float, encoder_input_ids: np.ndarray):
        if not (isinstance(penalty, (int, float)) and penalty > 0):
            raise ValueError(f"`encoder_repetition_penalty` has to be a float > 0, but is {penalty!r}")
        self.factor = 1 / float(penalty)  # transformers' form, for the same rounding
        self.encoder_input_ids = encoder_input_ids

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return _penalize(scores, self.encoder_input_ids, self.factor)


def _ban_ngram_completions(out: np.ndarray, row: int, ngrams: np.ndarray, prefix: np.ndarray) -> None:
    """-inf for the last token of every n-gram in ``ngrams`` [count, n] that starts with ``prefix``."""
    repeats = (ngrams[:, :-1] == prefix).all(axis=1)
    out[row, ngrams[repeats, -1]] = -np.inf


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
            _ban_ngram_completions(out, row, sliding_window_view(tokens, self.n), tokens[cur_len - self.n + 1:])
        return out


class EncoderNoRepeatNGram:
    """Ban every token that would complete an n-gram of the row's encoder input: if the last n-1
    generated tokens occur in the input followed by token t, then t gets -inf.
    encoder_input_ids: int64[rows, src_len], the input ids of each row's input."""

    def __init__(self, ngram_size: int, encoder_input_ids: np.ndarray):
        if not (isinstance(ngram_size, int) and ngram_size > 0):
            raise ValueError(f"`encoder_no_repeat_ngram_size` has to be an integer > 0, but is {ngram_size!r}")
        self.n = ngram_size
        self.encoder_input_ids = encoder_input_ids

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        cur_len = input_ids.shape[1]
        if cur_len < self.n - 1 or self.encoder_input_ids.shape[1] < self.n:
            return out
        for row, tokens in enumerate(input_ids):
            ngrams = sliding_window_view(self.encoder_input_ids[row], self.n)
            _ban_ngram_completions(out, row, ngrams, tokens[cur_len - self.n + 1:])
        return out


class SequenceBias:
    """Add a bias to the last token of each biased sequence when the row ends with the rest of it
    (a one-token sequence is biased at every step). sequence_bias: ((token ids), bias) pairs."""

    def __init__(self, sequence_bias: Sequence[tuple[Sequence[int], float]]):
        self.single = [(ids[0], bias) for ids, bias in sequence_bias if len(ids) == 1]
        self.longer = [(np.asarray(ids, dtype=np.int64), bias) for ids, bias in sequence_bias if len(ids) > 1]

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        bias = np.zeros(scores.shape, dtype=scores.dtype)
        for token, value in self.single:
            bias[:, token] = value
        for ids, value in self.longer:
            if len(ids) > input_ids.shape[1]:  # longer than the context: cannot complete
                continue
            matching = (input_ids[:, input_ids.shape[1] - len(ids) + 1:] == ids[:-1]).all(axis=1)
            bias[matching, ids[-1]] += value
        return scores + bias


class NoBadWords(SequenceBias):
    """Never complete one of ``bad_words_ids``: the token that would complete one gets -inf. A bad word
    that is a single EOS id is ignored (transformers' rule: EOS cannot be banned this way)."""

    def __init__(self, bad_words_ids: Sequence[Sequence[int]], eos_token_ids: Sequence[int]):
        eos = [[int(t)] for t in eos_token_ids]
        super().__init__([(tuple(ids), -np.inf) for ids in bad_words_ids if list(ids) not in eos])


class PrefixAllowedTokens:
    """Only the tokens ``fn(batch_id, row_input_ids)`` returns are allowed; batch_id is the index of the
    row's input (rows_per_input adjacent rows per input)."""

    def __init__(self, fn: Callable[[int, np.ndarray], Sequence[int]], rows_per_input: int):
        self.fn = fn
        self.rows_per_input = rows_per_input

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        mask = np.full(scores.shape, -np.inf, dtype=scores.dtype)
        for row, tokens in enumerate(input_ids):
            batch_id = row // self.rows_per_input
            allowed = np.asarray(self.fn(batch_id, tokens), dtype=np.int64).reshape(-1)
            if len(allowed) == 0:
                raise ValueError(f"`prefix_allowed_tokens_fn` returned an empty list for batch ID {batch_id}. This "
                                 "means that the constraint is unsatisfiable. Please check your implementation of "
                                 "`prefix_allowed_tokens_fn`")
            if allowed.min() < 0 or allowed.max() >= scores.shape[1]:
                raise ValueError(f"`prefix_allowed_tokens_fn` returned token ids outside [0, {scores.shape[1]}) for "
                                 f"batch ID {batch_id}: {allowed[(allowed < 0) | (allowed >= scores.shape[1])][:8].tolist()}")
            mask[row, allowed] = 0
        return scores + mask


class ForcedTokens:
    """At the step where the rows have ``at_length`` tokens, only ``token_ids`` are allowed (score 0,
    everything else -inf): forced BOS at length 1, forced EOS at max_length - 1."""

    def __init__(self, at_length: int, token_ids: Sequence[int]):
        self.at_length = at_length
        self.token_ids = np.asarray(token_ids, dtype=np.int64)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if input_ids.shape[1] != self.at_length:
            return scores.copy()
        out = np.full(scores.shape, -np.inf, dtype=scores.dtype)
        out[:, self.token_ids] = 0
        return out


class ExponentialDecayLengthPenalty:
    """After ``start_index`` generated tokens, raise the EOS scores by |score| * (decay_factor ** k - 1),
    k = tokens past the start: EOS grows more likely the longer the text (a soft length limit)."""

    def __init__(self, start_index: int, decay_factor: float, eos_token_ids: Sequence[int], prompt_length: int):
        self.regulation_start = start_index + prompt_length
        self.factor = float(decay_factor)
        self.eos = np.asarray(eos_token_ids, dtype=np.int64)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        past = input_ids.shape[1] - self.regulation_start
        if past <= 0:
            return scores.copy()
        with np.errstate(over="ignore"):  # a factor ** k beyond float64: +inf scores, reported by check_scores
            growth = np.float64(self.factor) ** past - 1

        def penalize(values, rows):
            out = values.copy()
            eos_scores = values[:, self.eos]
            with np.errstate(invalid="ignore"):  # -inf + inf where EOS is masked: replaced below
                raised = eos_scores + (np.abs(eos_scores) * growth).astype(values.dtype)
            # A masked EOS stays masked (transformers computes -inf + inf = NaN there).
            out[:, self.eos] = np.where(np.isneginf(eos_scores), -np.inf, raised)
            return out

        return without_overflow(scores, penalize)


class SuppressTokens:
    """-inf for ``token_ids`` while the rows have ``at_length`` tokens (every step when None)."""

    def __init__(self, token_ids: Sequence[int], at_length: int | None = None):
        self.token_ids = np.asarray(token_ids, dtype=np.int64)
        self.at_length = at_length

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        if self.at_length is None or input_ids.shape[1] == self.at_length:
            out[:, self.token_ids] = -np.inf
        return out


class LogitNormalization:
    """log-softmax of the scores, so beam scores stay log-probabilities after the other processors.
    A row masked entirely stays -inf."""

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            out = log_softmax(scores)
        return np.where(np.isnan(out) & np.isneginf(scores), -np.inf, out).astype(scores.dtype, copy=False)


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
        return np.where(scores < kth_largest(scores, k), -np.inf, scores).astype(scores.dtype, copy=False)


class TopP:
    """Nucleus filtering (Holtzman et al. 2019), transformers' rule: sort ascending, remove the tokens
    whose cumulative probability is <= 1 - top_p, keep at least ``min_tokens_to_keep``. Equivalently: keep
    the m most likely tokens, where m is the smallest count whose probability mass reaches top_p
    (`numerics.nucleus_floor`, which sorts only the tokens near the cut). Sums are float64 (transformers:
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
        floor = nucleus_floor(scores, self.top_p)
        if self.min_tokens_to_keep > 1:  # np.minimum keeps NaN (a row entirely -inf): nothing compares below it
            floor = np.minimum(floor, _top_scores_floor(scores, self.min_tokens_to_keep)[:, 0])
        return np.where(scores < floor[:, None], -np.inf, scores).astype(scores.dtype, copy=False)


def _top_scores_floor(scores: np.ndarray, count: int) -> np.ndarray:
    """[rows, 1]: the ``count``-th largest score of each row; tokens at or above it are always kept."""
    return kth_largest(scores, min(count, scores.shape[-1]))


def _check_min_tokens_to_keep(min_tokens_to_keep) -> None:
    if not (isinstance(min_tokens_to_keep, int) and min_tokens_to_keep >= 1):
        raise ValueError(f"`min_tokens_to_keep` has to be a positive integer, but is {min_tokens_to_keep!r}")


class MinP:
    """Keep the tokens whose probability is >= min_p * the most likely token's probability, and the
    ``min_tokens_to_keep`` most likely ones. exp(score - max) is that probability ratio, so no softmax
    is needed."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        if not (isinstance(min_p, (int, float)) and 0 <= min_p <= 1):
            raise ValueError(f"`min_p` has to be a float in the [0, 1] interval, but is {min_p!r}")
        _check_min_tokens_to_keep(min_tokens_to_keep)
        self.min_p = float(min_p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # a row masked entirely: NaN ratios compare false, nothing changes
            ratio, _ = softmax_weights(scores)
            remove = (ratio < self.min_p) & (scores < _top_scores_floor(scores, self.min_tokens_to_keep))
        return np.where(remove, -np.inf, scores).astype(scores.dtype, copy=False)


class Typical:
    """Locally typical sampling (Meister et al. 2022): rank tokens by |-log p - entropy| and keep the
    closest ones until their probability mass reaches ``typical_p`` (the token that crosses it included),
    and at least ``min_tokens_to_keep``. Computed in float64."""

    def __init__(self, typical_p: float, min_tokens_to_keep: int = 1):
        if not (isinstance(typical_p, (int, float)) and 0 < typical_p < 1):
            raise ValueError(f"`typical_p` has to be a float > 0 and < 1, but is {typical_p!r}")
        _check_min_tokens_to_keep(min_tokens_to_keep)
        self.mass = float(typical_p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        live = np.flatnonzero(np.isfinite(scores.max(axis=-1)))  # a row masked entirely stays as it is
        if not len(live):
            return out
        logp = log_softmax(scores[live].astype(np.float64))
        p = np.exp(logp)
        entropy = -(np.where(p > 0, logp, 0.0) * p).sum(axis=-1, keepdims=True)  # 0 * log 0 = 0, not NaN
        distance = np.abs(-logp - entropy)  # +inf for masked tokens: last in the order
        order = np.argsort(distance, axis=-1, kind="stable")
        sorted_distance = np.take_along_axis(distance, order, axis=-1)
        cumulative = np.cumsum(np.take_along_axis(p, order, axis=-1), axis=-1)
        last = np.minimum((cumulative < self.mass).sum(axis=-1), scores.shape[-1] - 1)
        threshold = sorted_distance[np.arange(len(live)), last][:, None]
        remove_sorted = sorted_distance > threshold
        remove_sorted[:, :self.min_tokens_to_keep] = False
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        out[live] = np.where(remove, -np.inf, scores[live])
        return out


class EpsilonCutoff:
    """Epsilon sampling (Hewitt et al. 2022): drop the tokens whose probability is below ``epsilon``,
    keeping the ``min_tokens_to_keep`` most likely ones."""

    name = "epsilon_cutoff"

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1):
        if not (isinstance(epsilon, (int, float)) and 0 < epsilon < 1):
            raise ValueError(f"`{self.name}` has to be a float > 0 and < 1, but is {epsilon!r}")
        _check_min_tokens_to_keep(min_tokens_to_keep)
        self.epsilon = float(epsilon)
        self.min_tokens_to_keep = min_tokens_to_keep

    def cutoff(self, probs: np.ndarray) -> np.ndarray | float:
        return self.epsilon

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):  # a row masked entirely: NaN, nothing changes
            weights, total = softmax_weights(scores)
            probs = weights / total[:, None]
            remove = (probs < self.cutoff(probs)) & (scores < _top_scores_floor(scores, self.min_tokens_to_keep))
        return np.where(remove, -np.inf, scores).astype(scores.dtype, copy=False)


class EtaCutoff(EpsilonCutoff):
    """Eta sampling (Hewitt et al. 2022): epsilon sampling with the cutoff
    eta = min(epsilon, sqrt(epsilon) * exp(-entropy)) of each row's distribution."""

    name = "eta_cutoff"

    def cutoff(self, probs: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=-1, keepdims=True)
        return np.minimum(self.epsilon, np.sqrt(self.epsilon) * np.exp(-entropy))


def build_processors(config: GenerationConfig, prompt_length: int = 1,
                     user_processors: Sequence[LogitsProcessor] = (),
                     encoder_input_ids: np.ndarray | None = None) -> list[LogitsProcessor]:
    """The processor list `generate` applies each step, in transformers' order.

    ``prompt_length`` is the number of decoder prompt tokens (1: the decoder start token).
    ``encoder_input_ids``: int64[rows, src_len], each row's encoder input ids (padding included, as in
    transformers); needed by encoder_repetition_penalty and encoder_no_repeat_ngram_size."""
    cfg = config
    encoder_options = [name for name, is_set in (("encoder_repetition_penalty", cfg.encoder_repetition_penalty != 1.0),
                                                 ("encoder_no_repeat_ngram_size", cfg.encoder_no_repeat_ngram_size > 0))
                       if is_set]
    if encoder_options and encoder_input_ids is None:
        raise ValueError(f"`{encoder_options[0]}` needs the encoder's input ids (encoder_input_ids)")
    processors: list[LogitsProcessor] = []
    if cfg.sequence_bias is not None:
        processors.append(SequenceBias(cfg.sequence_bias))
    if cfg.encoder_repetition_penalty != 1.0:
        processors.append(EncoderRepetitionPenalty(cfg.encoder_repetition_penalty, encoder_input_ids))
    if cfg.repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(cfg.repetition_penalty))
    if cfg.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGram(cfg.no_repeat_ngram_size))
    if cfg.encoder_no_repeat_ngram_size > 0:
        processors.append(EncoderNoRepeatNGram(cfg.encoder_no_repeat_ngram_size, encoder_input_ids))
    if cfg.bad_words_ids is not None:
        processors.append(NoBadWords(cfg.bad_words_ids, cfg.eos_token_id))
    if cfg.effective_min_length > 0:
        processors.append(MinLength(cfg.effective_min_length, cfg.eos_token_id))
    if cfg.min_new_tokens:
        processors.append(MinNewTokens(prompt_length, cfg.min_new_tokens, cfg.eos_token_id))
    if cfg.prefix_allowed_tokens_fn is not None:
        processors.append(PrefixAllowedTokens(cfg.prefix_allowed_tokens_fn, cfg.rows_per_input))
    if cfg.forced_bos_token_id is not None:
        processors.append(ForcedTokens(1, [cfg.forced_bos_token_id]))
    if cfg.forced_eos_token_id is not None:
        processors.append(ForcedTokens(prompt_length + cfg.new_token_budget - 1, cfg.forced_eos_token_id))
    if cfg.exponential_decay_length_penalty is not None:
        start_index, decay_factor = cfg.exponential_decay_length_penalty
        processors.append(ExponentialDecayLengthPenalty(start_index, decay_factor, cfg.eos_token_id, prompt_length))
    if cfg.suppress_tokens is not None:
        processors.append(SuppressTokens(cfg.suppress_tokens))
    if cfg.begin_suppress_tokens is not None:
        # After a forced BOS, the first free step is the second one (transformers' begin_index).
        begins_at = prompt_length + 1 if prompt_length == 1 and cfg.forced_bos_token_id is not None else prompt_length
        processors.append(SuppressTokens(cfg.begin_suppress_tokens, at_length=begins_at))
    processors.extend(user_processors)
    if cfg.do_sample:
        # Beam sampling keeps one token beyond the EOS ids so a beam can always continue.
        min_tokens_to_keep = len(cfg.eos_token_id) + 1 if cfg.num_beams > 1 else 1
        if cfg.temperature != 1.0:
            processors.append(Temperature(cfg.temperature))
        if cfg.top_k != 0:
            processors.append(TopK(cfg.top_k, min_tokens_to_keep))
        if cfg.top_p < 1.0:
            processors.append(TopP(cfg.top_p, min_tokens_to_keep))
        if cfg.min_p is not None:
            processors.append(MinP(cfg.min_p, min_tokens_to_keep))
        if cfg.typical_p < 1.0:
            processors.append(Typical(cfg.typical_p, min_tokens_to_keep))
        if cfg.epsilon_cutoff > 0.0:
            processors.append(EpsilonCutoff(cfg.epsilon_cutoff, min_tokens_to_keep))
        if cfg.eta_cutoff > 0.0:
            processors.append(EtaCutoff(cfg.eta_cutoff, min_tokens_to_keep))
    if cfg.renormalize_logits:
        processors.append(LogitNormalization())
    return processors


def apply_processors(processors: Sequence[LogitsProcessor], input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores
