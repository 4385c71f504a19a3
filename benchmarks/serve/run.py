"""`python -m benchmarks.serve`: every system at every concurrency, on each model; results and plot."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from ortdecode import read_manifest

from .. import artifacts
from ..run import machine_info, versions
from . import report
from .load import closed_loop, make_requests, summarize
from .systems import Server, ctranslate2_offline, optimum_command, ortdecode_command

RESULTS = Path(__file__).resolve().parents[1] / "results"
SERVERS = ("ortdecode continuous", "ortdecode static", "Optimum one-at-a-time")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__)
    parser.add_argument("--models", nargs="+", default=["t5-small", "t5-numbers"], choices=["t5-small", "t5-numbers"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=0,
                        help="requests per concurrency level (default: max(32, 4 x concurrency))")
    parser.add_argument("--new-tokens", nargs=2, type=int, default=[8, 128], metavar=("LOW", "HIGH"))
    parser.add_argument("--max-batch-rows", type=int, default=16, help="ortdecode serve --max-batch-rows")
    parser.add_argument("--systems", nargs="+", default=[*SERVERS, "CTranslate2 offline"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the ortdecode servers (continuous, static), interleaved: both servers run "
                             "side by side and take turns at each concurrency, round after round; each row is the "
                             "median round, each ratio between them its per-round median [min-max]")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: benchmarks/results)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: t5-numbers, concurrency 1 and 4, 8 requests, 8 to 32 new tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.concurrency, args.requests, args.new_tokens = ["t5-numbers"], [1, 4], 8, [8, 32]
        args.rounds = 1
    if args.rounds < 1:
        parser.error("--rounds has to be at least 1")
    return args


INTERLEAVED = ("ortdecode continuous", "ortdecode static")
_PAUSE_S = 0.3  # between two systems' turns: the last one's threads stop spinning


def _median_round(rounds: list[dict]) -> dict:
    """One row from a system's rounds at one concurrency: the round of median throughput, with every round's
    summary under `rounds`."""
    median = sorted(rounds, key=lambda r: r["tokens_per_s"])[(len(rounds) - 1) // 2]
    return {**median, "rounds": rounds}


def bench_model(name: str, args, bar) -> dict:
    art = artifacts.prepare(name, ["fp32"], ["float32"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(art.checkpoint))
    export = art.exports["fp32"]
    if read_manifest(export).names.decoder_attention_mask is None:  # cached by a version without the mask
        (export / ".complete").unlink()
        export = artifacts.export_variant(name, art.checkpoint, "fp32")
    vocab = min(art.vocab_size, len(art.vocabulary))
    request_sets = {c: make_requests(tokenizer, args.requests or max(32, 4 * c), args.seed + c, tuple(args.new_tokens),
                                     vocab) for c in args.concurrency}
    rows, errors, texts = [], {}, {}
    commands = {"ortdecode continuous": (ortdecode_command(export, True, args.max_batch_rows), True),
                "ortdecode static": (ortdecode_command(export, False, args.max_batch_rows), True),
                "Optimum one-at-a-time": (optimum_command(art.name, art.checkpoint), False)}

    def measure(system: str, server: Server, concurrency: int, warm: bool) -> dict:
        _, streaming = commands[system]
        requests = request_sets[concurrency]
        if warm:
            closed_loop(server.url, streaming, requests[:concurrency], concurrency)
        bar.set_postfix_str(f"{name}: {system}, {concurrency} clients")
        answers, wall = closed_loop(server.url, streaming, requests, concurrency, lambda: bar.update(1))
        texts.setdefault((system, concurrency), []).append([a.text for a in answers])
        return summarize(answers, wall, first_wave=concurrency)

    # The two ortdecode servers side by side, taking turns (the order rotating), `rounds` times: their ratio is
    # then measured on the same machine state. The Optimum app runs once: its target's margin is far above
    # the noise, and a round of it takes minutes.
    interleaved = [s for s in INTERLEAVED if s in args.systems]
    servers: dict[str, Server] = {}
    with contextlib.ExitStack() as stack:
        for system in interleaved:
            try:
                servers[system] = stack.enter_context(Server(commands[system][0]))
            except Exception as exc:  # a system that cannot run is reported, not fatal
                errors[system] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
                print(f"[{name}] {system} failed: {errors[system]}", file=sys.stderr, flush=True)
        rounds = {(system, c): [] for system in servers for c in request_sets}
        order = list(servers)
        for number in range(args.rounds):
            for concurrency in request_sets:
                for system in order:
                    time.sleep(_PAUSE_S)
                    rounds[(system, concurrency)].append(measure(system, servers[system], concurrency, number == 0))
                order = order[1:] + order[:1]
    rows += [{"system": system, "concurrency": c, **_median_round(found)} for (system, c), found in rounds.items()]
    for system in [s for s in SERVERS if s in args.systems and s not in INTERLEAVED]:
        try:
            with Server(commands[system][0]) as server:
                for concurrency in request_sets:
                    rows.append({"system": system, "concurrency": concurrency,
                                 **measure(system, server, concurrency, True)})
        except Exception as exc:  # a system that cannot run is reported, not fatal
            errors[system] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
            print(f"[{name}] {system} failed: {errors[system]}", file=sys.stderr, flush=True)
    if "CTranslate2 offline" in args.systems:
        for concurrency, requests in request_sets.items():
            try:
                rows.append({"system": "CTranslate2 offline", "concurrency": concurrency,
                             **ctranslate2_offline(art.ctranslate2["float32"], tokenizer, requests)})
            except Exception as exc:
                errors["CTranslate2 offline"] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
            bar.update(len(requests))
    # Continuous and static batching must give every request the same greedy text.
    mismatches = {c: sum(a != b for continuous, static in zip(texts[("ortdecode continuous", c)],
                                                               texts[("ortdecode static", c)])
                         for a, b in zip(continuous, static))
                  for c in args.concurrency if ("ortdecode continuous", c) in texts and ("ortdecode static", c) in texts}
    return {"description": art.description, "export": str(export), "rows": rows, "errors": errors,
            "continuous_vs_static_text_mismatches": mismatches}


def main(argv=None) -> None:
    args = parse_args(argv)
    per_level = {c: args.requests or max(32, 4 * c) for c in args.concurrency}
    runs = sum(args.rounds if system in INTERLEAVED else 1 for system in args.systems)
    total = len(args.models) * runs * sum(per_level.values())
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": "cpu",
              "machine": machine_info("cpu"), "versions": versions(),
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "models": {}}
    with tqdm(total=total, desc="serve benchmark", unit="req", file=sys.stderr) as bar:
        for name in args.models:
            result["models"][name] = bench_model(name, args, bar)
    result["targets"] = report.check_targets(result)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("serve-quick" if args.quick else "serve-latest")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    report.plot(result, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(report.markdown(result, stem.with_suffix(".png").name))
    print(f"wrote {stem}.md, .json and .png", file=sys.stderr)
