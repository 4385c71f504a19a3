"""The `ortdecode` command: generate, score, export, verify, check.

Errors print one line on stderr, never a traceback (set ORTDECODE_DEBUG=1 for one). Exit status:
0 success; 1 the model folder, the provider or the export failed (or `check` found a problem);
2 a bad request: a malformed command line, an invalid option, an empty or too long text, stdin that
is not UTF-8; 130 interrupted by Ctrl-C (what was generated so far is printed first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Sequence

from .errors import GenerationInterrupted, OrtDecodeError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", help="export folder (default: the embedded default model)")
    parser.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ortdecode", description="Decode T5 models exported to ONNX, with ONNX Runtime.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = commands.add_parser("generate", help="generate text for each TEXT ('-' reads lines from stdin)")
    _add_model_options(gen)
    gen.add_argument("texts", nargs="+", metavar="TEXT")
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
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", metavar="TEXT", help="stop a sequence once it contains TEXT "
                                                                     "(repeatable; the text is kept)")
    gen.add_argument("--max-time", type=float, metavar="SECONDS", help="stop every sequence after SECONDS")
    gen.add_argument("--max-input-tokens", type=int, metavar="N",
                     help="refuse inputs longer than N tokens (default: the tokenizer's limit, else 512)")
    gen.add_argument("--truncate-input", action="store_true", default=None,
                     help="cut inputs longer than the limit (with a warning) instead of refusing them")
    gen.add_argument("-v", "--verbose", action="store_true", help="say on stderr when the model is loaded")
    gen.add_argument("--stream", action="store_true", help="print tokens as they are decoded (one TEXT at a time)")
    gen.add_argument("--json", action="store_true", help="print one JSON object with every output")

    score = commands.add_parser("score", help="log-probability of TARGET given SOURCE (teacher forcing)")
    _add_model_options(score)
    score.add_argument("--source", required=True)
    score.add_argument("--target", required=True)
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
    export.add_argument("--layout", choices=("split", "merged", "both"), default="split",
                        help="decoder graphs: split = first-step + with-past pair, merged = one graph")
    export.add_argument("--opset", type=int)
    export.add_argument("--atol", type=float, help="max |logits - PyTorch logits| accepted by the validation")
    export.add_argument("--no-validate", action="store_true", help="skip the comparison with PyTorch")
    export.add_argument("--force", action="store_true", help="overwrite a non-empty OUT_DIR")

    verify = commands.add_parser("verify", help="check an export's files against the sha256 in its manifest")
    verify.add_argument("model", metavar="DIR", nargs="?")

    check = commands.add_parser("check", help="hashes, graph signatures against the manifest, and a one-token "
                                              "smoke decode; exit 0 only when all hold")
    check.add_argument("model", metavar="DIR", nargs="?")
    check.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    return parser


_GENERATE_OPTIONS = ("max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "num_beams",
                     "num_return_sequences", "length_penalty", "repetition_penalty", "no_repeat_ngram_size", "seed",
                     "stop", "max_time", "max_input_tokens", "truncate_input")


def _stdin_lines() -> list[str]:
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"stdin is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}") from None
    return [line for line in text.splitlines() if line.strip()]


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


def _generate(args) -> int:
    from . import GenerationConfig, default_model_path, load, read_manifest
    from .generator import check_texts

    # Bad input is reported before any session starts (and before the provider notice).
    read_manifest(args.model or default_model_path())
    options = {name: getattr(args, name) for name in _GENERATE_OPTIONS if getattr(args, name) is not None}
    GenerationConfig().for_call(**options)
    texts = _read_texts(args.texts)
    check_texts(texts, "texts")
    started = time.perf_counter()
    generator = load(args.model, provider=args.provider, threads=args.threads)
    if args.verbose:
        print(f"ortdecode: loaded {generator.folder} on {generator.provider} in {time.perf_counter() - started:.2f} s",
              file=sys.stderr, flush=True)
    if args.stream:
        for text in texts:
            try:
                for piece in generator.stream(text, **options):
                    print(piece, end="", flush=True)
            finally:
                print(flush=True)  # end the line, also when Ctrl-C stops it
        return 0
    try:
        result = generator.generate(texts, **options)
    except GenerationInterrupted as interrupted:
        _print_outputs(texts, interrupted.result, args, generator, options)
        raise
    _print_outputs(texts, result, args, generator, options)
    return 0


def _score(args) -> int:
    from . import load

    generator = load(args.model, provider=args.provider, threads=args.threads)
    result = generator.score([args.source], [args.target])
    tokens = [generator.tokenizer.token(t) for t in result.tokens[0]]
    logprobs = result.token_logprobs[0]
    if args.json:
        print(json.dumps({"source": args.source, "target": args.target, "token_ids": result.tokens[0],
                          "tokens": tokens, "token_logprobs": [float(x) for x in logprobs],
                          "total_logprob": float(logprobs.sum())}, indent=2))
    else:
        for token_id, token, logprob in zip(result.tokens[0], tokens, logprobs):
            print(f"{token_id:>8}  {logprob:10.4f}  {token}")
        print(f"total log-probability: {logprobs.sum():.4f}")
    return 0


def _export(args) -> int:
    try:
        from ortdecode_export import export_model
    except ImportError as exc:
        raise OrtDecodeError(f"`ortdecode export` needs the export extra: pip install 'ortdecode[export]' "
                             f"({exc})") from None
    fp16 = args.fp16 or args.dtype == "fp16"
    target = "cuda" if fp16 else args.target
    export_model(args.model, args.out_dir, target=target, fp16=fp16, quantize=args.quantize,
                 layout=args.layout, opset=args.opset, atol=args.atol, validate=not args.no_validate,
                 force=args.force)
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = lambda message, *_, **__: print(f"ortdecode: {message}", file=sys.stderr)
    handlers = {"generate": _generate, "score": _score, "export": _export, "verify": _verify, "check": _check}
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


if __name__ == "__main__":
    sys.exit(main())
