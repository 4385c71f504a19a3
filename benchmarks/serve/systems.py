"""The systems under test: servers started as subprocesses, and CTranslate2 offline."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import artifacts
from .load import BenchRequest

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


def ortdecode_command(model: Path, continuous: bool, max_batch_rows: int) -> list[str]:
    command = [sys.executable, "-m", "ortdecode.cli", "serve", "--model", str(model), "--port", "0",
               "--provider", "cpu", "--max-batch-rows", str(max_batch_rows), "--max-concurrent-requests", "256",
               "--request-timeout", "600"]
    return command if continuous else [*command, "--no-continuous-batching"]


def optimum_command(name: str, checkpoint: Path) -> list[str]:
    """The Optimum app on the export Optimum reads (made on first use, as Optimum's export writes it)."""
    model = artifacts.export_variant(name, checkpoint, "optimum")
    return [sys.executable, "-m", "benchmarks.serve.optimum_app", "--model", str(model), "--port", "0"]


class Server:
    """A server subprocess that prints `listening on http://HOST:PORT` on stderr and answers GET /health."""

    def __init__(self, command: list[str], timeout: float = 300.0):
        import httpx

        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        listening = threading.Event()
        self.url = ""

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                match = _LISTENING.search(line)
                if match and not self.url:
                    self.url = match.group(1)
                    listening.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not listening.wait(0.1):
            self._check_alive(deadline)
        while httpx.get(f"{self.url}/health").status_code != 200:
            self._check_alive(deadline)
            time.sleep(0.1)

    def _check_alive(self, deadline: float) -> None:
        if self.proc.poll() is not None or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"server did not start: {''.join(self.lines)[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def ctranslate2_offline(converted_dir: Path, hf_tokenizer, requests: list[BenchRequest]) -> dict:
    """CTranslate2's translate_batch over the whole request set, one call per max_new_tokens value (its
    length options are per call), batches of up to 64."""
    import ctranslate2

    translator = ctranslate2.Translator(str(converted_dir), device="cpu", compute_type="float32", inter_threads=1)
    groups: dict[int, list[list[str]]] = {}
    for request in requests:
        tokens = hf_tokenizer.convert_ids_to_tokens(hf_tokenizer(request.text).input_ids)
        groups.setdefault(request.new_tokens, []).append(tokens)
    translator.translate_batch(next(iter(groups.values()))[:1], max_decoding_length=8)  # warm-up
    started = time.perf_counter()
    generated = 0
    for length, sources in groups.items():
        results = translator.translate_batch(sources, max_batch_size=64, max_decoding_length=length,
                                             min_decoding_length=length, beam_size=1)
        generated += sum(len(r.hypotheses[0]) for r in results)
    wall = time.perf_counter() - started
    return {"requests": len(requests), "output_tokens": generated, "wall_s": wall, "tokens_per_s": generated / wall,
            "requests_per_s": len(requests) / wall}
