"""Turn a benchmark result into the targets check, a Markdown report and a plot.

Every measured quantity is a spread over the run's rounds: {"median", "min", "max", "rounds"}. A target
counts as met only when its worst round clears it (the min of a ">=" ratio, the max of a "<=" ratio)."""

from __future__ import annotations

from pathlib import Path

MODEL = "t5-small"
# (description, workload, batch, peer, minimum ortdecode/peer tokens-per-second ratio): issue 1's targets
PEER_TARGETS = [
    ("greedy, batch 1: >= 2.0x transformers", "greedy", 1, "transformers", 2.0),
    ("greedy, batch 1: >= 1.15x Optimum", "greedy", 1, "Optimum", 1.15),
    ("greedy, batch 8: >= 1.5x Optimum", "greedy", 8, "Optimum", 1.5),
    ("beam 4, batch 1: >= 2.0x transformers", "beam 4", 1, "transformers", 2.0),
    ("beam 4, batch 1: >= 1.3x Optimum", "beam 4", 1, "Optimum", 1.3),
]
CT2 = ("CTranslate2 float32", "CTranslate2 int8")


def _rows(result: dict, model: str = MODEL) -> list[dict]:
    return result["models"].get(model, {}).get("rows", [])


def _row(result: dict, case: str, engine: str, model: str = MODEL) -> dict | None:
    return next((r for r in _rows(result, model) if (r["case"], r["engine"]) == (case, engine)), None)


def _target(description: str, spread: dict | None, bound: float, at_least: bool) -> dict:
    if spread is None:
        return {"target": description, "bound": bound, "at_least": at_least, "met": None}
    worst = spread["min"] if at_least else spread["max"]
    return {"target": description, "bound": bound, "at_least": at_least, "median": spread["median"],
            "min": spread["min"], "max": spread["max"], "met": worst >= bound if at_least else worst <= bound}


def check_targets(result: dict) -> list[dict]:
    """Issue 12's CPU targets (and issue 1's against transformers and Optimum), each from the worst round."""
    if result["device"] != "cpu":
        return []
    new_tokens = result["settings"]["new_tokens"]
    targets = []
    workloads, batches = result["settings"]["workloads"], result["settings"]["batches"]
    for peer in CT2:
        ours = "ortdecode int8" if "int8" in peer else "ortdecode"
        for workload in workloads:
            for batch in batches:
                row = _row(result, f"{workload}/{batch}/{new_tokens}", peer)
                targets.append(_target(f"{workload}, batch {batch}: {ours} >= 1.0x {peer} tokens/s",
                                       row and row.get("speedup"), 1.0, True))
        for batch in batches:
            row = _row(result, f"greedy/{batch}/{new_tokens}", peer)
            targets.append(_target(f"time to first token, batch {batch}: {ours} <= {peer} (ratio of ms)",
                                   row and row.get("ttft_ratio"), 1.0, False))
        loads = result["models"].get(MODEL, {}).get("loads", {}).get(peer, {})
        targets.append(_target(f"peak RSS (load + greedy batch 8): {ours} <= 1.25x {peer}",
                               loads.get("peak_rss_mib_ratio"), 1.25, False))
        targets.append(_target(f"load time (folder to first token ready): {ours} <= {peer} (ratio of seconds)",
                               loads.get("first_token_ready_s_ratio"), 1.0, False))
    row = _row(result, f"greedy/1/{new_tokens}", "ortdecode")
    targets.append(_target("greedy, batch 1: ortdecode >= 0.80 of the memory roofline",
                           row and row.get("memory_roofline"), 0.80, True))
    for description, workload, batch, peer, minimum in PEER_TARGETS:
        row = _row(result, f"{workload}/{batch}/{new_tokens}", peer)
        targets.append(_target(description, row and row.get("speedup"), minimum, True))
    accuracy = result["models"].get("t5-numbers", {}).get("int8_accuracy")
    if accuracy:
        drop = max(100 * (accuracy["fp32"][t]["exact_match"] - accuracy["int8"][t]["exact_match"])
                   for t in accuracy["fp32"])
        targets.append(_target("t5-numbers int8 held-out exact match within 1 point of float32 (largest drop)",
                               {"median": drop, "min": drop, "max": drop}, 1.0, False))
    return targets


def _fmt(value, digits=2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _spread(spread: dict | None, digits=2) -> str:
    if not spread:
        return ""
    return f"{spread['median']:.{digits}f} [{spread['min']:.{digits}f}-{spread['max']:.{digits}f}]"


def markdown_targets(result: dict) -> str:
    if not result.get("targets"):
        return ""
    lines = ["| target | median [min-max] over rounds | bound | result |", "|---|---:|---:|---|"]
    for t in result["targets"]:
        verdict = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        measured = _spread(t) if t["met"] is not None else "n/a"
        lines.append(f"| {t['target']} | {measured} | {'>=' if t['at_least'] else '<='} {t['bound']:g} | {verdict} |")
    return "\n".join(lines)


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(line) + " |"
                                                                            for line in lines]


def _grid(data: dict, kinds: tuple[str, ...], cell) -> list[str]:
    rows = [r for r in data["rows"] if r["kind"] in kinds]
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    cells = {(r["case"], r["engine"]): r for r in rows}
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows):
        first = cells[next((case, e) for e in engines if (case, e) in cells)]
        lines.append([first["workload"], str(first["batch"]), str(first["new_tokens"])] +
                     [cell(cells[(case, e)]) if (case, e) in cells else "" for e in engines])
    return _table(["workload", "batch", "new tokens"] + engines, lines)


def _speed_cell(r: dict) -> str:
    text = f"{r['tokens_per_s']['median']:.0f}"
    return text + (f" ({_spread(r['speedup'])}x)" if "speedup" in r else "")


def _step_cell(r: dict) -> str:
    step = r["ms_per_step"]["median"] if r["ms_per_step"] else None
    return f"{_fmt(step)} / {r['ttft_ms']['median']:.1f}"


def markdown(result: dict, plot_name: str) -> str:
    machine, versions, settings = result["machine"], result["versions"], result["settings"]
    where = machine.get("gpu") or machine.get("cpu", "unknown CPU")
    threads = settings["threads"] or "default"
    out = [f"# ortdecode benchmarks ({result['device'].upper()})", "",
           f"Measured {result['started']} on {where} ({machine.get('cpu_count')} CPU cores, "
           f"{machine.get('memory_gib', '?')} GiB; load average "
           f"{_fmt(machine.get('load_average_at_start', [None])[0])} "
           f"at the start, {_fmt(machine.get('load_average_at_end', [None])[0])} at the end), commit "
           f"{versions.get('commit')}; {settings['rounds']} independent rounds (fresh processes each), each case a "
           f"full-length warm-up then the median of {settings['repeats']} timed generations (the step-cost cases "
           f"against the generated length: one timed generation per round)"
           f"{' (QUICK smoke run: not a result)' if settings.get('quick') else ''}.", "",
           f"Threads, the same for every engine, each engine in a process of its own: {threads} threads; ONNX Runtime "
           f"(ortdecode, Optimum) intra_op_num_threads={threads}, inter_op 1, spin-waiting "
           + ("on (ortdecode: during a run, stopped when it ends, its default)" if settings["ort_spinning"] else "off")
           + f"; CTranslate2 intra_threads={threads}, inter_threads=1; "
           f"PyTorch set_num_threads({threads}); OMP/MKL/OPENBLAS_NUM_THREADS={threads} in every engine's process; "
           f"{settings['settle_s']} s pause before each engine's turn.", "",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "commit") + ".", "",
           "Measured in the same run: memory bandwidth " +
           ", ".join(f"{k} {v:.1f} GB/s" for k, v in result["memory_bandwidth_gbs"].items()) +
           ("; float32 GEMM " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in result["gemm_gflops"].items())
            if result.get("gemm_gflops") else "") + ".", "",
           f"![tokens/s by batch size, step cost by length, memory]({plot_name})", ""]
    if result.get("targets"):
        out += [f"## Targets ({MODEL} architecture, CPU; met only when the worst round clears the bound)", "",
                markdown_targets(result), ""]
    for model, data in result["models"].items():
        out += [f"## {model}", "", data["description"] + ".", "",
                "Tokens per second, median over rounds (higher is better); in brackets ortdecode's speed-up over "
                "that engine, median [min-max] of the per-round ratios (ortdecode int8 over int8 peers, float32 "
                "ortdecode over the others).", ""]
        out += _grid(data, ("grid",), _speed_cell)
        out += ["", "Milliseconds per decoder step (the steps after the first) / time to first token (ms), "
                "medians:", ""]
        out += _grid(data, ("grid",), _step_cell)
        if any(r["kind"] == "lengths" for r in data["rows"]):
            out += ["", "Step cost against the generated length, greedy (ms per step / time to first token ms; in "
                    "brackets ortdecode's step time over CTranslate2's, median [min-max]):", ""]
            out += _grid(data, ("lengths",), lambda r: _step_cell(r) + (f" ({_spread(r['step_ratio'])})"
                                                                        if r.get("step_ratio") else ""))
        if any(r["kind"] == "mixed" for r in data["rows"]):
            out += ["", "A batch of inputs of mixed lengths (5 to 200 tokens, log-normal, median 40), greedy, "
                    "tokens/s:", ""]
            out += _grid(data, ("mixed",), _speed_cell)
        rooflines = [r for r in data["rows"] if r["kind"] == "grid" and r["workload"] == "greedy"
                     and ("memory_roofline" in r or "flop_roofline" in r)]
        if rooflines:
            out += ["", "Rooflines, greedy: memory = decoder weight bytes per step x steps/s / memory bandwidth "
                    "(ortdecode); FLOP = FLOPs per step (weights and attention, mean over the steps) x steps/s / "
                    "GEMM rate (float32 engines). Median [min-max]:", ""]
            out += _table(["engine", "batch", "memory roofline", "FLOP roofline"],
                          [[r["engine"], str(r["batch"]), _spread(r.get("memory_roofline")),
                            _spread(r.get("flop_roofline"))] for r in rooflines])
            out += ["", "Decoder weight bytes per step: " +
                    ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in data["decoder_weight_bytes"].items()) + "."]
        if data.get("loads"):
            out += ["", "Load and memory per engine, each in a fresh process (median [min-max] over rounds): "
                    "import of the engine's library, load (folder to engine object), first token ready (load + a "
                    "cold one-token generation, batch 1), RSS after the imports and after the load, peak RSS "
                    "(VmHWM: load + one greedy batch-8 generation of 64 tokens); ratios are ortdecode's over the "
                    "engine's, per round.", ""]
            lines = []
            for label, e in data["loads"].items():
                lines.append([label, f"{e['weights_on_disk_mib']:.0f}", _spread(e["import_s"]), _spread(e["load_s"]),
                              _spread(e["first_token_ready_s"]) + (f" ({_spread(e['first_token_ready_s_ratio'])}x)"
                                                                   if "first_token_ready_s_ratio" in e else ""),
                              _spread(e["rss_after_imports_mib"], 0), _spread(e["rss_after_load_mib"], 0),
                              _spread(e["peak_rss_mib"], 0) + (f" ({_spread(e['peak_rss_mib_ratio'])}x)"
                                                               if "peak_rss_mib_ratio" in e else "")])
            out += _table(["engine", "weights on disk MiB", "import s", "load s", "first token ready s",
                           "RSS after imports MiB", "RSS after load MiB", "peak RSS MiB"], lines)
        if data.get("int8_accuracy"):
            acc = data["int8_accuracy"]
            out += ["", "Held-out exact match through ortdecode, greedy: " + "; ".join(
                f"{task}: float32 {100 * acc['fp32'][task]['exact_match']:.1f}%, int8 "
                f"{100 * acc['int8'][task]['exact_match']:.1f}%" for task in acc["fp32"]) + "."]
        for name, profile in data.get("profile", {}).items():
            out += ["", f"ONNX Runtime profile of ortdecode, {name}: {profile['model_run_ms']:.0f} ms in session runs, "
                    f"{profile['kernel_ms']:.0f} ms in kernels. Top ops by kernel time:", ""]
            out += _table(["op", "ms", "share"],
                          [[op["op"], f"{op['ms']:.1f}", f"{100 * op['share_of_kernel_time']:.1f}%"]
                           for op in profile["ops"]])
        out.append("")
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> None:
    """Per model: tokens/s by batch size per workload (bars: min-max over rounds), step cost by generated
    length, peak RSS and RSS after load per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for model, data in result["models"].items():
        workloads = dict.fromkeys(r["workload"] for r in data["rows"] if r["kind"] == "grid")
        panels += [(model, "workload", w) for w in workloads]
        panels += [(model, "lengths", None)] if any(r["kind"] == "lengths" for r in data["rows"]) else []
        panels += [(model, "memory", None)] if data.get("loads") else []
    columns = min(3, len(panels))
    rows_n = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows_n, columns, figsize=(4.8 * columns, 3.8 * rows_n), squeeze=False)
    all_engines = dict.fromkeys(r["engine"] for data in result["models"].values() for r in data["rows"])
    all_engines.update(dict.fromkeys(e for data in result["models"].values() for e in data.get("loads", {})))
    colors = {engine: f"C{i}" for i, engine in enumerate(all_engines)}  # one colour per engine, every panel
    for ax, (model, kind, workload) in zip(axes.flat, panels):
        data = result["models"][model]
        if kind == "workload":
            rows = [r for r in data["rows"] if r["kind"] == "grid" and r["workload"] == workload]
            for engine in dict.fromkeys(r["engine"] for r in rows):
                points = sorted((r["batch"], r["tokens_per_s"]) for r in rows if r["engine"] == engine)
                x, y = [b for b, _ in points], [s["median"] for _, s in points]
                err = [[s["median"] - s["min"] for _, s in points], [s["max"] - s["median"] for _, s in points]]
                ax.errorbar(x, y, yerr=err, fmt="-o" if engine.startswith("ortdecode") else "--s", label=engine,
                            markersize=4, color=colors[engine], capsize=2)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{model}: {workload}", fontsize=10)
            ax.set_xlabel("batch size")
            ax.set_ylabel("tokens/s (min-max over rounds)")
        elif kind == "lengths":
            rows = [r for r in data["rows"] if r["kind"] == "lengths"]
            for engine in dict.fromkeys(r["engine"] for r in rows):
                for batch, style in ((1, "-o"), (8, "--s")):
                    points = sorted((r["new_tokens"], r["ms_per_step"]["median"]) for r in rows
                                    if r["engine"] == engine and r["batch"] == batch and r["ms_per_step"])
                    ax.plot([n for n, _ in points], [m for _, m in points], style, color=colors[engine],
                            label=f"{engine}, batch {batch}", markersize=4)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{model}: step cost vs generated length, greedy", fontsize=10)
            ax.set_xlabel("generated tokens")
            ax.set_ylabel("ms per step")
        else:
            loads = data["loads"]
            labels = list(loads)
            positions = range(len(labels))
            ax.barh(positions, [loads[e]["peak_rss_mib"]["median"] for e in labels],
                    color=[colors[e] for e in labels], alpha=0.45, label="peak")
            ax.barh(positions, [loads[e]["rss_after_load_mib"]["median"] for e in labels],
                    color=[colors[e] for e in labels], label="after load")
            ax.set_yticks(list(positions), labels, fontsize=7)
            ax.set_title(f"{model}: RSS (MiB), load + greedy batch 8", fontsize=10)
            ax.set_xlabel("MiB")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    where = result["machine"].get("gpu") or result["machine"].get("cpu", "")
    fig.suptitle(f"ortdecode vs peers, {result['device'].upper()} ({where}), {result['settings']['new_tokens']} new "
                 f"tokens, {result['settings']['rounds']} rounds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
