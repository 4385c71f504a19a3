"""The serving benchmark: `python -m benchmarks.serve` (`--quick` for a smoke run).

Closed loop: C clients (C = 1, 4, 16, 64) each send their next request as soon as the previous one is
answered, over one shared request set (mixed input lengths, max_new_tokens from 8 to 128 in steps of 8,
min_new_tokens = max_new_tokens so every system does the same work). Systems, in the same run:

- `ortdecode serve` with continuous batching (requests join the running batch);
- the same server with `--no-continuous-batching` (static batches);
- a plain FastAPI app calling Optimum's `ORTModelForSeq2SeqLM.generate` one request at a time
  (optimum_app.py: what users write today);
- CTranslate2's `translate_batch` over the same request set, offline (no HTTP), as a reference.

Per system and concurrency: output tokens/s, requests/s, time to first token and end-to-end latency
(p50, p99). The two ortdecode servers run side by side and take turns, `--rounds` rounds (3; the order
rotating): the continuous/static ratio is noisy on a shared machine (x0.86 to x1.32 over eight one-round runs on
the commits of the last sessions), so each target is reported per round, median [min-max], and met only when the worst round
clears it. Results: benchmarks/results/serve-latest.{md,json,png} (serve-quick.* for --quick).

    load.py         the request set and the closed-loop client
    systems.py      starting the servers; CTranslate2 offline
    optimum_app.py  the one-request-at-a-time Optimum server
    report.py       targets, Markdown, plot
    run.py          the command
"""
