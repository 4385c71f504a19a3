"""`export_model`: a Hugging Face T5 (hub id or folder) to an ortdecode export folder.

Load, export, optimize, save, validate (CTranslate2's converter order): Optimum writes the encoder and
decoder graphs; CUDA targets get ONNX Runtime's T5 fusions, int8 targets dynamic quantization; the
cache-reorder graph, tokenizer and configs are added; the manifest records names, shapes, ids, versions
and sha256; finally the export is compared with PyTorch and the result written into the manifest.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import shutil
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import onnx
from tqdm.auto import tqdm

from ortdecode import manifest as mf
from ortdecode.errors import OrtDecodeError

from .cache_reorder import reorder_names, write_cache_reorder_graph

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
OPTIMUM_FILES = {
    mf.ENCODER: "encoder_model.onnx",
    mf.DECODER: "decoder_model.onnx",
    mf.DECODER_WITH_PAST: "decoder_with_past_model.onnx",
    mf.DECODER_MERGED: "decoder_model_merged.onnx",
}
CACHE_REORDER_FILE = "cache_reorder.onnx"
DEFAULT_ATOL = {"float32": 1e-4, "float16": 5e-2}  # float32: Optimum's own T5 tolerance


class ExportError(OrtDecodeError):
    """The export could not be made, or does not match PyTorch within tolerance."""


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("ortdecode", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
                    "onnxruntime-gpu"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


@contextlib.contextmanager
def _quiet_libraries():
    """Keep transformers/Optimum/torch.onnx chatter out of the progress display."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    loggers = [logging.getLogger(name) for name in ("optimum", "torch.onnx", "onnxruntime")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(previous)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_options(target: str, fp16: bool, quantize: str | None, layout: str) -> None:
    if target not in ("cpu", "cuda"):
        raise ValueError(f"`target` has to be 'cpu' or 'cuda', but is {target!r}")
    if layout not in ("split", "merged", "both"):
        raise ValueError(f"`layout` has to be 'split', 'merged' or 'both', but is {layout!r}")
    if quantize not in (None, "int8"):
        raise ValueError(f"`quantize` has to be None or 'int8', but is {quantize!r}")
    if fp16 and target != "cuda":
        raise ValueError("--fp16 needs --target cuda (float16 T5 is for GPUs; on CPU use --quantize int8)")
    if quantize and target != "cpu":
        raise ValueError("--quantize int8 is for CPU exports; it cannot be combined with --target cuda")
    if layout != "split" and (quantize or target == "cuda"):
        raise ValueError("--quantize and --target cuda rewrite the split decoder graphs: use --layout split")


def _check_out_dir(out_dir: Path, source: str, force: bool) -> None:
    if Path(source).exists() and Path(source).resolve() == out_dir.resolve():
        raise ValueError(f"OUT_DIR {out_dir} is the model folder itself; choose another folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"OUT_DIR {out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ValueError(f"OUT_DIR {out_dir} is not empty; pass --force to overwrite it")


def _empty_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def _recorded_source(model: str) -> str:
    """The manifest's `source`: a hub id as given; a local folder relative to the working directory (the
    repository, for `make model`), else by its name. Never a machine's absolute path."""
    path = Path(model).expanduser()
    if not path.exists():
        return model
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.resolve().name


def _load_checkpoint(source: str):
    from transformers import AutoConfig, AutoTokenizer

    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    if looks_like_path and not Path(source).expanduser().exists():
        raise ExportError(f"cannot load MODEL {source!r}: no such folder")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load MODEL {source!r}: {str(exc).splitlines()[0]}") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(f"MODEL {source!r} is a {config.model_type!r} model; ortdecode exports "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    except (OSError, ValueError) as exc:
        raise ExportError(f"MODEL {source!r} has no usable tokenizer: {str(exc).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"MODEL {source!r}: no fast tokenizer (tokenizer.json) could be made for it")
    return config, tokenizer


def _graph_io(path: Path) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return tuple(i.name for i in model.graph.input), tuple(o.name for o in model.graph.output), opset


def _layer_names(num_layers: int) -> tuple[mf.LayerCacheNames, ...]:
    """Optimum's KV tensor names for T5, with the reorder graph's names beside them."""
    layers = []
    for i in range(num_layers):
        layers.append(mf.LayerCacheNames(
            past_self_key=f"past_key_values.{i}.decoder.key", past_self_value=f"past_key_values.{i}.decoder.value",
            past_cross_key=f"past_key_values.{i}.encoder.key", past_cross_value=f"past_key_values.{i}.encoder.value",
            present_self_key=f"present.{i}.decoder.key", present_self_value=f"present.{i}.decoder.value",
            present_cross_key=f"present.{i}.encoder.key", present_cross_value=f"present.{i}.encoder.value",
            **reorder_names(i)))
    return tuple(layers)


def export_model(model: str, out_dir: str | Path, *, target: str = "cpu", fp16: bool = False,
                 quantize: str | None = None, layout: str = "split", opset: int | None = None,
                 atol: float | None = None, validate: bool = True, force: bool = False,
                 progress: bool = True) -> mf.Manifest:
    """Export MODEL (a Hugging Face id or local checkpoint folder) to OUT_DIR and return its manifest.

    Raises `ExportError` when the export's logits differ from PyTorch's by more than `atol` (default:
    1e-4 for float32, 5e-2 for float16; int8 exports are compared and reported, not judged, unless
    `atol` is given). The failed export stays in OUT_DIR with `validation.passed = false`."""
    _check_options(target, fp16, quantize, layout)
    out_dir = Path(out_dir)
    model = str(model)
    dtype = "float16" if fp16 else "float32"
    # Everything that can be wrong with the inputs is found before anything is written or shown.
    _check_out_dir(out_dir, model, force)
    with _quiet_libraries():
        config, tokenizer = _load_checkpoint(model)
    steps = ["export graphs with Optimum"]
    steps += ["fuse for CUDA"] if target == "cuda" else []
    steps += ["quantize int8"] if quantize else []
    steps += ["write cache-reorder graph, tokenizer, manifest"] + (["validate against PyTorch"] if validate else [])
    with tqdm(total=len(steps), desc="export", unit="step", disable=not progress, file=sys.stderr) as bar, \
            _quiet_libraries():
        bar.set_postfix_str(steps[0])

        def advance() -> None:
            bar.update(1)
            if bar.n < len(steps):
                bar.set_postfix_str(steps[bar.n])

        _empty_out_dir(out_dir)
        roles = [mf.ENCODER] + ([mf.DECODER, mf.DECODER_WITH_PAST] if layout in ("split", "both") else [])
        roles += [mf.DECODER_MERGED] if layout in ("merged", "both") else []
        with tempfile.TemporaryDirectory(prefix=".optimum-", dir=out_dir) as work:
            work = Path(work)
            from optimum.exporters.onnx import main_export

            main_export(model, output=work, task="text2text-generation-with-past", opset=opset,
                        do_validation=False, no_post_process=mf.DECODER_MERGED not in roles, device="cpu")
            advance()
            for role in roles:
                source, final = work / OPTIMUM_FILES[role], out_dir / OPTIMUM_FILES[role]
                if not source.exists():
                    raise ExportError(f"Optimum did not write {source.name} for MODEL {model!r}")
                if target == "cuda":
                    from .cuda_fusion import fuse_for_cuda

                    fuse_for_cuda(source, final, num_heads=config.num_heads, hidden_size=config.d_model, fp16=fp16)
                elif quantize:
                    from .quantize import quantize_graph_int8

                    quantize_graph_int8(source, final)
                else:
                    shutil.move(str(source), str(final))
                for extra in work.glob(OPTIMUM_FILES[role] + "_data"):  # external weights of > 2 GB graphs
                    shutil.move(str(extra), str(out_dir / extra.name))
            if target == "cuda":
                advance()
            if quantize:
                advance()
            for name in ("config.json", "generation_config.json"):
                if (work / name).exists():
                    shutil.copy(work / name, out_dir / name)
        tokenizer.save_pretrained(out_dir)

        num_decoder_layers = config.num_decoder_layers or config.num_layers
        layers = _layer_names(num_decoder_layers)
        names = mf.TensorNames()
        write_cache_reorder_graph(out_dir / CACHE_REORDER_FILE, layers=list(layers), num_heads=config.num_heads,
                                  d_kv=config.d_kv, dtype=dtype, indices_name=names.reorder_indices)
        graphs, graph_opset = {}, 0
        for role in roles + [mf.CACHE_REORDER]:
            file = OPTIMUM_FILES.get(role, CACHE_REORDER_FILE)
            inputs, outputs, version = _graph_io(out_dir / file)
            graph_opset = version if role == mf.ENCODER else graph_opset
            external = {name: mf.sha256_of(path) for name, path in mf.external_data_of(out_dir, file).items()}
            graphs[role] = mf.GraphFile(file=file, sha256=mf.sha256_of(out_dir / file), inputs=inputs, outputs=outputs,
                                        external_data=external)
        from transformers import GenerationConfig as HFGenerationConfig

        try:
            generation = HFGenerationConfig.from_pretrained(out_dir)
        except OSError:  # the checkpoint had none: transformers derives it from config.json
            generation = HFGenerationConfig.from_model_config(config)
        eos = generation.eos_token_id if generation.eos_token_id is not None else config.eos_token_id
        manifest = mf.Manifest(
            model_type=config.model_type, source=_recorded_source(model), graphs=graphs, names=names, layers=layers,
            num_layers=config.num_layers, num_decoder_layers=num_decoder_layers, num_heads=config.num_heads,
            d_kv=config.d_kv, d_model=config.d_model, vocab_size=config.vocab_size,
            pad_token_id=config.pad_token_id, eos_token_id=tuple(eos if isinstance(eos, list) else [eos]),
            decoder_start_token_id=config.decoder_start_token_id, dtype=dtype, target=target,
            quantization="int8-dynamic" if quantize else None, opset=graph_opset, versions=_versions(),
            export_options={"target": target, "fp16": fp16, "quantize": quantize, "layout": layout,
                            "opset": opset, "atol": atol})
        manifest.write(out_dir)
        advance()
        if validate:
            manifest = _validate(manifest, model, out_dir, tokenizer, target, dtype, quantize, atol)
            advance()
    return manifest


def _validate(manifest: mf.Manifest, model: str, out_dir: Path, tokenizer, target: str, dtype: str,
              quantize: str | None, atol: float | None) -> mf.Manifest:
    import dataclasses

    from transformers import AutoModelForSeq2SeqLM

    from .validate import compare_with_pytorch

    if atol is None and not quantize:
        atol = DEFAULT_ATOL[dtype]
    torch_model = AutoModelForSeq2SeqLM.from_pretrained(model).eval()
    try:
        report = compare_with_pytorch(out_dir, torch_model, tokenizer, provider=target, atol=atol)
    except OrtDecodeError as exc:
        raise ExportError(f"the export in {out_dir} could not be validated: {exc} (use --no-validate to skip)") from None
    manifest = dataclasses.replace(manifest, validation=report.to_dict())
    manifest.write(out_dir)
    if report.passed is False:
        raise ExportError(
            f"validation failed: max |logits - PyTorch logits| = {report.max_abs_diff:.3g} > atol {atol:g} "
            f"({report.inputs} inputs, {report.steps} steps); the export in {out_dir} is marked failed")
    return manifest
