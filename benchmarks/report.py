"""Turn a benchmark result into the targets check, a Markdown report and a plot."""

from __future__ import annotations

from pathlib import Path

# (description, model, workload, batch, peer engine, minimum ortdecode/peer tokens-per-second ratio)
SPEED_TARGETS = [
    ("greedy, batch 1: >= 2.0x transformers", "t5-small", "greedy", 1, "transformers", 2.0),
    ("greedy, batch 1: >= 1.15x Optimum", "t5-small", "greedy", 1, "Optimum", 1.15),
    ("greedy, batch 1: >= 1.0x CTranslate2 float32", "t5-small", "greedy", 1, "CTranslate2 float32", 1.0),
    ("greedy, batch 8: >= 1.5x Optimum", "t5-small", "greedy", 8, "Optimum", 1.5),
    ("greedy, batch 8: >= 1.2x CTranslate2 float32", "t5-small", "greedy", 8, "CTranslate2 float32", 1.2),
    ("beam 4, batch 1: >= 2.0x transformers", "t5-small", "beam 4", 1, "transformers", 2.0),
    ("beam 4, batch 1: >= 1.3x Optimum", "t5-small", "beam 4", 1, "Optimum", 1.3),
]
INT8_TARGETS = [
    ("int8 greedy, batch 1: >= 1.0x CTranslate2 int8", "t5-small", "greedy", 1, "CTranslate2 int8", 1.0),
    ("int8 greedy, batch 8: >= 1.0x CTranslate2 int8", "t5-small", "greedy", 8, "CTranslate2 int8", 1.0),
]


def _row(result: dict, model: str, workload: str, batch: int, engine: str) -> dict | None:
    rows = result["models"].get(model, {}).get("rows", [])
    return next((r for r in rows if (r["workload"], r["batch"], r["engine"]) == (workload, batch, engine)), None)


def check_targets(result: dict) -> list[dict]:
    """The issue's CPU targets, each with the measured value and whether it was met (None: not measured)."""
    if result["device"] != "cpu":
        return []
    targets = []
    for description, model, workload, batch, peer, minimum in SPEED_TARGETS + INT8_TARGETS:
        ours_name = "ortdecode int8" if "int8" in peer else "ortdecode"
        ours, theirs = _row(result, model, workload, batch, ours_name), _row(result, model, workload, batch, peer)
        value = ours["tokens_per_s"] / theirs["tokens_per_s"] if ours and theirs else None
        targets.append({"target": description, "value": value, "minimum": minimum,
                        "met": None if value is None else value >= minimum})
    roofline = _row(result, "t5-small", "greedy", 1, "ortdecode")
    value = roofline.get("roofline_ratio") if roofline else None
    targets.append({"target": "greedy, batch 1: roofline ratio >= 0.75", "value": value, "minimum": 0.75,
                    "met": None if value is None else value >= 0.75})
    rss = result["models"].get("t5-small", {}).get("peak_rss_mib", {})
    if rss.get("ortdecode") and rss.get("Optimum"):
        targets.append({"target": "peak RSS <= Optimum's (ratio ortdecode/Optimum <= 1)",
                        "value": rss["ortdecode"] / rss["Optimum"], "maximum": 1.0,
                        "met": rss["ortdecode"] <= rss["Optimum"]})
    accuracy = result["models"].get("t5-numbers", {}).get("int8_accuracy")
    if accuracy:
        drop = max(100 * (accuracy["fp32"][t]["exact_match"] - accuracy["int8"][t]["exact_match"])
                   for t in accuracy["fp32"])
        targets.append({"target": "t5-numbers int8 held-out exact match within 1 point of float32 (largest drop)",
                        "value": drop, "maximum": 1.0, "met": drop <= 1.0})
    return targets


def _fmt(value, digits=2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_targets(result: dict) -> str:
    if not result.get("targets"):
        return ""
    lines = ["| target | measured | result |", "|---|---:|---|"]
    for t in result["targets"]:
        verdict = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {verdict} |")
    return "\n".join(lines)


def markdown(result: dict, plot_name: str) -> str:
    machine = result["machine"]
    versions = result["versions"]
    where = machine.get("gpu") or machine.get("cpu", "unknown CPU")
    out = [f"# ortdecode benchmarks ({result['device'].upper()})", "",
           f"Measured {result['started']} on {where} ({machine.get('cpu_count')} CPU cores, "
           f"{machine.get('memory_gib', '?')} GiB), commit {versions.get('commit')}, "
           f"{result['settings']['new_tokens']} new tokens per sequence (min = max), median of "
           f"{result['settings']['repeats']} repetitions after a warm-up, {result['settings']['threads'] or 'default'} threads "
           "per engine.", "",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "commit") + ".", "",
           "Memory bandwidth measured in the same run: " +
           ", ".join(f"{k} {v:.1f} GB/s" for k, v in result["memory_bandwidth_gbs"].items()) + ".", "",
           f"![tokens/s by batch size]({plot_name})", ""]
    if result.get("targets"):
        out += ["## Targets (t5-small architecture, CPU, float32 unless noted, ratios within this run)", "",
                markdown_targets(result), ""]
    for model, data in result["models"].items():
        out += [f"## {model}", "", data["description"] + ".", ""]
        engines = list(dict.fromkeys(r["engine"] for r in data["rows"]))
        out += ["Tokens per second (higher is better); in brackets, ortdecode's speed-up over that engine "
                "(ortdecode int8 over int8 peers, float32 ortdecode over the others).", "",
                "| workload | batch | " + " | ".join(engines) + " |", "|---|---:|" + "---:|" * len(engines)]
        cells = {}
        for r in data["rows"]:
            cells[(r["workload"], r["batch"], r["engine"])] = r
        for workload, batch in dict.fromkeys((r["workload"], r["batch"]) for r in data["rows"]):
            row = []
            for engine in engines:
                r = cells.get((workload, batch, engine))
                ours = cells.get((workload, batch, "ortdecode int8" if "int8" in engine else "ortdecode"))
                if r is None:
                    row.append("")
                elif engine.startswith("ortdecode") or ours is None:
                    row.append(f"{r['tokens_per_s']:.0f}")
                else:
                    row.append(f"{r['tokens_per_s']:.0f} ({ours['tokens_per_s'] / r['tokens_per_s']:.2f}x)")
            out.append(f"| {workload} | {batch} | " + " | ".join(row) + " |")
        out += ["", "Milliseconds per decoder step (with-past steps) / time to first token (ms):", "",
                "| workload | batch | " + " | ".join(engines) + " |", "|---|---:|" + "---:|" * len(engines)]
        for workload, batch in dict.fromkeys((r["workload"], r["batch"]) for r in data["rows"]):
            row = []
            for engine in engines:
                r = cells.get((workload, batch, engine))
                row.append("" if r is None else f"{r['ms_per_step']:.2f} / {r['ttft_ms']:.1f}")
            out.append(f"| {workload} | {batch} | " + " | ".join(row) + " |")
        roofline = [r for r in data["rows"] if "roofline_ratio" in r and r["workload"] == "greedy"]
        if roofline:
            out += ["", "Roofline ratio of ortdecode, greedy (decoder weight bytes per step x steps/s / memory "
                    "bandwidth): " + ", ".join(f"{r['engine']} batch {r['batch']}: {r['roofline_ratio']:.2f}"
                                                for r in roofline) + ".",
                    "Decoder weight bytes per step: " +
                    ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in data["decoder_weight_bytes"].items()) + "."]
        if data.get("peak_rss_mib"):
            out += ["", "Peak RSS (fresh process: load + one greedy batch-8 generation): " +
                    ", ".join(f"{k} {_fmt(v, 0)} MiB" for k, v in data["peak_rss_mib"].items()) + "."]
        if data.get("int8_accuracy"):
            acc = data["int8_accuracy"]
            out += ["", "Held-out exact match through ortdecode, greedy: " + "; ".join(
                f"{task}: float32 {100 * acc['fp32'][task]['exact_match']:.1f}%, int8 "
                f"{100 * acc['int8'][task]['exact_match']:.1f}%" for task in acc["fp32"]) + "."]
        for name, profile in data.get("profile", {}).items():
            out += ["", f"ONNX Runtime profile of ortdecode, {name}: {profile['model_run_ms']:.0f} ms in session runs, "
                    f"{profile['kernel_ms']:.0f} ms in kernels. Top ops by kernel time:", "",
                    "| op | ms | share |", "|---|---:|---:|"]
            out += [f"| {op['op']} | {op['ms']:.1f} | {100 * op['share_of_kernel_time']:.1f}% |" for op in profile["ops"]]
        out.append("")
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(model, workload) for model, data in result["models"].items()
              for workload in dict.fromkeys(r["workload"] for r in data["rows"])]
    columns = min(3, len(panels))
    rows_n = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows_n, columns, figsize=(4.6 * columns, 3.6 * rows_n), squeeze=False)
    all_engines = dict.fromkeys(r["engine"] for data in result["models"].values() for r in data["rows"])
    colors = {engine: f"C{i}" for i, engine in enumerate(all_engines)}  # one colour per engine, every panel
    for ax, (model, workload) in zip(axes.flat, panels):
        rows = [r for r in result["models"][model]["rows"] if r["workload"] == workload]
        for engine in dict.fromkeys(r["engine"] for r in rows):
            points = sorted((r["batch"], r["tokens_per_s"]) for r in rows if r["engine"] == engine)
            style = "-o" if engine.startswith("ortdecode") else "--s"
            ax.plot([b for b, _ in points], [t for _, t in points], style, label=engine, markersize=4,
                    color=colors[engine])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{model}: {workload}", fontsize=10)
        ax.set_xlabel("batch size")
        ax.set_ylabel("tokens/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    where = result["machine"].get("gpu") or result["machine"].get("cpu", "")
    fig.suptitle(f"ortdecode vs peers, {result['device'].upper()} ({where}), {result['settings']['new_tokens']} new tokens",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
