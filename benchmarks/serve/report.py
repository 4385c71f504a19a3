"""The serving benchmark's targets, Markdown report and plot."""

from __future__ import annotations

from pathlib import Path

TARGET_MODEL, TARGET_CONCURRENCY = "t5-small", 16


def _row(result: dict, model: str, system: str, concurrency: int) -> dict | None:
    rows = result["models"].get(model, {}).get("rows", [])
    return next((r for r in rows if (r["system"], r["concurrency"]) == (system, concurrency)), None)


def check_targets(result: dict) -> list[dict]:
    """The issue's targets (t5-small shape, CPU, concurrency 16); None where not measured."""
    m, c = TARGET_MODEL, TARGET_CONCURRENCY
    ours = _row(result, m, "ortdecode continuous", c)

    def ratio(peer: str):
        theirs = _row(result, m, peer, c)
        return ours["tokens_per_s"] / theirs["tokens_per_s"] if ours and theirs else None

    single = _row(result, m, "ortdecode continuous", 1)
    ttft = ours["ttft_p99_ms"] / single["ttft_p50_ms"] if ours and single else None
    steady = ours["ttft_steady_p99_ms"] / single["ttft_p50_ms"] if ours and single and "ttft_steady_p99_ms" in ours \
        else None
    targets = [("throughput >= 4x the one-at-a-time Optimum server", ratio("Optimum one-at-a-time"), 4.0, None),
               ("throughput >= 1.3x static batching", ratio("ortdecode static"), 1.3, None),
               ("p99 time to first token <= 3x the single-request time to first token (p50, 1 client)", ttft, None, 3.0),
               (f"the same, requests after the first wave (the {c} sent at the same instant left out)", steady, None,
                3.0)]
    return [{"target": f"{m}, concurrency {c}: {text}", "value": value, "minimum": low, "maximum": high,
             "met": None if value is None else (value >= low if low is not None else value <= high)}
            for text, value, low, high in targets]


def _fmt(value, digits=1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(result: dict, plot_name: str) -> str:
    s = result["settings"]
    lines = [f"# Serving benchmark ({result['date']})", "",
             f"Machine: {result['machine'].get('cpu', '?')}, {result['machine'].get('cpu_count')} cores; "
             f"commit {result['versions'].get('commit', '?')}. Closed loop, concurrency {s['concurrency']}, "
             f"max_new_tokens = min_new_tokens from {s['new_tokens'][0]} to {s['new_tokens'][1]} (steps of 8), "
             f"mixed input lengths; `ortdecode serve --max-batch-rows {s['max_batch_rows']}`. Time to first token: "
             "first streamed event (the Optimum app does not stream: its TTFT is its latency). CTranslate2 runs "
             "offline (no HTTP, one translate_batch per length).", "", f"![plot]({plot_name})", "", "## Targets", "",
             "| target | value | met |", "|---|---|---|"]
    for t in result["targets"]:
        bound = f">= {t['minimum']}" if t["minimum"] is not None else f"<= {t['maximum']}"
        lines.append(f"| {t['target']} ({bound}) | {_fmt(t['value'], 2)} | "
                     f"{'n/a' if t['met'] is None else 'yes' if t['met'] else 'NO'} |")
    for model, data in result["models"].items():
        lines += ["", f"## {model}", "", data["description"], "",
                  "| system | clients | requests | output tok/s | req/s | TTFT p50 ms | TTFT p99 ms | "
                  "TTFT p50 / p99 ms after the first wave | latency p50 ms | latency p99 ms |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in data["rows"]:
            steady = f"{_fmt(r.get('ttft_steady_p50_ms'))} / {_fmt(r.get('ttft_steady_p99_ms'))}" \
                if "ttft_steady_p99_ms" in r else "n/a"
            lines.append(f"| {r['system']} | {r['concurrency']} | {r['requests']} | {_fmt(r['tokens_per_s'])} | "
                         f"{_fmt(r['requests_per_s'], 2)} | {_fmt(r.get('ttft_p50_ms'))} | {_fmt(r.get('ttft_p99_ms'))} | "
                         f"{steady} | "
                         f"{_fmt(r.get('latency_p50_ms'))} | {_fmt(r.get('latency_p99_ms'))} |")
        mismatches = data["continuous_vs_static_text_mismatches"]
        if mismatches:
            lines += ["", "Texts that differ between continuous and static batching (greedy, must be 0): "
                      + ", ".join(f"{c} clients: {n}" for c, n in mismatches.items())]
        for system, error in data["errors"].items():
            lines += ["", f"**{system} did not run:** {error}"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.6 * len(models)), squeeze=False)
    for (ax_tps, ax_ttft), model in zip(axes, models):
        rows = result["models"][model]["rows"]
        for i, system in enumerate(dict.fromkeys(r["system"] for r in rows)):
            points = sorted((r["concurrency"], r) for r in rows if r["system"] == system)
            xs = [c for c, _ in points]
            ax_tps.plot(xs, [r["tokens_per_s"] for _, r in points], "-o", label=system, color=f"C{i}", markersize=4)
            if all("ttft_p99_ms" in r for _, r in points):
                ax_ttft.plot(xs, [r["ttft_p99_ms"] for _, r in points], "-o", label=system, color=f"C{i}", markersize=4)
            if all("ttft_steady_p99_ms" in r for _, r in points) and system.startswith("ortdecode"):
                ax_ttft.plot(xs, [r["ttft_steady_p99_ms"] for _, r in points], ":", color=f"C{i}",
                             label=f"{system}, after the first wave")
        for ax, ylabel in ((ax_tps, "output tokens/s"), (ax_ttft, "time to first token p99 (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(ylabel)
            ax.set_title(model, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"ortdecode serve, CPU ({result['machine'].get('cpu', '')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
