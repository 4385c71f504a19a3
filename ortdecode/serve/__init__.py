"""`ortdecode serve`: an HTTP server over the batch engine (needs `pip install "ortdecode[serve]"`).

    app.py      the FastAPI app: lifespan, error answers, /health, /info, /metrics, /v1/models
    routes.py   /generate, /generate_stream (TGI's shape), /v1/completions (OpenAI's): enqueue, stream, cancel
    schemas.py  request and response bodies
    worker.py   the engine thread: steps the engine, hands updates to the event loop
    state.py    settings, loading, phase (loading / ready / draining)
    metrics.py  Prometheus metrics
    server.py   uvicorn with a drain on SIGTERM / Ctrl-C

`import ortdecode` never imports this package.
"""
