"""`export_model`: a Hugging Face T5 (hub id or folder) to an ortdecode export folder.

Load, export, optimize, save, validate (CTranslate2's converter order): Optimum writes the encoder and
decoder graphs; CPU targets get fused attention in the with-past decoder and an encoder that skips the
padding, CUDA targets ONNX Runtime's T5
fusions, int8 targets dynamic quantization; the cache-reorder graph, tokenizer and configs are added; the manifest records names, shapes, ids, versions
and sha256; finally the export is compared with PyTorch and the result written into the manifest. All of
it happens in a staging folder beside OUT_DIR that is renamed into place at the end (`out_dir`).
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from .families import encoder_length_multiple, model_type_refusal, tokenizer_refusal
from .out_dir import check_out_dir, export_lock, publish, staging_folder

OPTIMUM_FILES = {
    mf.ENCODER: "encoder_model.onnx",
    mf.DECODER: "decoder_model.onnx",
    mf.DECODER_WITH_PAST: "decoder_with_past_model.onnx",
    mf.DECODER_MERGED: "decoder_model_merged.onnx",
}
CACHE_REORDER_FILE = "cache_reorder.onnx"


class ExportError(OrtDecodeError):
    """The export could not be made, or does not match PyTorch within tolerance."""


class ExportWarning(UserWarning):
    """The export was made, differently from what was asked (e.g. without ONNX Runtime's CUDA fusions)."""


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


LAYOUTS = ("with-past", "split", "merged", "both", "all")


def default_layout(target: str) -> str:
    """with-past on CPU (the least memory); split for CUDA, whose fusions rewrite the decoder pair."""
    return "split" if target == "cuda" else "with-past"


def layout_roles(layout: str) -> list[str]:
    """The graphs an export of `layout` holds (the cache-reorder graph besides)."""
    roles = [mf.ENCODER]
    roles += [mf.DECODER] if layout in ("split", "both", "all") else []
    roles += [mf.DECODER_WITH_PAST] if layout != "merged" else []
    roles += [mf.DECODER_MERGED] if layout in ("merged", "both", "all") else []
    return roles


def encoder_computes_cross_cache(layout: str) -> bool:
    return layout in ("with-past", "all")


def packs_encoder_tokens(target: str, config, pack_encoder: bool = True) -> bool:
    """Whether an export with these options packs the encoder's tokens (CPU targets; not LongT5, whose blocked
    attention pads inputs to whole blocks)."""
    return pack_encoder and target == "cpu" and encoder_length_multiple(config) == 1


def saves_ort_optimized(target: str, ort_optimize: bool = True) -> bool:
    """Whether an export with these options saves its graphs as ONNX Runtime optimizes them (CPU targets)."""
    return ort_optimize and target == "cpu"


def fuses_projections(target: str, fuse_projections: bool = True) -> bool:
    """Whether the export gives projections of the same activations one GEMM (`projection_fusion`)."""
    return fuse_projections and target == "cpu"


def fuses_attention(target: str, layout: str, fuse_attention: bool = True) -> bool:
    """Whether an export with these options runs the attention fusion (CPU targets with a with-past decoder)."""
    return fuse_attention and target == "cpu" and mf.DECODER_WITH_PAST in layout_roles(layout)


def _check_options(target: str, fp16: bool, quantize: str | None, layout: str) -> None:
    if target not in ("cpu", "cuda"):
        raise ValueError(f"`target` has to be 'cpu' or 'cuda', but is {target!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"`layout` has to be one of {', '.join(map(repr, LAYOUTS))}, but is {layout!r}")
    if quantize not in (None, "int8"):
        raise ValueError(f"`quantize` has to be None or 'int8', but is {quantize!r}")
    if fp16 and target != "cuda":
        raise ValueError("--fp16 needs --target cuda (float16 T5 is for GPUs; on CPU use --quantize int8)")
    if quantize and target != "cpu":
        raise ValueError("--quantize int8 is for CPU exports; it cannot be combined with --target cuda")
    if target == "cuda" and layout != "split":
        raise ValueError("--target cuda rewrites the split decoder graphs: use --layout split")
    if quantize and layout not in ("split", "with-past"):
        raise ValueError("--quantize int8 rewrites the split or with-past graphs: use --layout with-past or split")


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
    refusal = model_type_refusal(source, config.model_type)
    if refusal:
        raise ExportError(refusal)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    except (OSError, ValueError) as exc:
        raise ExportError(f"MODEL {source!r} has no usable tokenizer: {str(exc).splitlines()[0]}") from None
    refusal = tokenizer_refusal(source, tokenizer)
    if refusal:
        raise ExportError(refusal)
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
                 quantize: str | None = None, layout: str | None = None, opset: int | None = None,
                 atol: float | None = None, validate: bool = True, force: bool = False,
                 progress: bool = True, decoder_mask: bool = True, fuse_attention: bool = True,
                 pack_encoder: bool = True, ort_optimize: bool = True,
                 fuse_projections: bool = True) -> mf.Manifest:
    """Export MODEL (a Hugging Face id or local checkpoint folder) to OUT_DIR and return its manifest.

    The export is built beside OUT_DIR and moved into place when complete; a second export into the
    same OUT_DIR meanwhile is refused. Validation compares the export's logits with PyTorch float32 and
    float64 (`parity.judge`); `atol` overrides that rule with max |logits - PyTorch float32 logits| <= atol.
    int8 exports are measured, not judged, unless `atol` is given. A failed validation raises
    `ExportError` and leaves the export in OUT_DIR with `validation.passed = false` (`load` refuses it).
    A folder written by Optimum (`optimum-cli export onnx`) is adopted as it is (`adopt_optimum_export`).
    layout: "with-past" (the default on CPU: the encoder also computes the cross-attention cache, one with-past
    decoder graph serves every step, weights in external data files), "split" (the default for CUDA: first-step
    and with-past decoders), "merged" (Optimum's merged decoder), "both" (split and merged) or "all" (every
    graph, the encoder computing the cross cache, weights inside the graphs: for comparing layouts).
    decoder_mask: give the decoder graphs a decoder attention mask (continuous batching needs it).
    fuse_attention: CPU targets: the with-past decoder's attention blocks become ONNX Runtime's MultiHeadAttention
    (`attention_fusion`; the manifest's export_options["attention_fusion"] says how many).
    pack_encoder: CPU targets: the encoder's per-token work runs on the real tokens only, not on the padding
    (`packed_encoder`; the manifest's `encoder_packs_tokens`).
    ort_optimize: CPU targets: each graph is saved as ONNX Runtime's CPU provider optimizes it (`ort_optimize`;
    the manifest's export_options["ort_optimized"]), so that loading it does not optimize it again.
    fuse_projections: CPU targets: projections of the same activations (query, key and value; the cross cache's
    keys and values) become one GEMM each (`projection_fusion`; the manifest's
    export_options["projection_fusion"] says how many per graph)."""
    from .adopt import adopt_optimum_export, is_optimum_export

    out_dir = Path(out_dir)
    model = str(model)
    if is_optimum_export(model):
        _check_options(target, fp16, quantize, layout or "split")
        if (target, fp16, quantize, layout, opset, atol) != ("cpu", False, None, None, None, None):
            raise ValueError(f"MODEL {model} is an Optimum export: it is adopted as it is (no --target, --dtype, "
                             "--quantize, --layout, --opset or --atol); see `ortdecode adopt`")
        return adopt_optimum_export(model, out_dir, force=force, progress=progress)
    layout = layout or default_layout(target)
    _check_options(target, fp16, quantize, layout)
    dtype = "float16" if fp16 else "float32"
    if validate and target == "cuda":
        _check_cuda_validation_possible()
    # Everything that can be wrong with the inputs is found before anything is written or shown.
    with export_lock(out_dir):
        check_out_dir(out_dir, model, force)
        with _quiet_libraries():
            config, tokenizer = _load_checkpoint(model)
        steps = ["export graphs with Optimum"]
        steps += ["compute the cross-attention cache in the encoder"] if encoder_computes_cross_cache(layout) else []
        fusing = fuses_attention(target, layout, fuse_attention)
        steps += ["fuse for CUDA"] if target == "cuda" else []
        steps += ["quantize int8"] if quantize else []
        steps += ["fuse attention"] if fusing else []
        packing = packs_encoder_tokens(target, config, pack_encoder)
        steps += ["pack the encoder's tokens"] if packing else []
        optimizing = saves_ort_optimized(target, ort_optimize)
        fusing_projections = fuses_projections(target, fuse_projections)
        steps += ["fuse projections of the same activations"] if fusing_projections else []
        steps += ["optimize for ONNX Runtime's CPU provider"] if optimizing else []
        steps += ["write cache-reorder graph, tokenizer, manifest"] + (["validate against PyTorch"] if validate else [])
        notes: list[str] = []
        with tqdm(total=len(steps), desc="export", unit="step", disable=not progress, file=sys.stderr) as bar, \
                _quiet_libraries(), staging_folder(out_dir) as staging:
            bar.set_postfix_str(steps[0])

            def advance() -> None:
                bar.update(1)
                if bar.n < len(steps):
                    bar.set_postfix_str(steps[bar.n])

            roles = layout_roles(layout)
            layers = _layer_names(config.num_decoder_layers or config.num_layers)
            with tempfile.TemporaryDirectory(prefix=".optimum-", dir=staging) as work:
                work = Path(work)
                from optimum.exporters.onnx import main_export

                from .decoder_mask import decoder_mask_onnx_configs

                main_export(model, output=work, task="text2text-generation-with-past", opset=opset,
                            do_validation=False, no_post_process=mf.DECODER_MERGED not in roles, device="cpu",
                            custom_onnx_configs=decoder_mask_onnx_configs(config) if decoder_mask else None)
                advance()
                if encoder_computes_cross_cache(layout):
                    from .cross_cache import CrossCacheError, add_cross_cache_outputs

                    try:
                        add_cross_cache_outputs(work / OPTIMUM_FILES[mf.ENCODER], work / OPTIMUM_FILES[mf.DECODER],
                                                list(layers), num_heads=config.num_heads, d_kv=config.d_kv)
                    except CrossCacheError as exc:
                        raise ExportError(f"MODEL {model!r}: --layout {layout} cannot compute the cross-attention "
                                          f"cache in the encoder: {exc}; use --layout split") from None
                    advance()
                fusion, packed, optimized, projections = None, None, {}, {}
                for role in roles:
                    source, final = work / OPTIMUM_FILES[role], staging / OPTIMUM_FILES[role]
                    if not source.exists():
                        raise ExportError(f"Optimum did not write {source.name} for MODEL {model!r}")
                    if target == "cuda":
                        from .cuda_fusion import fuse_for_cuda

                        note = fuse_for_cuda(source, final, num_heads=config.num_heads, d_kv=config.d_kv, fp16=fp16)
                        notes += [f"{source.name}: {note}"] if note else []
                    elif quantize:
                        from .quantize import quantize_graph_int8

                        quantize_graph_int8(source, final)
                    else:
                        shutil.move(str(source), str(final))
                    for extra in work.glob(OPTIMUM_FILES[role] + "_data"):  # external weights of > 2 GB graphs
                        shutil.move(str(extra), str(staging / extra.name))
                    if fusing and role == mf.DECODER_WITH_PAST:  # after quantizing: see attention_fusion
                        from .attention_fusion import fuse_attention_file

                        fusion = fuse_attention_file(final, config.num_heads)
                        if fusion.fused < fusion.blocks:
                            notes.append(f"{final.name}: only {fusion}; the others stay as Optimum wrote them")
                    if packing and role == mf.ENCODER:  # after quantizing: its ranges then come from real tokens
                        from .packed_encoder import pack_encoder_tokens_file

                        packed = pack_encoder_tokens_file(final)
                    if layout == "with-past":  # "all" keeps them inside: it is for comparing layouts
                        from .cross_cache import store_weights_externally

                        store_weights_externally(final)
                    if fusing_projections:  # after attention fusion: it packs GroupQueryAttention's q, k, v
                        from .projection_fusion import fuse_projections_file

                        projections[final.name] = str(fuse_projections_file(final))
                    if optimizing:  # last: it saves the graph that the passes above wrote, optimized
                        from .ort_optimize import save_ort_optimized

                        optimized[final.name] = save_ort_optimized(final)
                if target == "cuda":
                    advance()
                if quantize:
                    advance()
                if fusing:
                    advance()
                if packing:
                    advance()
                if fusing_projections:
                    advance()
                if optimizing:
                    advance()
                for name in ("config.json", "generation_config.json"):
                    if (work / name).exists():
                        shutil.copy(work / name, staging / name)
            export_options = {"target": target, "fp16": fp16, "quantize": quantize, "layout": layout, "opset": opset,
                              "atol": atol, "validate": validate, "decoder_mask": decoder_mask}
            if target == "cuda":
                export_options["cuda_fusion"] = "; ".join(notes) if notes else "fused"
            if fusion is not None:
                export_options["attention_fusion"] = f"{OPTIMUM_FILES[mf.DECODER_WITH_PAST]}: {fusion}"
            if packed is not None:
                export_options["packed_encoder"] = f"{OPTIMUM_FILES[mf.ENCODER]}: {packed}"
            if optimized:
                from .ort_optimize import optimized_by

                export_options["ort_optimized"] = {**optimized_by(), "graphs": optimized}
            if projections:
                export_options["projection_fusion"] = projections
            manifest = write_manifest(staging, config, tokenizer, roles, source=_recorded_source(model), dtype=dtype,
                                      target=target, quantization="int8-dynamic" if quantize else None,
                                      export_options=export_options,
                                      self_cache_in_place=bool(fusion is not None and fusion.in_place),
                                      encoder_packs_tokens=bool(packed is not None and packed.packed_nodes))
            advance()
            failure = None
            if validate:
                manifest, failure = validate_into_manifest(manifest, staging, out_dir, lambda: _torch_model(model),
                                                           tokenizer, target, atol)
                advance()
            publish(staging, out_dir)
    for note in notes:
        warnings.warn(f"{out_dir}: {note}", ExportWarning, stacklevel=2)
    if failure:
        raise ExportError(failure)
    return manifest


def _check_cuda_validation_possible() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise ExportError("a --target cuda / --dtype fp16 export is validated on ONNX Runtime's CUDA provider, which "
                          "this install lacks (it needs onnxruntime-gpu and a GPU): pass --no-validate to export "
                          "anyway, then `ortdecode validate` the folder on a GPU machine")


def _torch_model(source: str):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(source).eval()


def write_manifest(folder: Path, config, tokenizer, roles: list[str], *, source: str, dtype: str, target: str,
                   quantization: str | None, export_options: dict, self_cache_in_place: bool = False,
                   encoder_packs_tokens: bool = False) -> mf.Manifest:
    """Add the cache-reorder graph and the tokenizer to a folder holding Optimum's graphs (and config.json,
    generation_config.json), then write the manifest."""
    tokenizer.save_pretrained(folder)
    num_decoder_layers = config.num_decoder_layers or config.num_layers
    layers = _layer_names(num_decoder_layers)
    names = mf.TensorNames()  # the decoder attention mask is added below when the decoder graphs take one
    write_cache_reorder_graph(folder / CACHE_REORDER_FILE, layers=list(layers), num_heads=config.num_heads,
                              d_kv=config.d_kv, dtype=dtype, indices_name=names.reorder_indices)
    graphs, graph_opset = {}, 0
    for role in roles + [mf.CACHE_REORDER]:
        file = OPTIMUM_FILES.get(role, CACHE_REORDER_FILE)
        inputs, outputs, version = _graph_io(folder / file)
        graph_opset = version if role == mf.ENCODER else graph_opset
        external = {name: mf.sha256_of(path) for name, path in mf.external_data_of(folder, file).items()}
        graphs[role] = mf.GraphFile(file=file, sha256=mf.sha256_of(folder / file), inputs=inputs, outputs=outputs,
                                    external_data=external)
    from .decoder_mask import DECODER_MASK_GRAPH_NAME

    decoder_inputs = graphs[roles[1]].inputs  # the first decoder graph: split or merged
    if DECODER_MASK_GRAPH_NAME in decoder_inputs:
        names = dataclasses.replace(names, decoder_attention_mask=DECODER_MASK_GRAPH_NAME)
    from transformers import GenerationConfig as HFGenerationConfig

    try:
        generation = HFGenerationConfig.from_pretrained(folder)
    except OSError:  # the checkpoint had none: transformers derives it from config.json
        generation = HFGenerationConfig.from_model_config(config)
    eos = generation.eos_token_id if generation.eos_token_id is not None else config.eos_token_id
    manifest = mf.Manifest(
        model_type=config.model_type, source=source, graphs=graphs, names=names, layers=layers,
        num_layers=config.num_layers, num_decoder_layers=num_decoder_layers, num_heads=config.num_heads,
        d_kv=config.d_kv, d_model=config.d_model, vocab_size=config.vocab_size,
        pad_token_id=config.pad_token_id, eos_token_id=tuple(eos if isinstance(eos, list) else [eos]),
        decoder_start_token_id=config.decoder_start_token_id, dtype=dtype, target=target,
        quantization=quantization, opset=graph_opset, encoder_length_multiple=encoder_length_multiple(config),
        versions=_versions(), export_options=export_options, self_cache_in_place=self_cache_in_place,
        encoder_packs_tokens=encoder_packs_tokens,
        validation={"status": "running"} if export_options.get("validate") else {"status": "skipped"})
    manifest.write(folder)
    return manifest


def validate_into_manifest(manifest: mf.Manifest, folder: Path, out_dir: Path, torch_model, tokenizer, provider: str,
                           atol: float | None) -> tuple[mf.Manifest, str | None]:
    """Compare the export in `folder` (to be published as `out_dir`) with PyTorch, record the result in its
    manifest; return the manifest and, when the export failed, the sentence to raise."""
    from .validate import compare_with_pytorch

    try:
        report = compare_with_pytorch(folder, torch_model(), tokenizer, provider=provider, atol=atol)
    except Exception as exc:  # noqa: BLE001  (recorded: the export stays, marked as not validated)
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        manifest = dataclasses.replace(manifest, validation={"status": "crashed", "passed": False, "error": message})
        manifest.write(folder)
        return manifest, (f"the export in {out_dir} could not be validated ({message}); it is marked failed "
                          "(use --no-validate to skip the validation)")
    manifest = dataclasses.replace(manifest, validation=report.to_dict())
    manifest.write(folder)
    if report.passed is False:
        return manifest, (f"validation failed: {report.reason} ({report.inputs} inputs, {report.steps} steps); the "
                          f"export in {out_dir} is marked failed (--atol sets your own bound on max |logits - PyTorch "
                          "float32 logits|)")
    return manifest, None
