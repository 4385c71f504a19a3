"""The request set and the closed-loop client (asyncio + httpx)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BenchRequest:
    text: str
    new_tokens: int  # max_new_tokens = min_new_tokens: every system generates exactly this many


@dataclass
class Answer:
    text: str
    tokens: int
    ttft: float  # seconds from sending to the first token (non-streaming servers: to the answer)
    latency: float  # seconds from sending to the last token


def make_requests(tokenizer, count: int, seed: int, new_tokens: tuple[int, int], vocab: int) -> list[BenchRequest]:
    """Texts decoded from random token ids (4 to 64 ids: mixed input lengths); max_new_tokens drawn
    from new_tokens (low, high) in steps of 8 (CTranslate2 groups requests of one length)."""
    rng = np.random.default_rng(seed)
    low, high = new_tokens
    requests = []
    while len(requests) < count:
        ids = rng.integers(3, vocab, size=int(rng.integers(4, 65))).tolist()
        text = " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())
        if text:
            requests.append(BenchRequest(text, int(rng.integers(low // 8, high // 8 + 1)) * 8))
    return requests


async def _one(client, streaming: bool, request: BenchRequest) -> Answer:
    body = {"inputs": request.text, "parameters": {"max_new_tokens": request.new_tokens,
                                                   "min_new_tokens": request.new_tokens}}
    started = time.perf_counter()
    if not streaming:
        response = await client.post("/generate", json=body)
        response.raise_for_status()
        done = time.perf_counter() - started
        data = response.json()
        return Answer(data["generated_text"], data["details"]["generated_tokens"], done, done)
    first = None
    async with client.stream("POST", "/generate_stream", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            first = first if first is not None else time.perf_counter() - started
            event = json.loads(line[6:])
            if event.get("details"):
                return Answer(event["generated_text"], event["details"]["generated_tokens"], first,
                              time.perf_counter() - started)
    raise RuntimeError("the stream ended without its final event")


async def _closed_loop(url: str, streaming: bool, requests: list[BenchRequest], concurrency: int, progress):
    import httpx

    answers: list[Answer | None] = [None] * len(requests)
    queue = iter(range(len(requests)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def client_loop():
            for index in queue:
                answers[index] = await _one(client, streaming, requests[index])
                progress()

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return answers, wall


def closed_loop(url: str, streaming: bool, requests: list[BenchRequest], concurrency: int, progress=lambda: None):
    """C clients, each sending its next request when its previous one is answered. Returns the answers (in
    request order) and the wall time."""
    return asyncio.run(_closed_loop(url, streaming, requests, concurrency, progress))


def summarize(answers: list[Answer], wall: float, first_wave: int) -> dict:
    """Throughput and latency percentiles; time to first token also without the first wave (the first
    `first_wave` requests, which every client sends at the same instant: a burst the steady state never sees)."""
    ttft = np.array([a.ttft for a in answers])
    steady = ttft[first_wave:] if len(ttft) > first_wave else ttft
    latency = np.array([a.latency for a in answers])
    tokens = sum(a.tokens for a in answers)
    return {"requests": len(answers), "output_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "requests_per_s": len(answers) / wall,
            "ttft_p50_ms": 1000 * float(np.percentile(ttft, 50)), "ttft_p99_ms": 1000 * float(np.percentile(ttft, 99)),
            "ttft_steady_p50_ms": 1000 * float(np.percentile(steady, 50)),
            "ttft_steady_p99_ms": 1000 * float(np.percentile(steady, 99)),
            "latency_p50_ms": 1000 * float(np.percentile(latency, 50)),
            "latency_p99_ms": 1000 * float(np.percentile(latency, 99))}
