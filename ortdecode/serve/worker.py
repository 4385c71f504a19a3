"""The engine thread: the only thread that calls `BatchEngine.step()`.

Route handlers submit and cancel from the event loop (both are thread-safe engine verbs) and read their
updates from an asyncio.Queue; this thread steps the engine whenever it has work and hands each step's
updates to the event loop with `loop.call_soon_threadsafe`. A request is registered in the same loop
callback that submits it, so its first update, delivered by a later loop callback, always finds its queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from ..engine import RequestUpdate
from .metrics import ServerMetrics
from .schemas import generated_token_counts

log = logging.getLogger("ortdecode.serve")


def outcome_of(update) -> str:
    if update.error is not None:
        return "error"
    reasons = set(update.result.finish_reasons)
    if reasons & {"cancelled", "interrupted"}:
        return "cancelled"
    return "time" if "time" in reasons else "ok"


class EngineWorker:
    def __init__(self, engine, loop: asyncio.AbstractEventLoop, metrics: ServerMetrics):
        self.engine = engine
        self.loop = loop
        self.metrics = metrics
        # request_id -> (request, where its updates go); read and written on the loop thread only
        self._open: dict[str, tuple[object, asyncio.Queue]] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ortdecode-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    @property
    def open_requests(self) -> int:
        """Requests submitted whose last update has not been delivered yet."""
        return len(self._open)

    def submit(self, text: str, options: dict, queue: asyncio.Queue):
        """Submit on the event loop thread; raises what `engine.submit` raises (ValueError, QueueFullError,
        EngineClosedError)."""
        request = self.engine.submit(text, **options)
        self._open[request.request_id] = (request, queue)
        return request

    def cancel(self, request) -> None:
        if request.request_id in self._open:
            self.engine.cancel(request)

    def cancel_all(self) -> None:
        for request, _ in self._open.values():
            self.engine.cancel(request)

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self.engine.wait_for_work(0.1):
                continue
            try:
                updates = self.engine.step(publish=self._deliver_soon)  # newcomers' first tokens: at once
            except Exception as exc:  # the engine itself failed: its open requests answer 500, the server goes on
                log.exception("ortdecode: engine step failed")
                self.loop.call_soon_threadsafe(self._fail_open_requests, exc)
                self._stopping.wait(0.1)
                continue
            if updates:
                self.metrics.step_seconds.observe(self.engine.last_step_seconds)
                self._deliver_soon(updates)

    def _deliver_soon(self, updates) -> None:
        self.loop.call_soon_threadsafe(self._deliver, updates)

    def _deliver(self, updates) -> None:
        for update in updates:
            entry = self._open.get(update.request.request_id)
            if update.finished:
                self._open.pop(update.request.request_id, None)
                self._count_finished(update)
            if entry is not None:
                entry[1].put_nowait(update)

    def _fail_open_requests(self, error: BaseException) -> None:
        failed = [RequestUpdate(request, [], [], True, None, error) for request, _ in self._open.values()]
        for update in failed:
            self.engine.cancel(update.request)
        self._deliver(failed)

    def _count_finished(self, update) -> None:
        if update.error is not None:
            log.error("ortdecode: request %s failed", update.request.request_id, exc_info=update.error)
            tokens = 0
        else:
            tokens = sum(generated_token_counts(update.result, update.request.config))
        self.metrics.finished(update.request, outcome_of(update), tokens)
