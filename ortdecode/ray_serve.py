"""Ray Serve: `ortdecode serve`'s HTTP app as replicas behind Ray's HTTP proxy (`pip install 'ortdecode[ray,serve]'`).

    from ray import serve
    from ortdecode.ray_serve import deployment
    from ortdecode.serve.state import ServeSettings

    serve.start(http_options={"host": "0.0.0.0", "port": 8000})
    serve.run(deployment(ServeSettings(model="/models/t5-onnx", max_concurrent_requests=64),
                         num_replicas=4, num_cpus=2), route_prefix="/")

Each replica runs the same FastAPI app as `ortdecode serve` (its own batch engine, TGI and OpenAI routes,
/health, /metrics), loading the model from a folder present at the same path on every node, with ONNX
Runtime's threads set to the replica's `num_cpus`. Backpressure is the app's: Ray Serve passes requests on
to a replica up to twice the app's cap (`max_ongoing_requests`), and a replica with `max_concurrent_requests`
requests in it answers 429 with Retry-After, as the plain server does.
"""

from __future__ import annotations

import dataclasses

from ray import serve

from .ray_data import check_model_sha256
from .serve.app import create_app
from .serve.state import ServeSettings


def deployment(settings: ServeSettings | None = None, *, num_replicas: int = 1, num_cpus: float = 1,
               sha256: str | None = None, name: str = "ortdecode"):
    """A bound Ray Serve application, for `serve.run(...)`.

    settings: the server's settings (model, batch limits, max_concurrent_requests, request_timeout...);
    host and port are Ray Serve's (serve.start's http_options). threads default to `num_cpus`.
    sha256: `ortdecode.ray_data.model_sha256` of the expected export: a replica with another one fails to start.
    """
    settings = settings or ServeSettings()
    if settings.threads is None:
        settings = dataclasses.replace(settings, threads=max(1, int(num_cpus)))
    app = create_app(settings)

    cap = settings.max_concurrent_requests
    # Requests past the app's cap reach it (and get its 429 at once) rather than wait in Ray Serve's queue;
    # that queue is bounded too (Ray Serve answers 503 beyond it).
    @serve.deployment(name=name, num_replicas=num_replicas, ray_actor_options={"num_cpus": num_cpus},
                      max_ongoing_requests=2 * cap, max_queued_requests=4 * cap * num_replicas)
    @serve.ingress(app)
    class OrtDecodeServer:
        def __init__(self):
            if sha256 is not None:
                check_model_sha256(settings.model, sha256)

    return OrtDecodeServer.bind()
