"""Why a sequence ends: EOS, a stop condition, the length limit, or the time limit.

transformers' stopping criteria, as one object the searches ask after each step:

- ``eos``: the last token is one of the model's EOS ids;
- ``stop``: the last token is an EOS id given for this call that is not the model's, or it completed
  one of the call's stop strings (transformers' `StopStringCriteria`: the string may start and end
  inside tokens, special tokens such as ``<extra_id_0>`` count with their text; it is kept in the
  output), or one of the call's `stopping_criteria` stopped the row;
- ``length``: the token budget is spent (the searches decide this);
- ``time``: `max_time` seconds passed since the call began (transformers' `MaxTimeCriteria`);
- ``interrupted`` (Ctrl-C) and ``cancelled`` (a served request withdrawn) end every row from outside.

Reasons are small integer codes in the searches' arrays; `REASONS` names them.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from .config import DECODER_PROMPT_LENGTH, GenerationConfig

RUNNING, EOS, STOP, LENGTH, TIME, INTERRUPTED, CANCELLED = range(7)
REASONS = ("running", "eos", "stop", "length", "time", "interrupted", "cancelled")


class StopRules:
    def __init__(self, config: GenerationConfig, model_eos: Sequence[int],
                 decode: Callable[[Sequence[int]], str] | None = None, clock: Callable[[], float] = time.monotonic):
        """decode: token ids -> text with the special tokens kept (stop strings match them too)."""
        self.eos = np.asarray(config.eos_token_id, dtype=np.int64)
        self.criteria = config.stopping_criteria
        self.model_eos = np.asarray(model_eos, dtype=np.int64)
        self.stop_strings = config.stop
        if self.stop_strings and decode is None:
            raise ValueError("stop strings need a tokenizer to decode with")
        self.decode = decode
        # Enough trailing tokens to hold any stop string, even when each token adds a single byte.
        self.window = 4 * max((len(s.encode("utf-8")) for s in self.stop_strings), default=0) + 4
        self.clock = clock
        self.deadline = None if config.max_time is None else clock() + config.max_time

    def time_is_up(self) -> bool:
        return self.deadline is not None and self.clock() > self.deadline

    def ended(self, sequences: np.ndarray, rows: np.ndarray | None = None,
              scores: Callable[[], np.ndarray] | None = None) -> np.ndarray:
        """int8[len(sequences)]: the reason the last token ends each sequence (EOS, STOP), else RUNNING.
        rows: bool mask of the sequences to look at (the others stay RUNNING).
        scores: () -> float[len(sequences), vocab], the processed scores each last token was chosen from,
        computed only when a user stopping criterion asks for them."""
        last = sequences[:, -1]
        look = np.ones(len(last), dtype=bool) if rows is None else rows
        codes = np.full(len(last), RUNNING, dtype=np.int8)
        # a comparison with each of the few EOS ids (np.isin costs ten times as much at every step)
        is_eos = look & (last[:, None] == self.eos).any(axis=1)
        codes[is_eos] = np.where((last[is_eos, None] == self.model_eos).any(axis=1), EOS, STOP)
        if self.stop_strings:
            for row in np.flatnonzero(look & ~is_eos):
                if self._completes_stop_string(sequences[row]):
                    codes[row] = STOP
        if self.criteria:
            codes[look & (codes == RUNNING) & self._criteria_stop(sequences, scores() if scores else None)] = STOP
        return codes

    def _criteria_stop(self, sequences: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
        """bool[rows]: the rows any user stopping criterion stops (transformers' `StoppingCriteriaList`)."""
        stop = np.zeros(len(sequences), dtype=bool)
        for index, criterion in enumerate(self.criteria):
            verdict = np.asarray(criterion(sequences, scores))
            if verdict.dtype != bool or verdict.size not in (1, len(sequences)):
                raise ValueError(f"`stopping_criteria[{index}]` has to return a bool or one bool per row "
                                 f"({len(sequences)}), but returned {verdict.dtype} of shape {verdict.shape}")
            stop |= verdict.reshape(-1)
        return stop

    def _completes_stop_string(self, sequence: np.ndarray) -> bool:
        """Whether the last token makes a stop string appear in the text (it was not there before)."""
        tail = sequence[DECODER_PROMPT_LENGTH:][-self.window:]  # generated tokens only: the prompt is not text
        now, before = self.decode(tail), self.decode(tail[:-1])
        return any(s in now and s not in before for s in self.stop_strings)


def reason_names(codes: np.ndarray) -> list[str]:
    return [REASONS[int(code)] for code in codes]
