"""What the server is serving and in which phase: loading (503), ready, draining (503)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..engine import EngineClosedError
from ..generator import DEFAULT_MODEL_NAME
from .metrics import ServerMetrics
from .worker import EngineWorker


@dataclass(frozen=True)
class ServeSettings:
    model: str | None = None  # None: the embedded default model
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (the listening line says which)
    provider: str = "auto"
    threads: int | None = None
    decoder_layout: str = "auto"
    allow_unvalidated: bool = False
    max_batch_rows: int = 16
    max_batch_tokens: int = 8192
    max_concurrent_requests: int = 64  # requests in the server (running + waiting); beyond: 429
    request_timeout: float = 60.0  # seconds; a request past it ends with its partial text, reason "time"
    continuous: bool | None = None  # None: join running batches when the export allows it
    grace_period: float = 30.0  # seconds that SIGTERM / Ctrl-C wait for running requests
    served_model_name: str | None = None  # the id /v1/models lists; None: the model folder's name


def served_model_name(settings: ServeSettings) -> str:
    """The id the server answers to: as given, else the export folder's name ("t5-numbers" for the embedded
    model, wherever the package keeps it)."""
    if settings.served_model_name is not None:
        return settings.served_model_name
    # absolute, not resolved: a link's own name is the one given ("models/current", not its target's)
    return DEFAULT_MODEL_NAME if settings.model is None else Path(os.path.abspath(settings.model)).name


# the settings /info reports as limits (the model, provider and address are reported on their own)
_LIMITS = ("max_batch_rows", "max_batch_tokens", "max_concurrent_requests", "request_timeout", "grace_period")


class ServiceUnavailable(EngineClosedError):
    """The server is loading its model or draining: 503."""


class ServerState:
    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.metrics = ServerMetrics()
        self.phase = "loading"
        self.generator = None
        self.engine = None
        self.worker: EngineWorker | None = None
        self.model_name = served_model_name(settings)
        self.load_seconds = 0.0
        self.failure: str | None = None  # why loading failed: the server exits 1

    def load(self, loop: asyncio.AbstractEventLoop) -> None:
        """Load the model and start the engine thread (runs in a worker thread: the server answers 503
        meanwhile)."""
        import ortdecode
        from ..engine import BatchEngine

        s = self.settings
        started = time.perf_counter()
        generator = ortdecode.load(s.model, provider=s.provider, threads=s.threads, decoder_layout=s.decoder_layout,
                                   allow_unvalidated=s.allow_unvalidated)
        with warnings.catch_warnings(record=True) as said:  # e.g. no decoder attention mask: static batches
            warnings.simplefilter("always")
            engine = BatchEngine(generator, max_batch_rows=s.max_batch_rows, max_batch_tokens=s.max_batch_tokens,
                                 max_waiting=s.max_concurrent_requests, continuous=s.continuous)
        for warning in said:
            print(f"ortdecode: {warning.message}", file=sys.stderr, flush=True)
        self.metrics.watch_engine(engine)
        self.worker = EngineWorker(engine, loop, self.metrics)
        self.worker.start()
        self.generator, self.engine = generator, engine
        self.load_seconds = time.perf_counter() - started
        if self.phase != "loading":  # a signal came while loading: drain (nothing runs yet)
            engine.close()
            return
        self.phase = "ready"
        print(f"ortdecode: ready: {self.model_name} on {generator.provider}, "
              f"{'continuous' if engine.continuous else 'static'} batching ({s.max_batch_rows} rows, "
              f"{s.max_batch_tokens} tokens, {s.max_concurrent_requests} concurrent requests), "
              f"loaded in {self.load_seconds:.1f} s", file=sys.stderr, flush=True)

    def check_admitting(self) -> None:
        if self.phase != "ready":
            raise ServiceUnavailable(f"the server is {self.phase}" + (
                ": it admits no new requests" if self.phase == "draining" else ": retry shortly"))

    def begin_drain(self) -> None:
        if self.phase == "ready":
            self.engine.close()
        self.phase = "draining"

    @property
    def idle(self) -> bool:
        return self.worker is None or self.worker.open_requests == 0

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def info(self) -> dict:
        manifest = self.generator.manifest if self.generator is not None else None
        import ortdecode

        info = {"model_id": self.model_name, "version": ortdecode.__version__, "phase": self.phase,
                "limits": {name: getattr(self.settings, name) for name in _LIMITS} |
                          {"continuous_batching": getattr(self.engine, "continuous", None)}}
        if manifest is not None:
            info |= {"model_folder": str(self.generator.folder), "provider": self.generator.provider,
                     "decoder_layout": self.generator.runner.layout,
                     "max_input_tokens": self.generator.max_input_tokens,
                     "manifest": {"model_type": manifest.model_type, "source": manifest.source,
                                  "graphs": sorted(manifest.graphs), "layers": manifest.num_layers,
                                  "decoder_layers": manifest.num_decoder_layers, "d_model": manifest.d_model,
                                  "vocab_size": manifest.vocab_size, "dtype": manifest.dtype,
                                  "target": manifest.target, "quantization": manifest.quantization}}
        return info
