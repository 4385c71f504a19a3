"""Rebuild the embedded default model from scratch: `python -m models.numbers` (from the repository root).

Steps: generate the data, train the tokenizer, train the model (PyTorch, CPU), export it with
ortdecode's exporter into models/t5-numbers, evaluate held-out exact match through ortdecode and
PyTorch, and write the model card, evaluation.json and plots. About 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "t5-numbers"
WORK = ROOT / "models" / "numbers" / "work"  # git-ignored: checkpoint and tokenizer before export
TOKENIZER_LINES = 30_000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.numbers", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=SHIPPED)
    parser.add_argument("--skip-training", action="store_true", help="reuse the checkpoint in models/numbers/work")
    args = parser.parse_args(argv)

    import torch

    from ortdecode_export import export_model

    import ortdecode

    from . import data, evaluate, tokenizer, train

    plan = train.TrainingPlan(steps=args.steps, seed=args.seed)
    shape = train.ModelShape()
    steps = tqdm(total=5, desc="t5-numbers", unit="step", position=0)
    started = time.time()

    steps.set_postfix_str("data + tokenizer")
    split = data.make_split(args.seed)
    examples = data.training_examples(args.seed, plan.steps * plan.batch_size, split.excluded)
    checkpoint = WORK / "checkpoint"
    tok = tokenizer.train_tokenizer([text for pair in examples[:TOKENIZER_LINES] for text in pair], WORK / "tokenizer")
    steps.update(1)

    steps.set_postfix_str("train")
    if args.skip_training:
        from transformers import T5ForConditionalGeneration

        model = T5ForConditionalGeneration.from_pretrained(checkpoint).eval()
        log = json.loads((WORK / "training_log.json").read_text())
    else:
        model = train.build_model(shape, tok, args.seed)
        log = train.train(model, tok, examples, plan)
        train.save(model, tok, checkpoint)
        (WORK / "training_log.json").write_text(json.dumps(log))
    steps.update(1)

    steps.set_postfix_str("export")
    manifest = export_model(str(checkpoint), args.out, layout="split", force=True, progress=False)
    # The PyTorch weights ship beside the graphs (not in the wheel): the folder is then also the source
    # checkpoint, for PyTorch comparisons and the benchmarks.
    shutil.copy(checkpoint / "model.safetensors", args.out / "model.safetensors")
    steps.update(1)

    steps.set_postfix_str("evaluate")
    generator = ortdecode.load(args.out, provider="cpu")
    torch.set_num_threads(plan.threads)
    engines = {"ortdecode (ONNX Runtime)": evaluate.ortdecode_generate(generator),
               "PyTorch (transformers)": evaluate.pytorch_generate(model, tok)}
    runs = tqdm(total=len(engines) * len(evaluate.STRATEGIES) * len(data.TASKS), desc="evaluate", position=1,
                leave=False)
    results = evaluate.evaluate(engines, split.test, progress=runs)
    runs.close()
    steps.update(1)

    steps.set_postfix_str("model card")
    parameters = sum(p.numel() for p in model.parameters())
    report = {
        "model": "t5-numbers", "seed": args.seed, "parameters": parameters, "shape": asdict(shape),
        "training": {**asdict(plan), "examples": len(examples), "seconds": log["seconds"],
                     "final_loss": log["loss"][-1]["loss"]},
        "held_out": {task: len(numbers) for task, numbers in split.test.items()},
        "results": results, "export_validation": manifest.validation,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "recipe_seconds": round(time.time() - started, 1),
    }
    (args.out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    from .card import plot_accuracy, plot_training_loss, write_model_card

    plot_accuracy(results, args.out / "accuracy.png")
    plot_training_loss(log, args.out / "training_loss.png")
    write_model_card(report, args.out / "README.md")
    steps.update(1)
    steps.close()
    print(evaluate.accuracy_table(results))
    print(f"recipe finished in {time.time() - started:.0f} s; model in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
