"""Adopt a plain Optimum export (`optimum-cli export onnx`, as many published ONNX T5s are): copy its
graphs, tokenizer and configs into an ortdecode export folder and add what the engine needs beside
them, the cache-reorder graph and the manifest. Optimum's graphs are used as they are.

With `reference` (the PyTorch checkpoint the graphs came from) the adopted export is validated like
any other; without one it is recorded as unvalidated (`load` then warns once).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import onnx
from tqdm.auto import tqdm

from ortdecode import manifest as mf

from .out_dir import check_out_dir, export_lock, publish, staging_folder
from .pipeline import (OPTIMUM_FILES, ExportError, _load_checkpoint, _quiet_libraries, _recorded_source, _torch_model,
                       validate_into_manifest, write_manifest)

_ELEMENT_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


def is_optimum_export(path: str | Path) -> bool:
    """A folder with Optimum's encoder graph and decoder graphs, and no ortdecode manifest."""
    folder = Path(path)
    return (folder.is_dir() and (folder / OPTIMUM_FILES[mf.ENCODER]).is_file()
            and not (folder / mf.MANIFEST_FILE).exists()
            and any((folder / OPTIMUM_FILES[role]).is_file() for role in (mf.DECODER, mf.DECODER_MERGED)))


def _roles(folder: Path) -> list[str]:
    present = {role for role, file in OPTIMUM_FILES.items() if (folder / file).is_file()}
    pair = [mf.DECODER, mf.DECODER_WITH_PAST]
    roles = [mf.ENCODER] + (pair if set(pair) <= present else [])
    roles += [mf.DECODER_MERGED] if mf.DECODER_MERGED in present else []
    if len(roles) == 1:
        raise ExportError(f"{folder} holds no decoder with a KV cache (decoder_with_past_model.onnx or "
                          "decoder_model_merged.onnx): export it with Optimum's text2text-generation-with-past task")
    return roles


def _cache_dtype(graph_file: Path) -> str:
    graph = onnx.load(str(graph_file), load_external_data=False).graph
    kv = [o for o in graph.output if o.name.startswith("present.")]
    element = kv[0].type.tensor_type.elem_type if kv else onnx.TensorProto.FLOAT
    if element not in _ELEMENT_TYPES:
        raise ExportError(f"{graph_file}: KV cache element type {onnx.TensorProto.DataType.Name(element)} is not "
                          "float32 or float16")
    return _ELEMENT_TYPES[element]


def adopt_optimum_export(optimum_dir: str | Path, out_dir: str | Path, *, reference: str | Path | None = None,
                         provider: str = "cpu", atol: float | None = None, force: bool = False,
                         progress: bool = True) -> mf.Manifest:
    """Write an ortdecode export in OUT_DIR around the graphs of the Optimum export in `optimum_dir` and
    return its manifest; validate it against `reference` (a checkpoint folder or hub id) when given."""
    folder, out_dir = Path(optimum_dir), Path(out_dir)
    if not is_optimum_export(folder):
        raise ExportError(f"{folder} is not an Optimum export: it needs {OPTIMUM_FILES[mf.ENCODER]} and decoder graphs "
                          f"({OPTIMUM_FILES[mf.DECODER]} + {OPTIMUM_FILES[mf.DECODER_WITH_PAST]}, or "
                          f"{OPTIMUM_FILES[mf.DECODER_MERGED]}) and no {mf.MANIFEST_FILE}")
    roles = _roles(folder)
    steps = 2 if reference is not None else 1
    with export_lock(out_dir):
        check_out_dir(out_dir, folder, force)
        with _quiet_libraries():
            config, tokenizer = _load_checkpoint(str(folder))
        with tqdm(total=steps, desc="adopt", unit="step", disable=not progress, file=sys.stderr) as bar, \
                _quiet_libraries(), staging_folder(out_dir) as staging:
            for role in roles:
                file = OPTIMUM_FILES[role]
                for name in [file, *mf.external_data_of(folder, file)]:
                    shutil.copy(folder / name, staging / name)
            for name in ("config.json", "generation_config.json"):
                if (folder / name).exists():
                    shutil.copy(folder / name, staging / name)
            dtype = _cache_dtype(folder / OPTIMUM_FILES[roles[1]])
            options = {"adopted_from": str(folder), "reference": None if reference is None else str(reference),
                       "atol": atol, "validate": reference is not None}
            manifest = write_manifest(staging, config, tokenizer, roles, source=_recorded_source(str(folder)), dtype=dtype,
                                      target="cuda" if dtype == "float16" else "cpu", quantization=None,
                                      export_options=options)
            bar.update(1)
            failure = None
            if reference is not None:
                manifest, failure = validate_into_manifest(
                    manifest, staging, out_dir, lambda: _torch_model(str(reference)), tokenizer, provider, atol)
                bar.update(1)
            publish(staging, out_dir)
    if failure:
        raise ExportError(failure)
    return manifest
