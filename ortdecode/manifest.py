"""The export manifest: what `ortdecode export` writes beside the graphs, and what `load` trusts.

The manifest (``ortdecode.json``) maps every logical tensor the engine needs to the name it has in the
graph, records the model's shape and special ids, and lists each graph file with its sha256. The
runtime never guesses a tensor name: it reads them here, and `check_session` compares them with
what ONNX Runtime reports for the loaded graphs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import ModelFolderError
from .model_files import external_data_files, file_in_folder, read_json_file

MANIFEST_FILE = "ortdecode.json"
FORMAT = "ortdecode-export"
FORMAT_VERSION = 1

# Graph roles. An export holds the encoder, the cache-reorder graph, and one or more decoder layouts: the
# pair (decoder, decoder_with_past), the merged decoder, or decoder_with_past alone when the encoder also
# outputs the cross-attention cache (the with-past layout).
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
    # int64[rows, past + 1] in the decoder graphs; None in exports made before it existed (static batching only)
    decoder_attention_mask: str | None = None


@dataclass(frozen=True)
class GraphFile:
    file: str
    sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    external_data: dict[str, str] = field(default_factory=dict)  # weights file the graph names -> sha256


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
    encoder_length_multiple: int = 1  # LongT5: the encoder runs on whole attention blocks (inputs are padded)
    # The with-past decoder writes each step's self-attention key and value into the past buffer it reads when
    # that buffer is also bound as the present output; the buffer may then have more columns than the cache
    # holds (the decoder attention mask, [rows, past + 1], says how many are cached). export/cache_in_place.py
    self_cache_in_place: bool = False
    # The encoder computes its per-token work on the real tokens only (export/packed_encoder.py): the runner splits
    # a batch into length groups only when attention over the padding would cost more (runner._PACKED_ENCODER_COSTS)
    encoder_packs_tokens: bool = False
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

    @property
    def encoder_computes_cross_cache(self) -> bool:
        """Whether the encoder graph also outputs every layer's cross-attention key and value."""
        outputs = set(self.graphs[ENCODER].outputs) if ENCODER in self.graphs else set()
        return all(name in outputs for layer in self.layers for name in (layer.present_cross_key,
                                                                         layer.present_cross_value))

    @property
    def has_with_past_decoder(self) -> bool:
        """The with-past layout: the with-past decoder serves every step, the encoder computes the cross cache."""
        return DECODER_WITH_PAST in self.graphs and self.encoder_computes_cross_cache

    @property
    def decoder_layouts(self) -> list[str]:
        """The decoder layouts this export can be loaded with, the least memory first."""
        return [name for name, present in (("with-past", self.has_with_past_decoder),
                                           ("merged", self.has_merged_decoder),
                                           ("split", self.has_split_decoder)) if present]

    @property
    def cache_names(self) -> set[str]:
        """Every graph name of a KV tensor (shaped [rows, num_heads, length, d_kv])."""
        return {name for layer in self.layers for name in dataclasses.astuple(layer)}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        data = dict(data)
        data["graphs"] = {role: GraphFile(**{**g, "inputs": tuple(g["inputs"]), "outputs": tuple(g["outputs"]),
                                             "external_data": dict(g.get("external_data", {}))})
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
    path = file_in_folder(folder, MANIFEST_FILE, "manifest")
    if not path.is_file() and (folder / "encoder_model.onnx").is_file():
        raise ModelFolderError(f"{folder} is a plain Optimum export: run `ortdecode adopt {folder} OUT_DIR` to add "
                               f"the {MANIFEST_FILE} and cache-reorder graph ortdecode needs")
    if not path.is_file():
        raise ModelFolderError(
            f"{folder} is not an ortdecode export: {MANIFEST_FILE} is missing (make one with `ortdecode export`)")
    data = read_json_file(folder, MANIFEST_FILE)
    if data.get("format") != FORMAT:
        raise ModelFolderError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(
            f"{path}: format_version {data.get('format_version')} is not supported (this ortdecode reads "
            f"{FORMAT_VERSION}); export the model again")
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ModelFolderError(f"{path} is incomplete or malformed: {exc}") from None
    if ENCODER not in manifest.graphs or CACHE_REORDER not in manifest.graphs:
        raise ModelFolderError(f"{path} lists no {ENCODER!r} or {CACHE_REORDER!r} graph")
    _check_shape_fields(path, manifest)
    if not manifest.decoder_layouts:
        raise ModelFolderError(
            f"{path} lists neither the decoder pair ({DECODER}, {DECODER_WITH_PAST}), nor {DECODER_MERGED!r}, nor "
            f"{DECODER_WITH_PAST!r} with an encoder that outputs the cross-attention cache")
    for role, graph in manifest.graphs.items():
        file_in_folder(folder, graph.file, f"graph file of {role!r} in {MANIFEST_FILE}")
        for name in graph.external_data:
            file_in_folder(folder, name, f"external data of {graph.file} in {MANIFEST_FILE}")
    missing = [g.file for g in manifest.graphs.values() if not (folder / g.file).is_file()]
    if missing:
        raise ModelFolderError(f"{folder}: graph files listed in {MANIFEST_FILE} are missing: {', '.join(missing)}")
    return manifest


def validation_problem(manifest: Manifest) -> tuple[str, str] | None:
    """What the export's validation record says against using it: ("failed", why) when the comparison with
    PyTorch failed or did not finish, ("unvalidated", why) when it never ran; None when it passed or was
    measured (int8 without a tolerance)."""
    record = manifest.validation
    status = record.get("status")
    if status in ("crashed", "running") or (not record and manifest.export_options.get("validate")):
        return "failed", f"its validation against PyTorch did not finish ({record.get('error', 'no result recorded')})"
    if record.get("passed") is False or status == "failed":
        why = record.get("reason") or f"max |logits - PyTorch logits| = {record.get('max_abs_diff')}"
        return "failed", f"its validation against PyTorch failed: {why}"
    if not record or status == "skipped":
        return "unvalidated", "it was never compared with PyTorch (exported with --no-validate, or adopted " \
                              "without --reference)"
    return None


def _check_shape_fields(path: Path, manifest: Manifest) -> None:
    def positive(name):
        value = getattr(manifest, name)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ModelFolderError(f"{path}: `{name}` has to be a positive integer, but is {value!r}")

    for name in ("num_layers", "num_decoder_layers", "num_heads", "d_kv", "d_model", "vocab_size",
                 "encoder_length_multiple"):
        positive(name)
    if len(manifest.layers) != manifest.num_decoder_layers:
        raise ModelFolderError(f"{path}: `num_decoder_layers` is {manifest.num_decoder_layers}, but `layers` names "
                               f"the cache tensors of {len(manifest.layers)} layers")
    if manifest.dtype not in ("float32", "float16"):
        raise ModelFolderError(f"{path}: `dtype` has to be 'float32' or 'float16', but is {manifest.dtype!r}")
    ids = [manifest.pad_token_id, manifest.decoder_start_token_id, *manifest.eos_token_id]
    if not all(isinstance(i, int) and 0 <= i < manifest.vocab_size for i in ids):
        raise ModelFolderError(f"{path}: special token ids {ids} have to lie in [0, vocab_size={manifest.vocab_size})")


def external_data_of(folder: str | Path, graph_file: str, names: Iterable[str] | None = None) -> dict[str, Path]:
    """The external-data files one graph reads (location as written -> path), each checked to lie inside
    the folder and to exist. names: what the graph names, when known (else read from the graph)."""
    folder = Path(folder)
    paths = {name: file_in_folder(folder, name, f"external data named by {graph_file}")
             for name in (external_data_files(folder / graph_file) if names is None else names)}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise ModelFolderError(f"{folder}: {graph_file} names external data that is missing: {', '.join(missing)}")
    return paths


def sha256_of(path: str | Path, chunk_size: int = 1 << 22) -> str:
    import hashlib  # here: it loads OpenSSL's libcrypto (3.5 MiB RSS), which a load of verified files never needs

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: str | Path, manifest: Manifest | None = None, roles: Iterable[str] | None = None, *,
                     trust_unchanged: bool = False) -> None:
    """Hash the graph files of `roles` (default: all) and their external data; compare with the manifest.

    trust_unchanged: a file that matched the same sha256 before and is unchanged since (by its size, times,
    inode and device: `ortdecode.verified`) is not hashed again; `load` does this, an explicit check not."""
    from .verified import VerifiedFiles, file_signature

    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    verified = VerifiedFiles() if trust_unchanged else None

    def matches(path: Path, expected: str) -> bool:
        if verified is not None and verified.unchanged_since_match(path, expected):
            return True
        signature = file_signature(path)
        if sha256_of(path) != expected:
            return False
        if verified is not None:
            verified.remember(path, expected, signature)
        return True

    bad = []
    for role in (roles if roles is not None else manifest.graphs):
        graph = manifest.graphs[role]
        path = folder / graph.file
        names = verified.external_data(path, graph.sha256) if verified is not None else None
        if names is None:  # hash the graph; remembered with the names it gives once they are the manifest's
            signature = file_signature(path)
            if sha256_of(path) != graph.sha256:
                bad.append(graph.file)
                continue
            names = external_data_files(path)
            if verified is not None and set(names) == set(graph.external_data):
                verified.remember(path, graph.sha256, signature, names)
        named = external_data_of(folder, graph.file, names)
        if set(named) != set(graph.external_data):
            raise ModelFolderError(f"{folder}: {graph.file} names external data {sorted(named) or 'none'}, but "
                                   f"{MANIFEST_FILE} lists {sorted(graph.external_data) or 'none'}")
        bad += [name for name, path in named.items() if not matches(path, graph.external_data[name])]
    if verified is not None:
        verified.save()
    if bad:
        raise ModelFolderError(f"{folder}: sha256 of {', '.join(bad)} does not match {MANIFEST_FILE} "
                               "(a changed, truncated or corrupt file)")


_ELEMENT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)"}


def check_session(manifest: Manifest, role: str, inputs: Iterable, outputs: Iterable,
                  required_inputs: Iterable[str], required_outputs: Iterable[str]) -> None:
    """Compare a loaded graph (ONNX Runtime's NodeArg lists) with the manifest: the names the engine binds,
    the lists the manifest recorded, and the KV and logits shapes and element types."""
    graph = manifest.graphs[role]
    where = f"graph {graph.file} ({role})"
    have_in, have_out = {a.name: a for a in inputs}, {a.name: a for a in outputs}
    missing = [f"input {n}" for n in required_inputs if n not in have_in]
    missing += [f"output {n}" for n in required_outputs if n not in have_out]
    if missing:
        raise ModelFolderError(f"{where} lacks what the manifest names: {', '.join(missing)}")
    unbound = sorted(set(have_in) - set(required_inputs))
    if unbound:
        raise ModelFolderError(f"{where} has inputs the manifest does not name: {', '.join(unbound)} "
                               f"(the manifest describes {manifest.num_decoder_layers} decoder layers)")
    if set(have_in) != set(graph.inputs) or set(have_out) != set(graph.outputs):
        raise ModelFolderError(f"{where}: its inputs/outputs differ from those {MANIFEST_FILE} lists for it")
    element_type = _ELEMENT_TYPES[manifest.dtype]
    for name in manifest.cache_names & (set(have_in) | set(have_out)):
        arg = have_in.get(name) or have_out[name]
        expected = {1: manifest.num_heads, 3: manifest.d_kv}
        wrong = [f"dim {axis} is {arg.shape[axis]}, not {size}" for axis, size in expected.items()
                 if len(arg.shape) == 4 and isinstance(arg.shape[axis], int) and arg.shape[axis] != size]
        if len(arg.shape) != 4 or wrong or arg.type != element_type:
            raise ModelFolderError(f"{where}: cache tensor {name} is {arg.type}{list(arg.shape)}, but the manifest "
                                   f"says {element_type}[rows, {manifest.num_heads}, length, {manifest.d_kv}]")
    logits = have_out.get(manifest.names.logits)
    if logits is not None and isinstance(logits.shape[-1], int) and logits.shape[-1] != manifest.vocab_size:
        raise ModelFolderError(f"{where}: logits have {logits.shape[-1]} entries, but the manifest says "
                               f"vocab_size {manifest.vocab_size}")
