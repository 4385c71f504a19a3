"""Two graphs of one model measured in turns in one process (the pass benchmarks: `benchmarks.attention_fusion`,
`benchmarks.packed_encoder`): their sessions, the timing, the command line, and the results written as
benchmarks/results/<tag>.json, .md and .png."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import artifacts
from .run import machine_info, versions

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def best_ms(sessions, feeds, rounds: int, runs: int) -> list[float]:
    """Each session's best mean ms per run over `rounds` rounds of `runs` runs, the sessions alternating."""
    best = [float("inf")] * len(sessions)
    for _ in range(rounds):
        for i, sess in enumerate(sessions):
            start = time.perf_counter()
            for _ in range(runs):
                sess.run(None, feeds)
            best[i] = min(best[i], (time.perf_counter() - start) / runs * 1000)
    return best


def parse_args(prog: str, doc: str, argv, runs: int, tag: str,
               variants: tuple[str, ...] = ("fp32", "int8")) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(variants), choices=list(variants))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default=tag)
    return parser.parse_args(argv)


def result_of(prog: str, args: argparse.Namespace, argv, variants: list[dict]) -> dict:
    return {"measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info("cpu"),
            "versions": versions(), "threads": args.threads, "rounds": args.rounds, "runs": args.runs,
            "command": " ".join([prog, *(sys.argv[1:] if argv is None else argv)]), "variants": variants}


def header(result: dict, title: str, what: str = "") -> list[str]:
    """The markdown's title and how the run was made (`what`: a sentence on the inputs, or nothing)."""
    machine, ver = result["machine"], result["versions"]
    return [f"# {title}", "",
            f"Measured {result['measured']} on {machine.get('cpu', '?')} ({machine['cpu_count']} CPU cores, load "
            f"average {machine.get('load_average_at_start', ['?'])[0]} at the start), commit {ver['commit']}, "
            f"{result['threads']} threads, best of {result['rounds']} rounds x {result['runs']} runs, "
            f"the two graphs alternating in one process; onnxruntime {ver['onnxruntime']}." + (f" {what}" if what else ""),
            "", f"`{result['command']}`", ""]


def ratio_plot(path: Path, draw, ylabel: str, title: str) -> None:
    """A pass's ratio plot at `path`: `draw(ax)` plots the variants' ratios, over a line at 1.0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    draw(ax)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(prog: str, doc: str, argv, *, runs: int, tag: str, cases: int, unit: str, measure_variant, markdown,
         plot, variants: tuple[str, ...] = ("fp32", "int8")) -> None:
    """A pass benchmark's command: each variant measured on the t5-small-shaped model over `cases` inputs
    (`measure_variant(variant, checkpoint, args, progress)`), the results written."""
    from tqdm import tqdm

    args = parse_args(prog, doc, argv, runs=runs, tag=tag, variants=variants)
    checkpoint, _ = artifacts.checkpoint_for("t5-small")
    with tqdm(total=len(args.variants) * cases, desc=tag.replace("-", " "), unit=unit) as progress:
        variants = [measure_variant(v, checkpoint, args, progress) for v in args.variants]
    write(result_of(prog, args, argv, variants), args.tag, markdown, plot)


def write(result: dict, tag: str, markdown, plot) -> None:
    """benchmarks/results/<tag>.json, .md (`markdown(result)`) and .png (`plot(result, path)`); prints the markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{tag}.md").write_text(markdown(result))
    plot(result, RESULTS / f"{tag}.png")
    print(markdown(result))
