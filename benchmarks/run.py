"""The benchmark harness: `python -m benchmarks.run` (or `make bench`); `--quick` for a smoke run.

Each engine runs in a process of its own (benchmarks.worker), threads pinned the same way for all (see
benchmarks.engines). The engine set runs `--rounds` independent rounds in one command: each round starts
fresh processes (so load time, time to first token and peak RSS are measured once per round), then every
case runs on every engine in a rotating order, with a settle pause between engines. Within a round a case
is a warm-up and `--repeats` timed generations (median). Each ratio of ortdecode to a peer is computed per
round and reported as the median with its min and max; a target counts as met only when its worst round
clears it (the machine is shared and noisy: absolute times from different runs do not compare).

Cases: every workload x batch (64 new tokens, float32 and int8); step cost against the generated length
(greedy, batch 1 and 8, ortdecode vs CTranslate2 float32); a batch of 32 inputs of mixed lengths (5-200
tokens). Per engine and round: import, load and first-token-ready seconds, RSS after load, peak RSS (load
+ one greedy batch-8 generation), weights on disk. Per run: memory bandwidth, GEMM rate, the memory and
FLOP rooflines, ONNX Runtime's per-op profile. Results: JSON, Markdown and a PNG plot under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import artifacts, measure, report
from .engines import WORKLOADS, padded

RESULTS = Path(__file__).resolve().parent / "results"
LENGTH_ENGINES = ("ortdecode", "CTranslate2 float32")
MIXED_ENGINES = ("ortdecode", "ortdecode int8", "CTranslate2 float32", "CTranslate2 int8")


def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        info["load_average_at_start"] = os.getloadavg()
    except (OSError, ValueError):
        pass
    if device == "cuda":
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                    "--format=csv,noheader"], capture_output=True, text=True, check=True)
            info["gpu"] = query.stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            info["gpu"] = "unknown"
    return info


def versions() -> dict:
    out = {}
    for package in ("ortdecode", "onnxruntime", "onnxruntime-gpu", "torch", "transformers", "optimum", "optimum-onnx",
                    "ctranslate2", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        out["commit"] += "+changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = os.environ.get("ORTDECODE_COMMIT", "unknown")
    return out


def make_sources(seed: int, batch: int, vocab_size: int, lengths: tuple[int, int] = (16, 48)) -> list[np.ndarray]:
    """Random source token ids of lengths[0] to lengths[1] tokens, ending with EOS (1); identical for every engine."""
    rng = np.random.default_rng([seed, batch])
    return [np.append(rng.integers(3, vocab_size, size=int(rng.integers(lengths[0], lengths[1] + 1))), 1)
            for _ in range(batch)]


def make_mixed_sources(seed: int, batch: int, vocab_size: int) -> list[np.ndarray]:
    """Sources of real-text-like lengths: log-normal (median 40 tokens), clipped to 5-200, EOS included,
    with the shortest and the longest always present."""
    rng = np.random.default_rng([seed, batch, 1])
    lengths = np.clip(np.round(rng.lognormal(np.log(40), 0.8, size=batch)), 5, 200).astype(int)
    lengths[0], lengths[-1] = 5, 200
    return [np.append(rng.integers(3, vocab_size, size=n - 1), 1) for n in lengths]


# ---------------------------------------------------------------- engines in processes of their own
def loaded_files(path: Path, decoder_layout: str = "auto") -> list[Path]:
    """The graph and external-data files ortdecode loads from an export folder."""
    from ortdecode import manifest as mf
    from ortdecode.runner import graph_roles, resolve_decoder_layout

    manifest = mf.read_manifest(path)
    files = []
    for role in graph_roles(resolve_decoder_layout(path, manifest, decoder_layout)):
        files.append(path / manifest.graphs[role].file)
        files += mf.external_data_of(path, manifest.graphs[role].file).values()
    return files


def engine_specs(art: artifacts.ModelArtifacts, device: str, threads: int, names: list[str],
                 spinning: bool) -> dict[str, tuple[dict, list[Path]]]:
    """label -> (the worker's engine spec, the model files that engine loads)."""
    common = {"device": device, "threads": threads, "spinning": spinning}
    specs = {}
    if "ortdecode" in names:
        for variant, path in art.exports.items():
            label = "ortdecode" if variant == "fp32" else f"ortdecode {variant}"
            specs[label] = ({"kind": "ortdecode", "path": str(path), "label": label, **common}, loaded_files(path))
    if "transformers" in names:
        specs["transformers"] = ({"kind": "transformers", "path": str(art.checkpoint), **common},
                                 sorted(art.checkpoint.glob("*.safetensors")) or sorted(art.checkpoint.glob("*.bin")))
    if "optimum" in names:
        split = artifacts.export_variant(art.name, art.checkpoint, "optimum")
        specs["Optimum"] = ({"kind": "optimum", "path": str(split), **common},
                            [split / f for f in ("encoder_model.onnx", "decoder_model.onnx",
                                                 "decoder_with_past_model.onnx")])
    if "ctranslate2" in names:
        for quantization, path in art.ctranslate2.items():
            label = f"CTranslate2 {quantization}"
            specs[label] = ({"kind": "ctranslate2", "path": str(path), "compute_type": quantization,
                             "label": label, **common}, [path / "model.bin"])
    return specs


class EngineProcess:
    """benchmarks.worker in a fresh interpreter, with OpenMP/BLAS thread counts pinned to `threads`. A request
    unanswered within `timeout` seconds kills the worker (a hung engine must not hang the run)."""

    def __init__(self, label: str, threads: int, timeout: float = 1200):
        self.label = label
        self.timeout = timeout
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads), PYTHONPATH=str(artifacts.ROOT))
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, bufsize=0, env=env, cwd=artifacts.ROOT)
        self._pending = b""

    def _line(self, deadline: float) -> str | None:
        fd = self.process.stdout.fileno()
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self.process.kill()
                self.process.wait()
                raise TimeoutError(f"{self.label}: no answer within {self.timeout:.0f} s; its process was killed")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode(errors="replace")

    def request(self, **request) -> dict:
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        deadline = time.monotonic() + self.timeout
        while (line := self._line(deadline)) is not None:
            if line.startswith("@@"):
                answer = json.loads(line[2:])
                if "error" in answer:
                    raise RuntimeError(f"{self.label}, {request['cmd']}: {answer['error']}")
                return answer
        raise RuntimeError(f"{self.label}: the worker process ended (exit status {self.process.wait()})")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write((json.dumps({"cmd": "exit"}) + "\n").encode())
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Case:
    key: str  # "greedy/8/64", "lengths/1/256", "mixed/32/64"
    kind: str  # "grid", "lengths", "mixed"
    workload: str
    batch: int
    new_tokens: int
    engines: tuple[str, ...]
    sources: list
    repeats: int


def make_cases(args, labels: list[str], vocab: int) -> list[Case]:
    as_lists = lambda sources: [s.tolist() for s in sources]  # noqa: E731
    cases = [Case(f"{w}/{b}/{args.new_tokens}", "grid", w, b, args.new_tokens, tuple(labels),
                  as_lists(make_sources(args.seed, b, vocab)), args.repeats)
             for w in args.workloads for b in args.batches]
    length_engines = tuple(e for e in LENGTH_ENGINES if e in labels)
    if len(length_engines) > 1:
        cases += [Case(f"lengths/{b}/{n}", "lengths", "greedy", b, n, length_engines,
                       as_lists(make_sources(args.seed, b, vocab)), 1)
                  for b in (1, 8) for n in args.lengths]
    mixed_engines = tuple(e for e in MIXED_ENGINES if e in labels)
    if len(mixed_engines) > 1:
        cases.append(Case(f"mixed/{args.mixed_batch}/{args.new_tokens}", "mixed", "greedy", args.mixed_batch,
                          args.new_tokens, mixed_engines,
                          as_lists(make_mixed_sources(args.seed, args.mixed_batch, vocab)),
                          args.repeats))
    return cases


def _rotated(items, by: int) -> list:
    items = list(items)
    return items[by % len(items):] + items[:by % len(items)] if items else items


def run_rounds(specs: dict, cases: list[Case], args, threads: int, vocab: int, model: str) -> list[dict]:
    """Every round: fresh engine processes, loaded one at a time, then every case on every engine (rotating
    order, `settle` seconds between engines). Returns per round: {label: {"load": ..., case key: ...}}."""
    load_sources = [make_sources(args.seed, 1, vocab)[0].tolist()]
    peak_sources = [s.tolist() for s in make_sources(args.seed, 8, vocab)]
    total = args.rounds * (len(specs) + sum(len(c.engines) for c in cases))
    rounds = []
    with tqdm(total=total, desc=f"bench {model}", unit="run") as bar:
        for r in range(args.rounds):
            results = {label: {} for label in specs}
            processes = {label: EngineProcess(label, threads) for label in specs}
            try:
                for label in _rotated(specs, r):
                    time.sleep(args.settle)
                    results[label]["load"] = processes[label].request(
                        cmd="load", engine=specs[label][0], sources=load_sources, peak_sources=peak_sources,
                        peak_new_tokens=64)
                    bar.update(1)
                for i, case in enumerate(cases):
                    bar.set_postfix_str(f"round {r + 1}/{args.rounds} {case.key}")
                    for label in _rotated(case.engines, r + i):
                        time.sleep(args.settle)
                        results[label][case.key] = processes[label].request(
                            cmd="case", sources=case.sources, workload=case.workload, new_tokens=case.new_tokens,
                            repeats=case.repeats, seed=args.seed)
                        bar.update(1)
            finally:
                for process in processes.values():
                    process.close()
            rounds.append(results)
    return rounds


def measure_gemm(threads: int) -> dict:
    process = EngineProcess("GEMM probe", threads)
    try:
        return process.request(cmd="gemm", threads=threads)
    finally:
        process.close()


# ---------------------------------------------------------------- summaries
def spread(values: list[float | None]) -> dict | None:
    """Median, min and max over the rounds that have a value (None where no round has one)."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {"median": statistics.median(known), "min": min(known), "max": max(known), "rounds": values}


def _ratio(ours: dict | None, theirs: dict | None) -> dict | None:
    """Per-round ratios ours / theirs, over the rounds where both have a value."""
    if ours is None or theirs is None:
        return None
    return spread([a / b if a and b else None for a, b in zip(ours["rounds"], theirs["rounds"])])


def summarize(cases: list[Case], rounds: list[dict], config: dict, weight_bytes: dict, bandwidth: float,
              gemm: float) -> list[dict]:
    """One row per (case, engine): tokens/s, ms per step, time to first token, rooflines, each as median/min/max
    over rounds, plus the per-round ratios of ortdecode (int8 against int8 peers) to every other engine."""
    rows = []
    for case in cases:
        per_engine = {}
        for label in case.engines:
            totals = [statistics.median(rd[label][case.key]["seconds"]) for rd in rounds]
            firsts = [statistics.median(rd[label][case.key]["first_token_seconds"]) for rd in rounds]
            tps = [case.batch * case.new_tokens / t for t in totals]
            # A round whose one-token generation outlasted the full one (noise) has no step cost: None.
            steps = [1e3 * (t - f) / (case.new_tokens - 1) if t > f else None for t, f in zip(totals, firsts)]
            row = {"case": case.key, "kind": case.kind, "workload": case.workload, "batch": case.batch,
                   "new_tokens": case.new_tokens, "engine": label, "tokens_per_s": spread(tps),
                   "ms_per_step": spread(steps), "ttft_ms": spread([1e3 * f for f in firsts])}
            variant = "fp32" if label == "ortdecode" else label.removeprefix("ortdecode ")
            if label.startswith("ortdecode") and variant in weight_bytes:
                row["memory_roofline"] = spread([weight_bytes[variant] * 1e3 / s / (bandwidth * 1e9) if s else None
                                                 for s in steps])
            if case.workload == "greedy" and "int8" not in label:
                source = statistics.mean(len(s) for s in case.sources)
                flops = decoder_flops_mean(config, case.batch, case.new_tokens, source)
                row["flop_roofline"] = spread([flops * 1e3 / s / (gemm * 1e9) if s else None for s in steps])
            per_engine[label] = row
        for label, row in per_engine.items():
            ours = per_engine.get("ortdecode int8" if "int8" in label else "ortdecode")
            if ours is None or label.startswith("ortdecode"):
                continue
            row["speedup"] = _ratio(ours["tokens_per_s"], row["tokens_per_s"])
            row["ttft_ratio"] = _ratio(ours["ttft_ms"], row["ttft_ms"])
            row["step_ratio"] = _ratio(ours["ms_per_step"], row["ms_per_step"])
        rows += per_engine.values()
    return rows


def decoder_flops_mean(config: dict, rows: int, new_tokens: int, source: float) -> float:
    """Mean FLOPs of the with-past steps of a generation of `new_tokens` tokens."""
    return statistics.mean(measure.decoder_step_flops(config, rows, past, source) for past in range(1, new_tokens))


def summarize_loads(specs: dict, rounds: list[dict]) -> dict:
    out = {}
    for label, (_, files) in specs.items():
        loads = [rd[label]["load"] for rd in rounds]
        out[label] = {key: spread([load[key] for load in loads]) for key in loads[0]}
        out[label]["weights_on_disk_mib"] = measure.weights_on_disk_mib(files)
    for label, entry in out.items():
        ours = out.get("ortdecode int8" if "int8" in label else "ortdecode")
        if ours is None or label.startswith("ortdecode"):
            continue
        for key in ("peak_rss_mib", "rss_after_load_mib", "first_token_ready_s", "load_s"):
            entry[f"{key}_ratio"] = _ratio(ours[key], entry[key])
    return out


def profile_ortdecode(art, device: str, threads, batch: int, new_tokens: int, seed: int) -> dict:
    import ortdecode

    provider = "cuda" if device == "cuda" else "cpu"

    def run_once(options):
        if threads:
            options.intra_op_num_threads = threads
        generator = ortdecode.load(art.exports["fp32"], provider=provider, session_options=options)
        vocab = min(art.vocab_size, len(art.vocabulary)) - 1
        ids, mask = padded([np.array(s) for s in make_sources(seed, batch, vocab)])
        generator.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        return generator.runner.sessions

    return measure.ort_op_profile(run_once, artifacts.WORK / "profiles")


def int8_accuracy(art) -> dict:
    """Held-out exact match of the embedded model, float32 vs int8 exports, greedy, through ortdecode."""
    import ortdecode
    from models.numbers.data import make_split
    from models.numbers.evaluate import STRATEGIES, _exact_match, ortdecode_generate

    split = make_split(0)
    out = {}
    for variant in ("fp32", "int8"):
        generator = ortdecode.load(art.exports[variant], provider="cpu")
        out[variant] = {task: _exact_match(ortdecode_generate(generator), task, numbers, STRATEGIES["greedy"])
                        for task, numbers in split.test.items()}
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: t5-small, ortdecode and CTranslate2, batches 1 8, 16 new tokens, lengths "
                             "16 64, 1 repeat per round, no profile; results tagged <device>-quick")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", nargs="+", default=None, help="default: t5-small t5-numbers")
    parser.add_argument("--engines", nargs="+", default=None,
                        help="default: ortdecode transformers optimum ctranslate2")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="default: 1 8 32")
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 64")
    parser.add_argument("--lengths", nargs="+", type=int, default=None,
                        help="generated lengths of the step-cost cases (default: 64 256 1024)")
    parser.add_argument("--mixed-batch", type=int, default=32, help="inputs in the mixed-length case")
    parser.add_argument("--rounds", type=int, default=3, help="independent rounds (fresh processes each)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per case and round (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="threads per engine (default: every core)")
    parser.add_argument("--no-spinning", action="store_true", help="ONNX Runtime threads do not spin-wait")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds of pause before each engine's turn (> KMP_BLOCKTIME, 0.2 s, so OpenMP and "
                             "ONNX Runtime threads of the previous engine have stopped spinning)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default=None, help="result file name stem (default: <device>-latest, or "
                                                    "<device>-quick with --quick)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"models": ["t5-small"] if quick else ["t5-small", "t5-numbers"],
                "engines": ["ortdecode", "ctranslate2"] if quick else ["ortdecode", "transformers", "optimum",
                                                                       "ctranslate2"],
                "batches": [1, 8] if quick else [1, 8, 32], "new_tokens": 16 if quick else 64,
                "lengths": [16, 64] if quick else [64, 256, 1024], "repeats": 1 if quick else 3}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats have to be >= 1")
    if args.new_tokens < 2 or min(args.lengths) < 2:
        parser.error("--new-tokens and --lengths have to be >= 2 (a step cost needs a step after the first)")
    args.no_profile = args.no_profile or quick
    args.tag = args.tag or f"{args.device}-{'quick' if quick else 'latest'}"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or (os.cpu_count() if args.device == "cpu" else None)
    started = dt.datetime.now(dt.timezone.utc)
    result = {"started": started.isoformat(timespec="seconds"), "device": args.device,
              "machine": machine_info(args.device), "versions": versions(),
              "settings": {"new_tokens": args.new_tokens, "rounds": args.rounds, "repeats": args.repeats,
                           "threads": threads, "ort_spinning": not args.no_spinning, "settle_s": args.settle,
                           "workloads": args.workloads, "batches": args.batches, "lengths": args.lengths,
                           "mixed_batch": args.mixed_batch, "seed": args.seed, "quick": args.quick},
              "models": {}}
    if args.device == "cpu":
        result["memory_bandwidth_gbs"] = measure.read_bandwidth(threads)
        bandwidth = max(result["memory_bandwidth_gbs"].values())
        result["gemm_gflops"] = measure_gemm(threads)
        gemm = max(result["gemm_gflops"].values())
    else:
        bandwidth = measure.gpu_bandwidth()
        result["memory_bandwidth_gbs"] = {"device_copy": bandwidth}
        gemm = None
    for model_name in args.models:
        variants = ["fp32"] + (["int8"] if args.device == "cpu" and not args.no_int8 else [])
        variants += ["cuda-fp32", "cuda-fp16"] if args.device == "cuda" else []
        quantizations = ["float32"] + (["int8"] if args.device == "cpu" and not args.no_int8 else [])
        quantizations = quantizations if "ctranslate2" in args.engines else []
        print(f"[{model_name}] preparing checkpoint, exports and conversions", file=sys.stderr)
        art = artifacts.prepare(model_name, variants, quantizations)
        config = json.loads((art.checkpoint / "config.json").read_text())
        vocab = min(art.vocab_size, len(art.vocabulary)) - 1
        specs = engine_specs(art, args.device, threads, args.engines, spinning=not args.no_spinning)
        cases = make_cases(args, list(specs), vocab)
        rounds = run_rounds(specs, cases, args, threads, vocab, model_name)
        weight_bytes = {name: measure.decoder_weight_bytes(path / "decoder_with_past_model.onnx")
                        for name, path in art.exports.items() if (path / "decoder_with_past_model.onnx").exists()}
        model_result = {"description": art.description, "decoder_weight_bytes": weight_bytes,
                        "rows": summarize(cases, rounds, config, weight_bytes, bandwidth, gemm or 0.0),
                        "loads": summarize_loads(specs, rounds), "failed_exports": art.failed_exports,
                        "raw_rounds": rounds}
        if not args.no_profile:
            print(f"[{model_name}] ONNX Runtime profile", file=sys.stderr)
            model_result["profile"] = {f"greedy batch {b}": profile_ortdecode(art, args.device, threads, b,
                                                                              args.new_tokens, args.seed)
                                       for b in (1, 8)}
        if model_name == "t5-numbers" and "int8" in art.exports:
            model_result["int8_accuracy"] = int8_accuracy(art)
        result["models"][model_name] = model_result
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["targets"] = report.check_targets(result)
    result["seconds"] = round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.tag}.md").write_text(report.markdown(result, plot_name=f"{args.tag}.png"))
    report.plot(result, args.out / f"{args.tag}.png")
    print(report.markdown_targets(result))
    print(f"results: {args.out / (args.tag + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
