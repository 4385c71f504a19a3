"""The attention fusion alone: the with-past decoder graph with and without `export/attention_fusion.py`.

For each export variant (float32, int8) of the t5-small-shaped benchmark model, both decoders (an export
made with `fuse_attention=False` beside the default one, both cached in benchmarks/work/) run the same
random feeds in one process, in turns, on ONNX Runtime's CPU provider: a self cache of `past` steps, an
encoder of 23 positions, one row with left-padded self cache and padded encoder positions (as continuous
batching makes them). Reports max |fused - unfused| over every output, and ms per decoder step (best of
`--rounds` rounds of `--runs` runs each, the two graphs alternating) with the fused/unfused ratio.

    python -m benchmarks.attention_fusion [--variants fp32 int8] [--rounds 5] [--runs 20] [--threads 2]
        [--tag attention-fusion]

Writes benchmarks/results/<tag>.json, .md and .png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import artifacts
from . import graph_pair
from .graph_pair import best_ms, header, ratio_plot, session

PROG = "python -m benchmarks.attention_fusion"
SHAPES = [(1, 40), (16, 40), (32, 60), (128, 60)]  # (rows, past self-attention length)
ENCODER_LENGTH = 23


def decoder_feeds(manifest, rows: int, past: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One decoding step's inputs; row 1 (when there is one) has 3 padded cache columns and 5 padded encoder ones."""
    names = manifest.names
    decoder_mask = np.ones((rows, past + 1), np.int64)
    encoder_mask = np.ones((rows, ENCODER_LENGTH), np.int64)
    if rows > 1:
        decoder_mask[1, :min(3, past)] = 0
        encoder_mask[1, -5:] = 0
    feeds = {names.decoder_input_ids: rng.integers(0, manifest.vocab_size, (rows, 1)),
             names.decoder_attention_mask: decoder_mask, names.decoder_encoder_attention_mask: encoder_mask}
    for layer in manifest.layers:
        for name, length in ((layer.past_self_key, past), (layer.past_self_value, past),
                             (layer.past_cross_key, ENCODER_LENGTH), (layer.past_cross_value, ENCODER_LENGTH)):
            feeds[name] = rng.standard_normal((rows, manifest.num_heads, length, manifest.d_kv)).astype(np.float32)
    return feeds


def measure_variant(variant: str, checkpoint: Path, args, progress) -> dict:
    from ortdecode.manifest import read_manifest

    folders = {"unfused": artifacts.export_variant("t5-small", checkpoint, f"{variant}-unfused"),
               "fused": artifacts.export_variant("t5-small", checkpoint, variant)}
    manifest = read_manifest(folders["fused"])
    graph = manifest.graphs["decoder_with_past"].file
    unfused, fused = (session(folders[k] / graph, args.threads) for k in ("unfused", "fused"))
    rng = np.random.default_rng(0)
    rows_out = []
    for rows, past in SHAPES:
        progress.set_postfix_str(f"{variant} rows {rows} past {past}")
        feeds = decoder_feeds(manifest, rows, past, rng)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(unfused.run(None, feeds), fused.run(None, feeds)))
        unfused_ms, fused_ms = best_ms([unfused, fused], feeds, args.rounds, args.runs)
        rows_out.append({"rows": rows, "past": past, "max_abs_diff": diff, "unfused_ms": round(unfused_ms, 3),
                         "fused_ms": round(fused_ms, 3), "ratio": round(fused_ms / unfused_ms, 3)})
        progress.update()
    return {"variant": variant, "fusion": manifest.export_options.get("attention_fusion"), "shapes": rows_out}


def markdown(result: dict) -> str:
    lines = [*header(result, "Attention fusion: with-past decoder step, fused vs unfused (CPU)"),
             "| variant | rows | past | unfused ms | fused ms | fused / unfused | max abs diff |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for v in result["variants"]:
        for s in v["shapes"]:
            lines.append(f"| {v['variant']} | {s['rows']} | {s['past']} | {s['unfused_ms']:.2f} | {s['fused_ms']:.2f} "
                         f"| {s['ratio']:.3f} | {s['max_abs_diff']:.1e} |")
    lines += ["", *(f"- {v['variant']}: {v['fusion']}" for v in result["variants"]), ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    def draw(ax) -> None:
        for v in result["variants"]:
            ax.plot([f"{s['rows']}x{s['past']}" for s in v["shapes"]], [s["ratio"] for s in v["shapes"]], "o-",
                    label=v["variant"])
        ax.set_xlabel("rows x past length")

    ratio_plot(path, draw, "fused / unfused step time", "with-past decoder step: attention fusion (lower is faster)")


def main(argv=None) -> None:
    graph_pair.main(PROG, __doc__, argv, runs=20, tag="attention-fusion", cases=len(SHAPES), unit="shape",
                    measure_variant=measure_variant, markdown=markdown, plot=plot)


if __name__ == "__main__":
    main()
