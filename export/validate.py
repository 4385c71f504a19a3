"""Compare an export with the PyTorch model it came from: per-step logits, same inputs, judged by
`parity.judge` against PyTorch float32 and float64.

The decoder inputs are PyTorch's own greedy tokens, fed to every side (teacher forcing), so the
comparison covers every step even where a near-tie would make free-running sequences part ways. Both
of the engine's paths are measured: step by step through the KV cache (encoder, first-step graph,
with-past graph) and the whole target in one pass (the graph `score` uses). When the export has a decoder
attention mask, rows that join a running batch at different steps are compared with the same rows
decoded alone (continuous batching's exactness). `validate_export` adds free-running greedy and beam
search, compared output by output.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import ortdecode
from ortdecode.runner import Runner

from .parity import judge

SAMPLE_TEXTS = (
    "translate English to German: The house is wonderful.",
    "summarize: studies have shown that owning a dog is good for you and your family",
    "spell out: 4521",
    "to digits: four thousand five hundred twenty-one",
    "question: what is the capital of France?",
)


@dataclass
class ValidationReport:
    status: str  # "passed", "failed" or "measured" (int8 without --atol: compared, not judged)
    passed: bool | None
    reason: str  # the judge's sentence: both errors, the bound, greedy disagreements
    max_abs_diff: float  # max |logits - PyTorch float32 logits| over every input, step and token
    max_abs_diff_float64: float  # max |logits - PyTorch float64 logits|
    torch_float32_vs_float64: float  # PyTorch float32's own error against float64
    tolerance: float
    rule: str  # "parity" or "atol"
    logits_scale: float
    greedy_mismatches: int
    near_ties: int
    stepwise_max_abs_diff: float
    single_pass_max_abs_diff: float
    joined_batch_max_abs_diff: float | None  # row r joining a running batch at step r, vs decoded alone
    atol: float | None
    inputs: int
    steps: int
    provider: str
    # Per decoder step, max over inputs and vocabulary (the cached step-by-step path).
    step_errors_float32: list[float] = field(default_factory=list)
    step_errors_float64: list[float] = field(default_factory=list)
    # Free-running outputs identical to transformers' (share of inputs); None when not measured.
    greedy_identical: float | None = None
    beam_identical: float | None = None
    num_beams: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def reference_generate_options(model) -> dict:
    """transformers 4.57's cached `generate` is wrong for T5s with more decoder than encoder layers."""
    config = model.config
    deeper_decoder = (config.num_decoder_layers or config.num_layers) > config.num_layers
    return {"use_cache": False} if deeper_decoder else {}


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


def teacher_forced_torch_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray,
                                decoder_input_ids: np.ndarray) -> np.ndarray:
    """PyTorch's logits [batch, steps, vocab] for every decoder position, in the model's own dtype."""
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
                     decoder_input_ids=torch.from_numpy(decoder_input_ids)).logits.numpy()


def pytorch_reference(model, input_ids: np.ndarray, attention_mask: np.ndarray, steps: int):
    """PyTorch's greedy continuation (exactly `steps` tokens) and its float32 logits for every decoder position."""
    with torch.no_grad():
        sequences = model.generate(input_ids=torch.from_numpy(input_ids),
                                   attention_mask=torch.from_numpy(attention_mask), max_new_tokens=steps,
                                   min_new_tokens=steps, do_sample=False, num_beams=1,
                                   **reference_generate_options(model))
    decoder_input_ids = sequences[:, :-1].numpy()
    logits = teacher_forced_torch_logits(model, input_ids, attention_mask, decoder_input_ids)
    return decoder_input_ids, logits.astype(np.float32)


def compare_with_pytorch(export_dir, model, hf_tokenizer, provider: str = "cpu", atol: float | None = None,
                         steps: int = 8, texts: Sequence[str] = SAMPLE_TEXTS) -> ValidationReport:
    """Teacher-forced logits of the export vs PyTorch float32 and float64 (`model`, copied to float64).

    int8 exports are measured, not judged, unless `atol` is given."""
    generator = ortdecode.load(export_dir, provider=provider, allow_unvalidated=True)
    manifest = generator.manifest
    encoded = hf_tokenizer(list(texts), padding=True, return_tensors="np")
    input_ids = encoded["input_ids"].astype(np.int64)
    attention_mask = encoded["attention_mask"].astype(np.int64)
    decoder_input_ids, torch32 = pytorch_reference(model, input_ids, attention_mask, steps)
    torch64 = teacher_forced_torch_logits(copy.deepcopy(model).double(), input_ids, attention_mask, decoder_input_ids)
    stepwise = stepwise_logits(generator.runner, input_ids, attention_mask, decoder_input_ids)
    single_pass = generator.runner.teacher_forced_logits(input_ids, attention_mask, decoder_input_ids)
    both = np.concatenate([stepwise, single_pass])
    verdict = judge(both, np.concatenate([torch32, torch32]), np.concatenate([torch64, torch64]), dtype=manifest.dtype,
                    atol=atol, judged=manifest.quantization is None)
    joined = joined_batch_max_abs_diff(generator.runner, input_ids, attention_mask, decoder_input_ids)
    passed, reason = verdict.passed, verdict.reason
    # A row's logits must not depend on its neighbours (int8 exports are measured only: dynamic quantization
    # scales activations per tensor, so rows do depend on each other there).
    if passed and joined is not None and joined > verdict.tolerance:
        passed = False
        reason += (f"; rows joined into a running batch differ from the same rows decoded alone by {joined:.3g} "
                   f"> {verdict.tolerance:.3g}")
    status = {True: "passed", False: "failed", None: "measured"}[passed]
    return ValidationReport(
        status=status, passed=passed, reason=reason, max_abs_diff=verdict.err_vs_float32,
        max_abs_diff_float64=verdict.err_vs_float64, torch_float32_vs_float64=verdict.torch_float32_vs_float64,
        tolerance=verdict.tolerance, rule=verdict.rule, logits_scale=verdict.logits_scale,
        greedy_mismatches=verdict.greedy_mismatches, near_ties=verdict.near_ties,
        stepwise_max_abs_diff=float(np.abs(stepwise - torch32).max()),
        single_pass_max_abs_diff=float(np.abs(single_pass - torch32).max()), joined_batch_max_abs_diff=joined,
        atol=atol, inputs=len(texts), steps=steps,
        provider=generator.provider,
        step_errors_float32=np.abs(stepwise - torch32).max(axis=(0, 2)).astype(float).tolist(),
        step_errors_float64=np.abs(stepwise - torch64).max(axis=(0, 2)).astype(float).tolist())


def identical_share(generator, model, input_ids: np.ndarray, attention_mask: np.ndarray, num_beams: int,
                    max_new_tokens: int) -> float:
    """Share of inputs whose free-running output ids (greedy or beam search) are transformers' exactly."""
    ours = generator.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                              num_beams=num_beams, do_sample=False).sequences
    with torch.no_grad():
        theirs = model.generate(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
                                max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                **reference_generate_options(model)).numpy()
    pad = generator.manifest.pad_token_id
    return float(np.mean([_without_padding(a, pad) == _without_padding(b, pad) for a, b in zip(ours, theirs)]))


def _without_padding(row: np.ndarray, pad: int) -> list[int]:
    ids = row.tolist()
    while len(ids) > 1 and ids[-1] == pad:  # the first id is the decoder start (= pad for T5): kept
        ids.pop()
    return ids


def validate_export(export_dir: str | Path, reference: str | Path, *, texts: Sequence[str] | None = None,
                    num_beams: int = 4, max_new_tokens: int = 20, steps: int = 8, provider: str = "cpu",
                    atol: float | None = None) -> ValidationReport:
    """The parity report of an export on your own inputs: per-step logits errors against PyTorch float32
    and float64 (teacher-forced), the judge's verdict, and the share of greedy and beam-search outputs
    identical to transformers' (for int8 exports the latter is the figure that matters).

    reference: the PyTorch checkpoint (folder or hub id) the export was made from."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if num_beams < 1 or max_new_tokens < 1 or steps < 1:
        raise ValueError(f"`num_beams`, `max_new_tokens` and `steps` have to be >= 1, but are {num_beams}, "
                         f"{max_new_tokens} and {steps}")
    texts = list(SAMPLE_TEXTS if texts is None else texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("`texts` has to be a non-empty list of non-empty strings")
    model = AutoModelForSeq2SeqLM.from_pretrained(str(reference)).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    report = compare_with_pytorch(export_dir, model, hf_tokenizer, provider=provider, atol=atol, steps=steps,
                                  texts=texts)
    generator = ortdecode.load(export_dir, provider=provider, allow_unvalidated=True)
    encoded = hf_tokenizer(texts, padding=True, return_tensors="np")
    ids, mask = encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
    report.greedy_identical = identical_share(generator, model, ids, mask, 1, max_new_tokens)
    report.beam_identical = identical_share(generator, model, ids, mask, num_beams, max_new_tokens)
    report.num_beams = num_beams
    return report
