"""The FastAPI application: lifespan (load the model in the background), error answers, and the
operational endpoints (/health, /info, /metrics, /v1/models). The generation routes are in routes.py.

Errors: a bad request (the library's ValueError, or a body of the wrong shape) is 422 with one readable
message; a full server 429 with Retry-After; loading or draining 503; anything else is logged with its
traceback and answered 500 with one line. /v1/* answers in OpenAI's error shape, the rest in TGI's.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ..engine import EngineClosedError, QueueFullError
from .routes import RequestFailed, router
from .state import ServerState, ServeSettings

log = logging.getLogger("ortdecode.serve")

RETRY_AFTER_SECONDS = 1
_OUTCOMES = {422: "invalid", 429: "queue_full", 503: "unavailable"}
# Errors raised on purpose, answered with their own message: (status, error type).
_ANSWERS = {ValueError: (422, "validation"), QueueFullError: (429, "overloaded"),
            EngineClosedError: (503, "unavailable"), RequestFailed: (500, "internal")}


def error_response(request: Request, status: int, message: str, error_type: str, headers=None) -> JSONResponse:
    outcome = _OUTCOMES.get(status)
    if outcome is not None:
        request.app.state.server.metrics.requests.labels(outcome).inc()
    if request.url.path.startswith("/v1/"):
        body = {"error": {"message": message, "type": error_type, "param": None, "code": status}}
    else:
        body = {"error": message, "error_type": error_type}
    return JSONResponse(body, status_code=status, headers=headers)


async def _known_error(request: Request, exc: Exception) -> JSONResponse:
    status, error_type = next(_ANSWERS[c] for c in type(exc).__mro__ if c in _ANSWERS)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 429 else None
    return error_response(request, status, str(exc), error_type, headers)


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: the first error's field and message."""
    errors = exc.errors()
    if not errors:
        return "invalid request body"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', 'malformed')}"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"`{where}`: {first.get('msg', 'invalid')}{more}" if where else f"{first.get('msg', 'invalid')}{more}"


def _record_failure(state: ServerState, loading: asyncio.Future) -> None:
    exc = loading.exception()
    if exc is not None:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        state.failure = f"could not load the model: {message}"
        state.phase = "failed"


def create_app(settings: ServeSettings) -> FastAPI:
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        loading = loop.run_in_executor(None, state.load, loop)
        loading.add_done_callback(lambda done: _record_failure(state, done))
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(title="ortdecode", lifespan=lifespan)
    app.state.server = state
    app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        return error_response(request, 422, _validation_message(exc), "validation")

    for error in _ANSWERS:
        app.add_exception_handler(error, _known_error)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.error("ortdecode: %s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(request, 500, f"internal error: {type(exc).__name__} (details in the server log)",
                              "internal")

    @app.get("/health")
    async def health():
        ready = state.phase == "ready"
        return JSONResponse({"status": state.phase}, status_code=200 if ready else 503)

    @app.get("/info")
    async def info():
        return state.info()

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                            "owned_by": "ortdecode"}]}

    return app
