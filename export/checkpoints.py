"""Random-weight T5-family checkpoints for tests and benchmarks (no model hub here).

Weights come from transformers' own initialization under a fixed torch seed, so a checkpoint is the
same on every machine. The tokenizer is either copied from a folder (e.g. the embedded default
model's), a synthetic Unigram vocabulary of "▁w<i>" pieces the size of t5-small's, or, for ByT5
presets, transformers' byte-level `ByT5Tokenizer`.
"""

from __future__ import annotations

from pathlib import Path

PRESETS: dict[str, dict] = {
    # T5 v1.0 style: ReLU feed-forward, LM head tied to the embeddings (scaled by d_model ** -0.5).
    "tiny-v1": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                    feed_forward_proj="relu", tie_word_embeddings=True),
    # T5 v1.1 / Flan style: gated-GELU feed-forward, separate LM head.
    "tiny-v1.1": dict(d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # Encoder and decoder depths differ, and heads * d_kv (3 * 20) != d_model (48).
    "tiny-asymmetric": dict(d_model=48, d_kv=20, d_ff=96, num_layers=3, num_decoder_layers=2, num_heads=3,
                            feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # mT5: T5 v1.1's layout under its own model type (MT5ForConditionalGeneration).
    "tiny-mt5": dict(model_type="mt5", d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=2, num_heads=4,
                     feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # google's t5-efficient "DL" variants: more decoder than encoder layers.
    "tiny-efficient-dl": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=4, num_heads=4,
                              feed_forward_proj="relu", tie_word_embeddings=True),
    # LongT5's two encoder attentions; radius and block size small enough that test inputs span several blocks.
    "tiny-longt5-local": dict(model_type="longt5", d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=2,
                              num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                              encoder_attention_type="local", local_radius=3),
    "tiny-longt5-tglobal": dict(model_type="longt5", d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=2,
                                num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                encoder_attention_type="transient-global", local_radius=3, global_block_size=4),
    # ByT5: T5 v1.1 weights over UTF-8 bytes (transformers' ByT5Tokenizer: 3 specials + 256 bytes + 125 extra ids).
    "tiny-byt5": dict(tokenizer="byt5", d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # t5-small's architecture.
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
                     feed_forward_proj="relu", tie_word_embeddings=True, vocab_size=32128),
}
T5_SMALL_TOKENIZER_SIZE = 32100  # 32000 SentencePiece pieces + 100 <extra_id_*>; the model pads to 32128


def synthetic_tokenizer(size: int = T5_SMALL_TOKENIZER_SIZE, extra_ids: int = 100):
    """A T5 fast tokenizer whose vocabulary is <pad>, </s>, <unk>, then pieces ▁w3 ▁w4 ... and the extra ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581w{i}", -1.0 - (i % 97) / 10) for i in range(3, size - extra_ids)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=extra_ids)


def _model_classes(model_type: str):
    import transformers

    names = {"t5": ("T5Config", "T5ForConditionalGeneration"), "mt5": ("MT5Config", "MT5ForConditionalGeneration"),
             "longt5": ("LongT5Config", "LongT5ForConditionalGeneration")}[model_type]
    return tuple(getattr(transformers, name) for name in names)


def make_random_t5(out_dir: str | Path, preset: str = "tiny-v1", *, seed: int = 0, tokenizer_dir: str | Path | None = None,
                   initializer_factor: float = 1.0, **overrides) -> Path:
    """Write a random-weight checkpoint of the preset's model type (T5, mT5 or LongT5 ForConditionalGeneration)
    and its tokenizer to `out_dir`. `tokenizer_dir` is ignored by ByT5 presets (their tokenizer has no files
    to copy: it is defined by bytes).

    `initializer_factor` scales transformers' init; values above 1 make the random model's next-token
    distributions peakier, like a trained model's. `overrides` replace the preset's T5Config fields
    (e.g. num_decoder_layers=3 for a deeper decoder)."""
    import torch
    from transformers import ByT5Tokenizer, T5TokenizerFast

    if preset not in PRESETS:
        raise ValueError(f"`preset` has to be one of {', '.join(PRESETS)}, but is {preset!r}")
    shape = {**PRESETS[preset], **overrides}
    config_class, model_class = _model_classes(shape.pop("model_type", "t5"))
    if shape.pop("tokenizer", None) == "byt5":
        tokenizer = ByT5Tokenizer()
    elif tokenizer_dir is not None:
        tokenizer = T5TokenizerFast.from_pretrained(str(tokenizer_dir))
    else:
        tokenizer = synthetic_tokenizer()
    vocab_size = shape.pop("vocab_size", len(tokenizer))
    if vocab_size < len(tokenizer):
        raise ValueError(f"preset {preset!r} has vocab_size {vocab_size} < the tokenizer's {len(tokenizer)}")
    config = config_class(vocab_size=vocab_size, decoder_start_token_id=tokenizer.pad_token_id,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      initializer_factor=initializer_factor, **shape)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
