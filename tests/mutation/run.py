"""Mutation testing: break the decoding code on purpose, one change at a time, and check a test notices.

    python -m tests.mutation.run [--generated N] [--seed S] [--listed-only] [--report PATH]   (make mutation)

Each mutant is applied to a copy of the `ortdecode` package (the checkout is never edited), and that
module's fast test subset runs against the copy (pytest -x, PYTHONPATH pointing at the copy). A mutant
is caught when the subset fails (or runs past the time limit). The report lists every mutant, whether it
was caught and by which test. Mutants: the hand-written list in mutants.py (every one must be caught),
then N operator mutants per module drawn with a fixed seed from the modules' code (comparisons, arithmetic,
integer constants, `not`, `and`/`or`). Not part of CI: about a minute per mutant on 2 cores.
"""

from __future__ import annotations

import argparse
import ast
import copy
import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .mutants import LISTED, Mutant

ROOT = Path(__file__).resolve().parents[2]
# The package is installed editable, and setuptools' editable finder comes before PYTHONPATH: this
# sitecustomize (on PYTHONPATH, imported at every interpreter start, CLI subprocesses included) puts a
# finder for `ortdecode` in front of it that finds the mutated copy.
SITECUSTOMIZE = """import importlib.machinery, sys

class _MutatedCopy:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "ortdecode":
            return importlib.machinery.PathFinder.find_spec(name, [{work!r}])
        if name.startswith("ortdecode."):
            return importlib.machinery.PathFinder.find_spec(name, path)
        return None

sys.meta_path.insert(0, _MutatedCopy)
"""
MODULES = ["search.py", "processors.py", "stopping.py", "runner.py", "generator.py", "engine.py", "numerics.py",
           "verified.py", "sessions.py"]
# The fast subset per module, most discriminating first (-x stops at the first failure).
SUBSETS = {
    # test_engine compares the engine with itself (joined vs alone): parity against transformers comes next.
    "engine.py": ["tests/test_engine.py", "tests/test_parity.py::test_beam_search_sequences_and_scores_are_identical",
                  "tests/test_runner.py", "tests/test_generator.py"],
    "search.py": ["tests/test_search.py", "tests/test_beam_endings.py",
                  "tests/test_parity.py::test_sampling_follows_the_processed_distribution",
                  "tests/test_generator.py", "tests/test_generate_options.py"],
    "processors.py": ["tests/test_processors.py", "tests/test_parity.py::test_sampling_follows_the_processed_distribution",
                      "tests/test_beam_endings.py::test_greedy_rows_end_by_eos_at_their_own_step",
                      "tests/test_parity.py::test_option_table_matches_transformers", "tests/test_generate_options.py"],
    "stopping.py": ["tests/test_stopping.py", "tests/test_beam_endings.py", "tests/test_generate_options.py",
                    "tests/test_stop_strings.py"],
    # test_engine: joins in place (the batch engine gives the runner room for newcomers; generate() does not)
    "runner.py": ["tests/test_runner.py", "tests/test_engine.py",
                  "tests/test_parity.py::test_per_step_logits_match_pytorch", "tests/test_generator.py",
                  "tests/test_ort_optimize.py::test_a_graph_a_newer_onnxruntime_optimized_says_so_when_it_cannot_load"],
    "numerics.py": ["tests/test_numerics.py", "tests/test_search.py", "tests/test_processors.py"],
    "verified.py": ["tests/test_manifest.py"],
    "sessions.py": ["tests/test_sessions.py"],
    "generator.py": ["tests/test_generator.py", "tests/test_beam_endings.py", "tests/test_stopping.py",
                     "tests/test_load.py", "tests/test_cli.py::test_score_prints_transformers_log_probs",
                     "tests/test_bad_requests.py", "tests/test_validate.py"],
}
TIME_LIMIT = 900

_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
          ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Add: ast.Sub,
          ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult, ast.And: ast.Or,
          ast.Or: ast.And}


def _skipped_lines(tree: ast.AST) -> set[int]:
    """Lines where a mutant would only change a message: raise statements, f-strings, docstrings."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Raise, ast.JoinedStr)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def _candidates(tree: ast.AST) -> list[tuple[int, str]]:
    """(index of the node in ast.walk order, kind) of every node an operator mutant can change."""
    skipped = _skipped_lines(tree)
    found = []
    for index, node in enumerate(ast.walk(tree)):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _SWAPS:
            found.append((index, "compare"))
        elif isinstance(node, (ast.BinOp, ast.BoolOp)) and type(node.op) in _SWAPS:
            found.append((index, "operator"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            found.append((index, "constant"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            found.append((index, "not"))
    return found


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.AST):
        self.target, self.replacement = target, replacement

    def generic_visit(self, node):
        node = super().generic_visit(node)
        return self.replacement if node is self.target else node


def generated_mutants(file: str, count: int, seed: int) -> list[Mutant]:
    source = (ROOT / "ortdecode" / file).read_text()
    tree = ast.parse(source)
    candidates = _candidates(tree)
    chosen = random.Random(f"{seed}:{file}").sample(candidates, min(count, len(candidates)))
    mutants = []
    for index, kind in sorted(chosen):
        mutated_tree = copy.deepcopy(tree)
        node = list(ast.walk(mutated_tree))[index]
        before = ast.get_source_segment(source, list(ast.walk(tree))[index]) or ast.unparse(node)
        new = copy.deepcopy(node)
        if kind == "compare":
            new.ops[0] = _SWAPS[type(new.ops[0])]()
        elif kind == "operator":
            new.op = _SWAPS[type(new.op)]()
        elif kind == "constant":
            new.value = node.value + 1
        else:
            new = node.operand
        mutated_tree = ast.fix_missing_locations(_Replace(node, new).visit(mutated_tree))
        after = ast.unparse(new)
        line = source.splitlines()[node.lineno - 1].strip()
        name = f"{file}:{node.lineno} `{' '.join(before.split())}` -> `{' '.join(after.split())}`"
        if kind == "constant":
            name += f" in `{line}`"
        mutants.append(Mutant(name, file, source, ast.unparse(mutated_tree), why=kind))
    return mutants


def run_subset(work: Path, tests: list[str], env: dict) -> tuple[str, str, float]:
    """('caught' | 'missed' | 'timeout', the failing test or '', seconds)."""
    started = time.time()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--basetemp",
               str(work / "pytest"), *tests]
    try:
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        return "timeout", f"ran past {TIME_LIMIT} s", time.time() - started
    if run.returncode == 0:
        return "missed", "", time.time() - started
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", run.stdout, flags=re.M)
    return "caught", failed[0] if failed else (run.stdout.strip().splitlines() or ["?"])[-1], time.time() - started


def main(argv=None) -> int:
    # A job started in the background (`... &`) inherits SIGINT ignored, and so would every pytest and CLI
    # below it: the Ctrl-C tests would fail unmutated. A handler set here is reset to the default at exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(prog="python -m tests.mutation.run", description=__doc__.splitlines()[0])
    parser.add_argument("--generated", type=int, default=8, help="operator mutants per module (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--listed-only", action="store_true")
    parser.add_argument("--modules", nargs="*", default=MODULES)
    parser.add_argument("--report", type=Path, default=ROOT / "tests" / "mutation" / "REPORT.md")
    parser.add_argument("--tests", nargs="*", help="run these tests instead of each module's subset (e.g. to show "
                        "that one end-to-end test alone catches the listed changes)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unmutated run of the subsets (only when the suite just passed on this code)")
    args = parser.parse_args(argv)

    mutants = [m for m in LISTED if m.file in args.modules]
    if not args.listed_only:  # round-robin over the modules, so a partial run covers each of them
        per_module = [generated_mutants(file, args.generated, args.seed) for file in args.modules]
        mutants += [m for group in itertools.zip_longest(*per_module) for m in group if m is not None]
    work = Path(tempfile.mkdtemp(prefix="ortdecode-mutation-"))
    shutil.copytree(ROOT / "ortdecode", work / "ortdecode")
    (work / "models").symlink_to(ROOT / "models")  # the embedded default model, found beside the package
    (work / "sitecustomize.py").write_text(SITECUSTOMIZE.format(work=str(work)))
    env = {**os.environ, "PYTHONPATH": str(work)}
    env.setdefault("ORTDECODE_TEST_MODELS", str(work / "models-cache"))  # set it to keep the models between runs
    found = subprocess.run([sys.executable, "-c", "import ortdecode; print(ortdecode.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    rows, started = [], time.time()
    try:
        if not found.startswith(str(work)):
            raise SystemExit(f"the copy is not what Python imports ({found}); cannot mutate safely")
        # Unmutated, every subset must pass (one run over their union; it also builds the cached models).
        subsets = {file: args.tests or SUBSETS[file] for file in MODULES}
        union = list(dict.fromkeys(t for file in args.modules for t in subsets[file]))
        outcome, test, seconds = ("missed", "", 0.0) if args.no_baseline else run_subset(work, union, env)
        print(f"baseline: {'passes' if outcome == 'missed' else 'FAILS ' + test} ({seconds:.0f} s)", flush=True)
        if outcome != "missed":
            raise SystemExit(f"the unmutated subsets fail ({test}): fix that first")
        for number, mutant in enumerate(mutants, 1):
            target = work / "ortdecode" / mutant.file
            original = target.read_text()
            if mutant.original == original:  # a generated mutant carries the whole module
                target.write_text(mutant.changed)
            else:
                assert original.count(mutant.original) == 1, f"{mutant.name}: the original text is not unique"
                target.write_text(original.replace(mutant.original, mutant.changed))
            try:
                outcome, test, seconds = run_subset(work, subsets[mutant.file], env)
            finally:
                target.write_text(original)
            listed = mutant in LISTED
            rows.append((number, listed, mutant, outcome, test, seconds))
            print(f"[{number}/{len(mutants)}] {outcome:7s} {mutant.name} {test} ({seconds:.0f} s)", flush=True)
            write_report(args.report, rows, len(mutants), time.time() - started, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missed_listed = [r for r in rows if r[1] and r[3] == "missed"]
    return 1 if missed_listed else 0


def write_report(path: Path, rows, planned: int, seconds: float, args) -> None:
    def share(selected):
        caught = sum(r[3] != "missed" for r in selected)
        return f"{caught} of {len(selected)} caught" + (f" ({caught / len(selected):.0%})" if selected else "")

    listed = [r for r in rows if r[1]]
    generated = [r for r in rows if not r[1]]
    lines = [
        "# Mutation report", "",
        f"`python -m tests.mutation.run --generated {args.generated} --seed {args.seed}"
        f"{' --listed-only' if args.listed_only else ''}{' --modules ' + ' '.join(args.modules) if args.modules != MODULES else ''}"
        f"{' --tests ' + ' '.join(args.tests) if args.tests else ''}` (`make mutation` runs the defaults): {len(rows)} of {planned} mutants run "
        f"in {seconds / 60:.0f} minutes.", "",
        f"- Listed changes (issue 14 and the sampling checks): {share(listed)}",
        f"- Generated operator mutants: {share(generated)}", "",
        "| # | module | change | result | caught by | s |", "|---|---|---|---|---|---|",
    ]
    for number, is_listed, mutant, outcome, test, secs in rows:
        change = mutant.name.replace("|", "\\|") + (" (listed)" if is_listed else "")
        lines.append(f"| {number} | {mutant.file} | {change} | {outcome} | {test.replace('|', '/')} | {secs:.0f} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
