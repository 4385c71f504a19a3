"""Ray Data: generate over a dataset on a Ray cluster, one model per actor (`pip install 'ortdecode[ray]'`).

    import ray
    from ortdecode.ray_data import Generate, model_sha256

    ds = ray.data.read_json("inputs.jsonl")                 # a "text" column; other columns pass through
    ds = ds.map_batches(
        Generate,
        fn_constructor_kwargs={"model": "/models/t5-onnx", "sha256": model_sha256("/models/t5-onnx"),
                               "options": {"max_new_tokens": 64}},
        compute=ray.data.ActorPoolStrategy(size=4),        # 4 actors, each loads the model once
        num_cpus=2,                                        # per actor: ONNX Runtime gets 2 intra-op threads
        batch_size=1024,                                   # each call buckets its rows by length
    )
    ds.write_json("outputs/")     # + "outputs", "finish_reasons", "error" (and "scores") columns

`Generate` is a callable class (Ray Data's pattern for stateful inference): `__init__` runs once per actor
and loads the model from a folder that must exist at the same path on every node; `sha256` (the hash of the
export's manifest, which lists every graph's sha256) pins the exact export, and `load` checks each graph
against the manifest. Each batch goes through `generate_iter`: length-bucketed token batches, rows back
in order, a bad row an "error" value instead of a failed job. Ray restarts a killed actor and retries
its batch (Ray Data's default for actor pools), so a job survives a lost actor.

This module imports Ray; `import ortdecode` does not import it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import default_model_path, load
from .batch_job import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TOKENS
from .errors import ModelFolderError


def model_sha256(folder: str | Path) -> str:
    """sha256 of an export's manifest (ortdecode.json): it lists the sha256 of every graph, so it names the
    export. Compute it where the job is submitted; each actor checks its copy against it."""
    return hashlib.sha256((Path(folder) / "ortdecode.json").read_bytes()).hexdigest()


def check_model_sha256(model: str | Path | None, sha256: str) -> None:
    """Refuse an export (None: the embedded default model) whose manifest is not the expected one."""
    found = model_sha256(model if model is not None else default_model_path())
    if found != sha256:
        raise ModelFolderError(f"{model}: the export's manifest has sha256 {found}, not the expected {sha256} "
                               "(a different or changed export on this node)")


def _actor_cpus() -> int:
    try:
        import ray
    except ImportError:
        raise ImportError('ortdecode.ray_data.Generate runs in Ray actors and needs the ray extra: pip install '
                          '"ortdecode[ray]" (or pass `threads`)') from None
    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


class Generate:
    """`Dataset.map_batches(Generate, fn_constructor_kwargs={...}, compute=ray.data.ActorPoolStrategy(...))`.

    model: export folder, present at this path on every node (None: the embedded default model).
    sha256: `model_sha256` of the expected export; an actor whose folder differs refuses to start.
    options: generation options for every row (`Generator.generate`'s names).
    text_column: the input texts; parameters_column: optional per-row option dicts (override `options`).
    scores: add a "scores" column (beam search's sequences_scores).
    threads: ONNX Runtime intra-op threads (default: the CPUs Ray assigned to the actor, its `num_cpus`).
    batch_tokens, batch_size: the token-budget batching inside each Ray batch.
    """

    def __init__(self, model: str | None = None, *, sha256: str | None = None, options: dict | None = None,
                 text_column: str = "text", parameters_column: str | None = None, scores: bool = False,
                 threads: int | None = None, provider: str = "cpu", batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        if sha256 is not None:
            check_model_sha256(model, sha256)
        self.generator = load(model, provider=provider, threads=threads or _actor_cpus())
        self.options = dict(options or {})
        self.generator.defaults.for_call(**self.options)  # bad options fail the actor at start, not every row
        self.text_column, self.parameters_column = text_column, parameters_column
        self.job = {"scores": scores, "batch_tokens": batch_tokens, "batch_size": batch_size}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """batch: Ray's "numpy" batch format, column name -> array. Returns it with "outputs" (list of texts
        per row), "finish_reasons", "error" (None, or what is wrong with the row) and, asked, "scores"."""
        texts = batch[self.text_column]
        parameters = batch[self.parameters_column] if self.parameters_column else [None] * len(texts)
        inputs = [{"text": text, "parameters": params or {}} for text, params in zip(texts, parameters)]
        results = list(self.generator.generate_iter(inputs, **self.job, **self.options))
        out = dict(batch)
        out["outputs"] = _objects([r.outputs for r in results])
        out["finish_reasons"] = _objects([r.finish_reasons for r in results])
        out["error"] = _objects([r.error for r in results])
        if self.job["scores"]:
            out["scores"] = _objects([r.scores for r in results])
        return out


def _objects(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
