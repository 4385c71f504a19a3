"""`load` and the `Generator`: generate, stream and score on an exported T5.

The decoding loop is `BatchEngine.step` (engine.py); `generate` and `stream` run it with one request
holding every row of the call. Per step: the runner returns the logits of the last position, the
search turns them into scores (log-probs for beam search), the processors apply transformers' rules,
the search picks the next tokens and says which cache rows continue; the runner reorders its cache
on the device.

A `Generator` holds no per-call state: one instance serves many threads at once (ONNX Runtime's
sessions are thread-safe, each call has its own cache, search and random generator).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Generator as PieceStream, Sequence

import numpy as np

from .config import GenerationConfig
from .engine import BatchEngine, Request
from .errors import GenerationInterrupted, InputTooLongError, ModelFolderError
from .manifest import Manifest, read_manifest, validation_problem, verify_checksums
from .numerics import check_scores, log_softmax
from .processors import LogitsProcessor
from .results import GenerationResult, ScoreResult
from .runner import Runner, graph_roles, resolve_decoder_layout
from .stopping import INTERRUPTED
from .tokenizer import ByteTokenizer, TextTokenizer, load_tokenizer

DEFAULT_MODEL_NAME = "t5-numbers"
# Input limit when the tokenizer names none (T5's tokenizers say 512). Inputs are bounded by default:
# encoder memory and time grow with the square of the input length.
DEFAULT_MAX_INPUT_TOKENS = 512


def default_model_path() -> Path:
    """The embedded default model: inside the installed package, or in the checkout's models/ folder."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "default_model", here.parent / "models" / DEFAULT_MODEL_NAME):
        if (candidate / "ortdecode.json").exists():
            return candidate
    raise ModelFolderError(f"the embedded default model is missing (looked in {here / 'default_model'} and "
                           f"{here.parent / 'models' / DEFAULT_MODEL_NAME}); name a model folder instead")


def load(path: str | Path | None = None, provider: str = "auto", *, threads: int | None = None,
         decoder_layout: str = "auto", session_options=None, verify: bool = True,
         allow_unvalidated: bool = False, share_weights: bool = False) -> "Generator":
    """Load an export folder made by `ortdecode export` (None: the embedded default model).

    provider: "auto" (CUDA when onnxruntime-gpu sees a GPU, else CPU), "cpu" or "cuda".
    threads: ONNX Runtime intra-op threads (default: ONNX Runtime's choice, the physical cores).
    decoder_layout: "auto" (the first the export holds of: "with-past", "merged", "split"), or one of those:
        with-past = the encoder computes the cross-attention cache and one with-past decoder serves every step
        (the least memory), merged = Optimum's merged decoder, split = first-step and with-past decoders.
    session_options: an onnxruntime.SessionOptions to use as-is (profiling, custom settings).
    verify: compare the sha256 of the graphs it loads with the manifest first (about 1 s per GB; a file that
        matched before and is unchanged since, by its size, times and inode, is not hashed again: ortdecode.verified).
    allow_unvalidated: load an export whose validation against PyTorch failed or did not finish (refused
    by default), and one never validated without the `UnvalidatedExportWarning`.
    share_weights: hold the weights several graphs share once (see ortdecode.sessions), prepacking off;
        the shared initializers and that setting are added to `session_options` when it is given.

    Everything is checked here, not at the first step: the manifest, the files it names (inside the
    folder, present, unchanged), each graph's inputs, outputs and KV shapes, the tokenizer.
    """
    folder = Path(path) if path is not None else default_model_path()
    manifest = read_manifest(folder)
    _check_validation(folder, manifest, allow_unvalidated)
    if verify:
        verify_checksums(folder, manifest, roles=graph_roles(resolve_decoder_layout(folder, manifest, decoder_layout)),
                         trust_unchanged=True)
    defaults = GenerationConfig.from_model_folder(
        folder, decoder_start_token_id=manifest.decoder_start_token_id,
        eos_token_id=list(manifest.eos_token_id), pad_token_id=manifest.pad_token_id)
    # The tokenizer is read while ONNX Runtime builds the sessions (it releases the GIL meanwhile), once both
    # builds have started: reading it holds the GIL. Measured on the t5-small int8 export, 2 cores, fresh
    # processes in turns: load 0.13 -> 0.11 s against reading it first; 0.130 -> 0.119 s (median of 8) against
    # reading it in a thread of its own beside the runner's, which delayed the builds' start by 30 ms.
    tokenizer = []
    runner = Runner(folder, manifest, provider=provider, threads=threads, decoder_layout=decoder_layout,
                    session_options=session_options, share_weights=share_weights, external_data_checked=verify,
                    while_building=lambda: tokenizer.append(load_tokenizer(folder, pad_token_id=manifest.pad_token_id)))
    return Generator(runner, tokenizer[0], defaults, manifest, folder)


class UnvalidatedExportWarning(UserWarning):
    """The export was never compared with PyTorch (`--no-validate`, or adopted without `--reference`)."""


def _check_validation(folder: Path, manifest: Manifest, allow_unvalidated: bool) -> None:
    problem = validation_problem(manifest)
    if problem is None or allow_unvalidated:
        return
    kind, why = problem
    if kind == "failed":
        raise ModelFolderError(f"{folder}: {why}. Re-export it (with a larger --atol if these differences are "
                               "acceptable), or load it anyway with allow_unvalidated=True / --allow-unvalidated")
    warnings.warn(f"{folder}: {why}; `ortdecode validate {folder} --reference CHECKPOINT` checks it",
                  UnvalidatedExportWarning, stacklevel=3)


class Generator:
    def __init__(self, runner: Runner, tokenizer: TextTokenizer | ByteTokenizer, defaults: GenerationConfig,
                 manifest: Manifest, folder: Path):
        self.runner = runner
        self.tokenizer = tokenizer
        self.defaults = defaults  # transformers' defaults + the model's generation_config.json
        self.manifest = manifest
        self.folder = folder
        limit = tokenizer.model_max_length
        self.max_input_tokens = limit if isinstance(limit, int) and 0 < limit <= 1_000_000 else DEFAULT_MAX_INPUT_TOKENS

    @property
    def provider(self) -> str:
        return self.runner.provider

    # ------------------------------------------------------------------ public verbs
    def generate(self, texts: str | Sequence[str] | None = None, *, input_ids=None, attention_mask=None,
                 logits_processors: Sequence[LogitsProcessor] = (), **options) -> GenerationResult:
        """Generate from texts, or from token ids (int[batch, source_len], right-padded).

        options: transformers' `generate` names (max_new_tokens, do_sample, num_beams, top_p, max_time,
        prefix_allowed_tokens_fn, stopping_criteria, ...), plus stop (strings), seed, return_logits,
        return_scores, max_input_tokens and truncate_input.
        logits_processors: callables (input_ids, scores) -> scores, applied after the built-in processors
        and before the sampling warpers, as in transformers.

        Ctrl-C (KeyboardInterrupt) during the loop raises `GenerationInterrupted`, a KeyboardInterrupt
        that carries the result so far in `.result`."""
        config = self._config(options)
        input_ids, attention_mask = self._inputs(texts, input_ids, attention_mask, config)
        engine, request = self._engine_for_one_call(input_ids, attention_mask, config, logits_processors, False)
        try:
            while not request.finished:
                engine.step()
        except KeyboardInterrupt:
            raise GenerationInterrupted(request.result if request.finished else request.stop(INTERRUPTED).result) \
                from None
        if request.error is not None:
            raise request.error
        return request.result

    def stream(self, text: str, *, logits_processors: Sequence[LogitsProcessor] = (),
               **options) -> PieceStream[str, None, str]:
        """Yield the text of one generation piece by piece, as tokens are decoded (greedy or sampling).
        The generator's return value (`StopIteration.value`, or `yield from`) is the finish reason."""
        config = self._config(options)
        if config.is_beam_search or config.num_return_sequences != 1:
            raise ValueError("`stream` decodes one sequence: `num_beams` and `num_return_sequences` have to be 1, "
                             f"but are {config.num_beams} and {config.num_return_sequences}")
        if not isinstance(text, str):
            raise ValueError(f"`stream` takes one text (str), but got {type(text).__name__}")
        input_ids, attention_mask = self._inputs(text, None, None, config)
        engine, request = self._engine_for_one_call(input_ids, attention_mask, config, logits_processors, True)
        while not request.finished:
            for update in engine.step():
                if update.error is not None:
                    raise update.error
                yield from (delta for delta in update.text_deltas if delta)
        return request.result.finish_reasons[0]

    def _engine_for_one_call(self, input_ids, attention_mask, config, logits_processors, stream_text: bool):
        """The batch engine with one request holding every row of a `generate` or `stream` call."""
        rows, tokens = Request.demand(config, input_ids, attention_mask)
        engine = BatchEngine(self, max_batch_rows=rows, max_batch_tokens=tokens, max_waiting=1, continuous=False)
        return engine, engine.add(input_ids, attention_mask, config, logits_processors, stream_text=stream_text)

    def score(self, sources: str | Sequence[str], targets: str | Sequence[str], *,
              return_logits: bool = False) -> ScoreResult:
        """Log-probability of each target token given its source, by teacher forcing: one encoder pass
        and one decoder pass over the whole target, no generation."""
        sources = [sources] if isinstance(sources, str) else list(sources)
        targets = [targets] if isinstance(targets, str) else list(targets)
        if not sources or len(sources) != len(targets):
            raise ValueError(f"`score` needs as many targets as sources (at least one), got "
                             f"{len(sources)} sources and {len(targets)} targets")
        limits = self._config({})
        input_ids, attention_mask = self._inputs(sources, None, None, limits)
        check_texts(targets, "targets")
        labels = [self.tokenizer.encode_one(t) for t in targets]
        longest = max(len(ids) for ids in labels)
        pad, start = self.manifest.pad_token_id, self.manifest.decoder_start_token_id
        # T5's `_shift_right`: the decoder sees the start token, then the target without its last token.
        decoder_input_ids = np.full((len(labels), longest), pad, dtype=np.int64)
        decoder_input_ids[:, 0] = start
        for row, ids in enumerate(labels):
            decoder_input_ids[row, 1:len(ids)] = ids[:-1]
        logits = self.runner.teacher_forced_logits(input_ids, attention_mask, decoder_input_ids)
        check_scores(logits.reshape(-1, logits.shape[-1]), 0, "teacher-forced logits")
        logprobs = log_softmax(logits)
        token_logprobs = [logprobs[row, np.arange(len(ids)), ids] for row, ids in enumerate(labels)]
        kept_logits = [logits[row, :len(ids)].copy() for row, ids in enumerate(labels)] if return_logits else None
        return ScoreResult(tokens=labels, token_logprobs=token_logprobs, logits=kept_logits)

    def generate_iter(self, inputs, **job_options):
        """Generate for many inputs (texts or {"id", "text", "parameters"} dicts, any iterable), in
        length-bucketed token-budget batches with a bounded read-ahead; yields one `JobResult` per input,
        in input order. A bad input gives a result with `error` set; the others go on. See `batch_job`."""
        from .batch_job import generate_iter

        return generate_iter(self, inputs, **job_options)

    def generate_file(self, input_path: str, output_path: str, **job_options):
        """`generate_iter` from a JSON Lines or plain text file ("-": stdin) to a JSON Lines file, resumable:
        rerun with the same output file to continue an interrupted job. Returns a `JobSummary`."""
        from .batch_job import generate_file

        return generate_file(self, input_path, output_path, **job_options)

    # ------------------------------------------------------------------ options and inputs
    def _config(self, options: dict) -> GenerationConfig:
        config = self.defaults.for_call(**options)
        config.check_token_ids(self.manifest.vocab_size)
        if config.max_input_tokens is None:
            config = config.replace(max_input_tokens=self.max_input_tokens)
        return config

    def _inputs(self, texts, input_ids, attention_mask, config: GenerationConfig) -> tuple[np.ndarray, np.ndarray]:
        if texts is not None:
            if input_ids is not None or attention_mask is not None:
                raise ValueError("pass either `texts` or `input_ids`/`attention_mask`, not both")
            texts = [texts] if isinstance(texts, str) else texts
            if not isinstance(texts, (list, tuple)):
                raise ValueError(f"`texts` has to be a string or a list of strings, but is a {type(texts).__name__}")
            check_texts(texts, "texts")
            input_ids, attention_mask = self.tokenizer.encode(texts)
            return self._limit_length(input_ids, attention_mask, config, ends_with_eos=True)
        if input_ids is None:
            raise ValueError("`generate` needs `texts` or `input_ids`")
        input_ids = np.asarray(input_ids)
        if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"`input_ids` has to be a non-empty 2-D array [batch, length], but has shape {input_ids.shape}")
        if not np.issubdtype(input_ids.dtype, np.integer):
            raise ValueError(f"`input_ids` has to hold integers, but has dtype {input_ids.dtype}")
        if input_ids.min() < 0 or input_ids.max() >= self.manifest.vocab_size:
            raise ValueError(f"`input_ids` has to lie in [0, {self.manifest.vocab_size}), but spans "
                             f"[{input_ids.min()}, {input_ids.max()}]")
        if attention_mask is None:
            # transformers: mask out padding when the pad id occurs in the inputs.
            pad = self.manifest.pad_token_id
            attention_mask = (input_ids != pad) if (input_ids == pad).any() else np.ones_like(input_ids)
        attention_mask = np.asarray(attention_mask)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"`attention_mask` has shape {attention_mask.shape}, but `input_ids` has {input_ids.shape}")
        if not np.isin(attention_mask, (0, 1)).all():
            raise ValueError("`attention_mask` has to hold only 0 (padding) and 1 (token)")
        empty_rows = np.flatnonzero(attention_mask.sum(axis=1) == 0)
        if len(empty_rows):
            raise ValueError(f"`attention_mask` masks every token of rows {empty_rows[:8].tolist()}: each input "
                             "needs at least one token")
        return self._limit_length(input_ids.astype(np.int64), attention_mask.astype(np.int64), config,
                                  ends_with_eos=False)

    def _limit_length(self, input_ids: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig,
                      ends_with_eos: bool) -> tuple[np.ndarray, np.ndarray]:
        """Refuse inputs longer than `max_input_tokens`, or cut them (keeping the EOS the tokenizer
        appended to texts, as transformers' truncation does) with a warning."""
        limit = config.max_input_tokens
        lengths = attention_mask.sum(axis=1)
        too_long = np.flatnonzero(lengths > limit)
        if not len(too_long):
            return input_ids, attention_mask
        if not config.truncate_input:
            raise InputTooLongError(int(too_long[0]), int(lengths[too_long[0]]), limit)
        warnings.warn(f"{len(too_long)} input(s) longer than max_input_tokens={limit} tokens were truncated",
                      stacklevel=3)
        ids, mask = input_ids[:, :limit].copy(), attention_mask[:, :limit].copy()
        if ends_with_eos:
            ids[too_long, limit - 1] = input_ids[too_long, lengths[too_long] - 1]
        return ids, mask


def text_name(name: str, index: int, indexed: bool = True) -> str:
    """How a message names one text of a call: `name[index]`, or `name` alone for the caller's one text."""
    return f"{name}[{index}]" if indexed else name


def check_texts(texts: Sequence, name: str, indexed: bool = True) -> None:
    """Messages name each text as `text_name` does."""
    if not texts:
        raise ValueError(f"`{name}` is empty: pass at least one text")
    for index, text in enumerate(texts):
        item = text_name(name, index, indexed)
        if not isinstance(text, str):
            raise ValueError(f"`{item}` has to be a string, but is a {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"`{item}` is empty or whitespace only")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"`{item}` is not valid Unicode (a lone surrogate at position {exc.start}, "
                             "e.g. from bytes that were not UTF-8)") from None
