"""The batch engine in a closed loop, without HTTP: what `ortdecode serve` costs below the server.

C clients each submit their next request the moment their last one finishes (inputs of 4 to 64 random
tokens, exactly 8 to 128 new tokens in steps of 8, as `benchmarks.serve` draws them), straight on
`BatchEngine`; one thread steps it. Prints output tokens/s and time to first token (submit -> the step
that made the first token returns) p50/p99, continuous or static batching, and the engine's time split:
decoder steps of the running rows, newcomers' encoder + first step, the batch rebuild (`Runner.join`); and the
running steps' mean rows, cached columns and the share of those columns that is left padding, which the
self-attention reads for nothing (a row that joined late is padded to the batch's oldest row).

    python -m benchmarks.engine_loop --model benchmarks/work/t5-small-fp32 [--concurrency 16] [--requests 64]
        [--static] [--generate] [--code DIR]

`--generate` measures plain `generate()` instead, best of 3 each: time to first token (a 1-token generation) and
greedy tokens/s (64 new tokens) at batch 1 and 8, inputs of 40 random tokens; beam 4 tokens/s at batch 8 and 32;
and a batch of 32 inputs of real-text-like lengths (5 to 200 tokens): time to first token and greedy tokens/s.

`--overhead` measures the host work per decoder step instead: a greedy batch-1 generation of 64 tokens (median of 15),
its time inside ONNX Runtime's runs and outside them (the decoding loop in Python and NumPy), per run.

`--code DIR` imports `ortdecode` from DIR instead (a `git worktree` of another revision), to compare two
revisions on the same machine in one sitting; run both in turns, the machine is noisy.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections import defaultdict


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="export folder")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-batch-rows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--static", action="store_true", help="static batches (no joining)")
    parser.add_argument("--generate", action="store_true", help="plain generate(): TTFT and tok/s at batch 1, 8")
    parser.add_argument("--overhead", action="store_true", help="host time per step outside ONNX Runtime, batch 1")
    parser.add_argument("--code", default=None, help="import ortdecode from this folder (another revision)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.code:
        sys.path.insert(0, args.code)
    import numpy as np

    import ortdecode
    from ortdecode.engine import BatchEngine

    generator = ortdecode.load(args.model, provider="cpu", threads=args.threads)
    if args.generate:
        return _plain_generate(generator, np.random.default_rng(args.seed))
    if args.overhead:
        return _host_overhead(generator, np.random.default_rng(args.seed))
    seconds = defaultdict(float)
    shapes: list[tuple[int, int, float]] = []  # per running step: rows, cached columns, mean columns a row uses
    _time_runner_verbs(generator.runner, seconds, shapes)
    rng = np.random.default_rng(args.seed)
    vocab = generator.manifest.vocab_size
    pending = [(generator.tokenizer.decode(rng.integers(3, vocab, size=int(rng.integers(4, 65))).tolist(),
                                           skip_special_tokens=True) or "x", int(rng.integers(1, 17)) * 8)
               for _ in range(args.requests)]
    engine = BatchEngine(generator, max_batch_rows=args.max_batch_rows, continuous=not args.static)
    warm = engine.submit(pending[0][0], max_new_tokens=4, min_new_tokens=4)
    while not warm.finished:
        engine.step()
    seconds.clear()
    shapes.clear()

    submitted, ttft, live, tokens = {}, {}, set(), 0

    def submit() -> None:
        text, new_tokens = pending.pop(0)
        request = engine.submit(text, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        submitted[request.request_id] = (len(submitted) + len(ttft), time.perf_counter())
        live.add(request.request_id)

    started = time.perf_counter()
    for _ in range(min(args.concurrency, len(pending))):
        submit()
    steps = 0
    def handle(updates) -> None:
        nonlocal tokens
        for update in updates:
            request = update.request
            if request.request_id in submitted:
                order, sent = submitted.pop(request.request_id)
                ttft[order] = time.perf_counter() - sent
            if update.finished:
                live.discard(request.request_id)
                tokens += sum(len(s) - 1 for s in request.result.sequences)
                if pending:
                    submit()

    # As the server does: newcomers' first tokens are handled before the batch steps (revisions before `publish`
    # existed: when the step returns).
    early = {"publish": handle} if "publish" in inspect.signature(engine.step).parameters else {}
    while live:
        handle(engine.step(**early))
        steps += 1
    elapsed = time.perf_counter() - started
    ms = np.array([ttft[i] for i in sorted(ttft)]) * 1000
    steady = ms[args.concurrency:]  # sent after the first wave (which every client sends at once)
    split = ", ".join(f"{verb} {value:.2f} s" for verb, value in sorted(seconds.items()))
    print(f"{'static' if args.static else 'continuous'}, {args.concurrency} clients, {args.requests} requests: "
          f"{tokens / elapsed:.1f} tok/s, {steps} steps in {elapsed:.1f} s, time to first token p50 "
          f"{np.percentile(ms, 50):.0f} ms, p99 {np.percentile(ms, 99):.0f} ms (after the first wave: p50 "
          f"{np.percentile(steady, 50) if len(steady) else float('nan'):.0f}, p99 "
          f"{np.percentile(steady, 99) if len(steady) else float('nan'):.0f}); runner time: {split}")
    if shapes:
        rows, columns, used = np.array(shapes, dtype=np.float64).T
        print(f"running rows' steps: {rows.mean():.1f} rows, {columns.mean():.1f} cached columns on average, "
              f"{1 - (rows * used).sum() / (rows * columns).sum():.0%} of the cache the attention reads is left "
              "padding (rows that joined later than the batch's oldest)")


def _plain_generate(generator, rng) -> None:
    import numpy as np

    vocab = generator.manifest.vocab_size
    texts = [generator.tokenizer.decode(rng.integers(3, vocab, size=40).tolist(), skip_special_tokens=True)
             for _ in range(32)]
    generator.generate(texts[:2], max_new_tokens=4)  # warm-up

    def best_of_3(**kwargs) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            generator.generate(**kwargs)
            times.append(time.perf_counter() - started)
        return min(times)

    parts = []
    for batch in (1, 8):
        first = best_of_3(texts=texts[:batch], max_new_tokens=1, min_new_tokens=1)
        whole = best_of_3(texts=texts[:batch], max_new_tokens=64, min_new_tokens=64)
        parts.append(f"batch {batch}: time to first token {first * 1000:.1f} ms, {batch * 64 / whole:.0f} tok/s")
    for batch in (8, 32):
        whole = best_of_3(texts=texts[:batch], max_new_tokens=64, min_new_tokens=64, num_beams=4)
        parts.append(f"beam 4, batch {batch}: {batch * 64 / whole:.0f} tok/s")
    # 32 inputs of real-text-like lengths (log-normal, median 40 tokens, 5 to 200: the harness's mixed batch)
    lengths = np.clip(np.round(rng.lognormal(np.log(40), 0.8, size=32)), 5, 200).astype(int)
    ids = np.zeros((32, lengths.max()), np.int64)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = np.append(rng.integers(3, vocab, size=length - 1), 1)
        mask[row, :length] = 1
    first = best_of_3(input_ids=ids, attention_mask=mask, max_new_tokens=1, min_new_tokens=1)
    whole = best_of_3(input_ids=ids, attention_mask=mask, max_new_tokens=64, min_new_tokens=64)
    parts.append(f"mixed lengths, batch 32: time to first token {first * 1000:.1f} ms, {32 * 64 / whole:.0f} tok/s")
    print("; ".join(parts))


def _host_overhead(generator, rng, runs: int = 15) -> None:
    import numpy as np
    import onnxruntime as ort

    text = generator.tokenizer.decode(rng.integers(3, generator.manifest.vocab_size, size=40).tolist(),
                                      skip_special_tokens=True)
    inside = [0.0, 0]  # seconds in run_with_iobinding, calls
    run = ort.InferenceSession.run_with_iobinding

    def timed(session, binding, *args, **kwargs):
        started = time.perf_counter()
        try:
            return run(session, binding, *args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - started
            inside[1] += 1

    ort.InferenceSession.run_with_iobinding = timed
    totals, ort_seconds = [], []
    for index in range(runs + 3):  # 3 warm-ups
        inside[:] = [0.0, 0]
        started = time.perf_counter()
        generator.generate(text, max_new_tokens=64, min_new_tokens=64)
        if index >= 3:
            totals.append(time.perf_counter() - started)
            ort_seconds.append(inside[0])
    calls = inside[1]  # the encoder's and 64 decoder steps'
    outside = np.median(np.array(totals) - np.array(ort_seconds)) / calls * 1e3
    print(f"greedy, batch 1, 64 new tokens: {np.median(totals) / calls * 1e3:.3f} ms per ONNX Runtime run "
          f"({calls} runs), {np.median(ort_seconds) / calls * 1e3:.3f} ms inside it, {outside:.3f} ms outside it "
          f"(median of {runs})")


def _time_runner_verbs(runner, seconds: dict, shapes: list) -> None:
    """Add each runner verb's wall time to `seconds` (the first decoder step of a state counts as 'first step');
    append each later step's (rows, cached columns, mean columns a row has cached) to `shapes`."""
    def timed(name, verb):
        def call(*args, **kwargs):
            label = "first step" if name == "step" and not args[0].self_cache else name
            if label == "step":  # a later step of a state
                state = args[0]
                shapes.append((state.rows, state.past, float(state.decoder_mask.sum(axis=1).mean())))
            started = time.perf_counter()
            try:
                return verb(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - started
        return call

    for name in ("encode", "step", "select", "join"):
        setattr(runner, name, timed(name, getattr(runner, name)))


if __name__ == "__main__":
    main()
