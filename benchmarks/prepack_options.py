"""ONNX Runtime's prepacking options against the load-time target: the export's two CPU sessions built in fresh
processes, in turns, with prepacking as ortdecode uses it and with the options that would shorten it.

- `default`: ortdecode's sessions (prepacking on, one after the other);
- `parallel`: `session.prepack.enable_parallel=1`;
- `saved`: the graphs saved once with their prepacked weights (`session.save_external_prepacked_constant_initializers`,
  into benchmarks/work/<export>-prepacked), then loaded from there.

Prints per option the median [min-max] over `--rounds` of the build seconds and the process's peak RSS (MiB).

    python -m benchmarks.prepack_options [--export benchmarks/work/t5-small-fp32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

GRAPHS = ("encoder_model", "decoder_with_past_model")
OPTIONS = {"default": {}, "parallel": {"session.prepack.enable_parallel": "1"}, "saved": {}}


def _build(folder: str, entries: dict[str, str], save_to: str | None = None) -> None:
    """In this process: build the sessions (saving them with their prepacked weights when `save_to` is given);
    prints {"seconds", "peak_rss_mib"} as JSON."""
    import resource
    import time

    import onnxruntime as ort

    started = time.perf_counter()
    for graph in GRAPHS:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
        options.log_severity_level = 3
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        if save_to:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.optimized_model_filepath = str(Path(save_to) / f"{graph}.onnx")
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             f"{graph}.onnx.data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             "1024")
            options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
        ort.InferenceSession(str(Path(folder) / f"{graph}.onnx"), options, providers=["CPUExecutionProvider"])
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _in_fresh_process(folder: str, entries: dict[str, str], save_to: str | None = None) -> dict:
    code = f"from benchmarks.prepack_options import _build; _build({folder!r}, {entries!r}, {save_to!r})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    import numpy as np

    parser = argparse.ArgumentParser(prog="python -m benchmarks.prepack_options", description=__doc__.splitlines()[0])
    parser.add_argument("--export", default="benchmarks/work/t5-small-fp32")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    saved = Path(args.export).resolve().parent / (Path(args.export).name + "-prepacked")
    saved.mkdir(exist_ok=True)
    _in_fresh_process(args.export, {}, save_to=str(saved))
    results = {name: [] for name in OPTIONS}
    for round_ in range(args.rounds):
        names = list(OPTIONS)[round_ % len(OPTIONS):] + list(OPTIONS)[:round_ % len(OPTIONS)]  # order rotates
        for name in names:
            folder = str(saved) if name == "saved" else args.export
            results[name].append(_in_fresh_process(folder, OPTIONS[name]))
    for name, runs in results.items():
        seconds = np.array([r["seconds"] for r in runs])
        rss = np.array([r["peak_rss_mib"] for r in runs])
        print(f"{name:8s} build {np.median(seconds):.3f} s [{seconds.min():.3f}-{seconds.max():.3f}], "
              f"peak RSS {np.median(rss):.0f} MiB [{rss.min():.0f}-{rss.max():.0f}]")


if __name__ == "__main__":
    main()
