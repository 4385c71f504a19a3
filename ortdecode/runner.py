"""The model runner: the only place that knows about ONNX Runtime.

It offers four verbs to the decoding loop (whisper's `Inference`, TGI's batch verbs):

- ``encode(input_ids, attention_mask) -> DecoderState``: run the encoder once, one row per input;
- ``step(state, tokens) -> logits``: one decoder step over every row, float32[rows, vocab] on the host;
- ``select(state, rows)``: keep, duplicate and reorder rows (beam search, samples, requests leaving);
- ``join([(state, rows), ...]) -> DecoderState``: rows of several states in one batch (requests joining);

plus ``teacher_forced_logits`` for scoring without generation.

Every decoder step uses IO binding. The KV cache lives in `OrtValue`s on the execution provider's
device (the GPU on CUDA) and is fed back from step to step without leaving it; the cross-attention
KV is computed once per input (by the encoder in the with-past layout, else by the first decoder step) and
bound as-is afterwards; only the logits [rows, vocab] are copied
to the host. Beam reordering runs a Gather graph on the same device. On CPU the `OrtValue`s are host
memory and the logits come back as a zero-copy NumPy view. Rows that joined at different steps share a
batch through the decoder attention mask (left-padded self cache), when the export has one.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import itertools
import logging
import mmap
import sys
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('ortdecode needs ONNX Runtime: pip install "ortdecode[cpu]" (onnxruntime) or "ortdecode[gpu]" '
                      '(onnxruntime-gpu), not both; from a checkout: pip install -e ".[cpu]"') from exc

from . import manifest as mf
from .errors import ModelFolderError, OrtDecodeNotice, ProviderError
from .sessions import SharedWeights, advise_sparse_reads

_FLOAT_TYPES = {"float32": np.float32, "float16": np.float16}
_log = logging.getLogger("ortdecode")


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


DECODER_LAYOUTS = ("auto", "with-past", "merged", "split")


def resolve_decoder_layout(folder: str | Path, manifest: mf.Manifest, decoder_layout: str) -> str:
    """Which decoder graphs to load: "with-past" (the with-past decoder for every step, the cross cache from
    the encoder), "merged" or "split". "auto" picks the first the export holds, in that order."""
    if decoder_layout not in DECODER_LAYOUTS:
        raise ValueError(f"`decoder_layout` has to be one of {', '.join(map(repr, DECODER_LAYOUTS))}, but is "
                         f"{decoder_layout!r}")
    available = manifest.decoder_layouts
    if decoder_layout == "auto":
        # with-past first: one copy of the decoder weights, prepacked once (the merged graph's two branches each
        # prepack them), and an encoder that computes the cross cache (see export/cross_cache.py).
        return available[0]
    if decoder_layout not in available:
        needs = {"split": f"no {mf.DECODER} and {mf.DECODER_WITH_PAST} graphs",
                 "merged": f"no {mf.DECODER_MERGED} graph",
                 "with-past": f"no {mf.DECODER_WITH_PAST} graph with an encoder that outputs the cross-attention cache"}
        raise ModelFolderError(f"{folder}: decoder_layout={decoder_layout!r} but the export has {needs[decoder_layout]}")
    return decoder_layout


def graph_roles(layout: str) -> list[str]:
    """The graphs a runner of decoder `layout` loads (the export may hold more)."""
    decoders = {"merged": [mf.DECODER_MERGED], "split": [mf.DECODER, mf.DECODER_WITH_PAST],
                "with-past": [mf.DECODER_WITH_PAST]}[layout]
    return [mf.ENCODER, *decoders, mf.CACHE_REORDER]


def pad_to_multiple(input_ids: np.ndarray, attention_mask: np.ndarray, multiple: int,
                    pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad int64[batch, source_len] inputs with masked pad tokens to a multiple of `multiple` columns.

    LongT5's encoder attends in blocks; the traced graph keeps the padding to whole blocks that transformers
    computes from the traced length, so it only runs on whole blocks. Masked padding changes no output."""
    extra = -input_ids.shape[1] % multiple
    if not extra:
        return input_ids, attention_mask
    widths = ((0, 0), (0, extra))
    return np.pad(input_ids, widths, constant_values=pad_token_id), np.pad(attention_mask, widths, constant_values=0)


@dataclass
class DecoderState:
    """The decoder rows of a running batch, between steps (TGI's `Seq2SeqLMBatch`). KV tensors are
    `OrtValue`s on the runner's device; the masks are kept on the host too, to extend, pad and trim them.

    Rows may come from different requests that joined at different steps: a row's self-attention cache
    is left-padded to the batch's `past` length (`decoder_mask` 0 there), its cross-attention cache and
    encoder mask right-padded to the longest source (`host_encoder_mask` 0 there)."""

    encoder_hidden: ort.OrtValue | None  # [inputs, source_len, d_model]; None once the first step has run, or when
    # the encoder computed the cross cache itself (the with-past layout)
    encoder_mask: ort.OrtValue  # int64[rows, source_len]
    host_encoder_mask: np.ndarray  # the same on the host
    sources: np.ndarray  # int64[rows]: which encoder input each row decodes (rows of one input share its cross cache)
    decoder_mask: np.ndarray  # int64[rows, past]: 1 where a row has a cached token, 0 for left padding
    self_cache: list[ort.OrtValue] = field(default_factory=list)  # key, value per layer: [rows, heads, past, d_kv]
    cross_cache: list[ort.OrtValue] = field(default_factory=list)  # key, value per layer: [rows, heads, src, d_kv]
    # CPU only: host arrays with room for more rows whose first `rows` rows ARE the caches above (a leading-axis
    # slice of a C-contiguous array is contiguous), so rows that join are written in place (`Runner.join`)
    self_room: list[np.ndarray] | None = None
    cross_room: list[np.ndarray] | None = None
    # CPU only: two sets of flat host buffers that the self cache alternates between, step after step (the
    # step reads its past from one and writes its present into the other: no allocation per step);
    # `self_buffer` says which set holds `self_cache` now (None: neither, e.g. after a reorder or a join)
    self_buffers: list[list[np.ndarray] | None] = field(default_factory=lambda: [None, None])
    self_buffer: int | None = None
    # CPU, graphs that write the self cache in place (`Runner.self_cache_in_place`): host arrays [row capacity,
    # heads, column capacity, d_kv] whose first `rows` rows ARE `self_cache` (its first `past` columns hold the
    # cache)
    self_store: list[np.ndarray] | None = None
    store_views: list[ort.OrtValue] | None = None  # OrtValues over the store's first `rows` rows, kept between steps
    # the last step's session and its binding, reused by the next step; `bound_caches` the (self, cross) cache
    # lists bound to it, which a step updating the cache in place does not bind again
    binding: tuple[ort.InferenceSession, ort.IOBinding] | None = None
    bound_caches: tuple | None = None

    @property
    def rows(self) -> int:
        return len(self.sources)

    @property
    def past(self) -> int:
        return self.decoder_mask.shape[1]


def _older(version: str, than: str) -> bool:
    """Whether release `version` comes before `than` ("1.22.0" < "1.32.0"; "1.32.0.dev1" counts as 1.32.0)."""
    def numbers(text: str) -> tuple[int, ...]:
        parts = []
        for part in text.split(".")[:3]:
            digits = "".join(itertools.takewhile(str.isdigit, part))
            parts.append(int(digits) if digits else 0)
        return tuple(parts)

    return numbers(version) < numbers(than)


class Runner:
    def __init__(self, folder: str | Path, manifest: mf.Manifest, provider: str = "auto", threads: int | None = None,
                 decoder_layout: str = "auto", session_options: ort.SessionOptions | None = None,
                 share_weights: bool = False, external_data_checked: bool = False,
                 while_building: Callable[[], object] | None = None):
        """external_data_checked: `verify_checksums` found that each graph names the external data the manifest
        lists (then the manifest's list is checked to lie inside the folder, instead of the graph read again).
        while_building: work for this thread while ONNX Runtime builds the CPU sessions in threads of their own
        (the generator reads its tokenizer); on CUDA it runs after them."""
        self.folder = Path(folder)
        self.manifest = manifest
        self._external_data_checked = external_data_checked
        # moves rows within in-place caches (`_reorder_store`); its threads start on first use
        self._copy_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ortdecode-cache")
        self.names = manifest.names
        self.float_type = _FLOAT_TYPES[manifest.dtype]
        self.layout = resolve_decoder_layout(folder, manifest, decoder_layout)
        self.uses_merged = self.layout == "merged"

        if threads is not None and not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
            raise ValueError(f"`threads` has to be an integer >= 1, but is {threads!r}")
        # Weights that several graphs hold (the decoder pair's, the shared embedding) held once.
        self.shared_weights = SharedWeights([self.folder / manifest.graphs[role].file for role in
                                             graph_roles(self.layout) if role != mf.CACHE_REORDER]) \
            if share_weights else None
        # Every session owns an intra-op thread pool whose threads spin (busy-wait) between the operators of a
        # run, and by default for a while after it, on the cores the next run of ANOTHER session needs. So every
        # session spins during its runs and stops spinning when a run ends (`session.force_spinning_stop`).
        # Measured on t5-small, 2 cores, against the policy before it (only the step-after-step decoder spins,
        # the once-per-request graphs never do), in turns (`python -m benchmarks.engine_loop [--generate]`):
        # time to first token 29-37 -> 20-23 ms at batch 1, 108-141 -> 89-101 ms at batch 8; greedy batch 1
        # 106-145 -> 127-135 tok/s. `session_options` given: used as-is, for every graph.
        if session_options is None:
            self.options = self._new_options(threads)
        else:
            self.options = session_options
            if threads is not None:
                session_options.intra_op_num_threads = threads
            if self.shared_weights is not None:
                self.shared_weights.apply(session_options)
        # The reorder (a memory copy) on the same threads. Measured (beam 4, t5-small, 2 cores, one thread
        # against two, not spinning, in turns): batch 32 reorders took 0.86-0.91 against 0.57-0.67 s per generation.
        reorder_options = self._new_options(threads, shared=False)
        reorder_options.enable_profiling = self.options.enable_profiling  # a profiled run profiles every graph
        reorder_options.profile_file_prefix = self.options.profile_file_prefix

        # Measured before `force_spinning_stop`: a 32-row t5-small step went from 22 to 38 ms on 2 cores when the
        # reorder had its own pool spinning after its runs: it has options of its own.
        others = {role: None for role in graph_roles(self.layout) if role not in (mf.ENCODER, mf.CACHE_REORDER)}
        self.provider, sessions = self._open_sessions(provider, {**others, mf.CACHE_REORDER: reorder_options},
                                                      while_building or (lambda: None))
        self.device_type = "cuda" if self.provider == "cuda" else "cpu"
        self.device_id = 0
        self.encoder = sessions[mf.ENCODER]
        self.decoder_first = sessions.get(mf.DECODER)
        self.decoder_with_past = sessions.get(mf.DECODER_WITH_PAST)
        self.decoder_merged = sessions.get(mf.DECODER_MERGED)
        self.cache_reorder = sessions[mf.CACHE_REORDER]
        # with-past: the encoder returns the cross cache, and the first step is a with-past step with no self cache
        self.encoder_gives_cross_cache = self.layout == "with-past"
        # CPU: one buffer per cache tensor is bound as the step's past and present (export/cache_in_place.py), with
        # room for the columns of the steps to come: no copy of the cache per step, no allocation per step
        self.self_cache_in_place = manifest.self_cache_in_place and self.layout == "with-past" and \
            self.device_type == "cpu"
        self._no_encoder_output: ort.OrtValue | None = None
        # Rows the CPU caches leave room for (the batch engine sets its max_batch_rows): joins then write the
        # newcomers' rows in place instead of rebuilding the batch's caches (0: exact-size caches).
        self.row_capacity = 0
        self._check_names()
        # the embeddings ONNX Runtime reads row by row from mapped external data (CPU: on CUDA they are on the device);
        # the files as the manifest names them (`_session` checked each graph's against the folder already)
        self.sparse_mappings = advise_sparse_reads(
            [self.folder / name for role in graph_roles(self.layout) for name in manifest.graphs[role].external_data]) \
            if self.device_type == "cpu" else 0

    # ---------------------------------------------------------------- sessions
    def _providers_for(self, provider: str) -> list:
        if provider == "cuda":
            # TF32 off: float32 graphs then compute in float32, as PyTorch does by default (parity).
            # Float16 exports are the fast path on GPUs.
            return [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _open_sessions(self, provider: str, others: dict[str, ort.SessionOptions | None],
                       while_building: Callable[[], object]):
        """(provider, role -> session) for the encoder and the roles in `others` (their options; None: the
        runner's). When the CPU provider is known before any session opens (asked for, or the only one this
        onnxruntime has), the sessions are built two at a time: ONNX Runtime releases the GIL while it
        optimizes a graph and prepacks its weights. Measured on t5-small (encoder and with-past decoder, 2
        cores, three runs each, in turns): 0.31-0.42 s one after the other, 0.25-0.28 s two at a time.
        `while_building` runs once both builds are about to enter ONNX Runtime: work that holds the GIL (reading
        the tokenizer, 33 ms for T5's) delayed their start by as much when it ran beside them, in a thread of its
        own or as soon as they were submitted."""
        # A profiled load builds one session at a time: ONNX Runtime names a session's profile by the
        # millisecond it started, and two sessions started together wrote one file.
        if (provider == "cpu" or (provider == "auto" and not cuda_available())) and not self.options.enable_profiling:
            if provider == "auto":  # a CPU-only install chose this: said only when asked (`ortdecode -v`)
                _log.info("CUDA is not available in this onnxruntime build; using the CPU provider")
            roles = {mf.ENCODER: None, **others}
            entering = threading.Semaphore(0)
            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = {role: pool.submit(self._session, role, "cpu", options, entering=entering)
                           for role, options in roles.items()}
                for _ in range(min(2, len(roles))):  # both builds about to enter ONNX Runtime
                    entering.acquire(timeout=1.0)
                while_building()
            return "cpu", {role: future.result() for role, future in futures.items()}
        provider, encoder = self._open_first_session(provider)
        sessions = {role: self._session(role, provider, options) for role, options in others.items()}
        while_building()
        return provider, {mf.ENCODER: encoder, **sessions}

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
                    f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu instead of "
                    'onnxruntime: pip install "ortdecode[gpu]" (from a checkout: pip install -e ".[gpu]")')
            # A CPU-only install chose this: say it only when asked (`ortdecode -v`, logging at INFO).
            _log.info("CUDA is not available in this onnxruntime build; using the CPU provider")
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

    def _new_options(self, threads: int | None, shared: bool = True) -> ort.SessionOptions:
        """ortdecode's session options: every graph optimization, only errors logged, threads that stop
        spinning when a run ends, the shared weights when asked (`shared`: graphs with weights)."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if shared and self.shared_weights is not None:
            self.shared_weights.apply(options)
        return options

    def _session(self, role: str, provider: str | None = None, options: ort.SessionOptions | None = None,
                 fallback: bool = True, entering: threading.Semaphore | None = None) -> ort.InferenceSession:
        """fallback=False: a provider that fails raises `ProviderError` (its first line), instead of ONNX
        Runtime printing a banner on stdout and going on with the CPU provider. entering: released when the
        Python work before ONNX Runtime's is done (or failed)."""
        try:  # refuse weights outside the folder before ONNX Runtime reads them
            graph = self.manifest.graphs[role]
            path = self.folder / graph.file
            mf.external_data_of(self.folder, graph.file, graph.external_data if self._external_data_checked else None)
        finally:
            if entering is not None:
                entering.release()
        try:
            return ort.InferenceSession(str(path), options or self.options,
                                        providers=self._providers_for(provider or self.provider),
                                        enable_fallback=int(fallback))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several unrelated types here
            problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not fallback:
                raise ProviderError(problem + self._optimized_by_a_newer_version()) from exc
            raise ModelFolderError(f"onnxruntime could not load {path} ({role}): {problem}"
                                   f"{self._optimized_by_a_newer_version()}") from exc

    def _optimized_by_a_newer_version(self) -> str:
        """A hint for a graph ONNX Runtime could not load: the export saved its graphs as a newer onnxruntime
        optimized them (export/ort_optimize.py), and they may name operators or attributes this one lacks."""
        optimized = self.manifest.export_options.get("ort_optimized")
        made_by = optimized.get("onnxruntime") if isinstance(optimized, dict) else None
        if not made_by or not _older(ort.__version__, made_by):
            return ""
        return (f" (the export's graphs were optimized by onnxruntime {made_by}, this is {ort.__version__}: "
                f"install onnxruntime {made_by} or newer, or export again with --no-ort-optimize)")

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
        encoder_outputs = [n.encoder_output] + (present_cross if self.layout == "with-past" else [])
        checks = [(mf.ENCODER, self.encoder, [n.encoder_input_ids, n.encoder_attention_mask], encoder_outputs),
                  (mf.CACHE_REORDER, self.cache_reorder, [n.reorder_indices] + self._reorder_in, self._reorder_out)]
        mask = [n.decoder_attention_mask] if self.has_decoder_mask else []
        if self.uses_merged:
            checks.append((mf.DECODER_MERGED, self.decoder_merged,
                           [n.decoder_input_ids, n.decoder_encoder_attention_mask, n.decoder_encoder_hidden_states,
                            n.use_cache_branch] + mask + past_self + past_cross, [n.logits] + present_self + present_cross))
        if self.layout == "split":
            checks.append((mf.DECODER, self.decoder_first,
                           [n.decoder_input_ids, n.decoder_encoder_attention_mask, n.decoder_encoder_hidden_states]
                           + mask, [n.logits] + present_self + present_cross))
        if self.layout != "merged":
            checks.append((mf.DECODER_WITH_PAST, self.decoder_with_past,
                           [n.decoder_input_ids, n.decoder_encoder_attention_mask] + mask + past_self + past_cross,
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

    @property
    def _unused_encoder_output(self) -> ort.OrtValue:
        if self._no_encoder_output is None:
            self._no_encoder_output = self._to_device(np.zeros((1, 1, self.manifest.d_model), self.float_type))
        return self._no_encoder_output

    def _empty_past(self, rows: int) -> np.ndarray:
        m = self.manifest
        return np.zeros((rows, m.num_heads, 0, m.d_kv), dtype=self.float_type)

    # ---------------------------------------------------------------- verbs
    @property
    def has_decoder_mask(self) -> bool:
        """Whether the decoder graphs take a decoder attention mask: rows that joined at different steps
        can then share a batch. Without it only rows of equal past length can (static batching)."""
        return self.names.decoder_attention_mask is not None

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> DecoderState:
        """Run the encoder. input_ids, attention_mask: int64[inputs, source_len]. The state has one row per
        input until the caller widens it with `select` (beams and samples of one input share one
        encoder pass and one first decoder step; transformers runs both on every row). In the with-past
        layout the encoder also returns the cross-attention cache, which the state then holds."""
        inputs = input_ids.shape[0]
        multiple = self.manifest.encoder_length_multiple
        input_ids, attention_mask = pad_to_multiple(input_ids, attention_mask, multiple, self.manifest.pad_token_id)
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        host_mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        mask = self._to_device(host_mask)
        costs = _PACKED_ENCODER_COSTS if self.manifest.encoder_packs_tokens else \
            {"copy_cost": _ENCODER_COPY_COST.get(self.manifest.quantization, _ENCODER_COPY_COST[None])}
        groups = length_groups(_used_lengths_per_row(host_mask), multiple, **costs) \
            if self.device_type == "cpu" else None
        if groups is None:
            values = self._run_encoder(input_ids, mask)
        else:  # inputs of very different lengths: one call per group of similar lengths, less padding computed
            length_axis = 2 if self.encoder_gives_cross_cache else 1  # [rows, heads, source, d_kv] or [rows, source, d]
            out: list[np.ndarray] = []
            for rows, length in groups:
                part = self._run_encoder(input_ids[rows, :length], self._to_device(host_mask[rows, :length]))
                for index, value in enumerate(part):
                    array = value.numpy()
                    if len(out) <= index:
                        shape = list(array.shape)
                        shape[0], shape[length_axis] = inputs, host_mask.shape[1]
                        out.append(np.zeros(shape, array.dtype))  # zeros: the padding stays masked and finite
                    out[index][(rows,) + (slice(None),) * (length_axis - 1) + (slice(0, length),)] = array
            values = [self._to_device(array) for array in out]
        state = DecoderState(encoder_hidden=None, encoder_mask=mask, host_encoder_mask=host_mask,
                             sources=np.arange(inputs, dtype=np.int64), decoder_mask=np.zeros((inputs, 0), np.int64))
        if self.encoder_gives_cross_cache:
            state.cross_cache = values
        else:
            state.encoder_hidden = values[0]
        return state

    def _run_encoder(self, input_ids: np.ndarray, mask: ort.OrtValue) -> list[ort.OrtValue]:
        """The encoder's output, or in the with-past layout the cross cache (key, value per layer)."""
        binding = self.encoder.io_binding()
        binding.bind_cpu_input(self.names.encoder_input_ids, np.ascontiguousarray(input_ids))
        binding.bind_ortvalue_input(self.names.encoder_attention_mask, mask)
        self._bind_outputs_on_device(binding, self._present_cross if self.encoder_gives_cross_cache
                                     else [self.names.encoder_output])
        self.encoder.run_with_iobinding(binding)
        return binding.get_outputs()

    @staticmethod
    def _binding(state: DecoderState, session: ort.InferenceSession) -> ort.IOBinding:
        """The state's binding to `session`, made again when the session differs from the last step's (every
        step binds each input and output again, except a cache it still holds: `bound_caches`)."""
        if state.binding is None or state.binding[0] is not session:
            state.binding, state.bound_caches = (session, session.io_binding()), None
        return state.binding[1]

    def _bind_past(self, binding: ort.IOBinding, state: DecoderState,
                   self_cache: list[ort.OrtValue] | None = None) -> None:
        """The self cache (empty before the first step; `self_cache` given: those values) and the cross cache,
        as decoder inputs."""
        self_cache = self_cache or state.self_cache or [self._empty_past(state.rows)] * len(self._past_self)
        for name, value in zip(self._past_self, self_cache):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name, value in zip(self._past_cross, state.cross_cache):
            binding.bind_ortvalue_input(name, value)

    def step(self, state: DecoderState, tokens: np.ndarray, spare_rows: int = 0, steps_left: int | None = None) -> np.ndarray:
        """Feed one token per row (int64[rows]); return that step's logits, float32[rows, vocab]. The first
        step of a state runs the first-step graph, which also computes the cross-attention cache (in the
        with-past layout the encoder did, and the first step is a with-past step with an empty self cache).
        spare_rows: rows about to join after this step; on CPU the new self cache leaves room for them.
        steps_left: at most how many steps (this one included) the state will run, when the caller knows:
        a cache updated in place is then given room for them at once (`_store_columns`)."""
        n = self.names
        first = not state.self_cache
        computes_cross = first and not self.encoder_gives_cross_cache  # the first-step graph (or branch)
        session = self.decoder_merged if self.uses_merged else (self.decoder_first if computes_cross
                                                                else self.decoder_with_past)
        binding = self._binding(state, session)
        in_place = self._in_place_cache(state, spare_rows, steps_left) if self.self_cache_in_place else None
        # a cache updated in place is the same OrtValues step after step: bound once to the state's binding
        caches = (in_place, state.cross_cache) if in_place is not None and not computes_cross else None
        bound = caches is not None and state.bound_caches is not None and \
            all(a is b for a, b in zip(caches, state.bound_caches))
        state.bound_caches = caches
        if not bound:  # what the last step bound and this one may not (a first step's cross cache outputs)
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
        binding.bind_cpu_input(n.decoder_input_ids, np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1, 1))
        binding.bind_ortvalue_input(n.decoder_encoder_attention_mask, state.encoder_mask)
        decoder_mask = np.concatenate([state.decoder_mask, np.ones((state.rows, 1), np.int64)], axis=1)
        if self.has_decoder_mask:
            binding.bind_cpu_input(n.decoder_attention_mask, decoder_mask)
        if self.uses_merged:
            binding.bind_cpu_input(n.use_cache_branch, np.array([not first]))
        if computes_cross:
            binding.bind_ortvalue_input(n.decoder_encoder_hidden_states, state.encoder_hidden)
            if self.uses_merged:
                empty = self._empty_past(state.rows)
                for name in self._past_self + self._past_cross:
                    binding.bind_cpu_input(name, empty)
        else:
            if self.uses_merged:  # the with-past branch never reads it; the graph still takes one
                binding.bind_ortvalue_input(n.decoder_encoder_hidden_states, self._unused_encoder_output)
            if not bound:
                self._bind_past(binding, state, in_place)
        binding.bind_output(n.logits, "cpu")
        self_room = room_values = None
        buffer = None
        if in_place is not None:  # the same buffers are the present: the step writes its column into them
            room_values = in_place
            if not bound:
                for name, value in zip(self._present_self, in_place):
                    binding.bind_ortvalue_output(name, value)
        elif spare_rows and not first and self.device_type == "cpu":
            self_room = self._room(state.rows + spare_rows, state.past + 1)
            room_values = self._bind_outputs_in(binding, self._present_self, self_room, state.rows)
        elif self.device_type == "cpu":
            buffer, arrays = self._spare_self_buffer(state)
            room_values = self._bind_outputs_in(binding, self._present_self, arrays, state.rows)
        else:
            self._bind_outputs_on_device(binding, self._present_self)
        if computes_cross:
            self._bind_outputs_on_device(binding, self._present_cross)
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        count = len(self._present_self)
        state.self_cache = room_values or outputs[1:1 + count]
        state.self_room = self_room
        state.self_buffer = buffer
        state.decoder_mask = decoder_mask
        if computes_cross:
            state.cross_cache = outputs[1 + count:]
            state.cross_room = None
            state.encoder_hidden = None
        logits = outputs[0].numpy()[:, -1, :]
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)

    def select(self, state: DecoderState, rows: np.ndarray) -> None:
        """Leave and reorder (TGI's `filter`): row i becomes a copy of row rows[i]; rows not named leave.
        One call covers a beam-search reorder, finished requests leaving and a first step's widening.

        The self-attention cache is gathered by the cache-reorder graph on the device (on CPU, a cache updated in
        place moves its rows within its store); the cross cache and encoder mask only when rows move between
        inputs (beams of one input share them; a CPU batch with rows of room moves them within it). Columns
        that are padding in every kept row are trimmed: within the batch's own memory when it has room
        (`_trim_in_place`), else by a rebuild on the host (on CUDA a round trip through host memory)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == state.rows and np.array_equal(rows, np.arange(state.rows)):
            return
        # Padding in every kept row shows first in the oldest past column or the last source column.
        if (state.past and not state.decoder_mask[rows, 0].all()) or not state.host_encoder_mask[rows, -1].all():
            past, source_length = _used_lengths(state.decoder_mask[rows], state.host_encoder_mask[rows])
        else:
            past, source_length = state.past, state.host_encoder_mask.shape[1]
        if past < state.past or source_length < state.host_encoder_mask.shape[1]:
            if not self._trim_in_place(state, rows, past, source_length):
                joined = self.join([(state, rows)])
                state.__dict__.update(joined.__dict__)
            return
        if not np.array_equal(state.sources[rows], state.sources):
            if state.cross_room is not None and len(state.cross_room[0]) >= len(rows):  # within the room: the rows
                _move_rows(state.cross_room, rows, state.host_encoder_mask.shape[1], self._copy_threads.map)  # moved
                state.cross_cache = [self._to_device(room[:len(rows)]) for room in state.cross_room]
            else:
                state.cross_room = self._room(self.row_capacity, state.host_encoder_mask.shape[1]) \
                    if self.device_type == "cpu" and self.row_capacity > len(rows) else None
                state.cross_cache = self._gather_rows(state.cross_cache, rows, state.cross_room)
            state.host_encoder_mask = state.host_encoder_mask[rows]
            state.encoder_mask = self._to_device(state.host_encoder_mask)
        if state.self_store is None:
            state.self_cache = self._gather_rows(state.self_cache, rows)
        else:  # rows leaving, beams reordered: within the store
            self._reorder_store(state, rows)
        state.self_room, state.self_buffer = None, None
        state.decoder_mask = state.decoder_mask[rows]
        state.sources = state.sources[rows]

    def _trim_in_place(self, state: DecoderState, rows: np.ndarray, past: int, source_length: int) -> bool:
        """`select`'s trim within the memory the state has (CPU, a cache updated in place, rooms for its rows):
        each kept row's last `past` cached columns move to the front of its store row, its first `source_length`
        cross-cache columns into the cross room, laid out again for that width. A rebuild (`join`) made a new
        store, zeroed for every column planned, and copied every row into it: on t5-small's shape at 16 clients
        (`python -m benchmarks.engine_loop --model benchmarks/work/t5-small-fp32 --concurrency 16 --requests 64`,
        3 runs in turns) joins and rows leaving took 0.53-0.69 s with it, 0.18-0.20 s with this.
        False (nothing changed) when the state has no such memory."""
        count = len(rows)
        if state.self_store is None or state.cross_room is None or len(state.self_store[0]) < count or \
                len(state.cross_room[0]) < count or not all(room.flags.c_contiguous for room in state.cross_room):
            return False
        shift = state.past - past
        for store in state.self_store:  # the fancy index copies first: moving within one array is safe
            store[:count, :, :past] = store[rows, :, shift:state.past]
        capacity, heads, _, d_kv = state.cross_room[0].shape
        rooms = []
        for room in state.cross_room:  # the same buffer, [capacity, heads, source_length, d_kv] from its start
            kept = room[rows, :, :source_length]
            room = room.reshape(-1)[:capacity * heads * source_length * d_kv].reshape(capacity, heads, source_length,
                                                                                     d_kv)
            room[:count] = kept
            rooms.append(room)
        state.cross_room = rooms
        state.cross_cache = [self._to_device(room[:count]) for room in rooms]
        state.host_encoder_mask = state.host_encoder_mask[rows, :source_length]
        state.encoder_mask = self._to_device(state.host_encoder_mask)
        state.decoder_mask = state.decoder_mask[rows, shift:]
        state.sources = state.sources[rows]
        state.self_cache = self._store_views(state, count)
        state.self_room, state.self_buffer = None, None
        return True

    def join(self, parts: list[tuple[DecoderState, np.ndarray]]) -> DecoderState:
        """Concatenate the chosen rows of stepped states into one (TGI's `concatenate`): self caches
        left-padded with zeros to the longest past, cross caches and encoder masks right-padded to the
        longest source; columns that are padding in every row are dropped.

        It builds the new tensors in host memory: on CPU the caches are host memory already (`numpy()` is a
        view) and each kept row is gathered, then placed (two memory copies); on CUDA it is a round trip
        through the host. It runs once per step in which requests join, not on the normal step path. The common
        case on CPU, newcomers joining a batch that keeps its rows, writes only the newcomers' rows, into room
        the batch's caches left for them (`_append_in_place`)."""
        parts = [(state, np.asarray(rows, dtype=np.int64)) for state, rows in parts if len(rows)]
        appended = self._append_in_place(parts)
        if appended is not None:
            return appended
        used = [_used_lengths(state.decoder_mask[rows], state.host_encoder_mask[rows]) for state, rows in parts]
        past, source_length = max(u[0] for u in used), max(u[1] for u in used)
        total = sum(len(rows) for _, rows in parts)

        def blank(values: list[ort.OrtValue], length: int, rows: int) -> list[np.ndarray]:
            return [np.zeros((rows, self.manifest.num_heads, length, self.manifest.d_kv), self.float_type)
                    for _ in values]

        decoder_mask, encoder_mask = np.zeros((total, past), np.int64), np.zeros((total, source_length), np.int64)
        self_store = None
        if self.self_cache_in_place:  # a store with the columns the parts had room for (the steps they planned)
            columns = max([past + _SELF_BUFFER_COLUMNS] + [state.self_store[0].shape[2] for state, _ in parts
                                                             if state.self_store is not None])
            self_store = self._store(max(total, self.row_capacity), columns)
            self_cache = [store[:total] for store in self_store]
        else:
            self_cache = blank(parts[0][0].self_cache, past, total)
        cross_room = blank(parts[0][0].cross_cache, source_length, self.row_capacity) \
            if self.device_type == "cpu" and self.row_capacity > total else None
        cross_cache = [room[:total] for room in cross_room] if cross_room else blank(parts[0][0].cross_cache,
                                                                                      source_length, total)
        sources, offset = [], 0
        for state, rows in parts:
            end = offset + len(rows)
            picked = _as_slice(rows)  # a run of rows in order: read in place, no gathered copy
            kept = min(past, state.past)  # the last `kept` columns, right-aligned: left padding
            decoder_mask[offset:end, past - kept:] = state.decoder_mask[rows, state.past - kept:]
            for out, value in zip(self_cache, state.self_cache):  # CPU: a view
                out[offset:end, :, past - kept:past] = value.numpy()[picked, :, state.past - kept:state.past]
            width = min(source_length, state.host_encoder_mask.shape[1])  # the first `width` columns
            encoder_mask[offset:end, :width] = state.host_encoder_mask[rows, :width]
            for out, value in zip(cross_cache, state.cross_cache):
                out[offset:end, :, :width] = value.numpy()[picked, :, :width]
            sources.append(state.sources[rows] + (sources[-1].max() + 1 - state.sources.min() if sources else 0))
            offset = end
        if not self.has_decoder_mask and not decoder_mask.all():
            raise ValueError(f"{self.folder}: the export has no decoder attention mask, so only rows at the same "
                             "step can share a batch (export the model again for continuous batching)")
        return DecoderState(encoder_hidden=None, encoder_mask=self._to_device(encoder_mask),
                            host_encoder_mask=encoder_mask, sources=np.concatenate(sources), decoder_mask=decoder_mask,
                            self_cache=[self._to_device(v) for v in self_cache],
                            cross_cache=[self._to_device(v) for v in cross_cache], cross_room=cross_room,
                            self_store=self_store)

    def _append_in_place(self, parts: list[tuple[DecoderState, np.ndarray]]) -> DecoderState | None:
        """`join`'s common case on CPU: newcomers appended to a running batch that keeps all its rows in place,
        whose caches have room for them (`step(spare_rows=...)`, `row_capacity`). Only the newcomers' rows are
        written; the batch's rows stay where they are. None when the case does not apply."""
        if len(parts) != 2:
            return None
        (batch, kept), (new, rows) = parts
        n, k, past, source_length = batch.rows, len(rows), batch.past, batch.host_encoder_mask.shape[1]
        self_room = batch.self_store if batch.self_store is not None else batch.self_room
        if self_room is None or batch.cross_room is None or len(self_room[0]) < n + k or \
                len(batch.cross_room[0]) < n + k or not np.array_equal(kept, np.arange(n)) or new.past > past:
            return None
        _, width = _used_lengths(new.decoder_mask[rows], new.host_encoder_mask[rows])
        if width > source_length:
            return None
        for room, value in zip(self_room, new.self_cache):  # left-padded to the batch's past
            room[n:n + k, :, :past - new.past] = 0
            room[n:n + k, :, past - new.past:past] = value.numpy()[rows, :, :new.past]
        for room, value in zip(batch.cross_room, new.cross_cache):  # right-padded to the batch's source
            room[n:n + k, :, :width] = value.numpy()[rows, :, :width]
            room[n:n + k, :, width:] = 0
        new_decoder_mask = np.pad(new.decoder_mask[rows], ((0, 0), (past - new.past, 0)))
        new_encoder_mask = np.pad(new.host_encoder_mask[rows, :width], ((0, 0), (0, source_length - width)))
        decoder_mask = np.concatenate([batch.decoder_mask, new_decoder_mask])
        encoder_mask = np.concatenate([batch.host_encoder_mask, new_encoder_mask])
        sources = np.concatenate([batch.sources, new.sources[rows] + batch.sources.max() + 1 - new.sources.min()])
        return DecoderState(encoder_hidden=None, encoder_mask=self._to_device(encoder_mask),
                            host_encoder_mask=encoder_mask, sources=sources, decoder_mask=decoder_mask,
                            self_cache=[self._to_device(room[:n + k]) for room in self_room],
                            cross_cache=[self._to_device(room[:n + k]) for room in batch.cross_room],
                            cross_room=batch.cross_room, self_store=batch.self_store)

    def _gather_rows(self, values: list[ort.OrtValue], rows: np.ndarray,
                     room: list[np.ndarray] | None = None) -> list[ort.OrtValue]:
        """Gather along the batch axis of one key/value pair per layer, in one call of the cache-reorder
        graph, on the runner's device (into the first rows of `room` when given)."""
        binding = self.cache_reorder.io_binding()
        binding.bind_cpu_input(self.names.reorder_indices, np.ascontiguousarray(rows, dtype=np.int64))
        for name, value in zip(self._reorder_in, values):
            binding.bind_ortvalue_input(name, value)
        if room is None:
            self._bind_outputs_on_device(binding, self._reorder_out)
            self.cache_reorder.run_with_iobinding(binding)
            return binding.get_outputs()
        gathered = self._bind_outputs_in(binding, self._reorder_out, room, len(rows))
        self.cache_reorder.run_with_iobinding(binding)
        return gathered

    def _in_place_cache(self, state: DecoderState, spare_rows: int, steps_left: int | None) -> list[ort.OrtValue]:
        """The self cache as a step of a graph that updates it in place reads and writes it: the first `rows`
        rows of the state's store. A store without a column for this step, or without rows for `spare_rows`
        newcomers, is replaced by a larger one (the cached columns copied over)."""
        rows, past = state.rows, state.past
        store = state.self_store
        if store is None or len(store[0]) < rows + spare_rows or store[0].shape[2] < past + 1:
            # a first step's rows usually join a batch (copied into its store): no room for more rows yet
            capacity = rows + spare_rows if not past else max(rows + spare_rows, self.row_capacity)
            larger = self._store(capacity, self._store_columns(past, rows + spare_rows, steps_left))
            for target, value in zip(larger, state.self_cache):
                target[:rows, :, :past] = value.numpy()[:, :, :past]
            state.self_store, state.store_views = larger, None
        return self._store_views(state, rows)

    def _store_views(self, state: DecoderState, rows: int) -> list[ort.OrtValue]:
        """OrtValues over the first `rows` rows of the state's store: the ones made before while the store and
        the row count stay (a replaced store sets `store_views` to None)."""
        if state.store_views is None or state.store_views[0].shape()[0] != rows:
            state.store_views = [self._to_device(array[:rows]) for array in state.self_store]
        return state.store_views

    def _reorder_store(self, state: DecoderState, rows: np.ndarray) -> None:
        """Rows leaving and beams reordered (at every step of beam search) within a cache updated in place: only
        the rows whose content comes from another row are copied, and only their cached columns (beam 4 on the
        t5-small-shaped random model: 74% of the rows keep their own beam from step to step; README).
        A store without room for the rows (a first step widened to its beams) is replaced by a larger one."""
        past, count = state.past, len(rows)
        if len(state.self_store[0]) < count:
            larger = self._store(max(count, self.row_capacity), state.self_store[0].shape[2])
            for target, source in zip(larger, state.self_store):
                target[:count, :, :past] = source[rows, :, :past]
            state.self_store, state.store_views = larger, None
        else:
            _move_rows(state.self_store, rows, past, self._copy_threads.map)  # NumPy releases the GIL as it copies
        state.self_cache = self._store_views(state, count)

    def _store_columns(self, past: int, rows: int, steps_left: int | None) -> int:
        """Columns of a new in-place store: room for every step still to come, while the store stays within
        `_STORE_BYTES` or at most twice the cache; else `_SELF_BUFFER_COLUMNS` more than the cache needs."""
        wanted = past + max(1, steps_left if steps_left is not None else _SELF_BUFFER_COLUMNS)
        column_bytes = rows * self.manifest.num_heads * self.manifest.d_kv * np.dtype(self.float_type).itemsize * \
            len(self._present_self)
        return min(wanted, max(past + _SELF_BUFFER_COLUMNS, 2 * past, _STORE_BYTES // max(column_bytes, 1)))

    def _spare_self_buffer(self, state: DecoderState) -> tuple[int, list[np.ndarray]]:
        """The buffer set that does not hold the state's self cache, as [rows, heads, past + 1, d_kv] arrays
        (leading parts of flat buffers: contiguous). A set too small is replaced by one with room for
        `_SELF_BUFFER_COLUMNS` more columns, so buffers are allocated every that many steps, not every step."""
        index = 0 if state.self_buffer != 0 else 1
        shape = (state.rows, self.manifest.num_heads, state.past + 1, self.manifest.d_kv)
        size = int(np.prod(shape))
        buffers = state.self_buffers[index]
        if buffers is None or buffers[0].size < size:
            state.self_buffers[index] = None  # freed before the larger ones are made
            capacity = size // (state.past + 1) * (state.past + 1 + _SELF_BUFFER_COLUMNS)
            buffers = state.self_buffers[index] = [np.empty(capacity, self.float_type) for _ in self._present_self]
        return index, [buffer[:size].reshape(shape) for buffer in buffers]

    def _room(self, rows: int, length: int) -> list[np.ndarray]:
        """Uninitialized host arrays for one key/value pair per layer, [rows, heads, length, d_kv] each."""
        shape = (rows, self.manifest.num_heads, length, self.manifest.d_kv)
        return [np.empty(shape, self.float_type) for _ in self._present_self]

    def _store(self, rows: int, length: int) -> list[np.ndarray]:
        """Zero-filled host arrays for an in-place store, whose columns are planned for steps that may never
        come. Past `_DENSE_STORE_COLUMNS`: anonymous memory mappings, zero pages until a step writes them. (NumPy
        asks large arrays for transparent huge pages: the first column written in each row and head would make
        2 MiB resident, all of a long planned store at once; zeroing them took 0.28 s for a beam-2 store planned
        for 100,000 new tokens, 0.34 s for a join of 5 rows. Below, NumPy's arrays: their huge pages make a
        beam-4 step faster than 4 KiB pages.)"""
        shape = (rows, self.manifest.num_heads, length, self.manifest.d_kv)
        if length <= _DENSE_STORE_COLUMNS:
            return [np.zeros(shape, self.float_type) for _ in self._present_self]
        size = int(np.prod(shape)) * np.dtype(self.float_type).itemsize
        return [np.frombuffer(mmap.mmap(-1, size), self.float_type).reshape(shape) for _ in self._present_self]

    def _bind_outputs_in(self, binding: ort.IOBinding, names: list[str], room: list[np.ndarray],
                         rows: int) -> list[ort.OrtValue]:
        """Bind outputs `names` to the first `rows` rows of host arrays `room` (contiguous: a leading-axis
        slice); returns the bound values, which keep their arrays alive."""
        values = [self._to_device(array[:rows]) for array in room]
        for name, value in zip(names, values):
            binding.bind_ortvalue_output(name, value)
        return values

    def teacher_forced_logits(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                              decoder_input_ids: np.ndarray) -> np.ndarray:
        """Logits of every position in one decoder pass: float32[batch, target_len, vocab]."""
        n = self.names
        state = self.encode(input_ids, attention_mask)
        session = self.decoder_merged if self.uses_merged else (self.decoder_with_past if self.encoder_gives_cross_cache
                                                                else self.decoder_first)
        binding = session.io_binding()
        binding.bind_cpu_input(n.decoder_input_ids, np.ascontiguousarray(decoder_input_ids, dtype=np.int64))
        binding.bind_ortvalue_input(n.decoder_encoder_attention_mask, state.encoder_mask)
        if self.has_decoder_mask:  # T5's causal mask covers the target; padding after a target changes nothing before it
            binding.bind_cpu_input(n.decoder_attention_mask, np.ones(decoder_input_ids.shape, np.int64))
        if self.encoder_gives_cross_cache:  # the with-past graph over the whole target, no self cache before it
            self._bind_past(binding, state)
        else:
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


# How many more self-cache columns a new pair of CPU buffers has room for (`Runner._spare_self_buffer`), and a
# new in-place store at least (`Runner._store_columns`)
_SELF_BUFFER_COLUMNS = 16
# In-place stores of more columns are mapped page by page as steps write them (`Runner._store`)
_DENSE_STORE_COLUMNS = 1024
# How large an in-place store may be made to hold every step still to come at once (else it grows as it goes)
_STORE_BYTES = 64 << 20

# What one more encoder call costs, in padded token positions computed (session run, thread wake-up, smaller
# GEMMs); the inputs are split only when the padding saved is worth more (`length_groups`).
_ENCODER_CALL_COST = 64
# What putting the groups' outputs back together costs per token position of the batch (12 cache tensors copied
# into one, 24 KB per position on t5-small), in positions computed: the copy took 4.9 us a position against the
# encoder's 120 us (float32) and 29.5 us (int8) on t5-small's shape, 2 cores (32 x 48 tokens: 7.5 ms). The
# int8 figure kept 32 inputs of 16-48 tokens in one call: split, their first token took 69-72 ms, not 56-60.
_ENCODER_COPY_COST = {None: 0.04, "int8-dynamic": 0.17}
# A packed encoder (export/packed_encoder.py) computes each real token's projections once, however the inputs are
# grouped: what a group saves is the padded positions that attention and the unpacked tensors still cover. Its
# costs, in such positions: fitted to encoder calls on t5-small's shape, 2 cores, float32 and int8 alike (about
# 50 us a position, 8-11 ms a call, 11.5 us a position copied): 32 inputs of 16-48 tokens stay in one call (80 ms
# int8, 96 ms split in two), 32 of 5-200 tokens split in four (int8 282 -> 182 ms, float32 517 -> 425 ms).
_PACKED_ENCODER_COSTS = {"call_cost": 180, "copy_cost": 0.23}


def length_groups(lengths: np.ndarray, multiple: int = 1, max_groups: int = 4,
                  copy_cost: float = _ENCODER_COPY_COST[None],
                  call_cost: float = _ENCODER_CALL_COST) -> list[tuple[np.ndarray, int]] | None:
    """The encoder's rows in groups of similar length, each run padded only to its own longest input:
    [(rows, padded length), ...], or None when one call over the whole batch costs least. Cost: token
    positions computed (rows x padded length per call) plus `call_cost` per call, and for groups
    `copy_cost` per position of the whole batch (their outputs copied into one); the groups are runs of the
    inputs sorted by length, cut at equal counts."""
    count = len(lengths)
    if count < 4:
        return None
    order = np.argsort(lengths, kind="stable")
    padded = -(-np.maximum(lengths[order], 1) // multiple) * multiple  # ascending, whole blocks

    def cost(cuts: list[int]) -> float:
        bounds = [0, *cuts, count]
        return sum((end - start) * int(padded[end - 1]) + call_cost
                   for start, end in zip(bounds, bounds[1:])) + (copy_cost * count * int(padded[-1]) if cuts else 0)

    best, best_cuts = cost([]), []
    for parts in range(2, max_groups + 1):
        cuts = sorted({round(count * i / parts) for i in range(1, parts)} - {0, count})
        total = cost(cuts)
        if total < best:
            best, best_cuts = total, cuts
    if not best_cuts:
        return None
    bounds = [0, *best_cuts, count]
    return [(np.sort(order[start:end]), int(padded[end - 1])) for start, end in zip(bounds, bounds[1:])]


def _move_rows(arrays: list[np.ndarray], rows: np.ndarray, past: int, apply=map) -> None:
    """arrays[i][:len(rows), :, :past] = arrays[i][rows, :, :past] in place, copying only the rows whose content
    comes from another row. `apply(function, arrays)`: map, or a thread pool's."""
    moved = np.flatnonzero(rows != np.arange(len(rows)))
    if not len(moved):
        return
    parents = rows[moved]

    def move(array: np.ndarray) -> None:  # NumPy reads the parents before it writes: overlapping rows are safe
        array[moved, :, :past] = array[parents, :, :past]

    list(apply(move, arrays))


def _used_lengths_per_row(mask: np.ndarray) -> np.ndarray:
    """int[rows]: each row's columns up to its last unmasked one (inputs are right-padded)."""
    width = mask.shape[1]
    has_token = mask.any(axis=1)
    return np.where(has_token, width - np.argmax(mask[:, ::-1] != 0, axis=1), 0)


def _as_slice(rows: np.ndarray) -> slice | np.ndarray:
    """`rows` as a slice when they are consecutive and in order (indexing then makes a view, not a copy)."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (len(rows) == 1 or (np.diff(rows) == 1).all()):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _used_lengths(decoder_mask: np.ndarray, encoder_mask: np.ndarray) -> tuple[int, int]:
    """How many trailing past columns and leading source columns hold a token in at least one row."""
    cached = decoder_mask.any(axis=0)
    past = len(cached) - int(np.argmax(cached)) if cached.any() else 0
    tokens = encoder_mask.any(axis=0)
    source_length = len(tokens) - int(np.argmax(tokens[::-1])) if tokens.any() else 0
    return past, source_length
