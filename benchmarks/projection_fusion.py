"""The projection fusion alone: encoder and with-past decoder with and without `export/projection_fusion.py`.

On the float32 export of the t5-small-shaped benchmark model (int8 exports keep their quantized projections
apart: see the pass), the default export and one made with `fuse_projections=False` (both cached in
benchmarks/work/) run the same inputs in one process, in turns, on ONNX Runtime's CPU provider: the encoder
on the packed-encoder benchmark's batches (1, 8 and 32 inputs of 16 to 48 tokens, 32 of 5 to 200), the
decoder on the attention-fusion benchmark's steps (1 to 128 rows, left-padded). Reports max |fused - separate|
over every output, and ms per call (best of `--rounds` rounds of `--runs` runs each, the two graphs
alternating) with the fused/separate ratio. Then both exports generate
through ortdecode (greedy, 64 new tokens, inputs of 40 random tokens, batch 1, 8 and 32), in pairs whose order
alternates, `--rounds` x 4 pairs: the median [min-max] of the per-pair time ratios, fused / separate; the same
for the embedded model (t5-numbers, its checkpoint exported both ways, default layout).

    python -m benchmarks.projection_fusion [--rounds 5] [--runs 10] [--threads 2]
        [--tag projection-fusion]

Writes benchmarks/results/<tag>.json, .md and .png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import artifacts
from . import graph_pair
from .attention_fusion import SHAPES, decoder_feeds
from .graph_pair import best_ms, header, ratio_plot, session
from .packed_encoder import BATCHES, batch_feeds

PROG = "python -m benchmarks.projection_fusion"
GENERATION_BATCHES = (1, 8, 32)


def cases(manifest) -> list[tuple[str, str, dict]]:
    """(graph role, label, feeds) for every measured call."""
    rng = np.random.default_rng(0)
    encoder = [("encoder", label, batch_feeds(label, batch, manifest.vocab_size)) for label, batch in BATCHES]
    decoder = [("decoder_with_past", f"{rows} rows, past {past}", decoder_feeds(manifest, rows, past, rng))
               for rows, past in SHAPES]
    return encoder + decoder


def measure_variant(variant: str, checkpoint: Path, args, progress) -> dict:
    from ortdecode.manifest import read_manifest

    folders = {"separate": artifacts.export_variant("t5-small", checkpoint, f"{variant}-separate-projections"),
               "fused": artifacts.export_variant("t5-small", checkpoint, variant)}
    manifest = read_manifest(folders["fused"])
    sessions = {role: [session(folders[k] / manifest.graphs[role].file, args.threads) for k in ("separate", "fused")]
                for role in ("encoder", "decoder_with_past")}
    rows_out = []
    for role, label, feeds in cases(manifest):
        progress.set_postfix_str(f"{variant} {role} {label}")
        separate, fused = sessions[role]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(separate.run(None, feeds), fused.run(None, feeds)))
        separate_ms, fused_ms = best_ms([separate, fused], feeds, args.rounds, args.runs)
        rows_out.append({"graph": role, "case": label, "max_abs_diff": diff, "separate_ms": round(separate_ms, 3),
                         "fused_ms": round(fused_ms, 3), "ratio": round(fused_ms / separate_ms, 3)})
        progress.update()
    generation = [{"model": "t5-small", **row} for row in generation_ratios(folders, manifest.vocab_size, args,
                                                                               progress)]
    numbers, _ = artifacts.checkpoint_for("t5-numbers")  # the embedded model: small, where per-node costs count
    folders = {k: artifacts.export_variant("t5-numbers", numbers, v)
               for k, v in (("separate", f"{variant}-separate-projections"), ("fused", variant))}
    generation += [{"model": "t5-numbers", **row} for row in generation_ratios(
        folders, read_manifest(folders["fused"]).vocab_size, args, progress)]
    return {"variant": variant, "fusion": manifest.export_options.get("projection_fusion"), "cases": rows_out,
            "generation": generation}


def generation_ratios(folders: dict[str, Path], vocab: int, args, progress) -> list[dict]:
    """Greedy generation through ortdecode, both exports in alternating pairs: per batch the median [min-max]
    of fused / separate seconds."""
    import time

    import ortdecode

    generators = {k: ortdecode.load(folders[k], provider="cpu", threads=args.threads) for k in ("separate", "fused")}
    rng = np.random.default_rng(0)
    out = []
    for batch in GENERATION_BATCHES:
        progress.set_postfix_str(f"generation, batch {batch}")
        ids = rng.integers(3, vocab, (batch, 40))
        ids[:, -1] = 1
        options = {"input_ids": ids, "attention_mask": np.ones_like(ids), "max_new_tokens": 64, "min_new_tokens": 64}
        for generator in generators.values():
            generator.generate(**options)  # warm-up
        ratios = []
        for pair in range(args.rounds * 4):
            seconds = {}
            for key in (("separate", "fused") if pair % 2 == 0 else ("fused", "separate")):
                started = time.perf_counter()
                generators[key].generate(**options)
                seconds[key] = time.perf_counter() - started
            ratios.append(seconds["fused"] / seconds["separate"])
        out.append({"batch": batch, "pairs": len(ratios), "ratio_median": round(float(np.median(ratios)), 3),
                    "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3)})
        progress.update()
    return out


def markdown(result: dict) -> str:
    lines = [*header(result, "Projection fusion: encoder and decoder step, fused vs separate projections (CPU)"),
             "| variant | graph | case | separate ms | fused ms | fused / separate | max abs diff |",
             "|---|---|---|---:|---:|---:|---:|"]
    for v in result["variants"]:
        for c in v["cases"]:
            lines.append(f"| {v['variant']} | {c['graph']} | {c['case']} | {c['separate_ms']:.2f} | "
                         f"{c['fused_ms']:.2f} | {c['ratio']:.3f} | {c['max_abs_diff']:.1e} |")
    lines += ["", "Greedy generation through ortdecode (64 new tokens), fused / separate seconds per pair:", "",
              "| variant | model | batch | pairs | median [min-max] |", "|---|---|---:|---:|---|"]
    for v in result["variants"]:
        for g in v["generation"]:
            lines.append(f"| {v['variant']} | {g['model']} | {g['batch']} | {g['pairs']} | {g['ratio_median']:.3f} "
                         f"[{g['ratio_min']:.3f}-{g['ratio_max']:.3f}] |")
    lines.append("")
    for v in result["variants"]:
        lines += [f"- {v['variant']}: " + "; ".join(f"{file}: {text}" for file, text in (v["fusion"] or {}).items())]
    return "\n".join(lines + [""])


def plot(result: dict, path: Path) -> None:
    def draw(ax) -> None:
        for v in result["variants"]:
            ax.plot([f"{c['graph'].split('_')[0]}\n{c['case']}" for c in v["cases"]], [c["ratio"] for c in v["cases"]],
                    "o-", label=f"{v['variant']}, one call (best of rounds)")
            for model, marker in (("t5-small", "s"), ("t5-numbers", "^")):
                rows = [g for g in v["generation"] if g["model"] == model]
                ax.plot([f"generate {model}\nbatch {g['batch']}" for g in rows], [g["ratio_median"] for g in rows],
                        marker, label=f"{v['variant']} {model}, greedy generation (median pair)")
        ax.tick_params(axis="x", labelsize=6)

    ratio_plot(path, draw, "fused / separate time", "projection fusion (lower is faster)")


def main(argv=None) -> None:
    graph_pair.main(PROG, __doc__, argv, runs=10, tag="projection-fusion",
                    cases=len(BATCHES) + len(SHAPES) + 2 * len(GENERATION_BATCHES), unit="case",
                    measure_variant=measure_variant, markdown=markdown, plot=plot, variants=("fp32",))


if __name__ == "__main__":
    main()
