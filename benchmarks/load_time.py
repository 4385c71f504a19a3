"""Load time of t5-small exports with their graphs saved as ONNX Runtime optimizes them (export/ort_optimize.py)
and without (`--no-ort-optimize`), beside CTranslate2's: every load in a fresh process (benchmarks.worker), the
engines in turns, `--rounds` rounds.

    python -m benchmarks.load_time [--rounds 7] [--threads 2]

writes benchmarks/results/load-time.json, .md and .png: per engine the median [min-max] over the rounds of the
load (folder to engine object) and of the first token ready (the load and a cold one-token generation, one
input), and the ratios of the saved graphs' seconds over the unsaved ones', per round.
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm.auto import tqdm

from . import artifacts
from .graph_pair import write
from .report import _spread
from .run import EngineProcess, _ratio, machine_info, make_sources, spread, versions

# label -> (export variant or CTranslate2 quantization, kind)
ENGINES = {"ortdecode": ("fp32", "ortdecode"), "ortdecode --no-ort-optimize": ("fp32-unoptimized", "ortdecode"),
           "CTranslate2 float32": ("float32", "ctranslate2"),
           "ortdecode int8": ("int8", "ortdecode"),
           "ortdecode int8 --no-ort-optimize": ("int8-unoptimized", "ortdecode"),
           "CTranslate2 int8": ("int8", "ctranslate2")}
KEYS = ("load_s", "first_token_ready_s")


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load_time", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between two loads")
    parser.add_argument("--tag", default="load-time")
    return parser.parse_args(argv)


def specs(threads: int) -> dict[str, dict]:
    art = artifacts.prepare("t5-small", [v for v, kind in ENGINES.values() if kind == "ortdecode"],
                            ["float32", "int8"])
    out = {}
    for label, (variant, kind) in ENGINES.items():
        if kind == "ortdecode":
            out[label] = {"kind": "ortdecode", "path": str(art.exports[variant]), "label": label, "threads": threads}
        elif variant in art.ctranslate2:  # CTranslate2 is in the [bench] extra
            out[label] = {"kind": "ctranslate2", "path": str(art.ctranslate2[variant]), "compute_type": variant,
                          "label": label, "threads": threads}
    return out


def measure(engines: dict[str, dict], args) -> dict[str, list[dict]]:
    """label -> one load answer per round (benchmarks.worker's "load"), the engines' order rotated each round."""
    sources = [s.tolist() for s in make_sources(0, 1, 32128)]
    answers = {label: [] for label in engines}
    labels = list(engines)
    with tqdm(total=args.rounds * len(labels), desc="loads", unit="load", file=sys.stderr) as bar:
        for round_ in range(args.rounds):
            for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:
                process = EngineProcess(label, args.threads)
                try:
                    answers[label].append(process.request(cmd="load", engine=engines[label], sources=sources,
                                                          peak_sources=sources, peak_new_tokens=1))
                finally:
                    process.close()
                bar.update(1)
                time.sleep(args.settle)
    return answers


def summarize(answers: dict[str, list[dict]]) -> dict:
    out = {label: {key: spread([a[key] for a in rounds]) for key in KEYS} for label, rounds in answers.items()}
    for label in list(out):
        unoptimized = out.get(f"{label} --no-ort-optimize")
        if unoptimized:
            out[label]["saved_over_unsaved"] = {key: _ratio(out[label][key], unoptimized[key]) for key in KEYS}
    return out


def _cell(entry: dict | None, digits: int = 3) -> str:
    return _spread(entry, digits) or "-"


def markdown(result: dict) -> str:
    machine, ver = result["machine"], result["versions"]
    lines = ["# Load time: graphs saved as ONNX Runtime optimizes them, or not", "",
             f"Measured {result['measured']} on {machine.get('cpu', '?')} ({machine['cpu_count']} CPU cores), "
             f"commit {ver['commit']}, onnxruntime {ver['onnxruntime']}, {result['threads']} threads; "
             f"t5-small architecture, random weights; every load in a fresh process, the engines in turns, "
             f"{result['rounds']} rounds; seconds, median [min-max] over the rounds.", "",
             f"`{result['command']}`", "",
             "| engine | load s | first token ready s | saved / unsaved: load | saved / unsaved: first token ready |",
             "|---|---|---|---|---|"]
    for label, entry in result["engines"].items():
        ratios = entry.get("saved_over_unsaved", {})
        lines.append(f"| {label} | {_cell(entry['load_s'])} | {_cell(entry['first_token_ready_s'])} | "
                     f"{_cell(ratios.get('load_s'), 2)} | {_cell(ratios.get('first_token_ready_s'), 2)} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["engines"])
    ready = [result["engines"][label]["first_token_ready_s"] for label in labels]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(labels, [r["median"] for r in ready],
            xerr=[[r["median"] - r["min"] for r in ready], [r["max"] - r["median"] for r in ready]], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("folder to first token ready, s (median, min-max)")
    ax.set_title(f"t5-small load, {result['rounds']} rounds, fresh processes")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from datetime import datetime, timezone

    args = parse_args(argv)
    engines = specs(args.threads)
    result = {"measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info("cpu"),
              "versions": versions(), "threads": args.threads, "rounds": args.rounds,
              "command": " ".join(["python -m benchmarks.load_time", *(sys.argv[1:] if argv is None else argv)])}
    result["engines"] = summarize(measure(engines, args))
    write(result, args.tag, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
