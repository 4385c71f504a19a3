"""`ortdecode serve`: uvicorn running the app, with a drain on SIGTERM / Ctrl-C.

The first signal stops admitting (new requests and /health answer 503), lets running and waiting
requests finish for up to the grace period (then cancels what is left: those answer with their partial
text, reason "cancelled"), and exits 0. A second signal exits at once.
"""

from __future__ import annotations

import logging
import socket
import sys
import time

import uvicorn

from ..errors import OrtDecodeError
from .app import create_app
from .state import ServerState, ServeSettings


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state
        self._drain_requested = False
        self._drain_deadline: float | None = None

    def handle_exit(self, sig, frame) -> None:  # runs in the signal handler: set flags only
        if self._drain_requested:
            self.should_exit = self.force_exit = True
        self._drain_requested = True

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            host = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
            print(f"ortdecode: listening on http://{host}:{port} (loading the model; /health answers 200 once ready)",
                  file=sys.stderr, flush=True)

    async def on_tick(self, counter: int) -> bool:
        state = self.state
        if state.failure is not None:
            return True
        if self._drain_requested and self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + state.settings.grace_period
            state.begin_drain()
            print(f"ortdecode: draining: {state.worker.open_requests if state.worker else 0} requests running, "
                  f"up to {state.settings.grace_period:g} s", file=sys.stderr, flush=True)
        if self._drain_deadline is not None:
            if state.idle:
                return True
            if time.monotonic() > self._drain_deadline:
                state.worker.cancel_all()  # they end at the next step and answer with what they have
                self._drain_deadline = float("inf")
        return await super().on_tick(counter)


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else starts: an address that cannot be had (in use, not
    this machine's) is one line naming the options, not uvicorn's log and exit status. As uvicorn binds its
    own socket: IPv6 for an address with a colon, else IPv4 (a name such as localhost resolves to its IPv4
    address; "" is every IPv4 interface)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if sys.platform != "win32":  # on Windows it would let two servers share a port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, UnicodeError) as exc:
        sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise OrtDecodeError(f"--host {host} --port {port}: cannot listen there ({reason})") from None
    return sock


def serve(settings: ServeSettings) -> int:
    """Run the server until a signal drains it (0) or the model fails to load (1)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sock = listening_socket(settings.host, settings.port)
    app = create_app(settings)
    state: ServerState = app.state.server
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=5)
    server = DrainingServer(config, state)
    server.run(sockets=[sock])
    if state.failure is not None:
        print(f"ortdecode: error: {state.failure}", file=sys.stderr)
        return 1
    print("ortdecode: stopped", file=sys.stderr)
    return 0
