"""The packed encoder alone: the encoder graph with and without `export/packed_encoder.py`.

For each export variant (float32, int8) of the t5-small-shaped benchmark model, both encoders (an export
made with `pack_encoder=False` beside the default one, both cached in benchmarks/work/) run the harness's
inputs (`benchmarks.run.make_sources`: 16 to 48 tokens; and its mixed batch: 5 to 200 tokens, log-normal) in
one process, in turns, on ONNX Runtime's CPU provider, each graph over the whole padded batch in one call.
Reports max |packed - unpacked| over the outputs at the real positions, and ms per encoder call (best of
`--rounds` rounds of `--runs` runs each, the two graphs alternating) with the packed/unpacked ratio.

    python -m benchmarks.packed_encoder [--variants fp32 int8] [--rounds 5] [--runs 5] [--threads 2]
        [--tag packed-encoder]

Writes benchmarks/results/<tag>.json, .md and .png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import artifacts
from .engines import padded
from . import graph_pair
from .graph_pair import best_ms, header, ratio_plot, session
from .run import make_mixed_sources, make_sources

PROG = "python -m benchmarks.packed_encoder"
BATCHES = [("batch 1", 1), ("batch 8", 8), ("batch 32", 32), ("mixed 32", 32)]


def batch_feeds(label: str, batch: int, vocab: int) -> dict[str, np.ndarray]:
    sources = make_mixed_sources(0, batch, vocab) if label.startswith("mixed") else make_sources(0, batch, vocab)
    ids, mask = padded(sources)
    return {"input_ids": ids, "attention_mask": mask}


def real_position_diff(unpacked: list[np.ndarray], packed: list[np.ndarray], mask: np.ndarray) -> float:
    """max |difference| at the real positions: hidden states [rows, positions, d], cross cache [rows, heads, positions, d_kv]."""
    real = mask.astype(bool)
    pick = lambda a: a[real] if a.ndim == 3 else a.transpose(0, 2, 1, 3)[real]  # noqa: E731
    return max(float(np.abs(pick(a) - pick(b)).max()) for a, b in zip(unpacked, packed))


def measure_variant(variant: str, checkpoint: Path, args, progress) -> dict:
    from ortdecode.manifest import read_manifest

    folders = {"unpacked": artifacts.export_variant("t5-small", checkpoint, f"{variant}-unpacked"),
               "packed": artifacts.export_variant("t5-small", checkpoint, variant)}
    manifest = read_manifest(folders["packed"])
    graph = manifest.graphs["encoder"].file
    unpacked, packed = (session(folders[k] / graph, args.threads) for k in ("unpacked", "packed"))
    rows_out = []
    for label, batch in BATCHES:
        progress.set_postfix_str(f"{variant} {label}")
        feeds = batch_feeds(label, batch, manifest.vocab_size)
        mask = feeds["attention_mask"]
        diff = real_position_diff(unpacked.run(None, feeds), packed.run(None, feeds), mask)
        unpacked_ms, packed_ms = best_ms([unpacked, packed], feeds, args.rounds, args.runs)
        rows_out.append({"batch": label, "positions": int(mask.size), "real_tokens": int(mask.sum()),
                         "max_abs_diff": diff, "unpacked_ms": round(unpacked_ms, 2), "packed_ms": round(packed_ms, 2),
                         "ratio": round(packed_ms / unpacked_ms, 3)})
        progress.update()
    return {"variant": variant, "packing": manifest.export_options.get("packed_encoder"), "batches": rows_out}


def markdown(result: dict) -> str:
    lines = [*header(result, "Packed encoder: encoder call, packed vs unpacked (CPU)",
                     "t5-small-shaped random model; the whole padded batch in one call (the runner's length groups "
                     "not used)."),
             "| variant | inputs | positions | real tokens | unpacked ms | packed ms | packed / unpacked "
             "| max abs diff (real positions) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for v in result["variants"]:
        for b in v["batches"]:
            lines.append(f"| {v['variant']} | {b['batch']} | {b['positions']} | {b['real_tokens']} | "
                         f"{b['unpacked_ms']:.1f} | {b['packed_ms']:.1f} | {b['ratio']:.3f} | {b['max_abs_diff']:.1e} |")
    lines += ["", "int8: the packed graph's dynamic quantization takes its ranges from the real tokens only, so its "
                  "outputs differ from the unpacked graph's, whose ranges include the padding.", "",
              *(f"- {v['variant']}: {v['packing']}" for v in result["variants"]), ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    def draw(ax) -> None:
        for v in result["variants"]:
            ax.plot([b["batch"] for b in v["batches"]], [b["ratio"] for b in v["batches"]], "o-", label=v["variant"])
        first = result["variants"][0]["batches"]
        ax.plot([b["batch"] for b in first], [b["real_tokens"] / b["positions"] for b in first], "k--", lw=0.8,
                label="real tokens / positions")

    ratio_plot(path, draw, "packed / unpacked encoder time", "encoder call: packed tokens (lower is faster)")


def main(argv=None) -> None:
    graph_pair.main(PROG, __doc__, argv, runs=5, tag="packed-encoder", cases=len(BATCHES), unit="batch",
                    measure_variant=measure_variant, markdown=markdown, plot=plot)


if __name__ == "__main__":
    main()
