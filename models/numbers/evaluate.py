"""Held-out exact match of t5-numbers, through ortdecode's ONNX path and through PyTorch.

Exact match: the decoded text equals the reference string exactly. Every task is measured with three
strategies on both engines: greedy, beam search with 4 beams, and sampling at temperature 0.7 with a
fixed seed (transformers' default top_k=50 applies to sampling, on both engines).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .data import example

STRATEGIES = {
    "greedy": dict(do_sample=False, num_beams=1),
    "beam 4": dict(do_sample=False, num_beams=4),
    "sampling t=0.7": dict(do_sample=True, temperature=0.7, seed=1234),
}
MAX_NEW_TOKENS = 32
BATCH = 250


def _exact_match(generate: Callable[[list[str], dict], list[str]], task: str, numbers: Sequence[int],
                 options: dict) -> dict:
    pairs = [example(task, n) for n in numbers]
    outputs: list[str] = []
    for start in range(0, len(pairs), BATCH):
        chunk = pairs[start:start + BATCH]
        outputs += generate([source for source, _ in chunk], {**options, "batch_start": start})
    wrong = [(source, target, output) for (source, target), output in zip(pairs, outputs) if output != target]
    return {"examples": len(pairs), "correct": len(pairs) - len(wrong),
            "exact_match": (len(pairs) - len(wrong)) / len(pairs), "errors": wrong[:5]}


def ortdecode_generate(generator) -> Callable[[list[str], dict], list[str]]:
    def generate(sources: list[str], options: dict) -> list[str]:
        options = dict(options)
        start = options.pop("batch_start")
        if options.get("seed") is not None:
            options["seed"] += start  # a different, fixed stream for every batch
        return generator.generate(sources, max_new_tokens=MAX_NEW_TOKENS, **options).texts
    return generate


def pytorch_generate(model, tokenizer) -> Callable[[list[str], dict], list[str]]:
    import torch

    def generate(sources: list[str], options: dict) -> list[str]:
        options = dict(options)
        start = options.pop("batch_start")
        seed = options.pop("seed", None)
        if seed is not None:
            torch.manual_seed(seed + start)
        encoded = tokenizer(sources, return_tensors="pt", padding=True)
        with torch.no_grad():
            sequences = model.generate(**encoded, max_new_tokens=MAX_NEW_TOKENS, **options)
        return tokenizer.batch_decode(sequences, skip_special_tokens=True)
    return generate


def evaluate(engines: dict[str, Callable], held_out: dict[str, list[int]], progress=None) -> dict:
    """engines: name -> generate function. Returns results[engine][strategy][task]."""
    results: dict = {}
    for engine, generate in engines.items():
        for strategy, options in STRATEGIES.items():
            for task, numbers in held_out.items():
                results.setdefault(engine, {}).setdefault(strategy, {})[task] = _exact_match(
                    generate, task, numbers, options)
                if progress is not None:
                    progress.update(1)
    return results


def accuracy_table(results: dict) -> str:
    """Markdown: one row per (engine, strategy), one column per task, exact match in percent."""
    engines = list(results)
    strategies = list(results[engines[0]])
    tasks = list(results[engines[0]][strategies[0]])
    lines = ["| engine | decoding | " + " | ".join(tasks) + " |", "|---|---|" + "---:|" * len(tasks)]
    for engine in engines:
        for strategy in strategies:
            cells = [f"{100 * results[engine][strategy][t]['exact_match']:.1f}%" for t in tasks]
            lines.append(f"| {engine} | {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agreement(results: dict, a: str, b: str) -> float:
    """Largest exact-match gap between two engines over all strategies and tasks (percentage points)."""
    gaps = [abs(results[a][s][t]["exact_match"] - results[b][s][t]["exact_match"]) * 100
            for s in results[a] for t in results[a][s]]
    return float(np.max(gaps))
