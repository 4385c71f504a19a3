"""Train the t5-numbers model with PyTorch on the CPU, from a fixed seed.

Plain teacher-forced cross-entropy, AdamW, linear warm-up then cosine decay, no dropout. Examples are
tokenized once; batches are drawn by a seeded permutation, so a run is repeatable on the same machine
(not bit for bit on another processor: the CPU kernels' summation order differs; see the README).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class ModelShape:
    d_model: int = 128
    d_kv: int = 32
    d_ff: int = 512
    num_layers: int = 3
    num_decoder_layers: int = 3
    num_heads: int = 4
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 64


@dataclass(frozen=True)
class TrainingPlan:
    steps: int = 6000
    batch_size: int = 96
    learning_rate: float = 2e-3
    warmup_steps: int = 300
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 2


def build_model(shape: ModelShape, tokenizer, seed: int):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                      dropout_rate=0.0, **asdict(shape))
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config)


def _pad(rows: list[list[int]], pad: int) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def train(model, tokenizer, examples: list[tuple[str, str]], plan: TrainingPlan, progress: bool = True) -> dict:
    """Train in place; returns a log of the loss."""
    torch.set_num_threads(plan.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)  # same machine, same result; not across CPUs
    torch.manual_seed(plan.seed)
    sources = tokenizer([s for s, _ in examples]).input_ids
    targets = tokenizer([t for _, t in examples]).input_ids
    pad = tokenizer.pad_token_id
    rng = np.random.default_rng(plan.seed)
    order = rng.permutation(len(examples))
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay,
                                  betas=(0.9, 0.98))

    def learning_rate(step: int) -> float:
        if step < plan.warmup_steps:
            return (step + 1) / plan.warmup_steps
        progress_ = (step - plan.warmup_steps) / max(1, plan.steps - plan.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate)
    model.train()
    log, smoothed, start, cursor = [], None, time.time(), 0
    bar = tqdm(range(plan.steps), desc="train", unit="step", disable=not progress, mininterval=1.0)
    for step in bar:
        if cursor + plan.batch_size > len(order):
            order, cursor = rng.permutation(len(examples)), 0
        batch = order[cursor:cursor + plan.batch_size]
        cursor += plan.batch_size
        input_ids = torch.from_numpy(_pad([sources[i] for i in batch], pad))
        labels = _pad([targets[i] for i in batch], pad)
        labels[labels == pad] = -100
        labels = torch.from_numpy(labels)
        loss = model(input_ids=input_ids, attention_mask=(input_ids != pad).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
        if step % 50 == 0 or step == plan.steps - 1:
            log.append({"step": step, "loss": round(smoothed, 5), "seconds": round(time.time() - start, 1)})
            bar.set_postfix(loss=f"{smoothed:.4f}")
    model.eval()
    return {"loss": log, "seconds": round(time.time() - start, 1)}


def save(model, tokenizer, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
