"""The model runner: the only place that knows about ONNX Runtime.

It offers three verbs to the decoding loop (whisper's `Inference`):

- ``encode(input_ids, attention_mask) -> DecoderState``: run the encoder once;
- ``step(state, tokens) -> logits``: one decoder step, float32[rows, vocab] on the host;
- ``reorder_cache(state, rows)``: keep/duplicate cache rows after a beam-search step;

plus ``teacher_forced_logits`` for scoring without generation.

Every decoder step uses IO binding. The KV cache lives in `OrtValue`s on the execution provider's
device (the GPU on CUDA) and is fed back from step to step without leaving it; the cross-attention
KV is computed by the first step and bound as-is afterwards; only the logits [rows, vocab] are copied
to the host. Beam reordering runs a Gather graph on the same device. On CPU the `OrtValue`s are host
memory and the logits come back as a zero-copy NumPy view.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("ortdecode needs ONNX Runtime: pip install 'ortdecode[cpu]' (onnxruntime) or "
                      "'ortdecode[gpu]' (onnxruntime-gpu), not both") from exc

from . import manifest as mf
from .errors import ModelFolderError, OrtDecodeNotice, ProviderError

_FLOAT_TYPES = {"float32": np.float32, "float16": np.float16}


def _notice(message: str) -> None:
    warnings.warn(message, OrtDecodeNotice, stacklevel=4)  # shown once per message (the default filter)


def cuda_available() -> bool:
    """Whether this onnxruntime build has the CUDA execution provider (not whether a GPU answers)."""
    return "CUDAExecutionProvider" in ort.get_available_providers()


def cuda_library_problem() -> str | None:
    """Why onnxruntime's CUDA provider library cannot load (a missing CUDA or cuDNN library, as the
    dynamic loader words it), or None when it loads. ONNX Runtime itself only logs this and goes on
    with the CPU provider."""
    if hasattr(ort, "preload_dlls"):
        try:  # CUDA/cuDNN libraries from the nvidia-* wheels, when that is where they are. It prints
            # each library it misses on stdout, which belongs to the caller (JSON output): kept off it.
            with contextlib.redirect_stdout(io.StringIO()):
                ort.preload_dlls(directory="")
        except Exception:  # noqa: BLE001 - the load below reports the real failure
            pass
    name = "onnxruntime_providers_cuda.dll" if sys.platform == "win32" else "libonnxruntime_providers_cuda.so"
    library = Path(ort.__file__).parent / "capi" / name
    if not library.exists():
        return f"{library} is missing"
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return str(exc).strip().splitlines()[0]
    return None


def uses_merged_decoder(folder: str | Path, manifest: mf.Manifest, decoder_layout: str) -> bool:
    """Which decoder graphs to load: the merged one, or the split pair."""
    if decoder_layout not in ("auto", "split", "merged"):
        raise ValueError(f"`decoder_layout` has to be 'auto', 'split' or 'merged', but is {decoder_layout!r}")
    if decoder_layout == "split" and not manifest.has_split_decoder:
        raise ModelFolderError(f"{folder}: decoder_layout='split' but the export has no {mf.DECODER_WITH_PAST} graph")
    if decoder_layout == "merged" and not manifest.has_merged_decoder:
        raise ModelFolderError(f"{folder}: decoder_layout='merged' but the export has no {mf.DECODER_MERGED} graph")
    # Merged when exported: one copy of the decoder weights, and 2-4% faster per greedy generation than
    # the split pair on t5-small, CPU (measured in one run, both orders). Exports default to the split
    # pair because int8 quantization and the CUDA fusions rewrite those graphs.
    return decoder_layout == "merged" or (decoder_layout == "auto" and manifest.has_merged_decoder)


def graph_roles(uses_merged: bool) -> list[str]:
    """The graphs a runner loads (the export may hold more)."""
    decoders = [mf.DECODER_MERGED] if uses_merged else [mf.DECODER, mf.DECODER_WITH_PAST]
    return [mf.ENCODER, *decoders, mf.CACHE_REORDER]


@dataclass
class DecoderState:
    """What one generate call keeps between decoder steps. Tensors are `OrtValue`s on the runner's
    device. Each input owns `copies` adjacent decoder rows (its beams or samples): rows = inputs * copies."""

    inputs: int
    copies: int
    encoder_hidden: ort.OrtValue  # [inputs, source_len, d_model]
    encoder_mask: ort.OrtValue  # int64[inputs, source_len]; [rows, source_len] after the first step
    host_mask: np.ndarray  # the same mask on the host, to widen it after the first step
    self_cache: list[ort.OrtValue] = field(default_factory=list)  # key, value per layer: [rows, heads, past, d_kv]
    cross_cache: list[ort.OrtValue] = field(default_factory=list)  # key, value per layer: [rows, heads, src, d_kv]

    @property
    def rows(self) -> int:
        return self.inputs * self.copies


class Runner:
    def __init__(self, folder: str | Path, manifest: mf.Manifest, provider: str = "auto", threads: int | None = None,
                 decoder_layout: str = "auto", session_options: ort.SessionOptions | None = None):
        self.folder = Path(folder)
        self.manifest = manifest
        self.names = manifest.names
        self.float_type = _FLOAT_TYPES[manifest.dtype]
        self.uses_merged = uses_merged_decoder(folder, manifest, decoder_layout)

        self.options = session_options or ort.SessionOptions()
        if session_options is None:
            self.options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.options.log_severity_level = 3
        if threads is not None:
            if not (isinstance(threads, int) and threads >= 1):
                raise ValueError(f"`threads` has to be an integer >= 1, but is {threads!r}")
            self.options.intra_op_num_threads = threads

        self.provider, self.encoder = self._open_first_session(provider)
        self.device_type = "cuda" if self.provider == "cuda" else "cpu"
        self.device_id = 0
        if self.uses_merged:
            self.decoder_merged = self._session(mf.DECODER_MERGED)
            self.decoder_first = self.decoder_with_past = None
        else:
            self.decoder_first = self._session(mf.DECODER)
            self.decoder_with_past = self._session(mf.DECODER_WITH_PAST)
            self.decoder_merged = None
        # Every session owns an intra-op thread pool whose threads spin after each run. The reorder is a
        # plain memory copy between decoder steps: with its own spinning pool it would steal the cores
        # the next step needs (measured: a 32-row t5-small step went from 22 to 38 ms on 2 cores).
        self.cache_reorder = self._session(mf.CACHE_REORDER, options=self._single_thread_options())
        self._check_names()

    # ---------------------------------------------------------------- sessions
    def _providers_for(self, provider: str) -> list:
        if provider == "cuda":
            # TF32 off: float32 graphs then compute in float32, as PyTorch does by default (parity).
            # Float16 exports are the fast path on GPUs.
            return [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _open_first_session(self, provider: str):
        """Open the encoder with the requested provider; 'auto' tries CUDA, then CPU."""
        if provider not in ("auto", "cpu", "cuda"):
            raise ValueError(f"`provider` has to be 'auto', 'cpu' or 'cuda', but is {provider!r}")
        if provider == "cpu":
            return "cpu", self._session(mf.ENCODER, "cpu")
        if not cuda_available():
            if provider == "cuda":
                raise ProviderError(
                    f"provider 'cuda' requested, but onnxruntime {ort.__version__} has no CUDA execution provider "
                    f"(available: {', '.join(ort.get_available_providers())}); install ortdecode[gpu] "
                    "(onnxruntime-gpu) instead of onnxruntime")
            _notice("CUDA is not available in this onnxruntime build; using the CPU provider")
            return "cpu", self._session(mf.ENCODER, "cpu")
        problem = cuda_library_problem()
        if problem is None:
            try:
                session = self._session(mf.ENCODER, "cuda", fallback=False)
            except ProviderError as exc:  # the provider threw (no device, driver too old, ...)
                problem = str(exc)
            else:
                if session.get_providers()[0] == "CUDAExecutionProvider":
                    return "cuda", session
                problem = "onnxruntime did not register it (see its log above)"
        if provider == "cuda":
            raise ProviderError(f"provider 'cuda' requested, but the CUDA execution provider cannot start: {problem}")
        _notice(f"the CUDA execution provider cannot start ({problem}); using the CPU provider")
        return "cpu", self._session(mf.ENCODER, "cpu")

    def _single_thread_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = self.options.graph_optimization_level
        options.log_severity_level = self.options.log_severity_level
        options.enable_profiling = self.options.enable_profiling
        options.profile_file_prefix = self.options.profile_file_prefix
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _session(self, role: str, provider: str | None = None, options: ort.SessionOptions | None = None,
                 fallback: bool = True) -> ort.InferenceSession:
        """fallback=False: a provider that fails raises `ProviderError` (its first line), instead of ONNX
        Runtime printing a banner on stdout and going on with the CPU provider."""
        graph = self.manifest.graphs[role]
        path = self.folder / graph.file
        mf.external_data_of(self.folder, graph.file)  # refuse weights outside the folder before ONNX Runtime reads them
        try:
            return ort.InferenceSession(str(path), options or self.options,
                                        providers=self._providers_for(provider or self.provider),
                                        enable_fallback=int(fallback))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several unrelated types here
            if not fallback:
                raise ProviderError(str(exc).strip().splitlines()[0]) from exc
            raise ModelFolderError(f"onnxruntime could not load {path} ({role}): {exc}".splitlines()[0]) from exc

    def _check_names(self) -> None:
        n = self.names
        layers = self.manifest.layers
        past_self = [name for l in layers for name in (l.past_self_key, l.past_self_value)]
        past_cross = [name for l in layers for name in (l.past_cross_key, l.past_cross_value)]
        present_self = [name for l in layers for name in (l.present_self_key, l.present_self_value)]
        present_cross = [name for l in layers for name in (l.present_cross_key, l.present_cross_value)]
        self._past_self, self._past_cross = past_self, past_cross
        self._present_self, self._present_cross = present_self, present_cross
        self._reorder_in = [name for l in layers for name in (l.reorder_in_key, l.reorder_in_value)]
        self._reorder_out = [name for l in layers for name in (l.reorder_out_key, l.reorder_out_value)]
        checks = [(mf.ENCODER, self.encoder, [n.encoder_input_ids, n.encoder_attention_mask], [n.encoder_output]),
                  (mf.CACHE_REORDER, self.cache_reorder, [n.reorder_indices] + self._reorder_in, self._reorder_out)]
        if self.uses_merged:
            checks.append((mf.DECODER_MERGED, self.decoder_merged,
                           [n.decoder_input_ids, n.decoder_encoder_attention_mask, n.decoder_encoder_hidden_states,
                            n.use_cache_branch] + past_self + past_cross, [n.logits] + present_self + present_cross))
        else:
            checks.append((mf.DECODER, self.decoder_first,
                           [n.decoder_input_ids, n.decoder_encoder_attention_mask, n.decoder_encoder_hidden_states],
                           [n.logits] + present_self + present_cross))
            checks.append((mf.DECODER_WITH_PAST, self.decoder_with_past,
                           [n.decoder_input_ids, n.decoder_encoder_attention_mask] + past_self + past_cross,
                           [n.logits] + present_self))
        for role, session, inputs, outputs in checks:
            mf.check_session(self.manifest, role, session.get_inputs(), session.get_outputs(), inputs, outputs)

    @property
    def sessions(self) -> list[ort.InferenceSession]:
        return [s for s in (self.encoder, self.decoder_first, self.decoder_with_past, self.decoder_merged,
                            self.cache_reorder) if s is not None]

    # ---------------------------------------------------------------- helpers
    def _to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device_type, self.device_id)

    def _bind_outputs_on_device(self, binding: ort.IOBinding, names: list[str]) -> None:
        for name in names:
            binding.bind_output(name, self.device_type, self.device_id)

    def _empty_past(self, rows: int) -> np.ndarray:
        m = self.manifest
        return np.zeros((rows, m.num_heads, 0, m.d_kv), dtype=self.float_type)

    # ---------------------------------------------------------------- verbs
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray, copies: int = 1) -> DecoderState:
        """Run the encoder. input_ids, attention_mask: int64[inputs, source_len]; each input will be decoded
        in `copies` adjacent rows (beams, samples).

        The encoder and the first decoder step run once per input; the first step's caches are then
        copied to every row on the device (transformers runs both on every row). The merged decoder's
        later steps keep binding the one-row-per-input encoder output, which their branch never reads."""
        n = self.names
        inputs = input_ids.shape[0]
        host_mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        mask = self._to_device(host_mask)
        binding = self.encoder.io_binding()
        binding.bind_cpu_input(n.encoder_input_ids, np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_ortvalue_input(n.encoder_attention_mask, mask)
        self._bind_outputs_on_device(binding, [n.encoder_output])
        self.encoder.run_with_iobinding(binding)
        return DecoderState(inputs=inputs, copies=copies, encoder_hidden=binding.get_outputs()[0], encoder_mask=mask,
                            host_mask=host_mask)

    def step(self, state: DecoderState, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row (int64[rows]); return that step's logits, float32[rows, vocab]."""
        n = self.names
        first = not state.self_cache
        if first and state.copies > 1:
            tokens = np.asarray(tokens)[::state.copies]  # copies of one input start from the same token
        session = self.decoder_merged if self.uses_merged else (self.decoder_first if first else self.decoder_with_past)
        binding = session.io_binding()
        binding.bind_cpu_input(n.decoder_input_ids, np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1, 1))
        binding.bind_ortvalue_input(n.decoder_encoder_attention_mask, state.encoder_mask)
        if first or self.uses_merged:
            binding.bind_ortvalue_input(n.decoder_encoder_hidden_states, state.encoder_hidden)
        if self.uses_merged:
            binding.bind_cpu_input(n.use_cache_branch, np.array([not first]))
            if first:
                empty = self._empty_past(state.inputs)
                for name in self._past_self + self._past_cross:
                    binding.bind_cpu_input(name, empty)
        if not first:
            for name, value in zip(self._past_self, state.self_cache):
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(self._past_cross, state.cross_cache):
                binding.bind_ortvalue_input(name, value)
        binding.bind_output(n.logits, "cpu")
        wanted = self._present_self + (self._present_cross if first else [])
        self._bind_outputs_on_device(binding, wanted)
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        count = len(self._present_self)
        state.self_cache = outputs[1:1 + count]
        if first:
            state.cross_cache = outputs[1 + count:]
        logits = outputs[0].numpy()[:, -1, :]
        if first and state.copies > 1:
            logits = self._widen_after_first_step(state, logits)
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)

    def _widen_after_first_step(self, state: DecoderState, logits: np.ndarray) -> np.ndarray:
        """Copy every input's first-step caches and logits to its `copies` rows."""
        rows = np.repeat(np.arange(state.inputs), state.copies)
        state.self_cache = self._gather_rows(state.self_cache, rows)
        state.cross_cache = self._gather_rows(state.cross_cache, rows)
        state.host_mask = np.repeat(state.host_mask, state.copies, axis=0)
        state.encoder_mask = self._to_device(state.host_mask)
        return np.repeat(logits, state.copies, axis=0)

    def reorder_cache(self, state: DecoderState, rows: np.ndarray) -> None:
        """Make row i of the self-attention cache a copy of row rows[i] (beam search), on the device.
        The cross-attention cache needs no reordering: beams of one input share it."""
        if len(rows) == state.rows and np.array_equal(rows, np.arange(state.rows)):
            return
        state.self_cache = self._gather_rows(state.self_cache, rows)

    def _gather_rows(self, values: list[ort.OrtValue], rows: np.ndarray) -> list[ort.OrtValue]:
        """Gather along the batch axis of one key/value pair per layer, in one call of the cache-reorder
        graph, on the runner's device."""
        binding = self.cache_reorder.io_binding()
        binding.bind_cpu_input(self.names.reorder_indices, np.ascontiguousarray(rows, dtype=np.int64))
        for name, value in zip(self._reorder_in, values):
            binding.bind_ortvalue_input(name, value)
        self._bind_outputs_on_device(binding, self._reorder_out)
        self.cache_reorder.run_with_iobinding(binding)
        return binding.get_outputs()

    def teacher_forced_logits(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                              decoder_input_ids: np.ndarray) -> np.ndarray:
        """Logits of every position in one decoder pass: float32[batch, target_len, vocab]."""
        n = self.names
        state = self.encode(input_ids, attention_mask)
        session = self.decoder_merged if self.uses_merged else self.decoder_first
        binding = session.io_binding()
        binding.bind_cpu_input(n.decoder_input_ids, np.ascontiguousarray(decoder_input_ids, dtype=np.int64))
        binding.bind_ortvalue_input(n.decoder_encoder_attention_mask, state.encoder_mask)
        binding.bind_ortvalue_input(n.decoder_encoder_hidden_states, state.encoder_hidden)
        if self.uses_merged:
            binding.bind_cpu_input(n.use_cache_branch, np.array([False]))
            empty = self._empty_past(state.rows)
            for name in self._past_self + self._past_cross:
                binding.bind_cpu_input(name, empty)
        binding.bind_output(n.logits, "cpu")
        session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)
