"""The batch engine: ortdecode's one decoding loop, over a running batch of requests.

Each request owns its rows (its beams or samples, adjacent in the batch), its options, processors,
search, stop rules, random generator and deadline. `BatchEngine.step` is the loop's body; read it first:

1. requests that were cancelled leave; waiting requests that fit are admitted;
2. the admitted requests run their encoder pass and first decoder step, together, and advance on it
   (first, as vLLM schedules prefills first: a newcomer's first token does not wait for step 3);
3. ONE decoder step over every running row; each request advances on its slice of the logits;
4. the batch is rebuilt in one runner call: finished requests' rows leave, beams are reordered,
   newcomers join (their self cache left-padded, `Runner.join`).

A request's tokens do not depend on its neighbours: its processors and search see only its rows, its
random generator is its own, and the decoder attention mask keeps padded cache positions out of its
attention. Exports without that mask batch statically: a batch starts only when the last one ended.

`Generator.generate` and `Generator.stream` are this loop with one request holding every row of the call.
The engine is synchronous: one thread calls `step`; `submit` and `cancel` may come from any thread.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .config import GenerationConfig
from .errors import OrtDecodeError
from .numerics import check_scores
from .processors import LogitsProcessor, apply_processors, build_processors
from .results import GenerationResult
from .search import make_search
from .stopping import CANCELLED, RUNNING, TIME, StopRules

if TYPE_CHECKING:
    from .generator import Generator
    from .runner import DecoderState


class QueueFullError(OrtDecodeError):
    """The waiting queue is full (`max_waiting`): try again later."""


class EngineClosedError(OrtDecodeError):
    """The engine was closed and admits no new requests."""


@dataclass
class RequestUpdate:
    request: "Request"
    text_deltas: list[str]  # per output sequence: text newly decodable since the last update
    new_token_ids: list[list[int]]  # per output sequence: the token ids this step produced
    finished: bool
    result: GenerationResult | None  # when finished
    error: BaseException | None = None  # an internal failure of this request


class Request:
    """One call's decoding state: its inputs, options, processors, search and what it has streamed.
    Rows of one input are adjacent; `rows` stays fixed while the request runs."""

    def __init__(self, request_id: str, config: GenerationConfig, input_ids: np.ndarray, attention_mask: np.ndarray,
                 generator: "Generator", user_processors: Sequence[LogitsProcessor], stream_text: bool):
        self.request_id = request_id
        self.config = config
        self.input_ids, self.attention_mask = input_ids, attention_mask
        self.input_length = int(attention_mask.sum())
        self.inputs = len(input_ids)
        # what it counts against max_batch_rows and max_batch_tokens
        self.rows, self.tokens = self.demand(config, input_ids, attention_mask)
        self.created = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.tokenizer = generator.tokenizer
        # Stop strings are matched on text with special tokens kept (transformers' StopStringCriteria).
        rules = StopRules(config, model_eos=generator.manifest.eos_token_id,
                          decode=functools.partial(self.tokenizer.decode, skip_special_tokens=False))
        # numpy.random is imported only to sample: it loads OpenSSL's libcrypto too (5.5 MiB RSS in all)
        rng = np.random.default_rng(config.seed) if config.do_sample else None
        self.search = make_search(config, num_inputs=self.inputs, rng=rng, rules=rules)
        self.processors = build_processors(
            config, prompt_length=self.search.prompt_length, user_processors=user_processors,
            encoder_input_ids=np.repeat(input_ids, config.rows_per_input, axis=0))
        self.logits_log: list[np.ndarray] | None = [] if config.return_logits else None
        self.scores_log: list[np.ndarray] | None = [] if config.return_scores else None
        self.reports_progress = stream_text  # updates carry text deltas and token ids (served requests)
        self.stream_text = stream_text and not config.is_beam_search
        self.emitted = [""] * self.rows if self.stream_text else []
        self.steps = 0
        self.cancel_requested = False
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None

    @staticmethod
    def demand(config: GenerationConfig, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[int, int]:
        """(rows, tokens) a request of these inputs counts against `max_batch_rows` and `max_batch_tokens`:
        its beams or samples of every input; its inputs' tokens plus its new-token budget."""
        return len(input_ids) * config.rows_per_input, int(attention_mask.sum()) + config.new_token_budget

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def advance(self, logits: np.ndarray) -> tuple[RequestUpdate, np.ndarray | None]:
        """One step on this request's logits [rows, vocab]: processors, then the search. Returns the update
        and the rows to keep (None once finished)."""
        was_running = self._running_rows() if self.reports_progress else None
        check_scores(logits, self.steps, "logits")
        scores = apply_processors(self.processors, self.search.input_ids, self.search.to_scores(logits))
        check_scores(scores, self.steps, "processed scores")
        if self.logits_log is not None:
            self.logits_log.append(logits)
        if self.scores_log is not None:
            self.scores_log.append(scores)
        kept = self.search.advance(scores)
        self.steps += 1
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if self.search.done:
            return self.finish(was_running), None
        return self._update(was_running), kept

    def stop(self, reason: int) -> RequestUpdate:
        """End every unfinished row now (cancelled, interrupted, timed out while waiting)."""
        self.search.stop_running(reason)
        return self.finish(np.zeros(self.rows, dtype=bool))

    def finish(self, was_running: np.ndarray | None) -> RequestUpdate:
        out = self.search.finalize()
        self.result = GenerationResult(texts=self.tokenizer.decode_batch(out.sequences), sequences=out.sequences,
                                       finish_reasons=out.finish_reasons, sequences_scores=out.sequences_scores,
                                       beam_indices=out.beam_indices,
                                       logits=self.logits_log, scores=self.scores_log)
        self.finished_at = time.monotonic()
        if self.stream_text:
            deltas = [text[len(done):] if text.startswith(done) else "" for text, done in zip(self.result.texts,
                                                                                               self.emitted)]
        else:
            deltas = list(self.result.texts) if self.config.is_beam_search else [""] * len(self.result.texts)
        new_ids = self._new_token_ids(was_running) if was_running is not None else []
        return RequestUpdate(self, deltas, new_ids, True, self.result)

    def fail(self, error: BaseException) -> RequestUpdate:
        self.error = error
        self.finished_at = time.monotonic()
        return RequestUpdate(self, [], [], True, None, error)

    def _running_rows(self) -> np.ndarray:
        """Which rows are still running (greedy and sampling: finished rows are fed padding)."""
        return np.zeros(self.rows, dtype=bool) if self.config.is_beam_search else self.search.reasons == RUNNING

    def _update(self, was_running: np.ndarray | None) -> RequestUpdate:
        if not self.reports_progress:  # `generate`: only the result matters
            return RequestUpdate(self, [], [], False, None)
        if self.config.is_beam_search:  # beams are not final until the search ends
            outputs = self.inputs * self.config.num_return_sequences
            return RequestUpdate(self, [""] * outputs, [[] for _ in range(outputs)], False, None)
        return RequestUpdate(self, self._text_deltas(), self._new_token_ids(was_running), False, None)

    def _new_token_ids(self, was_running: np.ndarray) -> list[list[int]]:
        """The token each row produced this step (greedy, sampling); beams are final only at the end."""
        if self.config.is_beam_search:
            return [[] for _ in range(self.inputs * self.config.num_return_sequences)]
        tokens = self.search.next_tokens
        return [[int(tokens[row])] if was_running[row] else [] for row in range(self.rows)]

    def _text_deltas(self) -> list[str]:
        """Text newly decodable per row, holding back an incomplete multi-byte character and text a
        later token could still rewrite (`Generator.stream`'s rules)."""
        if not self.stream_text:
            return [""] * self.rows
        deltas = []
        for row, sequence in enumerate(self.search.input_ids):
            decoded = self.tokenizer.decode(sequence)
            if decoded.endswith("\ufffd") or not decoded.startswith(self.emitted[row]):
                deltas.append("")
                continue
            deltas.append(decoded[len(self.emitted[row]):])
            self.emitted[row] = decoded
        return deltas


class BatchEngine:
    def __init__(self, generator: "Generator", *, max_batch_rows: int = 16, max_batch_tokens: int = 8192,
                 max_waiting: int = 64, continuous: bool | None = None):
        """continuous=None: join running batches when the export has a decoder attention mask, else
        static batches (a new batch starts only when the running one has finished)."""
        for name, value in (("max_batch_rows", max_batch_rows), ("max_batch_tokens", max_batch_tokens),
                            ("max_waiting", max_waiting)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"`{name}` has to be an integer >= 1, but is {value!r}")
        self.generator = generator
        self.runner = generator.runner
        self.limits = {"max_batch_rows": max_batch_rows, "max_batch_tokens": max_batch_tokens,
                       "max_waiting": max_waiting}
        if continuous is not False and not self.runner.has_decoder_mask:
            warnings.warn(f"{generator.folder}: the export has no decoder attention mask; batches are static "
                          "(requests wait for the running batch to finish). Export it again for continuous "
                          "batching.", stacklevel=2)
        self.continuous = continuous is not False and self.runner.has_decoder_mask
        if self.continuous:  # the caches leave room for the rows a batch can hold: newcomers join in place
            self.runner.row_capacity = max(self.runner.row_capacity, max_batch_rows)
        self.batch: DecoderState | None = None
        self.running: list[Request] = []  # in batch row order
        self.waiting: deque[Request] = deque()
        self.closed = False
        self.last_step_seconds = 0.0
        self._work = threading.Condition()
        self._ids = itertools.count()

    # ------------------------------------------------------------------ introspection
    @property
    def running_requests(self) -> int:
        return len(self.running)

    @property
    def running_rows(self) -> int:
        return sum(r.rows for r in self.running)

    @property
    def waiting_requests(self) -> int:
        return len(self.waiting)

    # ------------------------------------------------------------------ requests in and out (any thread)
    def submit(self, text: str | None = None, *, input_ids=None, logits_processors: Sequence[LogitsProcessor] = (),
               request_id: str | None = None, **options) -> Request:
        """Queue one input (a text, or input_ids int[1, len]) with `Generator.generate`'s options. Validates
        now: ValueError names the option at fault. Raises QueueFullError, EngineClosedError."""
        config = self.generator._config(options)
        if text is not None and not isinstance(text, str):
            raise ValueError(f"`submit` takes one text (str), but got {type(text).__name__}")
        ids, mask = self.generator._inputs(text, input_ids, None, config)
        if len(ids) != 1:
            raise ValueError(f"`submit` takes one input, but `input_ids` has {len(ids)} rows")
        return self.add(ids, mask, config, logits_processors, request_id, stream_text=True)

    def add(self, input_ids: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig,
            logits_processors: Sequence[LogitsProcessor] = (), request_id: str | None = None,
            stream_text: bool = False) -> Request:
        """Queue checked inputs (int64[inputs, len], every row of a `generate` call) with a checked config.
        The limits are checked before the request's arrays exist (a huge `num_beams` is refused, not allocated)."""
        rows, tokens = Request.demand(config, input_ids, attention_mask)
        if rows > self.limits["max_batch_rows"]:
            raise ValueError(f"the request needs {rows} decoder rows (`num_beams` or `num_return_sequences`),"
                             f" more than the engine's max_batch_rows ({self.limits['max_batch_rows']})")
        if tokens > self.limits["max_batch_tokens"]:
            raise ValueError(f"the request counts {tokens} tokens (input + `max_new_tokens`), more than the "
                             f"engine's max_batch_tokens ({self.limits['max_batch_tokens']})")
        request = Request(request_id or f"req-{next(self._ids)}", config, input_ids, attention_mask, self.generator,
                          logits_processors, stream_text)
        with self._work:
            if self.closed:
                raise EngineClosedError("the engine is closed and admits no new requests")
            if len(self.waiting) >= self.limits["max_waiting"]:
                raise QueueFullError(f"the waiting queue is full ({self.limits['max_waiting']} requests)")
            self.waiting.append(request)
            self._work.notify_all()
        return request

    def cancel(self, request: Request) -> None:
        """Its rows leave the batch at the next step; it finishes with reason "cancelled"."""
        request.cancel_requested = True
        with self._work:
            self._work.notify_all()

    def wait_for_work(self, timeout: float) -> bool:
        with self._work:
            return self._work.wait_for(lambda: bool(self.waiting or self.running), timeout=timeout)

    def close(self) -> None:
        with self._work:
            self.closed = True

    # ------------------------------------------------------------------ the loop (one thread)
    def step(self, publish: Callable[[list[RequestUpdate]], None] | None = None) -> list[RequestUpdate]:
        """One iteration: cancelled requests leave, waiting ones are admitted and take their first step, one
        decoder step runs over every running row, each request advances on its slice, the batch is rebuilt.
        Returns one update per request that changed; [] at once when idle.

        publish: given, it receives the updates made before the running rows' step (cancellations, refusals,
        the newcomers' first tokens) as soon as they exist, and they are not returned again: a server sends
        a newcomer's first token while the batch steps."""
        started = time.perf_counter()
        updates = [r.stop(CANCELLED) for r in self.running if r.cancel_requested]
        keep = {id(r): np.arange(r.rows) for r in self.running if not r.cancel_requested}  # request -> its kept rows
        admitted, refused = self._admit()
        updates += refused
        if not (keep or admitted or updates):
            return []
        joining = []
        if admitted:  # the newcomers' encoder pass and first decoder step, together, first: their first token
            joined_updates, joining = self._first_steps(admitted)  # does not wait for the running rows' step
            updates += joined_updates
        if publish is not None and updates and keep:
            publish(updates)
            updates = []
        if keep:  # one decoder step over every running row; each request advances on its slice
            updates += self._step_running(keep, spare_rows=sum(len(rows) for _, _, rows in joining))
        self._rebuild(keep, joining)  # finished rows leave, beams reorder, newcomers join: one runner call
        self.last_step_seconds = time.perf_counter() - started
        return updates

    def _step_running(self, keep: dict, spare_rows: int) -> list[RequestUpdate]:
        """One decoder step over the running rows of `keep`; each request advances on its slice. The new
        cache leaves room for `spare_rows` rows that join after it."""
        running = [r for r in self.running if id(r) in keep]
        if len(running) < len(self.running):  # cancelled rows leave first
            self.runner.select(self.batch, self._rows_of(running, keep))
            self.running = running
        try:
            tokens = np.concatenate([r.search.next_tokens for r in running])
            logits = self.runner.step(self.batch, tokens, spare_rows=spare_rows,
                                      steps_left=max(r.config.new_token_budget - r.steps for r in running))
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: every request reports it
            keep.clear()
            return [r.fail(exc) for r in running]
        updates, offset = [], 0
        for request in running:
            update, kept = self._advance(request, logits[offset:offset + request.rows])
            updates.append(update)
            if kept is None:
                del keep[id(request)]
            else:
                keep[id(request)] = kept
            offset += request.rows
        return updates

    def _first_steps(self, admitted: list[Request]) -> tuple[list[RequestUpdate], list]:
        """The newcomers' encoder pass and first decoder step, in one encoder call and one decoder call over
        one row per input (inputs right-padded to the longest, masked). Beams and samples of an input share
        its row: the logits are repeated, and the rows widened when the batch is rebuilt. Returns the updates
        and what joins: (request, state, rows of the state it keeps). A newcomer's tokens do not depend on
        its companions (masked padding), as they do not depend on the running rows.

        If the joint call fails, each newcomer runs alone, so that one bad request fails only itself."""
        try:
            state = self.runner.encode(*_stack_inputs(admitted, self.generator.manifest.pad_token_id))
            logits = self.runner.step(state, np.concatenate(
                [r.search.next_tokens[::r.config.rows_per_input] for r in admitted]),
                steps_left=max(r.config.new_token_budget for r in admitted))
        except Exception as exc:  # noqa: BLE001 - this request's failure, or find out whose one at a time
            if len(admitted) == 1:
                return [admitted[0].fail(exc)], []
            updates, joining = [], []
            for request in admitted:
                more_updates, more_joining = self._first_steps([request])
                updates += more_updates
                joining += more_joining
            return updates, joining
        return self._advance_first(admitted, state, logits)

    def _advance_first(self, requests: list[Request], state: "DecoderState",
                       logits: np.ndarray) -> tuple[list[RequestUpdate], list]:
        """Each request advances on its first-step logits (its inputs' rows of `state`, in order)."""
        updates, joining, offset = [], [], 0
        for request in requests:
            copies = offset + np.repeat(np.arange(request.inputs), request.config.rows_per_input)
            update, kept = self._advance(request, logits[copies])
            updates.append(update)
            if kept is not None:
                joining.append((request, state, copies[kept]))
            offset += request.inputs
        return updates, joining

    def _advance(self, request: Request, logits: np.ndarray) -> tuple[RequestUpdate, np.ndarray | None]:
        try:
            return request.advance(logits)
        except Exception as exc:  # noqa: BLE001 - this request's failure (a processor, non-finite scores)
            return request.fail(exc), None

    def _rebuild(self, keep: dict, joining: list) -> None:
        """Finished rows leave, beams reorder, newcomers join: one runner call."""
        staying = [r for r in self.running if id(r) in keep]
        parts = [(self.batch, self._rows_of(staying, keep))] if staying else []
        for _, group in itertools.groupby(joining, key=lambda joiner: id(joiner[1])):  # newcomers of one state
            group = list(group)
            parts.append((group[0][1], np.concatenate([rows for _, _, rows in group])))
        self.running = staying + [request for request, _, _ in joining]
        if not parts:
            self.batch = None
        elif len(parts) == 1:
            self.runner.select(*parts[0])
            self.batch = parts[0][0]
        else:
            self.batch = self.runner.join(parts)

    def _rows_of(self, requests: list[Request], keep: dict) -> np.ndarray:
        """Batch rows to keep: each request's kept rows, shifted to where its rows lie in the batch."""
        offsets = {}
        offset = 0
        for request in self.running:
            offsets[id(request)] = offset
            offset += request.rows
        return np.concatenate([keep[id(r)] + offsets[id(r)] for r in requests]).astype(np.int64)

    def _admit(self) -> tuple[list[Request], list[RequestUpdate]]:
        """Waiting requests that fit, first come first served; static batches only start when empty."""
        admitted, refused = [], []
        rows = sum(r.rows for r in self.running)
        tokens = sum(r.tokens for r in self.running)
        with self._work:
            if not self.continuous and self.running:
                return admitted, refused
            while self.waiting:
                request = self.waiting[0]
                if request.cancel_requested or request.search.rules.time_is_up():
                    self.waiting.popleft()
                    refused.append(request.stop(CANCELLED if request.cancel_requested else TIME))
                    continue
                if rows + request.rows > self.limits["max_batch_rows"] or \
                        tokens + request.tokens > self.limits["max_batch_tokens"]:
                    break
                self.waiting.popleft()
                admitted.append(request)
                rows, tokens = rows + request.rows, tokens + request.tokens
        return admitted, refused


def _stack_inputs(requests: list[Request], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The requests' inputs in one batch, right-padded with masked pad tokens to the longest."""
    width = max(r.input_ids.shape[1] for r in requests)

    def padded(array: np.ndarray, value: int) -> np.ndarray:
        return np.pad(array, [(0, 0), (0, width - array.shape[1])], constant_values=value)

    return (np.concatenate([padded(r.input_ids, pad_token_id) for r in requests]),
            np.concatenate([padded(r.attention_mask, 0) for r in requests]))
