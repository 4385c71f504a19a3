"""Request bodies (pydantic) and response bodies of the HTTP API.

Generation options are not re-validated here: they go to `BatchEngine.submit`, whose `GenerationConfig`
raises the library's own ValueError naming the option. The models check the JSON shape, and the bounds of
OpenAI's own fields (max_tokens and n >= 1, temperature >= 0).

- text-generation-inference's shape (POST /generate, /generate_stream): {"inputs", "parameters"} with
  transformers' option names; finish reasons are ortdecode's (eos, length, stop, time, cancelled).
- OpenAI's completions shape (POST /v1/completions): max_tokens, temperature, top_p, n, stop, seed, stream;
  any other field is passed on as a generation option (e.g. num_beams, top_k, repetition_penalty), except
  max_new_tokens and num_return_sequences (refused: they are max_tokens and n here) and the OpenAI fields
  this server does not implement (echo, suffix, logprobs, the penalties, logit_bias, best_of: accepted at
  the value that asks for nothing, refused otherwise).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

# TGI flags about the response's shape: ortdecode always returns the details.
_TGI_PRESENTATION_FLAGS = ("details", "decoder_input_details")
# OpenAI finish reasons for ortdecode's; others (time, cancelled) are passed through as they are.
_OPENAI_FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: str
    parameters: dict[str, Any] = Field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.parameters.items() if k not in _TGI_PRESENTATION_FLAGS}


# generate() options that OpenAI's completions name otherwise: given under the library's name, they are refused
# rather than silently replaced by the OpenAI field's value (or default)
_OPENAI_NAMES = {"max_new_tokens": "max_tokens", "num_return_sequences": "n"}
# OpenAI completion fields this server does not implement: accepted at the value that asks for nothing (clients
# such as LangChain's send them so), refused otherwise. best_of is also neutral when it equals n.
_NEUTRAL = {"echo": ((False, None), "false"), "suffix": ((None,), "null"), "logprobs": ((None,), "null"),
            "presence_penalty": ((0, None), "0"), "frequency_penalty": ((0, None), "0"),
            "logit_bias": ((None, {}), "null or {}"), "best_of": ((None,), "null or n")}


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # extra fields are generation options
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0)  # None: the model's default (greedy for T5); 0: greedy; > 0: sampling
    top_p: float | None = None
    n: int = Field(1, ge=1)  # null: 1 (_null_is_one)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None  # accepted and ignored, as OpenAI clients send it
    echo: bool | None = False  # the fields of _NEUTRAL
    suffix: str | None = None
    logprobs: int | None = None
    presence_penalty: float | None = 0
    frequency_penalty: float | None = 0
    logit_bias: dict[str, float] | None = None
    best_of: int | None = None

    @field_validator("n", mode="before")
    @classmethod
    def _null_is_one(cls, value):
        return 1 if value is None else value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = dict(self.model_extra or {})
        for option, field in _OPENAI_NAMES.items():
            if option in options:
                raise ValueError(f"`{option}` is `{field}` in /v1/completions")
        for name, (neutral, said) in _NEUTRAL.items():
            value = getattr(self, name)
            if value not in neutral and not (name == "best_of" and value == self.n):
                raise ValueError(f"`{name}` is not supported by this server: it has to be {said} (or omitted), "
                                 f"but is {value!r}")
        if self.max_tokens is not None:
            options["max_new_tokens"] = self.max_tokens
        if self.temperature is not None:
            options["do_sample"] = self.temperature > 0
            if self.temperature > 0:
                options["temperature"] = self.temperature
        for name in ("top_p", "stop", "seed"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        if self.n != 1:
            options["num_return_sequences"] = self.n
        return options

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


def generated_token_counts(result, config) -> list[int]:
    """Tokens each output sequence generated (EOS included, the start token not). One sequence is never
    padded; of several, those that ended early are padded: a sequence that ran out of budget has
    `max_new_tokens`, the others end at their last token that is not padding."""
    sequences = np.asarray(result.sequences)[:, 1:]
    if len(sequences) == 1:
        return [sequences.shape[1]]
    counts = []
    for row, reason in zip(sequences, result.finish_reasons):
        n = len(row)
        if reason == "length":
            n = min(n, config.new_token_budget)
        else:
            while n and row[n - 1] == config.pad_token_id:
                n -= 1
        counts.append(n)
    return counts


# ---------------------------------------------------------------------- text-generation-inference
def generate_response(request, result) -> dict:
    counts = generated_token_counts(result, request.config)
    scores = result.sequences_scores

    def details(i: int) -> dict:
        entry = {"finish_reason": result.finish_reasons[i], "generated_tokens": counts[i],
                 "seed": request.config.seed, "input_tokens": request.input_length}
        if scores is not None:
            entry["sequence_score"] = float(scores[i])
        return entry

    first = details(0)
    if len(result.texts) > 1:
        first["best_of_sequences"] = [{"generated_text": result.texts[i], **details(i)}
                                      for i in range(1, len(result.texts))]
    return {"generated_text": result.texts[0], "details": first}


def stream_events(update, tokens_so_far: int) -> list[dict]:
    """TGI's stream events for one update of a one-sequence request: one per new token, carrying the text
    that became decodable with it. The final event also carries the whole text and the details; its token
    is the sequence's last one (the engine reports the finishing token, and beam search's whole text, only
    in the final update); its id is null when every token was already sent (a request that timed out or
    was cancelled between steps)."""
    request, config = update.request, update.request.config
    ids = list(update.new_token_ids[0]) if update.new_token_ids else []
    delta = update.text_deltas[0] if update.text_deltas else ""
    if update.finished:
        count = generated_token_counts(update.result, config)[0]
        ids = [int(t) for t in update.result.sequences[0, 1:count + 1][tokens_so_far:]] or [None]
    events = [{"index": tokens_so_far + k + 1,
               "token": {"id": token, "text": delta if k == len(ids) - 1 else "", "logprob": None,
                         "special": token is None or token in config.eos_token_id},
               "generated_text": None, "details": None} for k, token in enumerate(ids)]
    if update.finished:
        result = update.result
        events[-1]["generated_text"] = result.texts[0]
        events[-1]["details"] = {"finish_reason": result.finish_reasons[0], "generated_tokens": count,
                                 "seed": config.seed, "input_tokens": request.input_length}
    return events


# ---------------------------------------------------------------------- OpenAI completions
def openai_finish_reason(reason: str) -> str:
    return _OPENAI_FINISH_REASONS.get(reason, reason)


def completion_body(completion_id: str, model: str, choices: list[dict], usage: dict | None = None) -> dict:
    body = {"id": completion_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def usage_of(requests_and_results) -> dict:
    prompt = sum(request.input_length for request, _ in requests_and_results)
    completion = sum(sum(generated_token_counts(result, request.config)) for request, result in requests_and_results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
