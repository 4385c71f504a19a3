"""`python -m benchmarks.batch [--quick]`: see benchmarks/batch/__init__.py for what it measures."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from .. import artifacts, measure
from ..run import RESULTS, machine_info, versions
from . import report
from .inputs import make_texts, write_jsonl

VOCAB_WORDS = 32000  # the synthetic t5-small tokenizer's "w<i>" pieces


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few inputs, short outputs")
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs of the throughput comparison")
    parser.add_argument("--rss-inputs", type=int, nargs=2, default=(1_000, 10_000), metavar=("SMALL", "LARGE"))
    parser.add_argument("--ray-inputs", type=int, default=2_000, help="inputs of the Ray / CLI comparison")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per input (min = max)")
    parser.add_argument("--batch-tokens", type=int, default=4096, help="token budget (ortdecode and CTranslate2)")
    parser.add_argument("--batch-size", type=int, default=64, help="inputs per bucketed batch at most")
    parser.add_argument("--fixed-batch", type=int, default=32, help="batch size of the file-order baseline")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads of every engine")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.inputs, args.rss_inputs, args.ray_inputs, args.new_tokens = 200, (100, 300), 150, 8
    return args


def timed(label: str, run, total: int) -> tuple[float, object]:
    with tqdm(total=total, desc=label, unit="input", leave=False, file=sys.stderr) as bar:
        started = time.perf_counter()
        out = run(bar)
        return time.perf_counter() - started, out


def throughput(args, export: Path, ct2_dir: Path, texts: list[str]) -> dict:
    import ctranslate2

    import ortdecode

    n = args.new_tokens
    generator = ortdecode.load(export, provider="cpu", threads=args.threads)
    options = dict(min_new_tokens=n, max_new_tokens=n)
    translator = ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type="float32", inter_threads=1,
                                        intra_threads=args.threads)
    vocabulary = json.loads((ct2_dir / "shared_vocabulary.json").read_text())
    source_ids = [generator.tokenizer.encode_one(t) for t in texts]
    source_tokens = [[vocabulary[i] for i in ids] for ids in source_ids]

    def bucketed(bar, items=texts):
        results = []
        for result in generator.generate_iter(items, batch_tokens=args.batch_tokens, batch_size=args.batch_size,
                                              **options):
            results.append(result.finish_reasons == ["length"])  # min = max new tokens: exactly n
            bar.update()
        return results

    def file_order(bar, items=texts):
        results = []
        for start in range(0, len(items), args.fixed_batch):
            out = generator.generate(items[start:start + args.fixed_batch], **options)
            results.extend(reason == "length" for reason in out.finish_reasons)
            bar.update(len(out.texts))
        return results

    def ctranslate2_tokens(bar, items=source_tokens):
        results = []
        for result in translator.translate_iterable(items, max_batch_size=args.batch_tokens, batch_type="tokens",
                                                    beam_size=1, min_decoding_length=n, max_decoding_length=n):
            results.append(len(result.hypotheses[0]) == n)
            bar.update()
        return results

    engines = {"ortdecode bucketed": bucketed, "ortdecode file order": file_order,
               "CTranslate2 translate_iterable": ctranslate2_tokens}
    for name, run in engines.items():  # warm-up: sessions, thread pools, allocators
        with tqdm(disable=True) as quiet:
            run(quiet, (texts if "CTranslate2" not in name else source_tokens)[:16])
    out = {}
    for name, run in engines.items():
        seconds, checks = timed(name, run, len(texts))
        if not all(checks) or len(checks) != len(texts):
            raise RuntimeError(f"{name} did not produce exactly {n} tokens for each of {len(texts)} inputs")
        out[name] = {"seconds": seconds, "inputs_per_s": len(texts) / seconds,
                     "tokens_per_s": len(texts) * n / seconds}
    lengths = sorted(len(ids) for ids in source_ids)
    out_lengths = {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1],
                   "mean": sum(lengths) / len(lengths)}
    return {"engines": out, "input_tokens": out_lengths}


def cli_command(export: Path, source: Path, output: Path, new_tokens: int, threads: int) -> list[str]:
    return ["generate", "--model", str(export), "--provider", "cpu", "--threads", str(threads), "--input", str(source),
            "--output", str(output), "--quiet", "--min-new-tokens", str(new_tokens), "--max-new-tokens",
            str(new_tokens)]


def peak_rss(args, export: Path, work: Path) -> dict:
    """Peak RSS of the file mode in a fresh process, at two input counts (4 new tokens each: the reading,
    batching and writing are what could grow with the input)."""
    out = {}
    for count in tqdm(args.rss_inputs, desc="peak RSS", leave=False, file=sys.stderr):
        source = write_jsonl(make_texts(count, VOCAB_WORDS, seed=1), work / f"rss-{count}.jsonl")
        command = cli_command(export, source, work / f"rss-{count}-out.jsonl", 4, args.threads)
        started = time.perf_counter()
        mib = measure.peak_rss_in_subprocess(f"from ortdecode.cli import main; main({command!r})")
        out[str(count)] = {"peak_rss_mib": mib, "seconds": time.perf_counter() - started}
    return out


def ray_comparison(args, export: Path, work: Path) -> dict:
    """The plain CLI against Ray Data (1 actor x 2 threads, 2 actors x 1 thread) on the same inputs."""
    texts = make_texts(args.ray_inputs, VOCAB_WORDS, seed=2)
    source = write_jsonl(texts, work / "ray.jsonl")
    shards = work / "ray-shards"
    shards.mkdir()
    per_shard = -(-len(texts) // 16)
    for index in range(16):  # a sharded dataset: Ray Data reads one block per file
        write_jsonl(texts[index * per_shard:(index + 1) * per_shard], shards / f"part-{index:02d}.jsonl")
    out = {}
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli",
                          *cli_command(export, source, work / "cli-out.jsonl", args.new_tokens, args.threads)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"the CLI failed: {run.stderr.strip()}")
    out["cli (2 threads)"] = {"seconds": time.perf_counter() - started}

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    from ortdecode.ray_data import Generate, model_sha256

    started = time.perf_counter()
    # One logical CPU more than the actors take: Ray Data's read and write tasks need one to run at all.
    ray.init(num_cpus=args.threads + 1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out["ray.init"] = {"seconds": time.perf_counter() - started}
    try:
        for actors in tqdm((1, 2), desc="Ray actors", leave=False, file=sys.stderr):
            cpus = args.threads // actors
            target = work / f"ray-out-{actors}"
            started = time.perf_counter()
            ray.data.read_json(str(shards)).map_batches(
                Generate, fn_constructor_kwargs={"model": str(export), "sha256": model_sha256(export),
                                                 "options": {"min_new_tokens": args.new_tokens,
                                                             "max_new_tokens": args.new_tokens}},
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, batch_size=128,
            ).write_json(str(target))
            seconds = time.perf_counter() - started
            rows = sum(1 for path in target.iterdir() for _ in open(path))
            if rows != len(texts):
                raise RuntimeError(f"Ray with {actors} actor(s) wrote {rows} rows for {len(texts)} inputs")
            out[f"ray {actors} actor(s) x {cpus} thread(s)"] = {"seconds": seconds}
    finally:
        ray.shutdown()
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    model = artifacts.prepare("t5-small", ["fp32"], ["float32"])
    export, ct2_dir = model.exports["fp32"], model.ctranslate2["float32"]
    result = {"machine": machine_info("cpu"), "versions": versions(), "model": model.description,
              "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}}
    work = Path(tempfile.mkdtemp(prefix="ortdecode-batch-bench-"))
    try:
        texts = make_texts(args.inputs, VOCAB_WORDS)
        result["throughput"] = throughput(args, export, ct2_dir, texts)
        result["peak_rss"] = peak_rss(args, export, work)
        if not args.no_ray:
            result["ray"] = ray_comparison(args, export, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["total_seconds"] = time.perf_counter() - started
    name = "batch-quick" if args.quick else "batch-latest"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    report.plot(result, RESULTS / f"{name}.png")
    (RESULTS / f"{name}.md").write_text(report.markdown(result, f"{name}.png"))
    print((RESULTS / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
