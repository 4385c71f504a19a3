"""Batch jobs: many inputs through `Generator.generate` in length-bucketed token batches, results in input order.

CTranslate2's `translate_iterable` is the model. The job reads a bounded window of inputs (`read_ahead`),
groups the window by generation options, sorts each group by input length and cuts it into batches of at
most `batch_size` inputs and `batch_tokens` padded input tokens (inputs x longest x rows per input), runs
each batch through `Generator.generate`, and hands the window's results back in input order. Memory holds
one window, however long the input.

A bad input never stops the job: it becomes a result whose `error` names the input and the problem.

`generate_file` adds files: JSON Lines or plain text in, one JSON line per input out, resumable. A record
is written as one `write` of a whole line and flushed at once; the file is fsynced at most once a second
and at the end. A rerun with the same output file keeps its complete lines, cuts a torn last line, and
continues with the input after the last record: nothing is lost or written twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

from .config import GenerationConfig
from .errors import OrtDecodeError
from .generator import Generator, check_texts

DEFAULT_BATCH_TOKENS = 4096
DEFAULT_BATCH_SIZE = 64
READ_AHEAD_BATCHES = 16  # inputs read ahead = READ_AHEAD_BATCHES x batch_size (CTranslate2's factor)
_FSYNC_SECONDS = 1.0


@dataclass
class JobInput:
    line: int  # 1-based position in the input: the line number of a file
    text: str | None
    id: object = None  # the input's own id; None: its line number
    parameters: dict = field(default_factory=dict)  # generation options of this input, over the job's
    error: str | None = None  # why it cannot run, found when reading it

    @property
    def record_id(self) -> object:
        return self.line if self.id is None else self.id


@dataclass
class JobResult:
    line: int
    id: object
    outputs: list[str] = field(default_factory=list)  # num_return_sequences texts
    finish_reasons: list[str] = field(default_factory=list)
    scores: list[float] | None = None  # beam search's sequences_scores, when the job asks for scores
    truncated: bool = False  # the input was cut to max_input_tokens (truncate_input)
    error: str | None = None  # what is wrong with the input, when it failed (the record adds "line N: ")
    input_tokens: int = 0  # for throughput figures; not part of the record
    output_tokens: int = 0  # tokens generated, padding not counted

    def to_record(self) -> dict:
        """The JSON object written for this input."""
        record = {"line": self.line, "id": self.id}
        if self.error is not None:
            record["error"] = f"line {self.line}: {self.error}"
            return record
        record.update(outputs=self.outputs, finish_reasons=self.finish_reasons)
        if self.scores is not None:
            record["scores"] = self.scores
        if self.truncated:
            record["truncated"] = True
        return record


@dataclass
class JobSummary:
    inputs: int = 0  # results written by this run
    failed: int = 0  # error records in the whole output, earlier runs included
    resumed: int = 0  # records already in the output when this run started
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0


# ---------------------------------------------------------------- batching
def token_batches(lengths: Sequence[int], batch_tokens: int, batch_size: int) -> list[list[int]]:
    """Indices of `lengths` cut into batches, longest inputs first: each batch holds at most `batch_size`
    inputs and at most `batch_tokens` padded tokens (inputs x its longest length). An input longer than
    the budget runs alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if current and len(current) < batch_size and (len(current) + 1) * lengths[current[0]] <= batch_tokens:
            current.append(index)
        else:
            batches.append([index])
    return batches


@dataclass
class _Ready:
    item: JobInput
    config: GenerationConfig
    options: dict
    length: int  # input tokens after truncation
    truncated: bool


def generate_iter(generator: Generator, inputs: Iterable[str | dict | JobInput], *,
                  batch_tokens: int = DEFAULT_BATCH_TOKENS, batch_size: int = DEFAULT_BATCH_SIZE,
                  read_ahead: int | None = None, scores: bool = False, **options) -> Iterator[JobResult]:
    """Generate for every input, in token-budget batches, yielding one `JobResult` per input in input order.

    inputs: texts, dicts {"text": ..., "id": ..., "parameters": {...}}, or `JobInput`s; any iterable,
    read `read_ahead` at a time (default 16 x batch_size).
    options: generation options for every input (`Generator.generate`'s names); an input's own
    "parameters" win over them. Inputs are batched together only when their options resolve to the same
    `GenerationConfig`; seeded sampling runs each input alone so that its output is the one
    `generate(text, seed=...)` gives, whatever the batching.
    scores: add beam search's `sequences_scores` to each result (inputs without beam search fail).
    """
    # Checked now, not at the first next(): a bad job-wide option is the caller's error, not every input's.
    check_job_options(batch_tokens=batch_tokens, batch_size=batch_size, read_ahead=read_ahead)
    generator.defaults.for_call(**options)
    return _windows(generator, inputs, read_ahead or READ_AHEAD_BATCHES * batch_size, batch_tokens, batch_size,
                    scores, options)


def _windows(generator: Generator, inputs: Iterable, read_ahead: int, batch_tokens: int, batch_size: int,
             scores: bool, options: dict) -> Iterator[JobResult]:
    window: list[JobInput] = []
    for position, item in enumerate(inputs, start=1):
        window.append(_job_input(item, position))
        if len(window) == read_ahead:
            yield from _run_window(generator, window, batch_tokens, batch_size, scores, options)
            window = []
    if window:
        yield from _run_window(generator, window, batch_tokens, batch_size, scores, options)


def check_job_options(**sizes) -> None:
    """batch_tokens, batch_size, read_ahead: integers >= 1 (None: the default)."""
    for name, value in sizes.items():
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"`{name}` has to be an integer >= 1, but is {value!r}")


def _job_input(item: str | dict | JobInput, position: int) -> JobInput:
    if isinstance(item, JobInput):
        return item
    if isinstance(item, str):
        return _checked(JobInput(line=position, text=item))
    if isinstance(item, dict):
        return _from_object(item, position)
    return JobInput(line=position, text=None, error=f"an input has to be a text or a dict, "
                                                    f"but is a {type(item).__name__}")


def _run_window(generator: Generator, window: list[JobInput], batch_tokens: int, batch_size: int, scores: bool,
                options: dict) -> Iterator[JobResult]:
    results: dict[int, JobResult] = {}
    groups: dict[object, list[tuple[int, _Ready]]] = {}
    for slot, item in enumerate(window):
        ready = _prepare(generator, item, options, scores)
        if isinstance(ready, JobResult):
            results[slot] = ready
            continue
        # Seeded sampling depends on the batch it runs in: such an input gets a group of its own.
        key = (ready.config, slot) if ready.config.do_sample and ready.config.seed is not None else ready.config
        groups.setdefault(key, []).append((slot, ready))
    for members in groups.values():
        rows = members[0][1].config.rows_per_input
        lengths = [ready.length * rows for _, ready in members]
        for batch in token_batches(lengths, batch_tokens, batch_size):
            chosen = [members[i] for i in batch]
            for (slot, _), result in zip(chosen, _run_batch(generator, [ready for _, ready in chosen], scores)):
                results[slot] = result
    for slot in range(len(window)):
        yield results.pop(slot)


def _prepare(generator: Generator, item: JobInput, options: dict, scores: bool) -> _Ready | JobResult:
    """Validate one input: its options, scores, its length against max_input_tokens."""
    item_id = item.record_id
    if item.error is not None:
        return JobResult(line=item.line, id=item_id, error=item.error)
    call = {**options, **item.parameters}
    try:
        config = generator.defaults.for_call(**call)
        hash(config)  # the batching key
    except (ValueError, TypeError) as exc:
        return JobResult(line=item.line, id=item_id, error=str(exc))
    if scores and not config.is_beam_search:
        return JobResult(line=item.line, id=item_id,
                         error=f"scores need beam search (`num_beams` > 1), but `num_beams` is {config.num_beams}")
    limit = config.max_input_tokens or generator.max_input_tokens
    length = len(generator.tokenizer.encode_one(item.text))
    if length > limit and not config.truncate_input:
        return JobResult(line=item.line, id=item_id, error=f"the text has {length} tokens, more than "
                         f"`max_input_tokens` ({limit}); raise the limit or set `truncate_input`")
    return _Ready(item, config, call, min(length, limit), length > limit)


def _run_batch(generator: Generator, batch: list[_Ready], scores: bool) -> list[JobResult]:
    """One `generate` call for the batch. When it fails, each input runs alone, so one bad input (an
    option only the model can check, non-finite logits) fails alone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation is reported per record, not once per batch
            result = generator.generate([ready.item.text for ready in batch], **batch[0].options)
    except (ValueError, OrtDecodeError) as exc:
        if len(batch) > 1:
            return [r for ready in batch for r in _run_batch(generator, [ready], scores)]
        item = batch[0].item
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [JobResult(line=item.line, id=item.record_id, error=message)]
    per_input = len(result.texts) // len(batch)
    generated = (result.sequences[:, 1:] != generator.manifest.pad_token_id).sum(axis=1)
    results = []
    for row, ready in enumerate(batch):
        rows = slice(row * per_input, (row + 1) * per_input)
        item = ready.item
        results.append(JobResult(
            line=item.line, id=item.record_id, outputs=result.texts[rows],
            finish_reasons=result.finish_reasons[rows], truncated=ready.truncated,
            scores=[float(f"{s:.8g}") for s in result.sequences_scores[rows]] if scores else None,  # float32
            input_tokens=ready.length, output_tokens=int(generated[rows].sum())))
    return results


# ---------------------------------------------------------------- reading inputs
def _checked(item: JobInput) -> JobInput:
    try:
        check_texts([item.text], "text")
    except ValueError as exc:
        item.error = f"{str(exc).replace('`text[0]`', 'the text')}"
    return item


def _from_object(data, line: int) -> JobInput:
    if not isinstance(data, dict):
        return JobInput(line, None, error=f"a JSON line has to be an object with \"text\", "
                                          f"but is a {type(data).__name__}")
    item_id = data.get("id")
    if isinstance(item_id, (dict, list)):
        return JobInput(line, None, error="\"id\" has to be a string or a number")
    text, parameters = data.get("text"), data.get("parameters", {})
    if not isinstance(text, str):
        problem = "is missing" if text is None else f"has to be a string, but is a {type(text).__name__}"
        return JobInput(line, None, item_id, error=f"\"text\" {problem}")
    if not isinstance(parameters, dict):
        return JobInput(line, None, item_id, error=f"\"parameters\" has to be an object of "
                                                   f"generation options, but is a {type(parameters).__name__}")
    return _checked(JobInput(line, text, item_id, parameters))


def parse_line(raw: bytes, line: int, json_lines: bool) -> JobInput:
    """One input line (without its newline) of a JSON Lines or plain text file."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return JobInput(line, None, error=f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                                          f"offset {exc.start})")
    if not json_lines:
        return _checked(JobInput(line, text))
    if not text.strip():
        return JobInput(line, None, error="empty line (a JSON object was expected)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return JobInput(line, None, error=f"not JSON ({exc.msg} at column {exc.colno})")
    return _from_object(data, line)


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    for raw in stream:
        yield raw.rstrip(b"\n").rstrip(b"\r")


def _is_json_lines(path: str, first: bytes | None) -> bool:
    """JSON Lines by the file's extension, else by its first line."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return True
    if suffix == ".txt":
        return False
    return first is not None and first.lstrip().startswith(b"{")


# ---------------------------------------------------------------- resumable output
def _resume_point(output: Path) -> tuple[int, int]:
    """(complete records, error records) of an earlier run's output; cuts a torn last line off the file."""
    if not output.exists():
        return 0, 0
    records = failed = 0
    with open(output, "rb+") as handle:
        end = 0
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # a record cut by a crash: dropped below, rewritten by this run
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError
            except ValueError:
                raise ValueError(f"{output} line {records + 1} is not a record of `ortdecode generate`; "
                                 "refusing to resume into it (name a new output file)") from None
            records += 1
            if record.get("line") != records:
                raise ValueError(f"{output} line {records} holds the record of input line {record.get('line')}; "
                                 "it is not this job's output (name a new output file)")
            failed += "error" in record
            end += len(raw)
        handle.truncate(end)
    return records, failed


def count_lines(path: str) -> int | None:
    """Lines in a regular file (a last line without a newline counts), None for stdin or a pipe."""
    if path == "-" or not Path(path).is_file():
        return None
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def generate_file(generator: Generator, input_path: str, output_path: str, *, stdin: IO[bytes] | None = None,
                  on_result: Callable[[JobResult], None] | None = None, **job_options) -> JobSummary:
    """Run a file job: `input_path` (JSON Lines or plain text lines; "-" reads `stdin`) to `output_path`,
    one JSON line per input in input order. Resumes an output file that an interrupted run left behind.

    job_options: `generate_iter`'s (batch_tokens, batch_size, read_ahead, scores, generation options).
    on_result: called after each record is written (progress bars)."""
    if input_path != "-" and not Path(input_path).is_file():
        raise ValueError(f"the input file {input_path} does not exist (or is not a file)")
    output = Path(output_path)
    resumed, failed = _resume_point(output)
    summary = JobSummary(resumed=resumed, failed=failed)
    started = time.perf_counter()
    source = (stdin or sys.stdin.buffer) if input_path == "-" else open(input_path, "rb")
    try:
        lines = _lines(source)
        first = next(lines, None)
        json_lines = _is_json_lines(input_path, first)
        numbered = enumerate(_prepend(first, lines), start=1)
        inputs = (parse_line(raw, line, json_lines) for line, raw in numbered if line > resumed)
        with open(output, "ab") as sink:
            synced = time.monotonic()
            for result in generate_iter(generator, inputs, **job_options):
                sink.write(json.dumps(result.to_record(), ensure_ascii=False).encode("utf-8") + b"\n")
                sink.flush()
                if time.monotonic() - synced > _FSYNC_SECONDS:
                    os.fsync(sink.fileno())
                    synced = time.monotonic()
                summary.inputs += 1
                summary.failed += result.error is not None
                summary.input_tokens += result.input_tokens
                summary.output_tokens += result.output_tokens
                if on_result is not None:
                    on_result(result)
            os.fsync(sink.fileno())
    finally:
        if input_path != "-":
            source.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _prepend(first: bytes | None, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first is not None:
        yield first
        yield from rest
