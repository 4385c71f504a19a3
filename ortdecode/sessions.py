"""Weights held once for all of a runner's sessions.

ONNX Runtime gives every `InferenceSession` its own copy of its graph's weights: the split decoder pair
holds the decoder weights twice, the encoder and the decoder each hold the shared embedding. `SharedWeights`
finds the initializers that several graphs hold with identical bytes, maps them from the graph files
(copy-on-write; the byte comparison at load reads them once and drops the pages again) and hands ONNX
Runtime one `OrtValue` per tensor through `SessionOptions.add_initializer`, so every session uses that
one buffer.

Prepacking would copy the shared MatMul weights again, once per session, into MLAS's packed layout;
`apply` therefore turns it off when anything is shared (measured: benchmarks/results/memory-*.md).

The graph files are read with a minimal protobuf walk (ModelProto.graph -> GraphProto.initializer ->
TensorProto dims, data_type, name, raw_data), because the runtime does not depend on the onnx package.
Initializers stored as typed fields (float_data...) or as external data are left to ONNX Runtime.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

# ONNX TensorProto.DataType -> NumPy
_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}
_MIN_SHARED_BYTES = 1024  # smaller tensors (norm scales, biases) are not worth sharing


@dataclass(frozen=True)
class _Initializer:
    name: str
    dtype: type
    dims: tuple[int, ...]
    offset: int  # of raw_data in the file
    nbytes: int


def _varint(buffer, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _fields(buffer, start: int, end: int):
    """(field number, wire type, value or (offset, length)) of one protobuf message in buffer[start:end]."""
    position = start
    while position < end:
        key, position = _varint(buffer, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(buffer, position)
            yield number, wire, value
        elif wire == 2:
            length, position = _varint(buffer, position)
            yield number, wire, (position, length)
            position += length
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {position}")


def _tensor(buffer, offset: int, length: int) -> _Initializer | None:
    dims, dtype, name, raw, external = [], None, None, None, False
    for number, wire, value in _fields(buffer, offset, offset + length):
        if number == 1 and wire == 0:
            dims.append(value)
        elif number == 1 and wire == 2:  # packed dims
            start, size = value
            position = start
            while position < start + size:
                dim, position = _varint(buffer, position)
                dims.append(dim)
        elif number == 2:
            dtype = _DTYPES.get(value)
        elif number == 8:
            name = bytes(buffer[value[0]:value[0] + value[1]]).decode()
        elif number == 9:
            raw = value
        elif number == 14 and value == 1:
            external = True
    if dtype is None or name is None or raw is None or external:
        return None
    return _Initializer(name, dtype, tuple(dims), raw[0], raw[1])


def graph_initializers(path: Path, buffer) -> dict[str, _Initializer]:
    """The top-level initializers of an ONNX file (raw_data ones, at least _MIN_SHARED_BYTES)."""
    out = {}
    for number, wire, value in _fields(buffer, 0, len(buffer)):
        if number != 7 or wire != 2:  # ModelProto.graph
            continue
        for g_number, g_wire, g_value in _fields(buffer, value[0], value[0] + value[1]):
            if g_number == 5 and g_wire == 2:  # GraphProto.initializer
                tensor = _tensor(buffer, *g_value)
                if tensor is not None and tensor.nbytes >= _MIN_SHARED_BYTES:
                    out[tensor.name] = tensor
    return out


def _same_bytes(maps: list, tensors: list[_Initializer], chunk: int = 1 << 22) -> bool:
    """Whether the tensors hold identical bytes, compared a chunk at a time; each compared chunk is dropped
    from this process's resident pages at once (the mappings are private and unwritten: the kernel maps
    the file's pages again when a session reads them), so comparing never holds two copies resident."""
    first = tensors[0]
    if any(t.dtype != first.dtype or t.dims != first.dims or t.nbytes != first.nbytes for t in tensors[1:]):
        return False
    for start in range(0, first.nbytes, chunk):
        size = min(chunk, first.nbytes - start)
        views = [memoryview(m)[t.offset + start:t.offset + start + size] for m, t in zip(maps, tensors)]
        equal = all(v == views[0] for v in views[1:])
        for view in views:
            view.release()
        for m, t in zip(maps, tensors):
            page_start = (t.offset + start) // mmap.PAGESIZE * mmap.PAGESIZE
            m.madvise(mmap.MADV_DONTNEED, page_start, t.offset + start + size - page_start)
        if not equal:
            return False
    return True


def _fingerprint(mapped, tensor: _Initializer) -> tuple:
    """Cheap key of a tensor's content: its type, shape and three 64-byte samples."""
    samples = [tensor.offset, tensor.offset + tensor.nbytes // 2, tensor.offset + tensor.nbytes - 64]
    return (tensor.dtype, tensor.dims, tensor.nbytes) + tuple(bytes(mapped[s:s + 64]) for s in samples)


class SharedWeights:
    """The weights several graph files hold with identical bytes, as one OrtValue each, under every name
    the graphs give them (Optimum numbers anonymous weights per graph: onnx::MatMul_123 in one graph can
    be onnx::MatMul_456 in another)."""

    def __init__(self, graph_files: list[Path]):
        self._maps = []  # the mappings and arrays must outlive every session using them
        candidates: dict[tuple, list[tuple[int, mmap.mmap, _Initializer]]] = {}
        for index, path in enumerate(graph_files):
            with open(path, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            self._maps.append(mapped)
            for tensor in graph_initializers(path, mapped).values():
                candidates.setdefault(_fingerprint(mapped, tensor), []).append((index, mapped, tensor))
            mapped.madvise(mmap.MADV_DONTNEED)  # only headers and samples were read; drop them
        group_of: dict[str, set[int]] = {}  # name -> the content groups it names (-1: content held once)
        groups: list[tuple[mmap.mmap, _Initializer]] = []
        for holders in candidates.values():
            first = holders[0]
            members = [first] + [h for h in holders[1:] if _same_bytes([first[1], h[1]], [first[2], h[2]])]
            shared = len({index for index, _, _ in members}) > 1  # held by at least two graphs
            if shared:
                groups.append((first[1], first[2]))
            for holder in holders:
                group = len(groups) - 1 if shared and any(holder is m for m in members) else -1
                group_of.setdefault(holder[2].name, set()).add(group)
        self.arrays: dict[str, np.ndarray] = {}  # name -> the shared buffer (several names may share one)
        self.values: dict[str, ort.OrtValue] = {}
        self._buffers: list[np.ndarray] = []
        by_group: dict[int, ort.OrtValue] = {}
        for name, ids in group_of.items():
            group = next(iter(ids))
            if len(ids) > 1 or group < 0:  # a name for content held once, or for two contents: not shared
                continue
            if group not in by_group:
                mapped, tensor = groups[group]
                array = np.frombuffer(mapped, dtype=tensor.dtype, offset=tensor.offset,
                                      count=tensor.nbytes // np.dtype(tensor.dtype).itemsize).reshape(tensor.dims)
                self._buffers.append(array)
                by_group[group] = ort.OrtValue.ortvalue_from_numpy(array)
            self.arrays[name] = self._buffers[list(by_group).index(group)]
            self.values[name] = by_group[group]

    @property
    def nbytes(self) -> int:
        """Bytes held once instead of once per graph."""
        return sum(array.nbytes for array in self._buffers)

    def apply(self, options: ort.SessionOptions) -> None:
        """Make sessions created with `options` use the shared buffers (names a graph lacks are ignored)."""
        if not self.values:
            return
        options.add_session_config_entry("session.disable_prepacking", "1")
        for name, value in self.values.items():
            options.add_initializer(name, value)


_MADV_RANDOM = 1


def advise_sparse_reads(files: list[Path]) -> int:
    """Linux: make the weights ONNX Runtime still maps from these external-data files after loading (those it
    did not prepack: the embeddings, which a Gather reads a few rows per step) cost memory for the rows read.

    The kernel maps a whole cached folio around a page fault (and reads ahead around an uncached one), so one
    batch-8 generation left 59 of the 63 MB of t5-small's encoder embedding resident, for 320 rows read.
    Each mapping is advised random access (no read-ahead) and its pages are dropped from the page cache
    where no process maps them (the next read of a row then reads its page from disk, once, about 30-50 us).
    Measured on t5-small (benchmarks/results/memory-*.md). Returns how many mappings were advised; elsewhere
    than Linux, or when the C library cannot be reached, nothing is done and 0 is returned."""
    import ctypes
    import os

    paths = {os.path.realpath(path) for path in files}
    try:
        with open("/proc/self/maps") as handle:
            lines = handle.readlines()
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for line in lines:
        fields = line.split(maxsplit=5)  # address range, permissions, file offset, device, inode, path
        if len(fields) < 6 or fields[5].strip() not in paths:
            continue
        start, end = (int(address, 16) for address in fields[0].split("-"))
        if madvise(start, end - start, _MADV_RANDOM) != 0:
            continue
        descriptor = os.open(fields[5].strip(), os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, int(fields[2], 16), end - start, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
        advised += 1
    return advised
