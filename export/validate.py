"""Compare an export with the PyTorch model it came from: per-step logits, same inputs.

The decoder inputs are PyTorch's own greedy tokens, fed to both sides (teacher forcing), so the
comparison covers every step even where a near-tie would make free-running sequences part ways. Both
of the engine's paths are measured: step by step through the KV cache (encoder, first-step graph,
with-past graph) and the whole target in one pass (the graph `score` uses). When the export has a decoder
attention mask, rows that join a running batch at different steps are compared with the same rows
decoded alone (continuous batching's exactness).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

import ortdecode
from ortdecode.runner import Runner

SAMPLE_TEXTS = (
    "translate English to German: The house is wonderful.",
    "summarize: studies have shown that owning a dog is good for you and your family",
    "spell out: 4521",
    "to digits: four thousand five hundred twenty-one",
    "question: what is the capital of France?",
)


@dataclass
class ValidationReport:
    max_abs_diff: float  # max |logits - PyTorch logits| over every input, step and token
    stepwise_max_abs_diff: float
    single_pass_max_abs_diff: float
    joined_batch_max_abs_diff: float | None  # row r joining a running batch at step r, vs decoded alone
    atol: float | None
    passed: bool | None  # None when there is no tolerance to check (int8)
    inputs: int
    steps: int
    provider: str

    def to_dict(self) -> dict:
        return asdict(self)


def stepwise_logits(runner: Runner, input_ids: np.ndarray, attention_mask: np.ndarray,
                    decoder_input_ids: np.ndarray) -> np.ndarray:
    """Logits [batch, steps, vocab] from feeding decoder_input_ids one column per step through the cache."""
    state = runner.encode(input_ids, attention_mask)
    return np.stack([runner.step(state, decoder_input_ids[:, t]).copy()
                     for t in range(decoder_input_ids.shape[1])], axis=1)


def joined_batch_max_abs_diff(runner: Runner, input_ids: np.ndarray, attention_mask: np.ndarray,
                              decoder_input_ids: np.ndarray) -> float | None:
    """Row r joins the running batch at step r (its own encoder pass and first step, then its self cache
    left-padded), and leaves after its last token; max |logits - the row's logits decoded alone|.
    None when the export has no decoder attention mask."""
    if not runner.has_decoder_mask:
        return None
    rows, steps = decoder_input_ids.shape
    alone = [stepwise_logits(runner, input_ids[r:r + 1], attention_mask[r:r + 1], decoder_input_ids[r:r + 1])[0]
             for r in range(rows)]
    position = np.zeros(rows, dtype=np.int64)  # the next decoder position of each row
    batch, members, worst = None, [], 0.0
    for step in range(rows + steps):
        if members:
            logits = runner.step(batch, decoder_input_ids[members, position[members]])
            for i, r in enumerate(members):
                worst = max(worst, float(np.abs(logits[i] - alone[r][position[r]]).max()))
            position[members] += 1
            kept = [i for i, r in enumerate(members) if position[r] < steps]
            if kept:
                runner.select(batch, np.array(kept, dtype=np.int64))
            members = [members[i] for i in kept]
        if step < rows:
            state = runner.encode(input_ids[step:step + 1], attention_mask[step:step + 1])
            first = runner.step(state, decoder_input_ids[step, :1])
            worst = max(worst, float(np.abs(first[0] - alone[step][0]).max()))
            position[step] = 1
            parts = [(batch, np.arange(len(members)))] if members else []
            batch = runner.join(parts + [(state, np.array([0]))])
            members.append(step)
    return worst


def pytorch_reference(model, input_ids: np.ndarray, attention_mask: np.ndarray, steps: int):
    """PyTorch's greedy continuation (exactly `steps` tokens) and its logits for every decoder position."""
    ids, mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
    with torch.no_grad():
        sequences = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                                   do_sample=False, num_beams=1)
        decoder_input_ids = sequences[:, :-1]
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
    return decoder_input_ids.numpy(), logits.float().numpy()


def compare_with_pytorch(export_dir, model, hf_tokenizer, provider: str = "cpu", atol: float | None = 1e-4,
                         steps: int = 8, texts=SAMPLE_TEXTS) -> ValidationReport:
    generator = ortdecode.load(export_dir, provider=provider)
    encoded = hf_tokenizer(list(texts), padding=True, return_tensors="np")
    input_ids = encoded["input_ids"].astype(np.int64)
    attention_mask = encoded["attention_mask"].astype(np.int64)
    decoder_input_ids, reference = pytorch_reference(model, input_ids, attention_mask, steps)
    stepwise = stepwise_logits(generator.runner, input_ids, attention_mask, decoder_input_ids)
    single_pass = generator.runner.teacher_forced_logits(input_ids, attention_mask, decoder_input_ids)
    stepwise_diff = float(np.abs(stepwise - reference).max())
    single_diff = float(np.abs(single_pass - reference).max())
    joined_diff = joined_batch_max_abs_diff(generator.runner, input_ids, attention_mask, decoder_input_ids)
    worst = max(stepwise_diff, single_diff, joined_diff or 0.0)
    return ValidationReport(max_abs_diff=worst, stepwise_max_abs_diff=stepwise_diff, single_pass_max_abs_diff=single_diff,
                            joined_batch_max_abs_diff=joined_diff,
                            atol=atol, passed=None if atol is None else bool(worst <= atol),
                            inputs=len(texts), steps=steps, provider=generator.provider)
