"""The T5 family members `ortdecode export` accepts, and the tokenizers it can ship with them.

Optimum exports T5, mT5 and LongT5 (its `T5OnnxConfig`, `MT5OnnxConfig`, `LongT5OnnxConfig`: the same
graph and KV tensor names, so one manifest layout serves all three). ByT5 checkpoints are model type
"t5" with transformers' byte-level `ByT5Tokenizer`, which has no tokenizer.json: the export saves its
tokenizer_config.json and the runtime's own byte tokenizer reads it. Every other tokenizer has to be a
fast one (tokenizer.json), which the runtime reads with the `tokenizers` library.
"""

from __future__ import annotations

import math

SUPPORTED_MODEL_TYPES = ("t5", "mt5", "longt5")
# Family members that cannot be exported, and why (the refusal names the model type and the reason).
REFUSED_MODEL_TYPES = {
    "umt5": "Optimum has no ONNX export configuration for UMT5 (per-layer relative attention bias)",
}
BYTE_TOKENIZER_CLASS = "ByT5Tokenizer"


def model_type_refusal(source: str, model_type: str) -> str | None:
    """Why MODEL `source` of `model_type` cannot be exported, or None when it can."""
    if model_type in SUPPORTED_MODEL_TYPES:
        return None
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    if model_type in REFUSED_MODEL_TYPES:
        return (f"MODEL {source!r} is a {model_type!r} model, which ortdecode cannot export: "
                f"{REFUSED_MODEL_TYPES[model_type]}; supported model types: {supported}")
    return f"MODEL {source!r} is a {model_type!r} model; ortdecode exports {supported}"


def tokenizer_refusal(source: str, tokenizer) -> str | None:
    """Why the tokenizer of MODEL `source` cannot be shipped with its export, or None when it can."""
    if getattr(tokenizer, "is_fast", False) or type(tokenizer).__name__ == BYTE_TOKENIZER_CLASS:
        return None
    return (f"MODEL {source!r}: no fast tokenizer (tokenizer.json) could be made for its {type(tokenizer).__name__}, "
            f"and it is not a {BYTE_TOKENIZER_CLASS}")


def encoder_length_multiple(config) -> int:
    """The input lengths the exported encoder runs on are multiples of this (1: any length).

    LongT5's encoder attends in blocks of `local_radius + 1` tokens (and, transient-global, sums blocks
    of `global_block_size`); transformers pads to whole blocks with a length computed while Optimum
    traces, which the graph keeps as a constant. The runtime pads inputs to whole blocks instead."""
    if config.model_type != "longt5":
        return 1
    block = config.local_radius + 1
    if config.encoder_attention_type == "transient-global":
        return math.lcm(block, config.global_block_size)
    return block
