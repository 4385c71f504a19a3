"""Plain result objects: what `generate` and `score` return."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GenerationResult:
    texts: list[str]  # one per returned sequence, special tokens skipped
    sequences: np.ndarray  # int64[inputs * num_return_sequences, length], decoder start token first,
    #                        padded as transformers pads them
    finish_reasons: list[str]  # one per sequence: "eos", "stop", "length", "time", "cancelled" or "interrupted"
    sequences_scores: np.ndarray | None = None  # float32[sequences], beam search only: length-penalized log-prob
    beam_indices: np.ndarray | None = None  # int64[sequences, generated], beam search only: the row
    #                    (input * num_beams + beam) each token was chosen from, -1 padded (transformers' beam_indices)
    logits: list[np.ndarray] | None = None  # per step, float32[inputs * rows_per_input, vocab] (return_logits)
    scores: list[np.ndarray] | None = None  # per step, processed scores, same shape (return_scores)


@dataclass
class ScoreResult:
    tokens: list[list[int]]  # the target token ids of each pair (EOS included)
    token_logprobs: list[np.ndarray]  # float32[len(tokens[i])]: log p(token | source, previous tokens)
    logits: list[np.ndarray] | None = None  # float32[len(tokens[i]), vocab] when asked

    @property
    def sequence_logprobs(self) -> np.ndarray:
        """Sum of the token log-probabilities of each target."""
        return np.array([float(lp.sum()) for lp in self.token_logprobs], dtype=np.float64)
