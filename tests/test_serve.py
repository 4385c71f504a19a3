"""`ortdecode serve`: the real server (uvicorn, 127.0.0.1, a free port) in a subprocess, on the embedded default
model, talked to with httpx, raw sockets and the `openai` client. Every answer is compared with
`Generator.generate` for the same options.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import ortdecode

LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


class ServerProcess:
    """`ortdecode serve --port 0 ARGS` in a subprocess; its stderr is collected by a thread."""

    def __init__(self, *args: str, timeout: float = 60.0, ready: bool = True):
        """ready: wait until /health answers 200 (else only until the server listens)."""
        script = Path(sys.executable).with_name("ortdecode")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "ortdecode.cli"]
        self.proc = subprocess.Popen([*command, "serve", "--port", "0", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            assert self.proc.poll() is None and time.monotonic() < deadline, f"server did not start: {self.stderr}"
        self.client = httpx.Client(base_url=self.url, timeout=30.0)
        if ready:
            self.wait_ready(deadline - time.monotonic())

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.client.get("/health").status_code != 200:
            assert self.proc.poll() is None and time.monotonic() < deadline, f"server not ready: {self.stderr}"
            time.sleep(0.05)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.url = match.group(1)
                self._listening.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)

    def metrics(self) -> dict[str, float]:
        values = {}
        for line in self.client.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def wait_metric(self, name: str, predicate, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.metrics().get(name)
            if value is not None and predicate(value):
                return value
            assert time.monotonic() < deadline, f"{name} stayed at {value}"
            time.sleep(0.02)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture(scope="module")
def maskless_export(tmp_path_factory) -> Path:
    """The embedded default model exported without a decoder attention mask: static batching only."""
    from ortdecode_export import export_model

    out = tmp_path_factory.mktemp("serve") / "t5-numbers-maskless"
    export_model(str(ortdecode.default_model_path()), out, validate=False, progress=False, decoder_mask=False)
    return out


@pytest.fixture(scope="module")
def generator():
    """The embedded default model (its export has the decoder attention mask: continuous batching)."""
    return ortdecode.load(provider="cpu")


@pytest.fixture(scope="module")
def server():
    process = ServerProcess("--provider", "cpu")
    yield process
    assert process.stop() == 0, process.stderr


def post(server: ServerProcess, path: str, body: dict) -> httpx.Response:
    return server.client.post(path, json=body)


# (input, generation options): greedy, beam search, seeded sampling, processors, stop strings.
CASES = [
    ("spell out: 4521", {"max_new_tokens": 32}),
    ("to digits: nine hundred ninety-nine thousand nine hundred ninety-nine", {}),
    ("spell out: 123456", {"num_beams": 4, "num_return_sequences": 2, "max_new_tokens": 24, "length_penalty": 0.6}),
    ("ordinal: 21", {"do_sample": True, "seed": 7, "temperature": 1.5, "top_k": 20, "num_return_sequences": 3}),
    ("spell out: 900001", {"do_sample": True, "seed": 11, "top_p": 0.8, "temperature": 2.0}),
    ("spell out: 40", {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 6}),
    ("spell out: 700019", {"stop": ["thousand"], "max_new_tokens": 16}),
    ("to digits: seventy thousand three", {"max_new_tokens": 3}),
]


def expected(generator, text: str, options: dict) -> list[tuple[str, str]]:
    result = generator.generate(text, **options)
    return list(zip(result.texts, result.finish_reasons))


def answered(body: dict) -> list[tuple[str, str]]:
    details = body["details"]
    rest = [(s["generated_text"], s["finish_reason"]) for s in details.get("best_of_sequences", [])]
    return [(body["generated_text"], details["finish_reason"]), *rest]


@pytest.mark.parametrize("text,options", CASES)
def test_generate_equals_generate(server, generator, text, options):
    response = post(server, "/generate", {"inputs": text, "parameters": options})
    assert response.status_code == 200, response.text
    body = response.json()
    assert answered(body) == expected(generator, text, options)
    reference = generator.generate(text, **options)
    first = reference.sequences[0, 1:]
    assert body["details"]["generated_tokens"] == int((first != 0).sum())
    assert body["details"]["input_tokens"] == len(generator.tokenizer.encode_one(text))
    assert body["details"]["seed"] == options.get("seed")


def read_events(server: ServerProcess, path: str, body: dict) -> list:
    """The server-sent events of a streaming request, parsed by httpx-sse: JSON objects, or "[DONE]"."""
    from httpx_sse import connect_sse

    with connect_sse(server.client, "POST", path, json=body) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [event.data if event.data == "[DONE]" else json.loads(event.data) for event in source.iter_sse()]


@pytest.mark.parametrize("text,options", [c for c in CASES if c[1].get("num_return_sequences", 1) == 1])
def test_stream_concatenates_to_the_final_text(server, generator, text, options):
    events = read_events(server, "/generate_stream", {"inputs": text, "parameters": options})
    (final_text, reason), = expected(generator, text, options)
    assert "".join(e["token"]["text"] for e in events) == final_text
    assert events[-1]["generated_text"] == final_text and events[-1]["details"]["finish_reason"] == reason
    assert all(e["generated_text"] is None for e in events[:-1])
    # one event per generated token (EOS included)
    assert len(events) == events[-1]["details"]["generated_tokens"]
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))


def test_stream_of_beam_search_ends_with_its_text(server, generator):
    text, options = "spell out: 123456", {"num_beams": 3, "max_new_tokens": 24}
    events = read_events(server, "/generate_stream", {"inputs": text, "parameters": options})
    assert "".join(e["token"]["text"] for e in events) == generator.generate(text, **options).texts[0]
    assert events[-1]["details"]["finish_reason"] == "eos"


def test_openai_client(server, generator):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    assert model == "t5-numbers"
    prompts = ["spell out: 4521", "ordinal: 21"]
    sampled = {"do_sample": True, "temperature": 1.7, "top_p": 0.95, "seed": 3, "num_return_sequences": 2,
               "max_new_tokens": 12}
    completion = client.completions.create(model=model, prompt=prompts, max_tokens=12, temperature=1.7, top_p=0.95,
                                           n=2, seed=3)
    want = [generator.generate(p, **sampled) for p in prompts]
    assert [c.text for c in completion.choices] == [t for r in want for t in r.texts]
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert completion.usage.prompt_tokens == sum(len(generator.tokenizer.encode_one(p)) for p in prompts)
    assert completion.usage.completion_tokens == sum(int((r.sequences[:, 1:] != 0).sum()) for r in want)
    # greedy (temperature 0), stop strings, and an extra generation option through extra_body
    greedy = client.completions.create(model=model, prompt="spell out: 700019", max_tokens=16, temperature=0,
                                       stop=["thousand"])
    assert greedy.choices[0].text == generator.generate("spell out: 700019", max_new_tokens=16, stop=["thousand"]).texts[0]
    assert greedy.choices[0].finish_reason == "stop"
    # the fields other clients send at the values that ask for nothing (LangChain's OpenAI LLM does)
    neutral = client.completions.create(model=model, prompt="spell out: 7", max_tokens=8, echo=False, logprobs=None,
                                        suffix=None, presence_penalty=0, frequency_penalty=0, best_of=1, logit_bias={})
    assert neutral.choices[0].text == generator.generate("spell out: 7", max_new_tokens=8).texts[0]
    beams = client.completions.create(prompt="spell out: 123456", model=model, max_tokens=24,
                                      extra_body={"num_beams": 4, "length_penalty": 0.6})
    assert beams.choices[0].text == generator.generate("spell out: 123456", max_new_tokens=24, num_beams=4,
                                                       length_penalty=0.6).texts[0]
    # streaming: the chunks of each choice concatenate to the text, then [DONE]
    stream = client.completions.create(model=model, prompt=prompts, max_tokens=12, temperature=1.7, top_p=0.95, n=2,
                                       seed=3, stream=True, stream_options={"include_usage": True})
    pieces: dict[int, str] = {}
    reasons: dict[int, str] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces[choice.index] = pieces.get(choice.index, "") + choice.text
            reasons[choice.index] = choice.finish_reason or reasons.get(choice.index)
    assert [pieces[i] for i in range(4)] == [c.text for c in completion.choices]
    assert [reasons[i] for i in range(4)] == [c.finish_reason for c in completion.choices]
    assert usage.completion_tokens == completion.usage.completion_tokens
    raw = read_events(server, "/v1/completions", {"prompt": "ordinal: 21", "stream": True})
    assert raw[-1] == "[DONE]"


BAD_REQUESTS = [
    ("/generate", {"inputs": "spell out: 1", "parameters": {"top_p": 1.5}}, r"`top_p` has to be a float in \(0, 1\]"),
    ("/generate", {"inputs": "spell out: 1", "parameters": {"num_beams": 0}}, r"`num_beams` has to be an integer >= 1"),
    ("/generate", {"inputs": "spell out: 1", "parameters": {"temperature": "hot", "do_sample": True}},
     r"`temperature` has to be"),
    ("/generate", {"inputs": "spell out: 1", "parameters": {"frobnicate": 1}}, r"unknown generation option\(s\): frobnicate"),
    ("/generate", {"inputs": "spell out: 1", "parameters": {"input_ids": [[1]]}}, r"`input_ids` is not a generation option"),
    ("/generate", {"inputs": "spell out: 1", "parameters": {"decoder_start_token_id": 10**6}},
     r"`decoder_start_token_id` has to hold token ids in \[0, 160\)"),
    ("/generate", {"inputs": "  ", "parameters": {}}, r"^`inputs` is empty or whitespace only"),
    ("/generate", {"inputs": "spell out: 1 " * 300}, r"^`inputs` has \d+ tokens, more than `max_input_tokens` \(512\)"),
    ("/generate", {"inputs": "spell out: 1", "parameters": {"num_beams": 17}}, r"needs 17 decoder rows"),
    # refused before anything is allocated for its rows
    ("/generate", {"inputs": "spell out: 1", "parameters": {"num_beams": 10**12}}, r"needs 1000000000000 decoder rows"),
    ("/generate", {"inputs": "spell out: 1", "parameters": {"do_sample": True, "seed": -1}},
     r"`seed` has to be an integer >= 0 or None"),
    ("/generate", {"inputs": "spell out: 1", "parameters": {"max_new_tokens": 9000}}, r"max_batch_tokens \(8192\)"),
    ("/generate", {"inputs": 12}, r"`inputs`: Input should be a valid string"),
    ("/generate", {"parameters": {}}, r"`inputs`: Field required"),
    ("/generate", {"inputs": "spell out: 1", "parameters": {"max_new_tokens": 4}, "extra": 1}, r"`extra`: Extra inputs"),
    ("/generate_stream", {"inputs": "spell out: 1", "parameters": {"num_return_sequences": 2, "num_beams": 2}},
     r"`num_return_sequences` has to be 1 for /generate_stream"),
    ("/v1/completions", {"prompt": "spell out: 1", "max_tokens": 0}, r"^`max_tokens`: Input should be greater than or "
                                                                      r"equal to 1"),
    ("/v1/completions", {"prompt": "spell out: 1", "temperature": -1}, r"^`temperature`: Input should be greater"),
    ("/v1/completions", {"prompt": "spell out: 1", "max_new_tokens": 5}, r"^`max_new_tokens` is `max_tokens` in "
                                                                         r"/v1/completions"),
    ("/v1/completions", {"prompt": ["spell out: 1", "spell out: 1 " * 300]}, r"^`prompt\[1\]` has \d+ tokens, more "
                                                                            r"than `max_input_tokens` \(512\)"),
    ("/v1/completions", {"prompt": ["spell out: 1"] * 65}, r"^`prompt` holds 65 texts, more than the server runs at "
                                                           r"once \(--max-concurrent-requests 64\)"),
    ("/v1/completions", {"prompt": "spell out: 1", "n": 2, "temperature": 0}, r"`num_return_sequences` \(2\) has to be <="),
    ("/v1/completions", {"prompt": "spell out: 1", "model": "gpt-4"}, r"`model` has to be 't5-numbers'"),
    ("/v1/completions", {"prompt": []}, r"`prompt` is an empty list"),
    ("/v1/completions", {"prompt": ["spell out: 1", "\t"]}, r"^`prompt\[1\]` is empty or whitespace only"),
    ("/v1/completions", {"prompt": ""}, r"^`prompt` is empty or whitespace only"),
    ("/v1/completions", {"prompt": "spell out: 1", "logprobs": 3}, r"^`logprobs` is not supported by this server: "
                                                                    r"it has to be null \(or omitted\), but is 3"),
    ("/v1/completions", {"prompt": "spell out: 1", "best_of": 3}, r"^`best_of` is not supported .* null or n"),
    ("/v1/completions", {"prompt": "spell out: 1", "presence_penalty": 0.5}, r"^`presence_penalty` is not supported"),
]


def test_bad_requests_are_422_with_the_librarys_message(server, record):
    before = server.metrics()['ortdecode_requests_total{outcome="invalid"}']
    for path, body, match in BAD_REQUESTS:
        response = post(server, path, body)
        assert response.status_code == 422, (path, body, response.text)
        error = response.json()["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert re.search(match, message), (message, match)
        assert "\n" not in message
        record("server bad requests", path)
    response = server.client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"].startswith("the request body is not valid JSON")
    after = server.metrics()['ortdecode_requests_total{outcome="invalid"}']
    assert after - before == len(BAD_REQUESTS) + 1


def test_openai_client_sees_422(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError, match=r"`top_p` has to be a float in \(0, 1\]"):
        client.completions.create(model="t5-numbers", prompt="spell out: 1", temperature=1.0, top_p=1.5)


def test_info_health_models(server):
    assert server.client.get("/health").json() == {"status": "ready"}
    info = server.client.get("/info").json()
    assert info["model_id"] == "t5-numbers" and info["version"] == ortdecode.__version__
    assert info["limits"] == {"max_batch_rows": 16, "max_batch_tokens": 8192, "max_concurrent_requests": 64,
                              "request_timeout": 60.0, "grace_period": 30.0,
                              "continuous_batching": True}  # the export has a decoder attention mask
    assert info["manifest"]["vocab_size"] == 160 and info["decoder_layout"] == "split"
    assert server.client.get("/v1/models").json()["data"][0]["id"] == "t5-numbers"


LONG = {"min_new_tokens": 1500, "max_new_tokens": 1500}  # seconds of decoding on the default model


def raw_request(server: ServerProcess, path: str, body: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(server.host_port, timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


@pytest.mark.parametrize("path", ["/generate_stream", "/generate", "/v1/completions"])
def test_client_disconnect_frees_its_rows(server, path):
    cancelled = 'ortdecode_requests_total{outcome="cancelled"}'
    before = server.metrics()[cancelled]
    body = ({"prompt": "spell out: 7", "max_tokens": 1500, "stream": True, "min_new_tokens": 1500}
            if path.startswith("/v1") else {"inputs": "spell out: 7", "parameters": LONG})
    sock = raw_request(server, path, body)
    if path != "/generate":  # close mid-stream: after the first event
        received = b""
        while b"data: " not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
    server.wait_metric("ortdecode_batch_current_rows", lambda rows: rows == 1)
    sock.close()
    server.wait_metric("ortdecode_batch_current_rows", lambda rows: rows == 0, timeout=5)
    server.wait_metric(cancelled, lambda n: n == before + 1)


def test_concurrent_clients_get_exact_answers(server, generator):
    rng = random.Random(0)
    jobs = [CASES[i % len(CASES)] for i in range(16)]
    jobs = [(text, dict(options, seed=rng.randrange(1000)) if options.get("do_sample") else options)
            for text, options in jobs]
    want = [expected(generator, text, options) for text, options in jobs]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda job: post(server, "/generate", {"inputs": job[0], "parameters": job[1]}), jobs))
    assert [answered(r.json()) for r in responses] == want


def test_soak_1000_requests(server, generator, record):
    """Valid, invalid, cancelled and streamed requests from 8 clients: every valid one exact, none hangs,
    memory flat."""
    rng = random.Random(1)
    texts = ["spell out: 7", "ordinal: 21", "to digits: twelve", "spell out: 123456", "spell out: 40"]
    variants = [{"max_new_tokens": 3}, {"max_new_tokens": 4, "num_beams": 2},
                {"max_new_tokens": 4, "do_sample": True, "seed": 5, "top_k": 10}, {"max_new_tokens": 3, "stop": ["hundred"]}]
    combos = [(t, v) for t in texts for v in variants]
    want = {i: expected(generator, t, v)[0][0] for i, (t, v) in enumerate(combos)}

    def one(kind: str, i: int) -> str:
        text, options = combos[i]
        if kind == "valid":
            response = post(server, "/generate", {"inputs": text, "parameters": options})
            assert response.json()["generated_text"] == want[i]
        elif kind == "stream":
            events = read_events(server, "/generate_stream", {"inputs": text, "parameters": options})
            assert "".join(e["token"]["text"] for e in events) == want[i]
        elif kind == "invalid":
            assert post(server, "/generate", {"inputs": text, "parameters": {"top_k": -1}}).status_code == 422
        else:  # cancelled: the client goes away before the answer
            raw_request(server, "/generate", {"inputs": text, "parameters": {"max_new_tokens": 32}}).close()
        return kind

    kinds = rng.choices(["valid", "stream", "invalid", "cancelled"], weights=[55, 20, 15, 10], k=1000)
    plan = [(kind, rng.randrange(len(combos))) for kind in kinds]
    with ThreadPoolExecutor(8) as pool:
        warm = [pool.submit(one, *job) for job in plan[:150]]
        [f.result(timeout=60) for f in warm]
        server.wait_metric("ortdecode_running_requests", lambda n: n == 0)
        rss_warm = server.rss_kib()
        rest = [pool.submit(one, *job) for job in plan[150:]]
        done = [f.result(timeout=60) for f in rest]
    server.wait_metric("ortdecode_running_requests", lambda n: n == 0)
    rss_after = server.rss_kib()
    assert abs(rss_after - rss_warm) <= 0.05 * rss_warm, (rss_warm, rss_after)
    assert len(done) == 850
    for kind in ("valid", "stream", "invalid", "cancelled"):
        record("server soak (1,000 requests)", kind, kinds.count(kind))
    record("server soak (1,000 requests)", "RSS after warm-up / after (KiB)", f"{rss_warm} / {rss_after}")


def test_queue_full_429_and_timeout_keeps_partial_text(generator):
    # The default export batches continuously: the second long request joins the first's batch at its next step,
    # so both have tokens at their deadline. (With static batches it could miss the first batch by a few ms and
    # wait for it to end, past its own deadline: reason "time" with no token, as the engine's tests check.)
    process = ServerProcess("--provider", "cpu", "--max-concurrent-requests", "2", "--request-timeout", "1")
    try:
        with ThreadPoolExecutor(2) as pool:
            long = [pool.submit(post, process, "/generate", {"inputs": "spell out: 7", "parameters": LONG})
                    for _ in range(2)]
            process.wait_metric("ortdecode_running_requests", lambda n: n >= 1)
            process.wait_metric("ortdecode_queue_size", lambda n: n + process.metrics()["ortdecode_running_requests"] == 2)
            refused = post(process, "/generate", {"inputs": "spell out: 7"})
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert re.search(r"limit of 2 concurrent requests", refused.json()["error"])
            refused = post(process, "/v1/completions", {"prompt": "spell out: 7"})
            assert refused.status_code == 429 and "limit of 2" in refused.json()["error"]["message"]
            bodies = [f.result(timeout=30).json() for f in long]
        for body in bodies:  # past the 1 s timeout: partial text, reason "time", a prefix of the full answer
            details = body["details"]
            assert details["finish_reason"] == "time" and 0 < details["generated_tokens"] < 1500
            n = details["generated_tokens"]
            assert body["generated_text"] == generator.generate("spell out: 7", min_new_tokens=n,
                                                                        max_new_tokens=n).texts[0]
        assert process.metrics()['ortdecode_requests_total{outcome="time"}'] == 2
        assert process.metrics()['ortdecode_requests_total{outcome="queue_full"}'] == 2
    finally:
        assert process.stop() == 0


def test_an_export_without_the_decoder_mask_serves_static_batches_said_once(generator, maskless_export):
    """Also: the model folder's name is the served model id."""
    process = ServerProcess("--model", str(maskless_export), "--provider", "cpu")
    try:
        info = process.client.get("/info").json()
        assert info["limits"]["continuous_batching"] is False and info["decoder_layout"] == "with-past"
        assert process.stderr.count("no decoder attention mask") == 1 and "static batching" in process.stderr
        body = post(process, "/generate", {"inputs": "spell out: 7"}).json()
        assert body["generated_text"] == generator.generate("spell out: 7").texts[0]
        assert process.client.get("/v1/models").json()["data"][0]["id"] == "t5-numbers-maskless"
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_running_requests_then_exits_0(generator, sig):
    process = ServerProcess("--provider", "cpu")
    options = {"min_new_tokens": 200, "max_new_tokens": 200}
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post, process, "/generate", {"inputs": "spell out: 7", "parameters": options})
        process.wait_metric("ortdecode_batch_current_rows", lambda rows: rows == 1)
        process.proc.send_signal(sig)
        deadline = time.monotonic() + 10
        while process.client.get("/health").status_code != 503:
            assert time.monotonic() < deadline
        refused = post(process, "/generate", {"inputs": "spell out: 7"})
        assert refused.status_code == 503 and "draining" in refused.json()["error"]
        body = running.result(timeout=30).json()
    assert body["generated_text"] == generator.generate("spell out: 7", **options).texts[0]
    assert body["details"]["finish_reason"] == "length"
    assert process.proc.wait(30) == 0
    assert "draining" in process.stderr and "Traceback" not in process.stderr


def test_while_loading_every_route_answers_503(tmp_path, generator):
    """The model loads after the server listens; meanwhile /health, /generate and /v1/completions answer 503
    ("loading"). The load is held at a real read: the copy's generation_config.json is a named pipe, written
    only once the test has checked."""
    import shutil

    folder = tmp_path / "t5-numbers"
    shutil.copytree(ortdecode.default_model_path(), folder)
    config = folder / "generation_config.json"
    content = config.read_bytes()
    config.unlink()
    os.mkfifo(config)
    process = ServerProcess("--model", str(folder), "--provider", "cpu", ready=False)
    written = False
    try:
        health = process.client.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "loading"}
        for path, body in (("/generate", {"inputs": "spell out: 7"}), ("/v1/completions", {"prompt": "spell out: 7"})):
            response = post(process, path, body)
            assert response.status_code == 503 and "the server is loading" in json.dumps(response.json()), path
        deadline = time.monotonic() + 30
        while True:  # the server has the pipe open for reading once it loads: then a writer can open it
            try:
                pipe = os.open(config, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert time.monotonic() < deadline and process.proc.poll() is None, process.stderr
                time.sleep(0.05)
        os.set_blocking(pipe, True)
        os.write(pipe, content)
        os.close(pipe)
        written = True
        process.wait_ready()
        body = post(process, "/generate", {"inputs": "spell out: 7"}).json()
        assert body["generated_text"] == generator.generate("spell out: 7").texts[0]
    finally:
        if not written:  # a failure above: end the load's read (the pipe, opened and closed empty) so the server can stop
            with contextlib.suppress(OSError):
                os.close(os.open(config, os.O_WRONLY | os.O_NONBLOCK))
            process.stop()
    assert process.stop() == 0, process.stderr


def test_grace_period_cancels_what_still_runs_and_the_limits_apply(generator):
    """--grace-period 1: a request still running a second after SIGTERM answers with its partial text, reason
    "cancelled", and the server exits 0. --max-batch-tokens and --no-continuous-batching reach the engine (and
    --threads 1 serves), and the latency metrics are recorded."""
    process = ServerProcess("--provider", "cpu", "--threads", "1", "--grace-period", "1", "--max-batch-tokens", "2000",
                            "--no-continuous-batching")
    try:
        _check_grace_period_and_limits(process, generator)
    finally:
        if process.proc.poll() is None:
            process.stop(signal.SIGKILL)


def _check_grace_period_and_limits(process: ServerProcess, generator) -> None:
    limits = process.client.get("/info").json()["limits"]
    assert limits["grace_period"] == 1.0 and limits["max_batch_tokens"] == 2000 and not limits["continuous_batching"]
    refused = post(process, "/generate", {"inputs": "spell out: 7", "parameters": {"max_new_tokens": 2001}})
    assert refused.status_code == 422 and "max_batch_tokens (2000)" in refused.json()["error"]
    short = post(process, "/generate", {"inputs": "spell out: 7"}).json()
    assert short["generated_text"] == generator.generate("spell out: 7").texts[0]
    metrics = process.metrics()
    for histogram in ("ortdecode_time_to_first_token_seconds", "ortdecode_request_duration_seconds",
                      "ortdecode_batch_step_seconds"):
        assert metrics[f"{histogram}_count"] >= 1 and metrics[f"{histogram}_sum"] > 0, histogram
    assert metrics["ortdecode_generated_tokens_total"] == short["details"]["generated_tokens"]
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post, process, "/generate", {"inputs": "spell out: 7", "parameters": LONG})
        process.wait_metric("ortdecode_batch_current_rows", lambda rows: rows == 1)
        signalled = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        body = running.result(timeout=30).json()
    assert body["details"]["finish_reason"] == "cancelled" and 0 < body["details"]["generated_tokens"] < 1500
    assert process.proc.wait(30) == 0 and time.monotonic() - signalled < 15
    assert "draining" in process.stderr and "Traceback" not in process.stderr


@pytest.fixture(scope="module")
def broken_export(tmp_path_factory) -> Path:
    """The export with NaN weights in its first-step decoder (checksum updated): every request fails inside
    the engine (non-finite logits)."""
    import hashlib
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    out = tmp_path_factory.mktemp("broken") / "t5-numbers"
    shutil.copytree(ortdecode.default_model_path(), out)
    graph_path = out / "decoder_model.onnx"
    graph = onnx.load(str(graph_path))
    for i, tensor in enumerate(graph.graph.initializer):
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32:
            graph.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), tensor.name))
    onnx.save(graph, str(graph_path))
    manifest = json.loads((out / "ortdecode.json").read_text())
    manifest["graphs"]["decoder"]["sha256"] = hashlib.sha256(graph_path.read_bytes()).hexdigest()
    (out / "ortdecode.json").write_text(json.dumps(manifest))
    return out


def test_internal_error_is_500_in_one_line_and_logged(broken_export):
    process = ServerProcess("--model", str(broken_export), "--provider", "cpu")
    try:
        response = post(process, "/generate", {"inputs": "spell out: 7"})
        assert response.status_code == 500
        assert re.match(r"internal error while decoding: NonFiniteLogitsError: .*NaN", response.json()["error"])
        assert "\n" not in response.json()["error"]
        events = read_events(process, "/generate_stream", {"inputs": "spell out: 7"})
        assert events[-1]["error_type"] == "internal" and "NonFiniteLogitsError" in events[-1]["error"]
        assert process.metrics()['ortdecode_requests_total{outcome="error"}'] == 2
        assert post(process, "/generate", {"inputs": "spell out: 7", "parameters": {"top_p": 2}}).status_code == 422
    finally:
        assert process.stop() == 0
    assert process.stderr.count("Traceback") == 2 and "NonFiniteLogitsError" in process.stderr


def test_the_served_model_id_is_the_folders_name_or_as_given(generator):
    """The embedded model answers to "t5-numbers" wherever the package keeps it (an installed package holds it
    in a folder named default_model); --served-model-name replaces the id."""
    from ortdecode.serve.state import ServeSettings, served_model_name

    assert served_model_name(ServeSettings()) == "t5-numbers"
    assert served_model_name(ServeSettings(model="/srv/exports/default_model/")) == "default_model"
    process = ServerProcess("--provider", "cpu", "--served-model-name", "numbers-v2")
    try:
        assert process.client.get("/v1/models").json()["data"][0]["id"] == "numbers-v2"
        body = post(process, "/v1/completions", {"prompt": "spell out: 7", "model": "numbers-v2"}).json()
        assert body["model"] == "numbers-v2" and body["choices"][0]["text"] == generator.generate("spell out: 7").texts[0]
        refused = post(process, "/v1/completions", {"prompt": "spell out: 7", "model": "t5-numbers"})
        assert refused.status_code == 422 and "`model` has to be 'numbers-v2'" in refused.json()["error"]["message"]
    finally:
        assert process.stop() == 0


def test_the_decoder_layout_option_reaches_the_model():
    """The embedded model holds the split decoder pair only: asking for the merged graph fails its load, said in one
    line, exit 1 (the option was once accepted and ignored)."""
    script = Path(sys.executable).with_name("ortdecode")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ortdecode.cli"]
    done = subprocess.run([*command, "serve", "--port", "0", "--provider", "cpu", "--decoder-layout", "merged"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert re.search(r"^ortdecode: error: could not load the model: .*decoder_layout='merged' but the export has no "
                     r"decoder_merged graph", done.stderr, re.M), done.stderr


def test_serve_without_the_extra_says_what_to_install():
    code = ("import sys; sys.modules['fastapi'] = None; from ortdecode.cli import main; "
            "sys.exit(main(['serve']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and 'pip install "ortdecode[serve]"' in done.stderr


@pytest.mark.parametrize("args,status,match", [
    (["--model", "{tmp}"], 1, r"ortdecode\.json"),
    (["--max-batch-rows", "0"], 2, r"--max-batch-rows has to be >= 1"),
    (["--request-timeout", "0"], 2, r"--request-timeout has to be > 0"),
    (["--port", "65536"], 2, r"--port has to be in 0\.\.65535"),
    (["--port", "{busy}"], 1, r"--host 127\.0\.0\.1 --port \d+: cannot listen there \(Address already in use\)"),
])
def test_serve_refuses_bad_arguments_in_one_line(tmp_path, capsys, args, status, match):
    from ortdecode.cli import main

    with socket.socket() as busy:  # a port another program listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", *[a.format(tmp=tmp_path, busy=busy.getsockname()[1]) for a in args]]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err), err


def test_import_ortdecode_loads_no_server_package():
    code = ("import sys, ortdecode; loaded = [m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client', "
            "'ortdecode.serve') if m in sys.modules]; print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stdout
