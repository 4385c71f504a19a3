"""The model card and plots of t5-numbers, written from the recipe's measurements (evaluation.json)."""

from __future__ import annotations

from pathlib import Path

from .evaluate import accuracy_table

EXAMPLE_PROMPTS = ["spell out: 4521", "spell out: 700019", "to digits: nine hundred ninety-nine thousand nine hundred "
                   "ninety-nine", "to digits: twelve thousand three hundred forty-five", "ordinal: 21",
                   "ordinal: 100000"]


def plot_accuracy(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    engines = list(results)
    strategies = list(results[engines[0]])
    tasks = list(results[engines[0]][strategies[0]])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), sharey=True)
    width = 0.8 / len(engines)
    for ax, task in zip(axes, tasks):
        for i, engine in enumerate(engines):
            values = [100 * results[engine][s][task]["exact_match"] for s in strategies]
            bars = ax.bar(np.arange(len(strategies)) + i * width, values, width, label=engine)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_title(task)
        ax.set_xticks(np.arange(len(strategies)) + width * (len(engines) - 1) / 2, strategies, fontsize=8)
        ax.set_ylim(90, 100.8)
    axes[0].set_ylabel("held-out exact match (%)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("t5-numbers: 1,000 held-out numbers per task")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training_loss(log: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in log["loss"]]
    losses = [row["loss"] for row in log["loss"]]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.semilogy(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("t5-numbers training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_model_card(report: dict, path: Path) -> None:
    import ortdecode

    generator = ortdecode.load(path.parent, provider="cpu")
    outputs = generator.generate(EXAMPLE_PROMPTS, max_new_tokens=32).texts
    examples = "\n".join(f"| `{p}` | `{o}` |" for p, o in zip(EXAMPLE_PROMPTS, outputs))
    training = report["training"]
    shape = report["shape"]
    validation = report["export_validation"]
    held_out = ", ".join(f"{n:,} for {task}" for task, n in report["held_out"].items())
    path.write_text(f"""# t5-numbers: the embedded default model of ortdecode

A small T5 (`T5ForConditionalGeneration`, {report['parameters']:,} parameters) trained from scratch by this
repository to read and write numbers from 0 to 999,999 in American English. It is what `ortdecode.load()`
and `ortdecode generate` use when no model is named, so the first command on a fresh clone runs offline.

| task prefix | input | output |
|---|---|---|
| `spell out:` | digits | words: no "and", hyphenated tens ("twenty-one"), "zero" for 0 |
| `to digits:` | words | digits |
| `ordinal:` | digits | ordinal words ("twenty-first", "one thousandth") |

Greedy outputs of this export, through ortdecode:

| prompt | output |
|---|---|
{examples}

## Accuracy

Held-out exact match ({held_out}; numbers of 3 to 6 digits, a quarter each, never seen in training in
any task). Measured by the recipe through ortdecode's ONNX path (CPU provider) and through PyTorch on the
same checkpoint; sampling uses temperature 0.7, transformers' default top-k 50 and a fixed seed per batch.

{accuracy_table(report['results'])}

![accuracy](accuracy.png)

## How it was made

- Data: `models/numbers/data.py` generates (prompt, answer) pairs from seed {report['seed']}. Training numbers
  are drawn by digit count (1 to 6 digits, weights 4/8/16/24/24/24 %), the three tasks in turn; held-out
  and validation numbers are removed first.
- Tokenizer: SentencePiece BPE, {len(generator.tokenizer._tokenizer.get_vocab())} pieces, trained on the first
  30,000 training examples, digits split into single pieces; T5 ids (pad = decoder start = 0, eos = 1, unk = 2).
- Model: d_model {shape['d_model']}, {shape['num_layers']} encoder and {shape['num_decoder_layers']} decoder
  layers, {shape['num_heads']} heads of {shape['d_kv']}, d_ff {shape['d_ff']}, {shape['feed_forward_proj']}
  feed-forward, tied embeddings, no dropout.
- Training: {training['steps']:,} steps of {training['batch_size']} examples ({training['examples']:,} examples, each
  seen once), AdamW (lr {training['learning_rate']}, betas 0.9/0.98, weight decay {training['weight_decay']}),
  {training['warmup_steps']} warm-up steps then cosine decay, PyTorch on {training['threads']} CPU threads:
  {training['seconds'] / 60:.1f} minutes, final loss {training['final_loss']:.5f}.
- Export: `ortdecode export` (Optimum, split decoder graphs with the decoder attention mask), validated against
  PyTorch: max |logits diff| {validation.get('max_abs_diff', float('nan')):.2g}.
- The whole recipe took {report['recipe_seconds'] / 60:.1f} minutes on a {report['machine']['processor']} machine.

![training loss](training_loss.png)

## Reproduce

```
make model        # = python -m models.numbers (from the repository root)
```

Everything derives from the seed: a rebuild on the same machine repeats itself; on another processor
PyTorch's CPU kernels sum in another order, so the weights differ slightly and the held-out accuracy is
reproduced within one point, not bit for bit. `evaluation.json` holds every measurement above, with a few
errors per cell, if any.
""")
