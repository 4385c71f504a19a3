"""TEMPORARY STAND-IN for the batch engine (ENGINE_API.md), written by the server helper to develop
`ortdecode serve` against while the real continuous-batching engine (branch wip/engine) is being built.

It implements the interface with no batching at all: one request runs at a time, one decoder step per
`step()` call, through `Generator`'s own decoding loop. It is replaced by the real ortdecode/engine.py
when that lands; nothing here is meant to stay.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from .config import GenerationConfig
from .errors import OrtDecodeError
from .results import GenerationResult
from .stopping import INTERRUPTED


class QueueFullError(OrtDecodeError):
    """The waiting queue is full."""


class EngineClosedError(OrtDecodeError):
    """close() was called: the engine admits no more requests."""


@dataclass
class RequestUpdate:
    request: "Request"
    text_deltas: list[str]
    new_token_ids: list[list[int]]
    finished: bool
    result: GenerationResult | None
    error: BaseException | None = None


class Request:
    def __init__(self, request_id: str, config: GenerationConfig, input_ids, attention_mask, logits_processors):
        self.request_id = request_id
        self.config = config
        self.input_ids, self.attention_mask = input_ids, attention_mask
        self.logits_processors = logits_processors
        self.input_length = int(attention_mask.sum())
        self.rows = config.rows_per_input
        self.created = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.cancelled = False


class BatchEngine:
    def __init__(self, generator, *, max_batch_rows: int = 16, max_batch_tokens: int = 8192, max_waiting: int = 64,
                 continuous: bool | None = None):
        self.generator = generator
        self.limits = {"max_batch_rows": max_batch_rows, "max_batch_tokens": max_batch_tokens,
                       "max_waiting": max_waiting}
        self.continuous = False
        self.last_step_seconds = 0.0
        self._waiting: deque[Request] = deque()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._closed = False
        self._ids = itertools.count()
        self._current = None  # (request, search, decode iterator, emitted texts, logged token count)

    # ------------------------------------------------------------------ introspection
    @property
    def running_requests(self) -> int:
        return 1 if self._current else 0

    @property
    def running_rows(self) -> int:
        return self._current[0].rows if self._current else 0

    @property
    def waiting_requests(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------------ verbs
    def submit(self, text=None, *, input_ids=None, logits_processors=(), request_id=None, **options) -> Request:
        generator = self.generator
        config = generator._config(options)
        if isinstance(text, (list, tuple)) or (input_ids is not None and np.asarray(input_ids).shape[0] != 1):
            raise ValueError("a request takes one input: one text or input_ids of shape [1, length]")
        ids, mask = generator._inputs(text, input_ids, None, config)
        if config.rows_per_input > self.limits["max_batch_rows"]:
            raise ValueError(f"the request needs {config.rows_per_input} rows (num_beams / num_return_sequences), "
                             f"more than the batch holds (max_batch_rows={self.limits['max_batch_rows']})")
        tokens = int(mask.sum()) + config.new_token_budget
        if tokens > self.limits["max_batch_tokens"]:
            raise ValueError(f"the request needs {tokens} tokens (input + max_new_tokens), more than the batch "
                             f"holds (max_batch_tokens={self.limits['max_batch_tokens']})")
        with self._lock:
            if self._closed:
                raise EngineClosedError("the engine is closed: it admits no more requests")
            if len(self._waiting) >= self.limits["max_waiting"]:
                raise QueueFullError(f"the waiting queue is full ({self.limits['max_waiting']} requests)")
            request = Request(request_id or f"req-{next(self._ids)}", config, ids, mask, tuple(logits_processors))
            self._waiting.append(request)
            self._work.notify_all()
        return request

    def cancel(self, request: Request) -> None:
        request.cancelled = True
        with self._lock:
            self._work.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def wait_for_work(self, timeout: float) -> bool:
        with self._lock:
            return self._work.wait_for(lambda: self._current or self._waiting, timeout)

    def step(self) -> list:
        started = time.perf_counter()
        with self._lock:
            cancelled = [r for r in self._waiting if r.cancelled]
            for request in cancelled:
                self._waiting.remove(request)
            if self._current is None and self._waiting:
                self._current = self._start(self._waiting.popleft())
        updates = [self._cancelled_update(r) for r in cancelled]
        if self._current is not None:
            updates.append(self._advance())
            self.last_step_seconds = time.perf_counter() - started
        return updates

    # ------------------------------------------------------------------ one request at a time
    def _start(self, request: Request):
        g = self.generator
        search = g._search(request.config, 1)
        loop = g._decode(search, request.input_ids, request.attention_mask, request.config, request.logits_processors,
                         None, None)
        return [request, search, loop, [""] * request.config.num_return_sequences]

    def _advance(self) -> RequestUpdate:
        request, search, loop, emitted = self._current
        g = self.generator
        finished = request.cancelled
        try:
            if request.cancelled:
                search.stop_running(INTERRUPTED)
            else:
                next(loop)
                finished = search.done
        except StopIteration:
            finished = True
        except Exception as exc:  # an internal failure of this request
            self._current = None
            request.finished_at = time.monotonic()
            return RequestUpdate(request, [], [], True, None, error=exc)
        if request.first_token_at is None:
            request.first_token_at = time.monotonic()
        new_ids = [[int(t)] for t in search.input_ids[:, -1]] if not request.config.is_beam_search else []
        if not finished:
            if request.config.is_beam_search:
                return RequestUpdate(request, [""], [], False, None)
            deltas = []
            for i, row in enumerate(search.input_ids):
                decoded = g.tokenizer.decode(row)
                if decoded.endswith("\ufffd") or not decoded.startswith(emitted[i]):
                    deltas.append("")
                    continue
                deltas.append(decoded[len(emitted[i]):])
                emitted[i] = decoded
            return RequestUpdate(request, deltas, new_ids[:len(deltas)], False, None)
        result = g._result(search, None, None)
        if request.cancelled:
            result.finish_reasons = ["cancelled"] * len(result.finish_reasons)
        deltas = [text[len(e):] if text.startswith(e) else text for text, e in zip(result.texts, emitted)]
        self._current = None
        request.finished_at = time.monotonic()
        return RequestUpdate(request, deltas, new_ids[:len(deltas)], True, result)

    def _cancelled_update(self, request: Request) -> RequestUpdate:
        n = request.config.num_return_sequences
        result = GenerationResult(texts=[""] * n, sequences=np.full((n, 1), request.config.decoder_start_token_id),
                                  finish_reasons=["cancelled"] * n)
        request.finished_at = time.monotonic()
        return RequestUpdate(request, [""] * n, [[] for _ in range(n)], True, result)
