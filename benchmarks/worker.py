"""One engine in a process of its own: `python -m benchmarks.worker`, driven by benchmarks.run over pipes.

ONNX Runtime's intra-op threads keep spinning after a run, CTranslate2's OpenMP threads keep spinning for
KMP_BLOCKTIME; in one process with the other engines they would slow whichever engine runs next. Here each
engine owns a process, and the driver leaves a settle pause between engines.

Protocol: one JSON request per stdin line, one answer per line on stdout prefixed with `@@` (libraries may
print other lines; they are ignored). Requests:

- {"cmd": "load", "engine": {...}, "sources": [[ids]]}: import the engine's library, build the engine,
  generate one token for `sources` (cold), then greedy batch 8 with `peak_sources` (64 tokens): answers
  import/load/first-token-ready seconds, RSS after the imports, after the load, the peak (VmHWM), and at
  the end the anonymous and file-backed parts of RSS (RssAnon, RssFile: mapped weights are file-backed);
- {"cmd": "case", "sources": [[ids]], "workload": "greedy", "new_tokens": 64, "repeats": 3, "seed": 0}:
  a full-length warm-up, then `repeats` x (a full generation, a one-token generation); answers
  the lists of seconds;
- {"cmd": "gemm", "threads": 2}: the float32 GEMM rate of ONNX Runtime (MLAS) and NumPy's BLAS, GFLOP/s;
- {"cmd": "exit"}.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

import numpy as np


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _mib(field: str) -> float:
    return _status_kib(field) / 1024


def _timed(engine, sources, workload, new_tokens: int, seed: int) -> float:
    from .engines import CTranslate2Engine

    start = time.perf_counter()
    sequences = engine.run(sources, workload, new_tokens, seed=seed)
    elapsed = time.perf_counter() - start
    generated = sequences.shape[1] - (0 if isinstance(engine, CTranslate2Engine) else 1)
    if sequences.shape[0] != len(sources) or generated != new_tokens:
        raise RuntimeError(f"{engine.name} returned {sequences.shape} for {len(sources)} inputs x {new_tokens} "
                           "tokens: not the same work as the others")
    return elapsed


class Worker:
    def __init__(self):
        self.engine = None

    def load(self, request: dict) -> dict:
        rss_start = _mib("VmRSS")
        start = time.perf_counter()
        from . import engines

        for module in engines.LIBRARIES.get(request["engine"]["kind"], ()):  # an unknown kind: make_engine says so
            importlib.import_module(module)
        imported = time.perf_counter()
        rss_imports = _mib("VmRSS")
        self.engine = engines.make_engine(request["engine"])
        loaded = time.perf_counter()
        rss_load = _mib("VmRSS")
        sources = [np.array(s, dtype=np.int64) for s in request["sources"]]
        _timed(self.engine, sources, engines.WORKLOADS["greedy"], 1, 0)
        first_token = time.perf_counter()
        peak_sources = [np.array(s, dtype=np.int64) for s in request["peak_sources"]]
        _timed(self.engine, peak_sources, engines.WORKLOADS["greedy"], request["peak_new_tokens"], 0)
        return {"import_s": imported - start, "load_s": loaded - imported,
                "first_token_ready_s": first_token - imported, "rss_start_mib": rss_start,
                "rss_after_imports_mib": rss_imports, "rss_after_load_mib": rss_load,
                "peak_rss_mib": _mib("VmHWM"), "rss_end_anon_mib": _mib("RssAnon"), "rss_end_file_mib": _mib("RssFile")}

    def case(self, request: dict) -> dict:
        from .engines import WORKLOADS

        workload = WORKLOADS[request["workload"]]
        sources = [np.array(s, dtype=np.int64) for s in request["sources"]]
        seed, new_tokens = request["seed"], request["new_tokens"]
        _timed(self.engine, sources, workload, new_tokens, seed)
        _timed(self.engine, sources, workload, 1, seed)
        totals, firsts = [], []
        for rep in range(request["repeats"]):
            totals.append(_timed(self.engine, sources, workload, new_tokens, seed + rep))
            firsts.append(_timed(self.engine, sources, workload, 1, seed + rep))
        return {"seconds": totals, "first_token_seconds": firsts}

    @staticmethod
    def gemm(request: dict) -> dict:
        from .measure import gemm_rates

        return gemm_rates(request["threads"])


def main() -> int:
    worker = Worker()
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "exit":
            break
        try:
            answer = getattr(worker, request["cmd"])(request)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which names the engine
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print("@@" + json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
