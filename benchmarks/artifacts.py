"""Models the benchmarks run, made on the spot and cached in benchmarks/work/ (git-ignored).

- "t5-small": t5-small's architecture with random weights from seed 0 (the real t5-small cannot be
  downloaded here), a synthetic 32,100-piece vocabulary;
- "t5-numbers": the embedded default model (its folder is also its PyTorch checkpoint).

Each model gets: the PyTorch checkpoint, ortdecode exports (float32; int8 on CPU; CUDA-fused on GPU),
and CTranslate2 conversions (float32, int8).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work"


@dataclass
class ModelArtifacts:
    name: str
    description: str
    checkpoint: Path
    exports: dict[str, Path] = field(default_factory=dict)  # "fp32", "int8", "cuda-fp32", "cuda-fp16", "merged"
    ctranslate2: dict[str, Path] = field(default_factory=dict)  # "float32", "int8"
    failed_exports: dict[str, str] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)
    vocab_size: int = 0


def _done(path: Path) -> bool:
    return (path / ".complete").exists()


def _mark(path: Path) -> Path:
    (path / ".complete").write_text("")
    return path


def checkpoint_for(name: str) -> tuple[Path, str]:
    if name == "t5-numbers":
        import ortdecode

        return ortdecode.default_model_path(), "embedded default model (t5-numbers, trained here)"
    if name == "t5-small":
        from ortdecode_export.checkpoints import make_random_t5

        path = WORK / "t5-small-random"
        if not _done(path):
            shutil.rmtree(path, ignore_errors=True)
            _mark(make_random_t5(path, "t5-small", seed=0))
        return path, ("t5-small architecture (d_model 512, 6+6 layers, 8 heads, vocab 32128) with random weights "
                      "from seed 0: the real t5-small cannot be downloaded on this machine")
    raise ValueError(f"unknown benchmark model {name!r}; known: t5-small, t5-numbers")


def export_variant(name: str, checkpoint: Path, variant: str) -> Path:
    from ortdecode_export import export_model

    from ortdecode_export.pipeline import (default_layout, fuses_attention, fuses_projections, packs_encoder_tokens,
                                           saves_ort_optimized)

    path = WORK / f"{name}-{variant}"
    options = {"fp32": {}, "int8": {"quantize": "int8"}, "cuda-fp32": {"target": "cuda"},
               "cuda-fp16": {"target": "cuda", "fp16": True}, "merged": {"layout": "merged"},
               "fp32-unfused": {"fuse_attention": False},
               "int8-unfused": {"quantize": "int8", "fuse_attention": False},
               "fp32-unpacked": {"pack_encoder": False},
               "int8-unpacked": {"quantize": "int8", "pack_encoder": False},
               "fp32-unoptimized": {"ort_optimize": False},
               "int8-unoptimized": {"quantize": "int8", "ort_optimize": False},
               "fp32-separate-projections": {"fuse_projections": False},
               # the graphs Optimum's ORTModelForSeq2SeqLM reads: encoder, decoder and decoder with past as
               # Optimum wrote them (ortdecode's CPU default, one rewritten with-past decoder, is not one of them)
               "optimum": {"layout": "split", "fuse_attention": False, "pack_encoder": False, "ort_optimize": False,
                           "fuse_projections": False}
               }[variant]
    target = options.get("target", "cpu")
    layout = options.get("layout") or default_layout(target)
    fused = fuses_attention(target, layout, options.get("fuse_attention", True))
    from transformers import AutoConfig

    packed = packs_encoder_tokens(target, AutoConfig.from_pretrained(checkpoint), options.get("pack_encoder", True))
    optimized = saves_ort_optimized(target, options.get("ort_optimize", True))
    projections = fuses_projections(target, options.get("fuse_projections", True))
    if _done(path):
        manifest = json.loads((path / "ortdecode.json").read_text())
        made = manifest["export_options"]
        if made["layout"] == layout and ("attention_fusion" in made) == fused and \
                (not fused or manifest.get("self_cache_in_place")) and \
                manifest.get("encoder_packs_tokens", False) == packed and ("ort_optimized" in made) == optimized \
                and ("projection_fusion" in made) == projections:
            return path  # made before with today's options (an older exporter's export is made again)
    export_model(str(checkpoint), path, force=True, progress=False, **options)
    return _mark(path)


def ctranslate2_variant(name: str, checkpoint: Path, quantization: str) -> Path:
    import ctranslate2

    path = WORK / f"{name}-ct2-{quantization}"
    if _done(path):
        return path
    converter = ctranslate2.converters.TransformersConverter(str(checkpoint))
    converter.convert(str(path), quantization=quantization, force=True)
    return _mark(path)


def prepare(name: str, variants: list[str], ct2_quantizations: list[str]) -> ModelArtifacts:
    from transformers import AutoTokenizer

    WORK.mkdir(parents=True, exist_ok=True)
    checkpoint, description = checkpoint_for(name)
    artifacts = ModelArtifacts(name=name, description=description, checkpoint=checkpoint)
    from ortdecode_export import ExportError

    for variant in variants:
        try:
            artifacts.exports[variant] = export_variant(name, checkpoint, variant)
        except ExportError as exc:  # e.g. float16 overflow: recorded in the results, not fatal
            if variant == "fp32":
                raise
            artifacts.failed_exports[variant] = str(exc)
            print(f"[{name}] {variant} export skipped: {exc}", flush=True)
    for quantization in ct2_quantizations:
        try:
            artifacts.ctranslate2[quantization] = ctranslate2_variant(name, checkpoint, quantization)
        except ImportError:
            break
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    artifacts.vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    artifacts.vocab_size = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
    return artifacts
