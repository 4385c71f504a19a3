"""Search strategies: how the next tokens are chosen from processed scores.

Both classes have the same shape (whisper's `TokenDecoder`):

- ``input_ids``: int64[rows, cur_len], the running sequences that the processors see;
- ``to_scores(logits)``: what the processors work on (raw logits, or log-probs for beam search);
- ``advance(scores)``: choose the next tokens; returns the cache rows to keep, int64[rows] (row i of the
  next step continues row rows[i]; greedy and sampling keep every row in place);
- ``next_tokens``: int64[rows], what the model is fed at the next step;
- ``prompt_length``: decoder prompt tokens before the generated ones (the decoder start token);
- ``done``: whether every row has finished;
- ``stop_running(reason)``: end every unfinished row now (an interrupt), keeping what it has;
- ``finalize()``: the sequences transformers' `generate` would return, their beam scores and beam
  indices, and why each one ended (`stopping.REASONS`).

Whether a token ends a sequence (EOS, extra EOS ids, stop strings, time) is `StopRules`' business.

Rows are laid out input-major: row = input_index * rows_per_input + beam (or sample) index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import DECODER_PROMPT_LENGTH, GenerationConfig
from .numerics import first_crossing, log_softmax, softmax_weights, top_k_indices
from .stopping import LENGTH, RUNNING, TIME, StopRules, reason_names

# transformers marks impossible beams with this score rather than -inf, so sums stay finite.
_IMPOSSIBLE = np.float32(-1.0e9)


@dataclass
class SearchOutput:
    sequences: np.ndarray  # int64[inputs * num_return_sequences, length], decoder start token first
    finish_reasons: list[str]  # one per row: "eos", "stop", "length", "time" or "interrupted"
    sequences_scores: np.ndarray | None  # float32[rows] for beam search
    # int64[rows, generated] for beam search: the row (input * num_beams + beam) each token was chosen
    # from, -1 after the sequence's end (transformers' beam_indices)
    beam_indices: np.ndarray | None = None


def sample_rows(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row, drawn with probability softmax(scores) [rows, vocab], by inverting the CDF.

    The weights exp(score - max) are computed in the scores' dtype; the sums that decide the draw in
    float64. Tokens at -inf have weight 0 and are never drawn."""
    weights, total = softmax_weights(scores)
    return first_crossing(weights, rng.random(len(scores)) * total).astype(np.int64)


def sample_without_replacement(log_weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct indices per row, drawn in order with probability proportional to exp(log_weights)
    among those not yet drawn (the Gumbel-top-k trick; same law as torch.multinomial without replacement)."""
    keys = log_weights.astype(np.float64) + rng.gumbel(size=log_weights.shape)
    return np.argsort(-keys, axis=-1, kind="stable")[:, :k]


class TokenSearch:
    """Greedy decoding (argmax) or multinomial sampling, one token per row per step.

    As in transformers, a row that ended keeps running and is fed padding until all rows finish."""

    def __init__(self, config: GenerationConfig, num_inputs: int, rng: np.random.Generator | None, rules: StopRules):
        self.config = config
        self.rng = rng
        self.rules = rules
        self.prompt_length = DECODER_PROMPT_LENGTH
        rows = num_inputs * config.rows_per_input
        self.input_ids = np.full((rows, self.prompt_length), config.decoder_start_token_id, dtype=np.int64)
        self.reasons = np.full(rows, RUNNING, dtype=np.int8)

    def to_scores(self, logits: np.ndarray) -> np.ndarray:
        return logits

    def advance(self, scores: np.ndarray) -> np.ndarray:
        if self.config.do_sample:
            tokens = sample_rows(scores, self.rng)
        else:
            tokens = np.argmax(scores, axis=-1).astype(np.int64)
        running = self.reasons == RUNNING
        tokens = np.where(running, tokens, self.config.pad_token_id)
        self.input_ids = np.concatenate([self.input_ids, tokens[:, None]], axis=1)
        ended = self.rules.ended(self.input_ids, rows=running, scores=lambda: scores)
        self.reasons = np.where(running, ended, self.reasons)
        if self.input_ids.shape[1] - self.prompt_length >= self.config.new_token_budget:
            self.stop_running(LENGTH)
        elif self.rules.time_is_up():
            self.stop_running(TIME)
        return np.arange(len(self.input_ids))

    def stop_running(self, reason: int) -> None:
        self.reasons[self.reasons == RUNNING] = reason

    @property
    def next_tokens(self) -> np.ndarray:
        return self.input_ids[:, -1]

    @property
    def done(self) -> bool:
        return not (self.reasons == RUNNING).any()

    def finalize(self) -> SearchOutput:
        return SearchOutput(sequences=self.input_ids, finish_reasons=reason_names(self.reasons), sequences_scores=None)


class BeamSearch:
    """Beam search with transformers' (>= 4.50, vectorized) semantics.

    Each step, every input's beams propose their top candidates; the best ``2 * num_beams`` by summed
    log-probability are kept; those ending in EOS (or at the length limit) that rank among the first
    ``num_beams`` become finished hypotheses, scored sum_logprobs / generated_length ** length_penalty;
    the best unfinished ones continue. `early_stopping` decides when an input needs no more steps.
    With ``do_sample`` the candidates are sampled without replacement instead (beam sampling)."""

    def __init__(self, config: GenerationConfig, num_inputs: int, rng: np.random.Generator | None, rules: StopRules):
        self.config = config
        self.rng = rng
        self.rules = rules
        self.batch = num_inputs
        self.beams = config.num_beams
        self.prompt_length = DECODER_PROMPT_LENGTH
        self.max_length = self.prompt_length + config.new_token_budget
        self.candidates = max(2, 1 + len(config.eos_token_id)) * self.beams
        # transformers fills unused positions with `pad_token_id or eos_token_id[0]`: a pad id of 0
        # counts as unset, so T5 outputs are filled with EOS (1). Kept for identical sequences.
        self.fill = config.pad_token_id or config.eos_token_id[0]
        # Sequences grow by one column per step (not preallocated to max_length: every step gathers them,
        # so a large max_new_tokens would make each step cost O(max_length)).
        self.running = np.full((self.batch, self.beams, self.prompt_length), config.decoder_start_token_id,
                               dtype=np.int64)
        self.running_scores = np.zeros((self.batch, self.beams), dtype=np.float32)
        self.running_scores[:, 1:] = _IMPOSSIBLE  # only the first beam is live at the start
        self.finished_seqs = self.running.copy()
        # Per generated position, the flat row (input * beams + beam) the token was chosen from; -1 unused.
        self.running_beam_indices = np.full((self.batch, self.beams, 0), -1, dtype=np.int64)
        self.finished_beam_indices = self.running_beam_indices.copy()
        self.finished_scores = np.full((self.batch, self.beams), _IMPOSSIBLE, dtype=np.float32)
        self.finished_lengths = np.zeros((self.batch, self.beams), dtype=np.int64)
        self.finished_reasons = np.full((self.batch, self.beams), RUNNING, dtype=np.int8)
        self.is_finished = np.zeros((self.batch, self.beams), dtype=bool)
        self.can_improve = np.ones((self.batch, 1), dtype=bool)
        self.cur_len = self.prompt_length
        self._done = False

    @property
    def input_ids(self) -> np.ndarray:
        return self.running[:, :, :self.cur_len].reshape(self.batch * self.beams, self.cur_len)

    @property
    def next_tokens(self) -> np.ndarray:
        return self.running[:, :, self.cur_len - 1].reshape(-1)

    @property
    def done(self) -> bool:
        return self._done

    def to_scores(self, logits: np.ndarray) -> np.ndarray:
        return log_softmax(logits.astype(np.float32, copy=False))

    def advance(self, scores: np.ndarray) -> np.ndarray:
        """scores: float32[batch * beams, vocab] processed log-probs. Returns the cache rows to keep."""
        cfg, B, K = self.config, self.batch, self.beams
        vocab = scores.shape[-1]
        total = (scores.reshape(B, K, vocab) + self.running_scores[:, :, None]).reshape(B, K * vocab)

        # Top candidates across all beams of an input.
        if cfg.do_sample:
            log_weights = total - total.max(axis=-1, keepdims=True)
            picked = sample_without_replacement(log_weights, self.candidates, self.rng)
        else:
            picked = top_k_indices(total, self.candidates)
        cand_scores = np.take_along_axis(total, picked, axis=1)
        cand_beam = picked // vocab
        cand_token = picked % vocab
        cand_seqs = np.concatenate([np.take_along_axis(self.running, cand_beam[:, :, None], axis=1),
                                    cand_token[:, :, None]], axis=2)
        cand_rows = cand_beam + np.arange(B)[:, None] * K
        cand_beam_indices = np.concatenate([np.take_along_axis(self.running_beam_indices, cand_beam[:, :, None],
                                                               axis=1), cand_rows[:, :, None]], axis=2)
        cand_reasons = self._candidate_reasons(cand_seqs, lambda: scores[cand_rows.reshape(-1)])
        hits_stop = cand_reasons != RUNNING

        # The best unfinished candidates continue.
        live_scores = cand_scores + hits_stop.astype(np.float32) * _IMPOSSIBLE
        keep = top_k_indices(live_scores, K)
        self.running = np.take_along_axis(cand_seqs, keep[:, :, None], axis=1)
        self.running_scores = np.take_along_axis(live_scores, keep, axis=1)
        self.running_beam_indices = np.take_along_axis(cand_beam_indices, keep[:, :, None], axis=1)
        cache_rows = np.take_along_axis(cand_rows, keep, axis=1).reshape(-1)

        self._update_finished(cand_seqs, cand_beam_indices, cand_scores, hits_stop, cand_reasons)
        self.cur_len += 1
        self._update_can_improve()
        improvement_possible = self.can_improve.any()
        open_beam = not (self.is_finished.all() and cfg.early_stopping is True)
        self._done = not (improvement_possible and open_beam and not hits_stop.all())
        return cache_rows

    def _candidate_reasons(self, cand_seqs: np.ndarray, cand_scores) -> np.ndarray:
        """Why each candidate would end here (transformers applies its stopping criteria to candidates).
        cand_scores: () -> the processed scores row each candidate's last token came from."""
        B, C = cand_seqs.shape[:2]
        reasons = self.rules.ended(cand_seqs[:, :, :self.cur_len + 1].reshape(B * C, -1), scores=cand_scores)
        reasons = reasons.reshape(B, C)
        if self.cur_len + 1 >= self.max_length:
            reasons[reasons == RUNNING] = LENGTH
        elif self.rules.time_is_up():
            reasons[reasons == RUNNING] = TIME
        return reasons

    def _update_finished(self, cand_seqs, cand_beam_indices, cand_scores, hits_stop, cand_reasons) -> None:
        cfg, K = self.config, self.beams
        among_top = np.zeros(self.candidates, dtype=bool)
        among_top[:K] = True
        just_finished = hits_stop & among_top[None, :]
        generated = self.cur_len + 1 - self.prompt_length
        scores = (cand_scores / (generated ** cfg.length_penalty)).astype(np.float32)
        full = self.is_finished.all(axis=-1, keepdims=True) & (cfg.early_stopping is True)
        scores = scores + full.astype(np.float32) * _IMPOSSIBLE
        scores = scores + (~self.can_improve).astype(np.float32) * _IMPOSSIBLE
        scores = scores + (~just_finished).astype(np.float32) * _IMPOSSIBLE
        self._merge_finished(cand_seqs, cand_beam_indices, scores, self.cur_len + 1, just_finished, cand_reasons)

    def _merge_finished(self, seqs, beam_indices, scores, length, just_finished, reasons) -> None:
        """Keep the best `num_beams` of the finished hypotheses and the new ones."""
        merged_seqs = np.concatenate(_same_length([self.finished_seqs, seqs], self.fill), axis=1)
        merged_beam_indices = np.concatenate(_same_length([self.finished_beam_indices, beam_indices], -1), axis=1)
        merged_scores = np.concatenate([self.finished_scores, scores], axis=1)
        merged_lengths = np.concatenate([self.finished_lengths, np.full(scores.shape, length, dtype=np.int64)], axis=1)
        merged_finished = np.concatenate([self.is_finished, just_finished], axis=1)
        merged_reasons = np.concatenate([self.finished_reasons, reasons], axis=1)
        best = top_k_indices(merged_scores, self.beams)
        self.finished_seqs = np.take_along_axis(merged_seqs, best[:, :, None], axis=1)
        self.finished_beam_indices = np.take_along_axis(merged_beam_indices, best[:, :, None], axis=1)
        self.finished_scores = np.take_along_axis(merged_scores, best, axis=1)
        self.finished_lengths = np.take_along_axis(merged_lengths, best, axis=1)
        self.is_finished = np.take_along_axis(merged_finished, best, axis=1)
        self.finished_reasons = np.take_along_axis(merged_reasons, best, axis=1)

    def stop_running(self, reason: int) -> None:
        """End the search now: the live running beams join the finished hypotheses, scored as if they
        ended here, so every input has an output."""
        generated = max(self.cur_len - self.prompt_length, 1)
        live = self.running_scores > _IMPOSSIBLE / 2
        scores = (self.running_scores / (generated ** self.config.length_penalty)).astype(np.float32)
        scores = np.where(live, scores, _IMPOSSIBLE).astype(np.float32)
        self._merge_finished(self.running, self.running_beam_indices, scores, self.cur_len, live,
                             np.full(live.shape, reason, dtype=np.int8))
        self._done = True

    def _update_can_improve(self) -> None:
        """Can the best running beam still beat the worst finished hypothesis? (transformers'
        `_check_early_stop_heuristic`)."""
        cfg = self.config
        if cfg.early_stopping == "never" and cfg.length_penalty > 0.0:
            best_length = self.max_length - self.prompt_length
        else:
            best_length = self.cur_len - self.prompt_length
        best_running = self.running_scores[:, :1] / (best_length ** cfg.length_penalty)
        worst_finished = np.where(self.is_finished, self.finished_scores.min(axis=1, keepdims=True), _IMPOSSIBLE)
        self.can_improve = self.can_improve & (best_running > worst_finished).any(axis=-1, keepdims=True)

    def finalize(self) -> SearchOutput:
        n = self.config.num_return_sequences
        lengths = self.finished_lengths[:, :n].reshape(-1)
        output_length = int(lengths.max())
        sequences = self.finished_seqs[:, :n, :output_length].reshape(-1, output_length)
        generated = output_length - self.prompt_length
        beam_indices = self.finished_beam_indices[:, :n, :generated].reshape(-1, generated)
        return SearchOutput(sequences=sequences, finish_reasons=reason_names(self.finished_reasons[:, :n].reshape(-1)),
                            sequences_scores=self.finished_scores[:, :n].reshape(-1).copy(), beam_indices=beam_indices)


def _same_length(arrays: list[np.ndarray], fill: int) -> list[np.ndarray]:
    """Pad [batch, beams, length] arrays on the right with `fill` to the longest length."""
    longest = max(a.shape[2] for a in arrays)
    return [a if a.shape[2] == longest else np.pad(a, ((0, 0), (0, 0), (0, longest - a.shape[2])), constant_values=fill)
            for a in arrays]


def make_search(config: GenerationConfig, num_inputs: int, rng: np.random.Generator | None, rules: StopRules):
    search = BeamSearch if config.is_beam_search else TokenSearch
    return search(config, num_inputs, rng, rules)
