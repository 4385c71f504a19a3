"""Prometheus metrics of the server, in a registry of its own (names as operators know them from TGI/vLLM).

Requests are counted per engine request (one per input: an OpenAI prompt list makes one per prompt) by
outcome: ok (eos, length or stop), time (past its deadline), cancelled (client gone, or drained),
error (internal); and per HTTP call refused before reaching the engine: invalid (422), queue_full (429),
unavailable (503).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # no *_created series: operators read counts and sums

OUTCOMES = ("ok", "time", "cancelled", "error", "invalid", "queue_full", "unavailable")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ortdecode_requests", "Requests by outcome", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.queue_size = Gauge("ortdecode_queue_size", "Requests waiting to join the batch", registry=r)
        self.running_requests = Gauge("ortdecode_running_requests", "Requests in the running batch", registry=r)
        self.batch_rows = Gauge("ortdecode_batch_current_rows", "Decoder rows in the running batch", registry=r)
        self.step_seconds = Histogram("ortdecode_batch_step_seconds", "Time of one engine step (all rows)",
                                      buckets=_STEP_BUCKETS, registry=r)
        self.time_to_first_token = Histogram("ortdecode_time_to_first_token_seconds",
                                             "From arrival to the first generated token", buckets=_LATENCY_BUCKETS,
                                             registry=r)
        self.request_duration = Histogram("ortdecode_request_duration_seconds", "From arrival to the last token",
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.generated_tokens = Counter("ortdecode_generated_tokens", "Tokens generated (all sequences)", registry=r)
        self.input_tokens = Counter("ortdecode_input_tokens", "Input tokens of admitted requests", registry=r)

    def watch_engine(self, engine) -> None:
        """Read the engine's live figures at each scrape."""
        self.queue_size.set_function(lambda: engine.waiting_requests)
        self.running_requests.set_function(lambda: engine.running_requests)
        self.batch_rows.set_function(lambda: engine.running_rows)

    def finished(self, request, outcome: str, generated_tokens: int) -> None:
        self.requests.labels(outcome).inc()
        self.generated_tokens.inc(generated_tokens)
        self.input_tokens.inc(request.input_length)
        if request.first_token_at is not None:
            self.time_to_first_token.observe(request.first_token_at - request.created)
        if request.finished_at is not None:
            self.request_duration.observe(request.finished_at - request.created)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
