"""Shared fixtures: tiny random T5 checkpoints, exported once per session with ortdecode's exporter.

The checkpoints use the embedded default model's tokenizer (160 pieces), so inputs are real text of
different lengths. Weights are transformers' initialization under a fixed seed. With this small
vocabulary the random models' top-1/top-2 logit gaps are already ~2-3 (measured), so beam search has
clear winners, while |logits| stay small enough (< 30) for an absolute 1e-4 parity bound to mean float32.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import ortdecode

# Files `load` found matching their sha256 are remembered in a folder of the test session's own, not in the
# user's cache (ortdecode.verified); subprocesses (servers, the CLI) inherit it.
_VERIFIED_CACHE = tempfile.TemporaryDirectory(prefix="ortdecode-test-cache-")
os.environ["ORTDECODE_CACHE_DIR"] = _VERIFIED_CACHE.name

PRESETS = ("tiny-v1", "tiny-v1.1", "tiny-asymmetric")
# Inputs of different lengths for padded batches (the tokenizer knows these words).
TEXTS = [
    "spell out: 7",
    "to digits: four thousand five hundred twenty-one",
    "spell out: 123456",
    "ordinal: 21",
    "to digits: nine hundred ninety-nine thousand nine hundred ninety-nine",
    "spell out: 40",
    "ordinal: 1000",
    "to digits: twelve",
    "spell out: 900001",
    "to digits: seventy thousand three",
]


@dataclasses.dataclass
class TinyModel:
    preset: str
    checkpoint: Path
    export: Path

    def torch_model(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(self.checkpoint).eval()

    def hf_tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.checkpoint)


def model_root(tmp_path_factory, name: str) -> tuple[Path, bool]:
    """Where a session fixture builds its models, and whether they are already there. ORTDECODE_TEST_MODELS
    names a folder that keeps them between runs (the mutation script runs pytest dozens of times)."""
    kept = os.environ.get("ORTDECODE_TEST_MODELS")
    if not kept:
        return tmp_path_factory.mktemp(name), False
    root = Path(kept) / name
    return root, (root / "complete").exists()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    return ortdecode.default_model_path()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, default_model_dir) -> dict[str, TinyModel]:
    from ortdecode_export import export_model
    from ortdecode_export.checkpoints import make_random_t5

    root, built = model_root(tmp_path_factory, "tiny")
    models = {}
    for seed, preset in enumerate(PRESETS):
        checkpoint, export = root / f"{preset}-checkpoint", root / f"{preset}-onnx"
        if not built:
            make_random_t5(checkpoint, preset, seed=seed, tokenizer_dir=default_model_dir)
            export_model(str(checkpoint), export, layout="all", progress=False, force=True)
        models[preset] = TinyModel(preset, checkpoint, export)
    (root / "complete").touch()
    return models


@pytest.fixture(scope="session")
def ending_model(tmp_path_factory, default_model_dir) -> TinyModel:
    """A tiny T5 (v1.1 shape) trained for 100 steps (~6 s) on the default model's number tasks: too
    short to be right, long enough that EOS is a likely token after a few steps, so rows end by EOS at
    different lengths and beam search's early-stopping paths run (random models almost never emit EOS)."""
    from ortdecode_export import export_model
    from ortdecode_export.checkpoints import make_random_t5
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from models.numbers import data, train

    root, built = model_root(tmp_path_factory, "ending")
    if built:
        return TinyModel("ending", root / "checkpoint", root / "onnx")
    random = make_random_t5(root / "random", "tiny-v1.1", seed=1, tokenizer_dir=default_model_dir)
    model, tokenizer = T5ForConditionalGeneration.from_pretrained(random), AutoTokenizer.from_pretrained(random)
    plan = train.TrainingPlan(steps=100, batch_size=32, learning_rate=3e-3, warmup_steps=10, threads=1)
    threads = torch.get_num_threads()
    train.train(model, tokenizer, data.training_examples(0, plan.steps * plan.batch_size, set()), plan, progress=False)
    torch.set_num_threads(threads)  # train() sets these for the whole process
    torch.use_deterministic_algorithms(False)
    checkpoint = train.save(model, tokenizer, root / "checkpoint")
    export = root / "onnx"
    export_model(str(checkpoint), export, layout="all", progress=False, force=True)
    (root / "complete").touch()
    return TinyModel("ending", checkpoint, export)


@pytest.fixture(scope="session")
def with_past_export(tmp_path_factory, tiny_models) -> Path:
    """tiny-v1 exported with the default CPU options: the with-past layout, weights in external data files."""
    from ortdecode_export import export_model

    root, done = model_root(tmp_path_factory, "with-past")
    export = root / "onnx"
    if not done:
        export_model(str(tiny_models["tiny-v1"].checkpoint), export, progress=False, force=True)
        (root / "complete").touch()
    return export


@pytest.fixture(scope="session")
def default_model_int8(tmp_path_factory, default_model_dir) -> Path:
    """The embedded model exported again as `ortdecode export --quantize int8` makes it (its folder is also its
    PyTorch checkpoint): the CPU defaults, the with-past layout, every rewrite pass."""
    from ortdecode_export import export_model

    root, done = model_root(tmp_path_factory, "default-int8")
    export = root / "onnx"
    if not done:
        export_model(str(default_model_dir), export, quantize="int8", progress=False, force=True)
        (root / "complete").touch()
    return export


@pytest.fixture(scope="session")
def unpacked_encoder_export(tmp_path_factory, tiny_models) -> Path:
    """tiny-v1 exported by the command line with every graph (--layout all), --no-pack-encoder and
    --no-ort-optimize: the encoder computes the padding too, as Optimum wrote it (the runner then encodes inputs
    of very different lengths in length groups; test_packed_encoder runs the pass on it)."""
    root, done = model_root(tmp_path_factory, "unpacked-encoder")
    export = root / "onnx"
    if not done:
        run = subprocess.run([sys.executable, "-m", "ortdecode.cli", "export", str(tiny_models["tiny-v1"].checkpoint),
                              str(export), "--layout", "all", "--no-pack-encoder", "--no-ort-optimize", "--force"],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        (root / "complete").touch()
    return export


@pytest.fixture(scope="session", params=PRESETS)
def tiny(request, tiny_models) -> TinyModel:
    return tiny_models[request.param]


@pytest.fixture(scope="session")
def tiny_v1(tiny_models) -> TinyModel:
    return tiny_models["tiny-v1"]


def random_logits(rng: np.random.Generator, rows: int = 4, vocab: int = 50, scale: float = 3.0) -> np.ndarray:
    return (rng.standard_normal((rows, vocab)) * scale).astype(np.float32)


# ---------------------------------------------------------------- reliability figures
# Tests of bad input, concurrency and memory record what they tried (after their assertions held);
# pytest prints the totals at the end of the run, under "reliability figures".
_FIGURES: dict[str, dict[str, object]] = {}


@pytest.fixture(scope="session")
def record():
    def record(section: str, key: str, value: object = None) -> None:
        entries = _FIGURES.setdefault(section, {})
        entries[key] = entries.get(key, 0) + 1 if value is None else value

    return record


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for section, entries in sorted(_FIGURES.items()):
        counted = [v for v in entries.values() if isinstance(v, int) and not isinstance(v, bool)]
        total = f" ({sum(counted)} cases)" if len(counted) == len(entries) else ""
        terminalreporter.write_line(f"{section}{total}:")
        for key, value in entries.items():
            terminalreporter.write_line(f"    {key}: {value}")


# ---------------------------------------------------------------- Ray
@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the Ray tests: 2 CPUs, bound to 127.0.0.1, no dashboard, no usage stats."""
    import os

    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'ortdecode[ray]'")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def transformers_token_logprobs(checkpoint: Path, sources: list[str], targets: list[str]):
    """transformers' own teacher-forced scores: (label ids, log p(label | source, previous labels)) per
    pair, from `model(..., labels=...)` logits, log-softmax at the label positions."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    encoded = tokenizer(sources, padding=True, return_tensors="pt")
    labels = tokenizer(targets, padding=True, return_tensors="pt").input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    with torch.no_grad():
        logprobs = torch.log_softmax(model(**encoded, labels=labels).logits.double(), dim=-1)
    out = []
    for row, ids in enumerate(labels.tolist()):
        ids = [t for t in ids if t != -100]
        out.append((ids, logprobs[row, torch.arange(len(ids)), ids].numpy()))
    return out
