"""The export manifest: what `ortdecode export` writes beside the graphs, and what `load` trusts.

The manifest (``ortdecode.json``) maps every logical tensor the engine needs to the name it has in the
graph, records the model's shape and special ids, and lists each graph file with its sha256. The
runtime never guesses a tensor name: it reads them here, and `check_session_names` compares them with
what ONNX Runtime reports for the loaded graphs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import ModelFolderError

MANIFEST_FILE = "ortdecode.json"
FORMAT = "ortdecode-export"
FORMAT_VERSION = 1

# Graph roles. An export holds the encoder, the cache-reorder graph, and either the pair
# (decoder, decoder_with_past) or the merged decoder (or all three).
ENCODER = "encoder"
DECODER = "decoder"  # first step: no past, takes the encoder output, returns self + cross KV
DECODER_WITH_PAST = "decoder_with_past"  # later steps: takes the KV cache, returns the new self KV
DECODER_MERGED = "decoder_merged"  # both of the above behind one `use_cache_branch` switch
CACHE_REORDER = "cache_reorder"  # Gather over the batch axis of every self-attention KV tensor


@dataclass(frozen=True)
class LayerCacheNames:
    """Graph names of one decoder layer's KV tensors, all shaped [rows, heads, length, d_kv]."""

    past_self_key: str
    past_self_value: str
    past_cross_key: str
    past_cross_value: str
    present_self_key: str
    present_self_value: str
    present_cross_key: str
    present_cross_value: str
    reorder_in_key: str
    reorder_in_value: str
    reorder_out_key: str
    reorder_out_value: str


@dataclass(frozen=True)
class TensorNames:
    """Graph names of the tensors that are not part of the KV cache."""

    encoder_input_ids: str = "input_ids"
    encoder_attention_mask: str = "attention_mask"
    encoder_output: str = "last_hidden_state"
    decoder_input_ids: str = "input_ids"
    decoder_encoder_attention_mask: str = "encoder_attention_mask"
    decoder_encoder_hidden_states: str = "encoder_hidden_states"
    use_cache_branch: str = "use_cache_branch"
    logits: str = "logits"
    reorder_indices: str = "beam_idx"


@dataclass(frozen=True)
class GraphFile:
    file: str
    sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    """What an export folder holds. Written by `ortdecode export`, read by `ortdecode.load`."""

    model_type: str
    source: str
    graphs: dict[str, GraphFile]
    names: TensorNames
    layers: tuple[LayerCacheNames, ...]
    num_layers: int
    num_decoder_layers: int
    num_heads: int
    d_kv: int
    d_model: int
    vocab_size: int
    pad_token_id: int
    eos_token_id: tuple[int, ...]
    decoder_start_token_id: int
    dtype: str  # element type of the KV cache and logits: "float32" or "float16"
    target: str  # what the graphs were optimized for: "cpu" or "cuda"
    quantization: str | None  # None or "int8-dynamic"
    opset: int
    versions: dict = field(default_factory=dict)
    export_options: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def has_split_decoder(self) -> bool:
        return DECODER in self.graphs and DECODER_WITH_PAST in self.graphs

    @property
    def has_merged_decoder(self) -> bool:
        return DECODER_MERGED in self.graphs

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        data = dict(data)
        data["graphs"] = {role: GraphFile(**{**g, "inputs": tuple(g["inputs"]), "outputs": tuple(g["outputs"])})
                          for role, g in data["graphs"].items()}
        data["names"] = TensorNames(**data["names"])
        data["layers"] = tuple(LayerCacheNames(**layer) for layer in data["layers"])
        data["eos_token_id"] = tuple(data["eos_token_id"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_manifest(folder: str | Path) -> Manifest:
    """Read and check the manifest of an export folder; raise `ModelFolderError` naming what is wrong."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelFolderError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelFolderError(f"model path {folder} is not a folder")
    path = folder / MANIFEST_FILE
    if not path.exists():
        raise ModelFolderError(
            f"{folder} is not an ortdecode export: {MANIFEST_FILE} is missing (make one with `ortdecode export`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{path} is not valid JSON: {exc}") from None
    if data.get("format") != FORMAT:
        raise ModelFolderError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(
            f"{path}: format_version {data.get('format_version')} is not supported (this ortdecode reads "
            f"{FORMAT_VERSION}); export the model again")
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise ModelFolderError(f"{path} is incomplete or malformed: {exc}") from None
    if ENCODER not in manifest.graphs or CACHE_REORDER not in manifest.graphs:
        raise ModelFolderError(f"{path} lists no {ENCODER!r} or {CACHE_REORDER!r} graph")
    if not (manifest.has_split_decoder or manifest.has_merged_decoder):
        raise ModelFolderError(
            f"{path} lists neither the decoder pair ({DECODER}, {DECODER_WITH_PAST}) nor {DECODER_MERGED!r}")
    missing = [g.file for g in manifest.graphs.values() if not (folder / g.file).exists()]
    if missing:
        raise ModelFolderError(f"{folder}: graph files listed in {MANIFEST_FILE} are missing: {', '.join(missing)}")
    return manifest


def sha256_of(path: str | Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: str | Path, manifest: Manifest | None = None) -> None:
    """Hash every graph file (and its external-data file, if any) and compare with the manifest."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    bad = [g.file for g in manifest.graphs.values() if sha256_of(folder / g.file) != g.sha256]
    if bad:
        raise ModelFolderError(f"{folder}: sha256 of {', '.join(bad)} does not match {MANIFEST_FILE}")


def check_session_names(role: str, graph: GraphFile, session_inputs: Iterable[str],
                        session_outputs: Iterable[str], required_inputs: Iterable[str],
                        required_outputs: Iterable[str]) -> None:
    """Compare the names the engine will bind with what the loaded graph really has."""
    have_in, have_out = set(session_inputs), set(session_outputs)
    missing = [f"input {n}" for n in required_inputs if n not in have_in]
    missing += [f"output {n}" for n in required_outputs if n not in have_out]
    if missing:
        raise ModelFolderError(f"graph {graph.file} ({role}) lacks what the manifest names: {', '.join(missing)}")
