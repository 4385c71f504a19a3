"""The serving benchmark's targets, Markdown report and plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TARGET_MODEL, TARGET_CONCURRENCY = "t5-small", 16


def _row(result: dict, model: str, system: str, concurrency: int) -> dict | None:
    rows = result["models"].get(model, {}).get("rows", [])
    return next((r for r in rows if (r["system"], r["concurrency"]) == (system, concurrency)), None)


def _rounds(row: dict | None) -> list[dict]:
    """A row's rounds (a system measured once: one)."""
    return [] if row is None else row.get("rounds", [row])


def _per_round(ours: dict | None, theirs: dict | None, value) -> list[float]:
    """value(our round, their round) for each round; a system measured once is compared with every round."""
    a, b = _rounds(ours), _rounds(theirs)
    if not a or not b:
        return []
    b = b if len(b) == len(a) else b[:1] * len(a)
    return [value(x, y) for x, y in zip(a, b)]


def check_targets(result: dict) -> list[dict]:
    """The issue's targets (t5-small shape, CPU, concurrency 16), each per round (the ortdecode servers take turns,
    round after round: benchmarks/serve/run.py): median, min and max over the rounds, met only when the worst
    round clears the bound; None where not measured."""
    m, c = TARGET_MODEL, TARGET_CONCURRENCY
    ours, single = _row(result, m, "ortdecode continuous", c), _row(result, m, "ortdecode continuous", 1)

    def tokens_ratio(x, y):
        return x["tokens_per_s"] / y["tokens_per_s"]

    targets = [("throughput >= 4x the one-at-a-time Optimum server",
                _per_round(ours, _row(result, m, "Optimum one-at-a-time", c), tokens_ratio), 4.0, None),
               ("throughput >= 1.3x static batching",
                _per_round(ours, _row(result, m, "ortdecode static", c), tokens_ratio), 1.3, None),
               ("p99 time to first token <= 3x the single-request time to first token (p50, 1 client)",
                _per_round(ours, single, lambda x, y: x["ttft_p99_ms"] / y["ttft_p50_ms"]), None, 3.0),
               (f"the same, requests after the first wave (the {c} sent at the same instant left out)",
                _per_round(ours, single, lambda x, y: x["ttft_steady_p99_ms"] / y["ttft_p50_ms"]), None, 3.0)]
    out = []
    for text, values, low, high in targets:
        worst = (min(values) if low is not None else max(values)) if values else None
        out.append({"target": f"{m}, concurrency {c}: {text}", "value": float(np.median(values)) if values else None,
                    "rounds": values, "minimum": low, "maximum": high,
                    "met": None if worst is None else (worst >= low if low is not None else worst <= high)})
    return out


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
             "offline (no HTTP, one translate_batch per length).", "",
             f"The two ortdecode servers run side by side and take turns at each concurrency, {s.get('rounds', 1)} "
             "round(s), the order rotating; their rows are the round of median throughput, and each target is its "
             "per-round median [min-max], met only when the worst round clears it. The Optimum app and "
             "CTranslate2 run once.", "", f"![plot]({plot_name})", "", "## Targets", "",
             "| target | median [min-max] over rounds | met |", "|---|---|---|"]
    for t in result["targets"]:
        bound = f">= {t['minimum']}" if t["minimum"] is not None else f"<= {t['maximum']}"
        spread = f" [{min(t['rounds']):.2f}-{max(t['rounds']):.2f}]" if len(t.get("rounds") or []) > 1 else ""
        lines.append(f"| {t['target']} ({bound}) | {_fmt(t['value'], 2)}{spread} | "
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
