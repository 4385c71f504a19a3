"""The files of a model folder: every path ortdecode opens has to stay inside the folder it was given.

A manifest entry, a tokenizer file or an ONNX external-data reference that is absolute, climbs out with
``..``, or is a symlink whose target lies outside the folder is refused before anything reads it.

ONNX graphs above 2 GB keep their weights in separate files that the graph names (``external_data``
entries of its tensors). `external_data_files` lists them by reading the graph's protobuf wire format
directly (only the fields on the path to a tensor), so the runtime needs no `onnx` package.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path, PurePath

from .errors import ModelFolderError


def file_in_folder(folder: str | Path, name: str, what: str) -> Path:
    """The path of `name` inside `folder`; a `ModelFolderError` if it would lead outside it."""
    folder = Path(folder)
    relative = PurePath(name)
    if relative.is_absolute() or relative.anchor or ".." in relative.parts or not relative.parts:
        raise ModelFolderError(f"{folder}: {what} {name!r} is not a plain path inside the model folder "
                               "(absolute paths and '..' are refused)")
    path = folder / relative
    resolved, root = path.resolve(), folder.resolve()
    if resolved != root and root not in resolved.parents:
        raise ModelFolderError(f"{folder}: {what} {name!r} leads outside the model folder (to {resolved})")
    return path


# Field numbers of onnx.proto3 on the way from a ModelProto to the TensorProtos that hold weights.
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTRIBUTE_TENSOR, _ATTRIBUTE_GRAPH, _ATTRIBUTE_TENSORS, _ATTRIBUTE_GRAPHS = 5, 6, 10, 11
_ATTRIBUTE_SPARSE_TENSOR, _ATTRIBUTE_SPARSE_TENSORS = 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA = 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


class _WireError(ValueError):
    pass


def _varint(buffer: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buffer) or shift > 63:
            raise _WireError("truncated or malformed varint")
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buffer: memoryview):
    """(field number, payload) for each field of one message; payload is a memoryview for
    length-delimited fields, None for the others (skipped)."""
    pos = 0
    while pos < len(buffer):
        key, pos = _varint(buffer, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(buffer, pos)
            yield number, None
        elif wire_type == 1:
            pos += 8
            yield number, None
        elif wire_type == 5:
            pos += 4
            yield number, None
        elif wire_type == 2:
            length, pos = _varint(buffer, pos)
            if pos + length > len(buffer):
                raise _WireError("a field runs past the end of the file")
            yield number, buffer[pos:pos + length]
            pos += length
        else:
            raise _WireError(f"unsupported wire type {wire_type}")
        if pos > len(buffer):
            raise _WireError("a field runs past the end of the file")


def _tensor_locations(tensor: memoryview, found: set[str]) -> None:
    for number, entry in _fields(tensor):
        if number == _TENSOR_EXTERNAL_DATA and entry is not None:
            fields = {n: bytes(v) for n, v in _fields(entry) if v is not None}
            if fields.get(_ENTRY_KEY) == b"location":
                found.add(fields.get(_ENTRY_VALUE, b"").decode("utf-8", "replace"))


def _sparse_locations(sparse: memoryview, found: set[str]) -> None:
    for number, value in _fields(sparse):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES) and value is not None:
            _tensor_locations(value, found)


def _node_locations(node: memoryview, found: set[str]) -> None:
    for number, attribute in _fields(node):
        if number != _NODE_ATTRIBUTE or attribute is None:
            continue
        for field, value in _fields(attribute):
            if value is None:
                continue
            if field in (_ATTRIBUTE_TENSOR, _ATTRIBUTE_TENSORS):
                _tensor_locations(value, found)
            elif field in (_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS):
                _graph_locations(value, found)
            elif field in (_ATTRIBUTE_SPARSE_TENSOR, _ATTRIBUTE_SPARSE_TENSORS):
                _sparse_locations(value, found)


def _graph_locations(graph: memoryview, found: set[str]) -> None:
    for number, value in _fields(graph):
        if value is None:
            continue
        if number == _GRAPH_INITIALIZER:
            _tensor_locations(value, found)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            _sparse_locations(value, found)
        elif number == _GRAPH_NODE:  # If/Loop subgraphs (the merged decoder) and Constant tensors
            _node_locations(value, found)


def _model_locations(model: memoryview, found: set[str]) -> None:
    for number, value in _fields(model):
        if value is None:
            continue
        if number == _MODEL_GRAPH:
            _graph_locations(value, found)
        elif number == _MODEL_FUNCTIONS:
            for field, node in _fields(value):
                if field == _FUNCTION_NODE and node is not None:
                    _node_locations(node, found)


def external_data_files(graph_path: str | Path) -> list[str]:
    """The external-data locations an ONNX file names, as written in it (sorted, unique)."""
    found: set[str] = set()
    try:
        with open(graph_path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            problem = _scan(view, found)  # its slices of `view` are gone when it returns
            view.release()
    except ValueError as exc:  # mmap of an empty file
        problem = str(exc)
    if problem:
        raise ModelFolderError(f"{graph_path} is not a readable ONNX file ({problem})")
    return sorted(found)


def _scan(view: memoryview, found: set[str]) -> str | None:
    try:
        _model_locations(view, found)
    except _WireError as exc:
        return str(exc)
    return None


def read_json_file(folder: str | Path, name: str) -> dict:
    """A JSON object from a file of the model folder; {} when the file does not exist."""
    path = file_in_folder(folder, name, "file")
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} has to hold a JSON object, but holds a {type(data).__name__}")
    return data
