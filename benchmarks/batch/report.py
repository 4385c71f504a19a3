"""Markdown and plot of a batch benchmark result (the dict `__main__` writes as JSON)."""

from __future__ import annotations

from pathlib import Path

BUCKETED, FILE_ORDER, CT2 = "ortdecode bucketed", "ortdecode file order", "CTranslate2 translate_iterable"


def targets(result: dict) -> list[tuple[str, float, str, bool]]:
    """(what, measured, target, met) for the issue's targets."""
    engines = result["throughput"]["engines"]
    speed = {name: row["inputs_per_s"] for name, row in engines.items()}
    rss = [row["peak_rss_mib"] for row in result["peak_rss"].values()]
    growth = rss[-1] / rss[0] - 1
    return [
        ("bucketed vs file order (throughput ratio)", speed[BUCKETED] / speed[FILE_ORDER], ">= 1.5",
         speed[BUCKETED] / speed[FILE_ORDER] >= 1.5),
        ("bucketed vs CTranslate2 float32 (throughput ratio)", speed[BUCKETED] / speed[CT2], ">= 1.0",
         speed[BUCKETED] / speed[CT2] >= 1.0),
        ("peak RSS growth, fewest to most inputs", growth, "<= 10%", growth <= 0.10),
    ]


def markdown(result: dict, plot_name: str) -> str:
    settings, tokens = result["settings"], result["throughput"]["input_tokens"]
    lines = [
        "# Batch jobs: length-bucketed token batching, file order, CTranslate2, Ray",
        "",
        f"Model: {result['model']}. Commit {result['versions'].get('commit')}; {result['machine'].get('cpu', '?')}, "
        f"{result['machine'].get('cpu_count')} cores (a shared machine: compare ratios within this run only).",
        "",
        f"{settings['inputs']} inputs of {tokens['min']} to {tokens['max']} tokens (median {tokens['median']}, mean "
        f"{tokens['mean']:.1f}, EOS included), exactly {settings['new_tokens']} new tokens each on every engine "
        f"(min = max, checked); {settings['threads']} intra-op threads per engine; token budget "
        f"{settings['batch_tokens']} padded input tokens per batch (ortdecode at most {settings['batch_size']} inputs "
        f"per batch; CTranslate2 `max_batch_size={settings['batch_tokens']}, batch_type=\"tokens\"`); file order: "
        f"batches of {settings['fixed_batch']} in input order. One timed pass per engine after a warm-up.",
        "",
        f"![plot]({plot_name})",
        "",
        "## Targets",
        "",
        "| what | measured | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for what, value, target, met in targets(result):
        shown = f"{value:+.1%}" if "RSS" in what else f"x{value:.2f}"
        lines.append(f"| {what} | {shown} | {target} | {'yes' if met else 'no'} |")
    lines += ["", "## Throughput", "", "| engine | seconds | inputs/s | generated tokens/s |", "| --- | --- | --- | --- |"]
    for name, row in result["throughput"]["engines"].items():
        lines.append(f"| {name} | {row['seconds']:.1f} | {row['inputs_per_s']:.1f} | {row['tokens_per_s']:.0f} |")
    lines += ["", "## Peak RSS of `ortdecode generate --input ... --output ...` (fresh process, 4 new tokens)", "",
              "| inputs | peak RSS (MiB) | seconds |", "| --- | --- | --- |"]
    for count, row in result["peak_rss"].items():
        lines.append(f"| {count} | {row['peak_rss_mib']:.0f} | {row['seconds']:.1f} |")
    if "ray" in result:
        ray = result["ray"]
        cli = ray["cli (2 threads)"]["seconds"]
        lines += ["", f"## Ray Data vs the plain CLI ({settings['ray_inputs']} inputs, same file, 16 shards for Ray)",
                  "", "Wall time from start to all outputs written: the CLI includes interpreter start and model "
                  "load; Ray includes actor start and model load per actor, not `ray.init` (shown apart).", "",
                  "| run | seconds | vs CLI |", "| --- | --- | --- |"]
        for name, row in ray.items():
            ratio = "" if name == "ray.init" else f"x{row['seconds'] / cli:.2f}"
            lines.append(f"| {name} | {row['seconds']:.1f} | {ratio} |")
    lines += ["", f"Total benchmark time {result['total_seconds']:.0f} s. Reproduce: `python -m benchmarks.batch"
              + (" --quick" if settings["quick"] else "") + "`.", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if "ray" in result else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    engines = result["throughput"]["engines"]
    axes[0].bar(range(len(engines)), [row["inputs_per_s"] for row in engines.values()], color="C0")
    axes[0].set_xticks(range(len(engines)), [name.replace(" ", "\n", 1) for name in engines], fontsize=8)
    axes[0].set_ylabel("inputs / s")
    axes[0].set_title(f"{result['settings']['inputs']} inputs, {result['settings']['new_tokens']} new tokens each")
    rss = result["peak_rss"]
    axes[1].bar(list(rss), [row["peak_rss_mib"] for row in rss.values()], color="C1")
    axes[1].set_xlabel("inputs")
    axes[1].set_ylabel("peak RSS (MiB)")
    axes[1].set_title("file mode, fresh process")
    if "ray" in result:
        runs = {name: row for name, row in result["ray"].items() if name != "ray.init"}
        axes[2].bar(range(len(runs)), [row["seconds"] for row in runs.values()], color="C2")
        axes[2].set_xticks(range(len(runs)), [name.replace(" x ", "\nx ") for name in runs], fontsize=8)
        axes[2].set_ylabel("seconds (lower is better)")
        axes[2].set_title(f"{result['settings']['ray_inputs']} inputs: CLI vs Ray Data")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
