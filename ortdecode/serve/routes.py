"""The generation routes: validate (the library's own validation), enqueue, stream, cancel.

No decoding happens here: a `Job` submits one engine request per input and reads their updates from one
queue; a client that goes away (also mid-stream) cancels its requests, whose rows leave the batch at
the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import numbers
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..engine import QueueFullError
from ..errors import InputTooLongError
from ..generator import check_texts, text_name
from .schemas import (CompletionRequest, GenerateRequest, completion_body, generate_response, openai_finish_reason,
                      stream_events, usage_of)

router = APIRouter()

# Keyword arguments of BatchEngine.submit that are not generation options: never taken from a request body.
_NOT_OPTIONS = {"text", "input_ids", "attention_mask", "logits_processors", "request_id"}
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away; it never reaches the client


class RequestFailed(Exception):
    """An internal failure of one request (logged with its traceback by the engine thread): 500."""


class Job:
    """The engine requests of one HTTP call (one per input); their updates arrive on one queue."""

    def __init__(self, http_request: Request):
        self.server = http_request.app.state.server
        self.queue: asyncio.Queue = asyncio.Queue()
        self.requests: list = []
        self._open: set[str] = set()

    def submit(self, texts: list[str], options: dict, field: str, indexed: bool) -> None:
        """field: the request body's name for the texts (messages name it: `inputs`, `prompt[1]`); indexed:
        whether the body gave a list."""
        server = self.server
        server.check_admitting()
        reserved = sorted(_NOT_OPTIONS & set(options))
        if reserved:
            raise ValueError(f"`{reserved[0]}` is not a generation option")
        check_texts(texts, field, indexed)
        options = dict(options)
        timeout = server.settings.request_timeout
        max_time = options.get("max_time")
        if max_time is None or (isinstance(max_time, numbers.Real) and not isinstance(max_time, bool)
                                and max_time > timeout):
            options["max_time"] = timeout  # the request's deadline: past it, its partial text, reason "time"
        worker = server.worker
        cap = server.settings.max_concurrent_requests
        if len(texts) > cap:  # never admitted, however long it waits: not a 429
            raise ValueError(f"`{field}` holds {len(texts)} texts, more than the server runs at once "
                             f"(--max-concurrent-requests {cap})")
        if worker.open_requests + len(texts) > cap:
            raise QueueFullError(f"the server is at its limit of {cap} concurrent requests (--max-concurrent-requests)")
        try:
            for index, text in enumerate(texts):
                try:
                    request = worker.submit(text, options, self.queue)
                except InputTooLongError as exc:  # it numbers the one input it was given: 0
                    raise ValueError(f"`{text_name(field, index, indexed)}` has {exc.length} tokens, more than `max_input_tokens` ({exc.limit}); "
                                     "shorten it or pass truncate_input: true to cut it") from None
                self.requests.append(request)
                self._open.add(request.request_id)
        except BaseException:
            self.cancel()
            raise

    async def updates(self) -> AsyncIterator:
        while self._open:
            update = await self.queue.get()
            if update.finished:
                self._open.discard(update.request.request_id)
                if update.error is not None:
                    raise RequestFailed(f"internal error while decoding: {type(update.error).__name__}: "
                                        f"{str(update.error).splitlines()[0] if str(update.error) else ''}")
            yield update

    def cancel(self) -> None:
        worker = self.server.worker
        for request in self.requests:
            if request.request_id in self._open:
                worker.cancel(request)

    async def results(self, http_request: Request) -> dict | None:
        """Each request's final result by request_id; None when the client went away first (its requests
        are cancelled)."""
        results = {}

        async def collect():
            async for update in self.updates():
                if update.finished:
                    results[update.request.request_id] = update.result

        collector = asyncio.ensure_future(collect())
        watcher = asyncio.ensure_future(_client_gone(http_request))
        try:
            await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this handler was cancelled (server shutdown)
            collector.cancel()
            self.cancel()
            raise
        finally:
            watcher.cancel()
        if not collector.done():
            collector.cancel()
            self.cancel()
            return None
        collector.result()  # raises RequestFailed
        return results


async def _client_gone(http_request: Request) -> None:
    """Returns when the client disconnects (the body has been read: the next ASGI message is the end)."""
    while (await http_request.receive())["type"] != "http.disconnect":
        pass


def _sse(data) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _stream(job: Job, events) -> AsyncIterator[str]:
    """Server-sent events from a job's updates; the job is cancelled when the client goes away."""
    try:
        async for chunk in events:
            yield chunk
    except RequestFailed as exc:  # the status line is sent already: say it in the stream
        yield _sse({"error": str(exc), "error_type": "internal"})
    finally:
        job.cancel()


# ---------------------------------------------------------------------- text-generation-inference
@router.post("/generate")
async def generate(body: GenerateRequest, http_request: Request):
    job = Job(http_request)
    job.submit([body.inputs], body.options(), "inputs", indexed=False)
    results = await job.results(http_request)
    if results is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    request = job.requests[0]
    return JSONResponse(generate_response(request, results[request.request_id]))


@router.post("/generate_stream")
async def generate_stream(body: GenerateRequest, http_request: Request):
    options = body.options()
    if options.get("num_return_sequences", 1) != 1:
        raise ValueError("`num_return_sequences` has to be 1 for /generate_stream (it streams one sequence), "
                         f"but is {options['num_return_sequences']!r}; use /generate")
    job = Job(http_request)
    job.submit([body.inputs], options, "inputs", indexed=False)

    async def events():
        tokens = 0
        async for update in job.updates():
            for event in stream_events(update, tokens):
                tokens += 1
                yield _sse(event)

    return StreamingResponse(_stream(job, events()), media_type="text/event-stream")


# ---------------------------------------------------------------------- OpenAI completions
def _check_model(server, body: CompletionRequest) -> None:
    if body.model not in (None, "", server.model_name):
        raise ValueError(f"`model` has to be {server.model_name!r} (the model this server serves) or omitted, "
                         f"but is {body.model!r}")


@router.post("/v1/completions")
async def completions(body: CompletionRequest, http_request: Request):
    job = Job(http_request)
    server = job.server
    server.check_admitting()
    _check_model(server, body)
    prompts = body.prompts()
    if not prompts:
        raise ValueError("`prompt` is an empty list: pass at least one prompt")
    job.submit(prompts, body.options(), "prompt", indexed=not isinstance(body.prompt, str))
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    n = body.n
    index_of = {request.request_id: i * n for i, request in enumerate(job.requests)}  # first choice of each prompt
    if not body.stream:
        results = await job.results(http_request)
        if results is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        choices = [{"index": index_of[r.request_id] + j, "text": text, "logprobs": None,
                    "finish_reason": openai_finish_reason(reason)}
                   for r in job.requests
                   for j, (text, reason) in enumerate(zip(results[r.request_id].texts,
                                                          results[r.request_id].finish_reasons))]
        usage = usage_of([(r, results[r.request_id]) for r in job.requests])
        return JSONResponse(completion_body(completion_id, server.model_name, choices, usage))

    async def events():
        finished = []
        async for update in job.updates():
            first = index_of[update.request.request_id]
            reasons = update.result.finish_reasons if update.finished else [None] * len(update.text_deltas)
            choices = [{"index": first + j, "text": delta, "logprobs": None,
                        "finish_reason": openai_finish_reason(reason) if reason else None}
                       for j, (delta, reason) in enumerate(zip(update.text_deltas, reasons))
                       if delta or reason]
            if choices:
                yield _sse(completion_body(completion_id, server.model_name, choices))
            if update.finished:
                finished.append((update.request, update.result))
        if body.include_usage:
            yield _sse(completion_body(completion_id, server.model_name, [], usage_of(finished)))
        yield _sse("[DONE]")

    return StreamingResponse(_stream(job, events()), media_type="text/event-stream")
