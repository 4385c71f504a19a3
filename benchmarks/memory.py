"""Where ortdecode's memory goes, lever by lever: `python -m benchmarks.memory`.

Each variant (an export, a decoder layout, ONNX Runtime session settings; CTranslate2 beside them) runs in a
fresh process (benchmarks.worker's "load": imports, load, a cold one-token generation, then one greedy batch-8
generation of 64 tokens), `--rounds` times, interleaved. Reported per variant: weights on disk, RSS after
the imports, after the load, and the peak (VmHWM), with load and first-token-ready seconds. Memory barely
moves with CPU load; the seconds do (the machine is shared). Results: benchmarks/results/memory-<tag>.md/json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from . import artifacts, measure
from .report import _spread
from .run import RESULTS, EngineProcess, _rotated, engine_specs, loaded_files, make_sources, spread, versions

NO_PREPACK = {"session.disable_prepacking": "1"}


def variants(art: artifacts.ModelArtifacts, merged: Path | None, threads: int,
             extra: dict[str, Path] | None = None) -> dict[str, tuple[dict, list[Path]]]:
    """label -> (worker engine spec, files loaded). The levers, each alone and combined."""
    from ortdecode.manifest import read_manifest

    base = engine_specs(art, "cpu", threads, ["ortdecode", "ctranslate2"], spinning=True)
    out = {}
    for label, (spec, files) in base.items():
        if not label.startswith("ortdecode"):
            continue
        layout = read_manifest(spec["path"]).decoder_layouts[0]
        out[f"{label}, {layout} (default)"] = (spec, files)
        if layout != "with-past":  # its weights live outside the graph files: nothing for share_weights to map
            out[f"{label}, {layout}, shared weights"] = ({**spec, "share_weights": True}, files)
        if label == "ortdecode":
            out[f"{label}, {layout}, prepacking off"] = ({**spec, "session_config": NO_PREPACK}, files)
            out[f"{label}, {layout}, arena off"] = ({**spec, "cpu_mem_arena": False}, files)
    if merged is not None:
        spec, _ = base["ortdecode"]
        merged_spec = {**spec, "path": str(merged), "decoder_layout": "merged"}
        files = loaded_files(merged, "merged")
        out["ortdecode, merged"] = (merged_spec, files)
        out["ortdecode, merged, prepacking off"] = ({**merged_spec, "session_config": NO_PREPACK}, files)
        out["ortdecode, merged, shared weights"] = ({**merged_spec, "share_weights": True}, files)
    for name, folder in (extra or {}).items():
        spec, _ = base["ortdecode"]
        out[f"ortdecode, {name}"] = ({**spec, "path": str(folder)}, loaded_files(folder))
    out.update({label: value for label, value in base.items() if label.startswith("CTranslate2")})
    return out


def markdown(result: dict) -> str:
    lines = [f"# ortdecode memory, lever by lever ({result['model']})", "",
             f"Measured {result['started']} ({result['machine_note']}), commit {result['versions'].get('commit')}, "
             f"{result['rounds']} rounds, each variant in a fresh process: imports, load, a cold one-token generation "
             "(batch 1), one greedy batch-8 generation of 64 tokens. Median [min-max] over rounds. Command: "
             f"`{result['command']}`.", "",
             "| variant | weights on disk MiB | RSS after imports MiB | RSS after load MiB | peak RSS MiB | "
             "peak / CTranslate2's | RSS at the end: anonymous + file-backed MiB | load s | first token ready s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, v in result["variants"].items():
        peer = result["variants"].get("CTranslate2 int8" if "int8" in label else "CTranslate2 float32")
        ratio = (f"{v['peak_rss_mib']['median'] / peer['peak_rss_mib']['median']:.2f}"
                 if peer and not label.startswith("CTranslate2") else "")
        lines.append(f"| {label} | {v['weights_on_disk_mib']:.0f} | {_spread(v['rss_after_imports_mib'], 0)} | "
                     f"{_spread(v['rss_after_load_mib'], 0)} | {_spread(v['peak_rss_mib'], 0)} | {ratio} | "
                     f"{v['rss_end_anon_mib']['median']:.0f} + {v['rss_end_file_mib']['median']:.0f} | "
                     f"{_spread(v['load_s'], 2)} | "
                     f"{_spread(v['first_token_ready_s'], 2)} |")
    if result.get("failures"):
        lines += ["", "Rounds that failed (left out above): " + "; ".join(result["failures"]) + "."]
    if result.get("speed_batches"):
        lines += ["", "Greedy step time (ms, 32 new tokens, one generation per round after the peak measurement; the "
                  "machine's load makes these rough: compare variants within a round):", "",
                  "| variant | " + " | ".join(f"batch {b}, rounds" for b in result["speed_batches"]) + " |",
                  "|---|" + "---:|" * len(result["speed_batches"])]
        for label, v in result["variants"].items():
            cells = []
            for b in result["speed_batches"]:
                rounds = (v.get(f"ms_per_step_batch_{b}") or {}).get("rounds", [])
                cells.append(", ".join("n/a" if x is None else f"{x:.1f}" for x in rounds))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="threads per engine (default: every core)")
    parser.add_argument("--only", nargs="+", default=None, help="variants whose label contains one of these words")
    parser.add_argument("--speed", nargs="*", type=int, default=[],
                        help="also time greedy steps (32 new tokens) at these batch sizes, per variant and round")
    parser.add_argument("--export", nargs="*", default=[], type=str,
                        help="NAME=FOLDER: also measure this export folder (the layout `auto` picks)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a variant's process may take")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count()
    art = artifacts.prepare("t5-small", ["fp32", "int8"], ["float32", "int8"])
    merged = artifacts.export_variant("t5-small", art.checkpoint, "merged")
    extra = {name: Path(folder) for name, folder in (item.split("=", 1) for item in args.export)}
    chosen = variants(art, merged, threads, extra)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if any(word in k for word in args.only)}
    vocab = min(art.vocab_size, len(art.vocabulary)) - 1
    load_sources = [make_sources(0, 1, vocab)[0].tolist()]
    peak_sources = [s.tolist() for s in make_sources(0, 8, vocab)]
    started, commit = dt.datetime.now(dt.timezone.utc), versions()
    loads = {label: [] for label in chosen}
    failures = []
    with tqdm(total=args.rounds * len(chosen), desc="memory", unit="process") as bar:
        for r in range(args.rounds):
            for label in _rotated(chosen, r):
                process = EngineProcess(label, threads, timeout=args.timeout)
                try:
                    load = process.request(cmd="load", engine=chosen[label][0], sources=load_sources,
                                           peak_sources=peak_sources, peak_new_tokens=64)
                    for batch in args.speed:  # the lever's cost in speed, same process, after the peak
                        timed = process.request(cmd="case", sources=[s.tolist() for s in make_sources(0, batch, vocab)],
                                                workload="greedy", new_tokens=32, repeats=1, seed=0)
                        total, first = timed["seconds"][0], timed["first_token_seconds"][0]
                        load[f"ms_per_step_batch_{batch}"] = 1e3 * (total - first) / 31 if total > first else None
                    loads[label].append(load)
                except (RuntimeError, TimeoutError) as exc:  # that round lacks this variant; said in the results
                    failures.append(f"round {r + 1}, {label}: {exc}")
                    print(f"\n{failures[-1]}", file=sys.stderr)
                finally:
                    process.close()
                time.sleep(0.3)
                bar.update(1)
    result = {"started": started.isoformat(timespec="seconds"), "model": "t5-small", "rounds": args.rounds,
              "versions": commit, "command": "python -m benchmarks.memory " + " ".join(argv or sys.argv[1:]),
              "machine_note": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end: seconds are "
                              "taken under load, RSS is not affected",
              "speed_batches": args.speed, "failures": failures,
              "variants": {label: {**{key: spread([load[key] for load in runs]) for key in runs[0]},
                                   "weights_on_disk_mib": measure.weights_on_disk_mib(chosen[label][1]),
                                   "spec": chosen[label][0]}
                           for label, runs in loads.items() if runs}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"memory-{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"memory-{args.tag}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
