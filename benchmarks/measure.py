"""What the harness measures besides wall time: memory bandwidth, GEMM rate, bytes of decoder weights
and FLOPs per step, weights on disk, peak RSS of a command in a fresh interpreter (benchmarks.batch), and
ONNX Runtime's per-op profile."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def _median_seconds(work, repeats: int) -> float:
    work()  # warm-up: pages faulted in, BLAS threads started
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(threads: int, megabytes: int = 512, repeats: int = 7) -> dict:
    """DRAM read bandwidth (GB/s) of a buffer far larger than the caches, by three kernels: `threads`
    Python threads each taking the max of its share (NumPy releases the GIL), the same with sum, and a
    BLAS matrix-vector product (the decoder's own access pattern). The roofline uses the best of them."""
    data = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    chunks = np.array_split(data, threads)

    def threaded(reduce):
        def work():
            workers = [threading.Thread(target=reduce, args=(chunk,)) for chunk in chunks]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        return work

    matrix, vector = data.reshape(-1, 4096), np.ones(4096, dtype=np.float32)
    kernels = {f"max_{threads}_threads": threaded(np.max), f"sum_{threads}_threads": threaded(np.sum),
               "blas_gemv": lambda: matrix @ vector}
    return {name: data.nbytes / _median_seconds(work, repeats) / 1e9 for name, work in kernels.items()}


def gpu_bandwidth(megabytes: int = 2048, repeats: int = 20) -> float:
    """Device-to-device copy on the GPU, bytes read plus bytes written per second (GB/s), via PyTorch."""
    import torch

    source = torch.empty(megabytes * (1 << 20), dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        target.copy_(source)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * source.numel() / statistics.median(times) / 1e9


def decoder_weight_bytes(graph_path: Path) -> int:
    """Bytes of weights one decoder step reads: every initializer except embedding tables, of which a
    step reads only one row per sequence (Gather data)."""
    import onnx

    model = onnx.load(str(graph_path))
    gathered = {node.input[0] for node in model.graph.node if node.op_type == "Gather"}
    total = 0
    for tensor in model.graph.initializer:
        if tensor.name in gathered:
            continue
        total += onnx.numpy_helper.to_array(tensor).nbytes
    return total


def gemm_rates(threads: int, size: int = 1024, repeats: int = 7) -> dict:
    """Float32 GEMM rate (GFLOP/s) of a size x size x size product, by ONNX Runtime's MatMul (MLAS, the
    kernels ortdecode runs) with `threads` intra-op threads, and by NumPy's BLAS. The FLOP roofline uses
    the best of them."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
                              [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    flops = 2 * size ** 3
    return {f"onnxruntime_matmul_{threads}_threads": flops / _median_seconds(lambda: session.run(None, {"a": a}),
                                                                             repeats) / 1e9,
            "numpy_blas": flops / _median_seconds(lambda: a @ b, repeats) / 1e9}


def decoder_step_flops(config: dict, rows: int, past: int, source: int) -> float:
    """FLOPs of one with-past decoder step of a T5 (config.json) for `rows` rows: every weight matrix
    (self-attention Q/K/V/O, cross-attention Q/O, the feed-forward, the LM head; the cross K/V projections
    ran at the first step), plus the attention products over `past` + 1 self positions and `source`
    cross positions. 2 FLOPs per multiply-add."""
    d_model, inner = config["d_model"], config["num_heads"] * config["d_kv"]
    ff_matrices = 3 if "gated" in config.get("feed_forward_proj", "relu") else 2
    layers = config.get("num_decoder_layers") or config["num_layers"]
    per_layer = (4 * d_model * inner + 2 * d_model * inner + ff_matrices * d_model * config["d_ff"]
                 + 2 * inner * (past + 1) + 2 * inner * source)
    return 2.0 * rows * (layers * per_layer + d_model * config["vocab_size"])


def weights_on_disk_mib(files: list[Path]) -> float:
    """MiB of the model files an engine loads (graphs and their external data, or CTranslate2's model.bin)."""
    return sum(Path(f).stat().st_size for f in files) / 2**20


def peak_rss_in_subprocess(code: str, timeout: float = 900) -> float:
    """Run `code` in a fresh interpreter and return its peak resident set size in MiB.

    VmHWM (/proc/self/status) belongs to the new address space; getrusage's ru_maxrss would not do: Linux
    keeps it across execve, so a child forked from a large parent reports the parent's size."""
    wrapper = code + ("\nfor line in open('/proc/self/status'):\n"
                      "    if line.startswith('VmHWM:'): print('PEAK_RSS_KB=' + line.split()[1])")
    run = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout)
    for line in run.stdout.splitlines():
        if line.startswith("PEAK_RSS_KB="):
            return int(line.split("=")[1]) / 1024
    raise RuntimeError(f"RSS probe failed: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.stdout}")


def ort_op_profile(run_generation, profile_dir: Path, top: int = 12) -> dict:
    """Per-op-type time of one generation, from ONNX Runtime's profiler.

    `run_generation(session_options)` must build the engine with those options and generate once."""
    import onnxruntime as ort

    profile_dir.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(profile_dir / "ort")
    sessions = run_generation(options)
    totals: dict[str, float] = defaultdict(float)
    run_total = 0.0
    for session in sessions:
        trace_file = session.end_profiling()
        if not trace_file:
            continue
        trace = Path(trace_file)
        for event in json.loads(trace.read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                totals[event["args"]["op_name"]] += event["dur"]
            elif event.get("cat") == "Session" and event["name"] == "model_run":
                run_total += event["dur"]
        trace.unlink()
    kernel_total = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return {"model_run_ms": run_total / 1e3, "kernel_ms": kernel_total / 1e3,
            "ops": [{"op": op, "ms": us / 1e3, "share_of_kernel_time": us / kernel_total} for op, us in ranked]}
