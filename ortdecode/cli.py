"""The `ortdecode` command: generate, score, export, adopt, validate, verify, check, serve.

Errors print one line on stderr, never a traceback (set ORTDECODE_DEBUG=1 for one); so do unexpected
exceptions, as "internal error". Exit status: 0 success; 1 the model folder, the provider or the export
failed (or `check` / `validate` found a problem, or an internal error);
2 a bad request: a malformed command line, an invalid option, an empty or too long text, stdin that
is not UTF-8; 3 a file job (`generate --input`) finished but some inputs failed (error records in its
output); 130 interrupted by Ctrl-C (what was generated so far is printed first).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import GenerationInterrupted, InputTooLongError, OrtDecodeError

EXPORT_INSTALL_HINT = 'pip install "ortdecode[export]" (from a checkout: pip install -e ".[export]")'


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", help="export folder (default: the embedded default model)")
    parser.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument("--allow-unvalidated", action="store_true",
                        help="load an export whose validation against PyTorch failed or did not finish")
    parser.add_argument("--decoder-layout", choices=("auto", "with-past", "merged", "split"), default="auto",
                        help="decoder graphs to load: auto = the first the export holds, in this order")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="say on stderr which provider runs and when the model is loaded")


def token_ids(text: str) -> list[int]:
    """'3,7,9' -> [3, 7, 9]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes token ids separated by commas (e.g. 3,7,9), but is {text!r}") from None


def start_and_factor(text: str) -> tuple[int, float]:
    """'START,FACTOR' -> (START, FACTOR), for --exponential-decay-length-penalty."""
    try:
        start, factor = text.split(",")
        return int(start), float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes START,FACTOR (an integer and a float, e.g. 10,1.05), but is {text!r}"
                                         ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ortdecode", description="Decode T5 models exported to ONNX, with ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"ortdecode {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = commands.add_parser("generate", help="generate text for each TEXT ('-' reads lines from stdin)")
    _add_model_options(gen)
    gen.add_argument("texts", nargs="*", metavar="TEXT")
    gen.add_argument("--max-new-tokens", type=int)
    gen.add_argument("--min-new-tokens", type=int)
    gen.add_argument("--do-sample", action="store_true", default=None)
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--num-beams", type=int)
    gen.add_argument("--num-return-sequences", type=int)
    gen.add_argument("--length-penalty", type=float)
    gen.add_argument("--repetition-penalty", type=float)
    gen.add_argument("--no-repeat-ngram-size", type=int)
    gen.add_argument("--min-length", type=int)
    gen.add_argument("--min-p", type=float, help="sampling: keep tokens at least MIN_P times as likely as the best")
    gen.add_argument("--typical-p", type=float, help="sampling: locally typical sampling's mass")
    gen.add_argument("--epsilon-cutoff", type=float, help="sampling: drop tokens less likely than this")
    gen.add_argument("--eta-cutoff", type=float, help="sampling: eta sampling's epsilon")
    gen.add_argument("--encoder-repetition-penalty", type=float, help="> 1 favours the tokens of the input")
    gen.add_argument("--encoder-no-repeat-ngram-size", type=int, help="do not repeat the input's n-grams")
    gen.add_argument("--suppress-tokens", type=token_ids, metavar="IDS", help="never generate these ids (3,7,9)")
    gen.add_argument("--begin-suppress-tokens", type=token_ids, metavar="IDS", help="never generate these ids first")
    gen.add_argument("--forced-bos-token-id", type=int, metavar="ID", help="the first generated token")
    gen.add_argument("--forced-eos-token-id", type=token_ids, metavar="IDS",
                     help="the token(s) forced last when the token budget runs out")
    gen.add_argument("--exponential-decay-length-penalty", type=start_and_factor, metavar="START,FACTOR",
                     help="after START tokens, EOS scores grow by |score| * (FACTOR ** k - 1)")
    gen.add_argument("--renormalize-logits", action="store_true", default=None,
                     help="log-softmax the scores after all processors")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", metavar="TEXT", help="stop a sequence once it contains TEXT "
                                                                     "(repeatable; the text is kept)")
    gen.add_argument("--max-time", type=float, metavar="SECONDS", help="stop every sequence after SECONDS")
    gen.add_argument("--max-input-tokens", type=int, metavar="N",
                     help="refuse inputs longer than N tokens (default: the tokenizer's limit, else 512)")
    gen.add_argument("--truncate-input", action="store_true", default=None,
                     help="cut inputs longer than the limit (with a warning) instead of refusing them")
    gen.add_argument("--stream", action="store_true", help="print tokens as they are decoded (one TEXT at a time)")
    gen.add_argument("--json", action="store_true", help="print one JSON object with every output (with --stream: "
                                                         "JSON lines, one per piece and a last one per TEXT)")
    job = gen.add_argument_group("file mode (instead of TEXT): one JSON line per input, in input order, resumable")
    job.add_argument("--input", metavar="FILE", help="JSON Lines ({\"id\", \"text\", \"parameters\"}) or plain "
                                                    "text lines; '-' reads stdin")
    job.add_argument("--output", metavar="FILE", help="JSON Lines results; an existing one is resumed")
    job.add_argument("--batch-tokens", type=int, metavar="N", help="padded input tokens per batch (default 4096)")
    job.add_argument("--batch-size", type=int, metavar="N", help="inputs per batch (default 64)")
    job.add_argument("--scores", action="store_true", help="add beam search's sequence scores to each record")
    job.add_argument("--quiet", action="store_true", help="no progress bar")

    score = commands.add_parser("score", help="log-probability of TARGET given SOURCE (teacher forcing)")
    _add_model_options(score)
    # Appended, so that a repeated --source is refused instead of silently keeping the last.
    score.add_argument("--source", required=True, action="append", help="the source text (once)")
    score.add_argument("--target", required=True, action="append", help="the target text to score (once)")
    score.add_argument("--json", action="store_true")

    export = commands.add_parser("export", help="export a Hugging Face T5 (hub id or folder) to ONNX")
    export.add_argument("model", metavar="MODEL")
    export.add_argument("out_dir", metavar="OUT_DIR")
    export.add_argument("--target", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: apply ONNX Runtime's T5 fusions (CUDA-only ops)")
    export.add_argument("--dtype", choices=("float32", "fp16"), default="float32",
                        help="fp16: float16 graphs for CUDA (implies --target cuda), logits still float32")
    export.add_argument("--fp16", action="store_true", help="the same as --dtype fp16")
    export.add_argument("--quantize", choices=("int8",), help="dynamic int8 quantization of the weights (CPU)")
    export.add_argument("--layout", choices=("with-past", "split", "merged", "both", "all"),
                        help="decoder graphs: with-past = the encoder computes the cross-attention cache, one "
                             "with-past decoder for every step, weights in external data (default on CPU); split = "
                             "first-step + with-past pair (default for CUDA); merged = Optimum's merged graph; "
                             "both = split + merged; all = every graph")
    export.add_argument("--opset", type=int)
    export.add_argument("--atol", type=float, help="accept max |logits - PyTorch float32 logits| <= ATOL instead of "
                                                   "the float64 parity rule")
    export.add_argument("--no-validate", action="store_true", help="skip the comparison with PyTorch")
    export.add_argument("--no-fuse-attention", action="store_true",
                        help="CPU: keep Optimum's op-by-op attention in the with-past decoder")
    export.add_argument("--no-pack-encoder", action="store_true",
                        help="CPU: let the encoder compute the padding too, as Optimum's graph does (by default "
                             "its per-token work runs on the real tokens only)")
    export.add_argument("--no-ort-optimize", action="store_true",
                        help="CPU: save the graphs as the passes wrote them, for ONNX Runtime to optimize at every "
                             "load (by default they are saved as its CPU provider optimizes them, which loads faster "
                             "but ties them to a recent onnxruntime)")
    export.add_argument("--no-fuse-projections", action="store_true",
                        help="CPU: keep one MatMul per projection (by default the query, key and value, and the "
                             "cross-attention cache's keys and values, are one GEMM each)")
    export.add_argument("--force", action="store_true", help="replace OUT_DIR when it holds a previous export")

    adopt = commands.add_parser("adopt", help="make a plain Optimum export folder an ortdecode export")
    adopt.add_argument("optimum_dir", metavar="OPTIMUM_DIR")
    adopt.add_argument("out_dir", metavar="OUT_DIR")
    adopt.add_argument("--reference", metavar="CKPT", help="the PyTorch checkpoint the graphs came from: validate "
                                                           "against it (without it the export is unvalidated)")
    adopt.add_argument("--atol", type=float, help="as for export")
    adopt.add_argument("--force", action="store_true", help="replace OUT_DIR when it holds a previous export")

    validate = commands.add_parser("validate", help="parity report of an export against its PyTorch checkpoint; "
                                                    "exit 0 when it passes")
    validate.add_argument("model", metavar="EXPORT")
    validate.add_argument("--reference", required=True, metavar="CKPT",
                          help="the PyTorch checkpoint (folder or hub id)")
    validate.add_argument("--texts", metavar="FILE", help="inputs, one per line (default: a few sample texts)")
    validate.add_argument("--num-beams", type=int, default=4, help="beam width of the beam-identity test (default 4)")
    validate.add_argument("--max-new-tokens", type=int, default=20, help="length of the free-running outputs")
    validate.add_argument("--steps", type=int, default=8, help="teacher-forced steps of the logits comparison")
    validate.add_argument("--atol", type=float, help="as for export")
    validate.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    validate.add_argument("--json", action="store_true", help="print the report as JSON")

    verify = commands.add_parser("verify", help="check an export's files against the sha256 in its manifest")
    verify.add_argument("model", metavar="DIR", nargs="?")

    serve = commands.add_parser("serve", help="HTTP server with continuous batching (needs the serve extra)")
    _add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    serve.add_argument("--port", type=int, default=8080,
                       help="0: any free port, the listening line says which (default: %(default)s)")
    serve.add_argument("--served-model-name", metavar="NAME",
                       help="the model id /v1/models lists and a request's `model` may name (default: the model "
                            "folder's name; t5-numbers for the embedded model)")
    serve.add_argument("--max-batch-rows", type=int, default=16, metavar="N",
                       help="decoder rows in the running batch; beams and samples count as rows (default: %(default)s)")
    serve.add_argument("--max-batch-tokens", type=int, default=8192, metavar="N",
                       help="sum of input length + max_new_tokens over the running requests (default: %(default)s)")
    serve.add_argument("--max-concurrent-requests", type=int, default=64, metavar="N",
                       help="requests running or waiting; more are answered 429 (default: %(default)s)")
    serve.add_argument("--request-timeout", type=float, default=60.0, metavar="SECONDS",
                       help="a request past it ends with its partial text, finish reason 'time' (default: %(default)s)")
    serve.add_argument("--grace-period", type=float, default=30.0, metavar="SECONDS",
                       help="how long SIGTERM / Ctrl-C wait for running requests (default: %(default)s)")
    serve.add_argument("--no-continuous-batching", action="store_true",
                       help="static batches: requests join only when the running batch has finished")

    check = commands.add_parser("check", help="hashes, graph signatures against the manifest, and a one-token "
                                              "smoke decode; exit 0 only when all hold")
    check.add_argument("model", metavar="DIR", nargs="?")
    check.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    return parser


_GENERATE_OPTIONS = ("max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "num_beams",
                     "num_return_sequences", "length_penalty", "repetition_penalty", "no_repeat_ngram_size", "seed",
                     "stop", "max_time", "max_input_tokens", "truncate_input", "min_length", "min_p", "typical_p",
                     "epsilon_cutoff", "eta_cutoff", "encoder_repetition_penalty", "encoder_no_repeat_ngram_size",
                     "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
                     "exponential_decay_length_penalty", "renormalize_logits")


def _stdin_lines() -> list[str]:
    """One input per line; a blank line is refused (naming it), so outputs line up with input lines."""
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"stdin is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(f"stdin line {number} is empty or whitespace only: every line is one input text")
    return lines


def _read_texts(texts: Sequence[str]) -> list[str]:
    out: list[str] = []
    for text in texts:
        out.extend(_stdin_lines()) if text == "-" else out.append(text)
    if not out:
        raise ValueError("no input text (stdin was empty)")
    return out


def _print_outputs(texts: list[str], result, args, generator, options) -> None:
    per_input = len(result.texts) // len(texts)
    if args.json:
        outputs = [{"input": text, "outputs": result.texts[i * per_input:(i + 1) * per_input],
                    "finish_reasons": result.finish_reasons[i * per_input:(i + 1) * per_input]}
                   for i, text in enumerate(texts)]
        print(json.dumps({"model": str(generator.folder), "provider": generator.provider, "options": options,
                          "results": outputs}, indent=2))
    else:
        for text in result.texts:
            print(text)
    timed_out = result.finish_reasons.count("time")
    if timed_out:
        print(f"ortdecode: max_time ({options['max_time']} s) ran out: {timed_out} of {len(result.texts)} outputs "
              "are incomplete", file=sys.stderr)


def _load(args):
    from . import load

    started = time.perf_counter()
    generator = load(args.model, provider=args.provider, threads=args.threads, decoder_layout=args.decoder_layout,
                     allow_unvalidated=args.allow_unvalidated)
    if args.verbose:
        layout = generator.runner.layout
        print(f"ortdecode: loaded {generator.folder} ({layout} decoder) on {generator.provider} in "
              f"{time.perf_counter() - started:.2f} s", file=sys.stderr, flush=True)
    return generator


def _stream(texts: list[str], args, generator, options) -> None:
    """Plain: each TEXT's output on its own line as it grows. --json: JSON lines, {"input": i, "piece": ...}
    per piece, then {"input": i, "text": ..., "finish_reason": ...} (also after Ctrl-C: "interrupted").
    A refused request (ValueError, raised before the first piece) prints nothing."""
    for index, text in enumerate(texts):
        pieces, output = generator.stream(text, **options), ""

        def end(reason: str) -> None:
            final = {"input": index, "text": output, "finish_reason": reason}
            print(json.dumps(final) if args.json else "", flush=True)

        try:
            while True:
                try:
                    piece = next(pieces)
                except StopIteration as finished:
                    reason = finished.value  # stream's return value
                    break
                output += piece
                print(json.dumps({"input": index, "piece": piece}) if args.json else piece,
                      end="\n" if args.json else "", flush=True)
        except KeyboardInterrupt:
            end("interrupted")
            raise
        end(reason)


def _generate(args) -> int:
    from . import GenerationConfig, default_model_path, read_manifest
    from .generator import check_texts

    # Bad input is reported before any session starts (and before the provider notice).
    manifest = read_manifest(args.model or default_model_path())
    options = {name: getattr(args, name) for name in _GENERATE_OPTIONS if getattr(args, name) is not None}
    GenerationConfig().for_call(**options).check_token_ids(manifest.vocab_size)
    if args.input is not None or args.output is not None:
        return _generate_file(args, options)
    if not args.texts:
        raise ValueError("generate needs TEXT arguments, or --input FILE --output FILE")
    texts = _read_texts(args.texts)
    check_texts(texts, "texts")
    generator = _load(args)
    try:
        if args.stream:
            _stream(texts, args, generator, options)
            return 0
        try:
            result = generator.generate(texts, **options)
        except GenerationInterrupted as interrupted:
            _print_outputs(texts, interrupted.result, args, generator, options)
            raise
    except InputTooLongError as exc:  # the Python message names Python options
        raise ValueError(f"input {exc.index + 1} has {exc.length} tokens, more than --max-input-tokens ({exc.limit}); "
                         "raise it or pass --truncate-input to cut the input") from None
    _print_outputs(texts, result, args, generator, options)
    return 0


def _generate_file(args, options: dict) -> int:
    """File mode: exit status 0 when every input succeeded, 3 when some became error records."""
    from .batch_job import check_job_options, count_lines

    if args.texts or args.stream or args.json or args.input is None or args.output is None:
        raise ValueError("file mode takes --input FILE and --output FILE, and no TEXT, --stream or --json")
    job = {name: getattr(args, name) for name in ("batch_tokens", "batch_size") if getattr(args, name) is not None}
    check_job_options(**job)
    generator = _load(args)
    bar = None
    if not args.quiet and sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is optional at run time: then only the summary line
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=count_lines(args.input), unit="input", file=sys.stderr, dynamic_ncols=True)
    tokens = [0, time.perf_counter()]

    def on_result(result) -> None:
        tokens[0] += result.output_tokens
        bar.update()
        bar.set_postfix_str(f"{tokens[0] / (time.perf_counter() - tokens[1]):.0f} tokens/s", refresh=False)

    try:
        summary = generator.generate_file(args.input, args.output, scores=args.scores,
                                          on_result=on_result if bar else None, **job, **options)
    finally:
        if bar is not None:
            bar.close()
    seconds = max(summary.seconds, 1e-9)
    resumed = f" (after {summary.resumed} written by an earlier run)" if summary.resumed else ""
    print(f"ortdecode: {summary.inputs} inputs{resumed} in {summary.seconds:.1f} s, {summary.inputs / seconds:.1f} "
          f"inputs/s, {summary.output_tokens / seconds:.0f} tokens/s; {summary.failed} failed"
          + (f" (error records in {args.output})" if summary.failed else ""), file=sys.stderr)
    return 3 if summary.failed else 0


def _score(args) -> int:
    for name in ("source", "target"):
        if len(getattr(args, name)) > 1:
            raise ValueError(f"--{name} was given {len(getattr(args, name))} times; score takes one --source and "
                             "one --target (run it once per pair)")
    source, target = args.source[0], args.target[0]
    generator = _load(args)
    result = generator.score([source], [target])
    tokens = [generator.tokenizer.token(t) for t in result.tokens[0]]
    logprobs = result.token_logprobs[0]
    if args.json:
        print(json.dumps({"source": source, "target": target, "token_ids": result.tokens[0],
                          "tokens": tokens, "token_logprobs": [float(x) for x in logprobs],
                          "total_logprob": float(logprobs.sum())}, indent=2))
    else:
        for token_id, token, logprob in zip(result.tokens[0], tokens, logprobs):
            print(f"{token_id:>8}  {logprob:10.4f}  {token}")
        print(f"total log-probability: {logprobs.sum():.4f}")
    return 0


def _export_tools(command: str):
    try:
        import ortdecode_export
    except ImportError as exc:
        raise OrtDecodeError(f"`ortdecode {command}` needs the export extra: {EXPORT_INSTALL_HINT} ({exc})") from None
    return ortdecode_export


def _export(args) -> int:
    export_model = _export_tools("export").export_model
    fp16 = args.fp16 or args.dtype == "fp16"
    target = "cuda" if fp16 else args.target
    manifest = export_model(args.model, args.out_dir, target=target, fp16=fp16, quantize=args.quantize,
                            layout=args.layout, opset=args.opset, atol=args.atol, validate=not args.no_validate,
                            force=args.force, fuse_attention=not args.no_fuse_attention,
                            pack_encoder=not args.no_pack_encoder, ort_optimize=not args.no_ort_optimize,
                            fuse_projections=not args.no_fuse_projections)
    print(_export_summary(Path(args.out_dir), manifest))
    return 0


def _export_summary(folder: Path, manifest) -> str:
    """One line: the folder, its size on disk, and the differences the validation measured (if it ran)."""
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    measured = [f"{name} {value:.3g}" for name, value in manifest.validation.items()
                if isinstance(value, float) and ("diff" in name or "error" in name)]
    validation = "; validation: " + ", ".join(measured) if measured else "; not validated"
    return f"ortdecode: exported {folder} ({size / 1e6:.1f} MB, {len(manifest.graphs)} graphs){validation}"


def _adopt(args) -> int:
    _export_tools("adopt").adopt_optimum_export(args.optimum_dir, args.out_dir, reference=args.reference,
                                                atol=args.atol, force=args.force)
    return 0


def _validate(args) -> int:
    tools = _export_tools("validate")
    texts = None
    if args.texts:
        try:
            with open(args.texts, encoding="utf-8") as handle:
                texts = [line.rstrip("\n") for line in handle if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--texts {args.texts}: cannot read it as UTF-8 text ({exc})") from None
        if not texts:
            raise ValueError(f"--texts {args.texts} holds no text")
    report = tools.validate_export(args.model, args.reference, texts=texts, num_beams=args.num_beams,
                                   max_new_tokens=args.max_new_tokens, steps=args.steps, provider=args.provider,
                                   atol=args.atol)
    if args.json:
        print(json.dumps({"model": args.model, "reference": args.reference, **report.to_dict()}, indent=2))
    else:
        print(f"{'step':>4}  {'vs float32':>11}  {'vs float64':>11}")
        for step, (e32, e64) in enumerate(zip(report.step_errors_float32, report.step_errors_float64)):
            print(f"{step:>4}  {e32:11.3g}  {e64:11.3g}")
        print(f"PyTorch float32 vs float64: {report.torch_float32_vs_float64:.3g}; "
              f"logits scale {report.logits_scale:.3g}")
        print(f"greedy outputs identical to transformers': {report.greedy_identical:.0%} of {report.inputs}")
        print(f"beam search ({report.num_beams} beams) outputs identical: {report.beam_identical:.0%} "
              f"of {report.inputs}")
        print(f"{report.status.upper()}: {report.reason}")
    return 1 if report.passed is False else 0


def _verify(args) -> int:
    from . import default_model_path, read_manifest, verify_checksums

    folder = args.model or default_model_path()
    manifest = read_manifest(folder)
    verify_checksums(folder, manifest)
    print(f"{folder}: {len(manifest.graphs)} graph files match their sha256")
    return 0


def _check(args) -> int:
    from . import default_model_path
    from .check import check_model_folder

    folder = args.model or default_model_path()
    results = check_model_folder(folder, provider=args.provider)
    for result in results:
        print(f"{'ok  ' if result.passed else 'FAIL'}  {result.name}: {result.detail}")
    failed = [r.name for r in results if not r.passed]
    print(f"{folder}: " + (f"{len(failed)} of {len(results)} checks failed" if failed else f"all {len(results)} checks passed"))
    return 1 if failed else 0


def _serve(args) -> int:
    from . import default_model_path, read_manifest

    try:
        from .serve.server import ServeSettings, serve
    except ImportError as exc:
        raise OrtDecodeError(f'`ortdecode serve` needs the serve extra: pip install "ortdecode[serve]" (from a checkout: '
                             f'pip install -e ".[cpu,serve]", or make serve) ({exc})') from None
    for name in ("max_batch_rows", "max_batch_tokens", "max_concurrent_requests"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} has to be >= 1, but is {getattr(args, name)}")
    if args.served_model_name is not None and not args.served_model_name.strip():
        raise ValueError("--served-model-name has to be a non-empty name")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port has to be in 0..65535 (0: any free port), but is {args.port}")
    for name in ("request_timeout", "grace_period"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} has to be > 0 seconds, but is {getattr(args, name)}")
    read_manifest(args.model or default_model_path())  # a folder that is no export fails before binding
    return serve(ServeSettings(
        model=args.model, host=args.host, port=args.port, provider=args.provider, threads=args.threads,
        decoder_layout=args.decoder_layout, allow_unvalidated=args.allow_unvalidated,
        max_batch_rows=args.max_batch_rows, max_batch_tokens=args.max_batch_tokens,
        max_concurrent_requests=args.max_concurrent_requests, request_timeout=args.request_timeout,
        continuous=False if args.no_continuous_batching else None, grace_period=args.grace_period,
        served_model_name=args.served_model_name))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"generate": _generate, "score": _score, "export": _export, "adopt": _adopt, "validate": _validate,
                "verify": _verify, "check": _check, "serve": _serve}
    warnings.formatwarning = _one_line_warning
    if getattr(args, "verbose", False):  # the library's notices (e.g. which provider) are INFO log records
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("ortdecode: %(message)s"))
        logging.getLogger("ortdecode").addHandler(handler)
        logging.getLogger("ortdecode").setLevel(logging.INFO)
    try:
        return handlers[args.command](args)
    except (OrtDecodeError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("ORTDECODE_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"ortdecode: error: {message}", file=sys.stderr)
        is_request = isinstance(exc, ValueError) and not isinstance(exc, OrtDecodeError)
        return 2 if is_request else 1
    except KeyboardInterrupt:
        print("ortdecode: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (a bug, or a library failing in a way we did not foresee)
        if os.environ.get("ORTDECODE_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else "(no message)"
        print(f"ortdecode: internal error: {type(exc).__name__}: {message}; set ORTDECODE_DEBUG=1 for the traceback",
              file=sys.stderr)
        return 1


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    from .errors import OrtDecodeNotice

    return f"ortdecode: {message}\n" if issubclass(category, OrtDecodeNotice) else f"ortdecode: warning: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
