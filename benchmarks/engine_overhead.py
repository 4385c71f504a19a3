"""The batch engine's cost against the loop it replaced, in one process, on the same export.

The loop before the engine (`Generator._decode`, revision 95b6e6e) is unpacked from git into a temporary
package and loaded beside the current one; both decode the same inputs in turn (rotating order), and the
median time ratio engine / old loop is printed per workload. The export must be one the old code reads:
one without the decoder attention mask, such as the embedded default model before its re-export.

    python -m benchmarks.engine_overhead [--model models/t5-numbers] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

import ortdecode

OLD_REVISION = "95b6e6e"
WORKLOADS = {
    "greedy, 1 input": (1, dict(max_new_tokens=32, min_new_tokens=32)),
    "greedy, 8 inputs": (8, dict(max_new_tokens=32, min_new_tokens=32)),
    "sampling, 8 inputs": (8, dict(max_new_tokens=32, min_new_tokens=32, do_sample=True, seed=0)),
    "beam 4, 4 inputs": (4, dict(max_new_tokens=32, min_new_tokens=32, num_beams=4)),
}
TEXTS = ["spell out: 4521", "to digits: four thousand five hundred twenty-one", "spell out: 98107",
         "ordinal: 21", "spell out: 600013", "to digits: twelve", "spell out: 7", "ordinal: 1000"]


def old_package(root: Path):
    """ortdecode as of OLD_REVISION, importable as `ortdecode_before`."""
    repository = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "archive", OLD_REVISION, "ortdecode"], cwd=repository, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    (root / "ortdecode").rename(root / "ortdecode_before")
    sys.path.insert(0, str(root))
    return importlib.import_module("ortdecode_before")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="export folder without decoder mask (default: embedded)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per session (1: the two "
                        "engines' spinning thread pools do not compete)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        before = old_package(Path(root))
        model = args.model or ortdecode.default_model_path()
        engines = {"old loop": before.load(model, provider="cpu", threads=args.threads),
                   "engine": ortdecode.load(model, provider="cpu", threads=args.threads)}
        print(f"{'workload':22s} {'old loop ms':>12s} {'engine ms':>10s} {'ratio':>7s}")
        for name, (inputs, options) in WORKLOADS.items():
            texts = TEXTS[:inputs]
            results = {k: g.generate(texts, **options) for k, g in engines.items()}  # warm-up, and same output
            assert np.array_equal(results["old loop"].sequences, results["engine"].sequences), name
            times = {k: [] for k in engines}
            for repeat in range(args.repeats):
                order = list(engines) if repeat % 2 == 0 else list(engines)[::-1]
                for key in order:
                    started = time.perf_counter()
                    engines[key].generate(texts, **options)
                    times[key].append(time.perf_counter() - started)
            old, new = (float(np.median(times[k])) for k in ("old loop", "engine"))
            print(f"{name:22s} {old * 1e3:12.1f} {new * 1e3:10.1f} {new / old:7.3f}")


if __name__ == "__main__":
    main()
