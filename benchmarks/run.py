"""The benchmark harness: `python -m benchmarks.run` (or `make bench`).

Every engine runs the same inputs in one process, in turn: after a warm-up, each repetition times every
engine once, rotating the order, and the median is reported. Ratios of ortdecode to each peer are taken
within the run (the machine is shared and noisy; absolute times from different runs do not compare).

Per (model, workload, batch, engine): tokens/s, ms per decoder step (the with-past steps, encoder and
first step excluded), time to first token (a generation of one token), and for ortdecode the roofline
ratio: bytes of decoder weights read per step x steps per second / measured memory bandwidth. Per engine:
peak RSS of a fresh process that loads the model and runs greedy batch 8. Results: JSON, Markdown and a
PNG plot under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import artifacts, measure, report
from .engines import (WORKLOADS, CTranslate2Engine, OptimumEngine, OrtDecodeEngine, TransformersEngine, Workload,
                      padded)

RESULTS = Path(__file__).resolve().parent / "results"
INT8_BATCHES = (1, 8)


def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
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


def make_sources(seed: int, batch: int, vocab_size: int) -> list[np.ndarray]:
    """Random source token ids of 16 to 48 tokens, ending with EOS (1); identical for every engine."""
    rng = np.random.default_rng([seed, batch])
    return [np.append(rng.integers(3, vocab_size, size=int(rng.integers(16, 49))), 1) for _ in range(batch)]


def build_engines(art: artifacts.ModelArtifacts, device: str, threads: int | None, names: list[str]) -> dict:
    provider = "cuda" if device == "cuda" else "cpu"
    engines = {}
    if "ortdecode" in names:
        engines["ortdecode"] = OrtDecodeEngine(art.exports["fp32"], provider, threads)
        for variant in ("int8", "cuda-fp32", "cuda-fp16"):
            if variant in art.exports:
                engines[f"ortdecode {variant}"] = OrtDecodeEngine(art.exports[variant], provider, threads,
                                                                  label=f"ortdecode {variant}")
    if "transformers" in names:
        engines["transformers"] = TransformersEngine(art.checkpoint, device, threads)
    if "optimum" in names:
        engines["Optimum"] = OptimumEngine(art.exports["fp32"], provider, threads)
    if "ctranslate2" in names:
        for quantization, path in art.ctranslate2.items():
            label = f"CTranslate2 {quantization}"
            try:
                engines[label] = CTranslate2Engine(path, device=device, compute_type=quantization,
                                                   threads=threads, label=label)
            except (RuntimeError, ValueError) as exc:  # e.g. no CUDA build of CTranslate2 for this driver
                print(f"skipping {label}: {exc}", file=sys.stderr)
    return engines


def _timed(engine, sources, workload: Workload, new_tokens: int, seed: int) -> float:
    start = time.perf_counter()
    sequences = engine.run(sources, workload, new_tokens, seed=seed)
    elapsed = time.perf_counter() - start
    generated = sequences.shape[1] - (0 if isinstance(engine, CTranslate2Engine) else 1)
    if sequences.shape[0] != len(sources) or generated != new_tokens:
        raise RuntimeError(f"{engine.name} returned {sequences.shape} for {len(sources)} inputs x {new_tokens} "
                           "tokens: not the same work as the others")
    return elapsed


def bench_model(art, engines: dict, workloads: list[str], batches: list[int], new_tokens: int, repeats: int,
                seed: int, bar) -> list[dict]:
    rows = []
    for workload_name in workloads:
        workload = WORKLOADS[workload_name]
        for batch in batches:
            taking_part = {name: e for name, e in engines.items()
                           if not (("int8" in name) and (workload_name != "greedy" or batch not in INT8_BATCHES))}
            sources = make_sources(seed, batch, min(art.vocab_size, len(art.vocabulary)) - 1)
            totals = {name: [] for name in taking_part}
            firsts = {name: [] for name in taking_part}
            for name, engine in taking_part.items():  # warm-up
                _timed(engine, sources, workload, new_tokens, seed)
                _timed(engine, sources, workload, 1, seed)
            names = list(taking_part)
            for rep in range(repeats):
                order = names[rep % len(names):] + names[:rep % len(names)]
                for name in order:
                    totals[name].append(_timed(taking_part[name], sources, workload, new_tokens, seed + rep))
                    firsts[name].append(_timed(taking_part[name], sources, workload, 1, seed + rep))
                    bar.update(1)
            for name in names:
                total, first = statistics.median(totals[name]), statistics.median(firsts[name])
                rows.append({"model": art.name, "workload": workload_name, "batch": batch, "engine": name,
                             "seconds": total, "seconds_all": totals[name], "tokens_per_s": batch * new_tokens / total,
                             "ms_per_step": 1e3 * max(total - first, 0.0) / (new_tokens - 1),
                             "ttft_ms": 1e3 * first})
    return rows


RSS_CODE = """
import sys; sys.path.insert(0, {root!r})
from benchmarks.engines import WORKLOADS, {cls}
from benchmarks.run import make_sources
engine = {cls}({args})
engine.run(make_sources(0, 8, {vocab}), WORKLOADS['greedy'], {new_tokens})
"""


def peak_rss(art, engines: dict, device: str, threads, new_tokens: int) -> dict:
    provider = "cuda" if device == "cuda" else "cpu"
    vocab = min(art.vocab_size, len(art.vocabulary)) - 1
    specs = {
        "ortdecode": ("OrtDecodeEngine", f"{str(art.exports['fp32'])!r}, {provider!r}, {threads!r}"),
        "transformers": ("TransformersEngine", f"{str(art.checkpoint)!r}, {device!r}, {threads!r}"),
        "Optimum": ("OptimumEngine", f"{str(art.exports['fp32'])!r}, {provider!r}, {threads!r}"),
    }
    if "int8" in art.exports:
        specs["ortdecode int8"] = ("OrtDecodeEngine", f"{str(art.exports['int8'])!r}, {provider!r}, {threads!r}")
    for quantization, path in art.ctranslate2.items():
        specs[f"CTranslate2 {quantization}"] = (
            "CTranslate2Engine", f"{str(path)!r}, device={device!r}, compute_type={quantization!r}, threads={threads!r}")
    out = {}
    for name, (cls, args) in specs.items():
        if name not in engines:
            continue
        code = RSS_CODE.format(root=str(artifacts.ROOT), cls=cls, args=args, vocab=vocab, new_tokens=new_tokens)
        try:
            out[name] = measure.peak_rss_in_subprocess(code)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            out[name] = None
            print(f"peak RSS of {name} not measured: {exc}", file=sys.stderr)
    return out


def profile_ortdecode(art, device: str, threads, batch: int, new_tokens: int, seed: int) -> dict:
    import ortdecode

    provider = "cuda" if device == "cuda" else "cpu"

    def run_once(options):
        if threads:
            options.intra_op_num_threads = threads
        generator = ortdecode.load(art.exports["fp32"], provider=provider, session_options=options)
        ids, mask = padded(make_sources(seed, batch, min(art.vocab_size, len(art.vocabulary)) - 1))
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", nargs="+", default=["t5-small", "t5-numbers"])
    parser.add_argument("--engines", nargs="+", default=["ortdecode", "transformers", "optimum", "ctranslate2"])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="threads per engine (default: every core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default=None, help="result file name stem (default: <device>-latest)")
    args = parser.parse_args(argv)
    threads = args.threads or (os.cpu_count() if args.device == "cpu" else None)

    started = dt.datetime.now(dt.timezone.utc)
    result = {"started": started.isoformat(timespec="seconds"), "device": args.device,
              "machine": machine_info(args.device), "versions": versions(),
              "settings": {"new_tokens": args.new_tokens, "repeats": args.repeats, "threads": threads,
                           "workloads": args.workloads, "batches": args.batches, "seed": args.seed},
              "models": {}}
    if args.device == "cpu":
        result["memory_bandwidth_gbs"] = measure.read_bandwidth(threads)
        bandwidth = max(result["memory_bandwidth_gbs"].values())
    else:
        bandwidth = measure.gpu_bandwidth()
        result["memory_bandwidth_gbs"] = {"device_copy": bandwidth}
    for model_name in args.models:
        variants = ["fp32"] + (["int8"] if args.device == "cpu" and not args.no_int8 else [])
        variants += ["cuda-fp32", "cuda-fp16"] if args.device == "cuda" else []
        quantizations = ["float32"] + (["int8"] if args.device == "cpu" and not args.no_int8 else [])
        quantizations = quantizations if "ctranslate2" in args.engines else []
        print(f"[{model_name}] preparing checkpoint, exports and conversions", file=sys.stderr)
        art = artifacts.prepare(model_name, variants, quantizations)
        engines = build_engines(art, args.device, threads, args.engines)
        runs = sum(len([n for n in engines if not ("int8" in n and (w != "greedy" or b not in INT8_BATCHES))])
                   for w in args.workloads for b in args.batches) * args.repeats
        with tqdm(total=runs, desc=f"bench {model_name}", unit="run") as bar:
            rows = bench_model(art, engines, args.workloads, args.batches, args.new_tokens, args.repeats, args.seed,
                               bar)
        weight_bytes = {name: measure.decoder_weight_bytes(path / "decoder_with_past_model.onnx")
                        for name, path in art.exports.items()}
        for row in rows:
            variant = {"ortdecode": "fp32"}.get(row["engine"], row["engine"].removeprefix("ortdecode "))
            if row["engine"].startswith("ortdecode") and variant in weight_bytes and row["ms_per_step"] > 0:
                row["roofline_ratio"] = weight_bytes[variant] * (1e3 / row["ms_per_step"]) / (bandwidth * 1e9)
        del engines
        model_result = {"description": art.description, "decoder_weight_bytes": weight_bytes, "rows": rows,
                        "failed_exports": art.failed_exports}
        print(f"[{model_name}] peak RSS and profile", file=sys.stderr)
        model_result["peak_rss_mib"] = peak_rss(art, {r["engine"] for r in rows}, args.device, threads,
                                                args.new_tokens)
        model_result["profile"] = {f"greedy batch {b}": profile_ortdecode(art, args.device, threads, b, args.new_tokens,
                                                                          args.seed) for b in (1, 8)}
        if model_name == "t5-numbers" and "int8" in art.exports:
            model_result["int8_accuracy"] = int8_accuracy(art)
        result["models"][model_name] = model_result
    result["targets"] = report.check_targets(result)
    result["seconds"] = round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1)
    stem = args.tag or f"{args.device}-latest"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(report.markdown(result, plot_name=f"{stem}.png"))
    report.plot(result, args.out / f"{stem}.png")
    print(report.markdown_targets(result))
    print(f"results: {args.out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
