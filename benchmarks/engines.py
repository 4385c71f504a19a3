"""The engines under test, each behind the same verb: `run(workload, batch, new_tokens) -> sequences`.

Every engine gets the same token ids and must produce exactly `new_tokens` tokens per sequence
(min = max new tokens), so all do the same work:

- ortdecode: this project, on the export folder;
- transformers: PyTorch `generate` on the checkpoint;
- Optimum: `ORTModelForSeq2SeqLM.generate` on the same ONNX graphs as ortdecode (IO binding on CUDA,
  where Optimum supports it);
- CTranslate2: its converter on the same checkpoint, same tokens given as vocabulary strings.

Threads are pinned the same way for every engine (`make_engine`'s spec "threads", T): ONNX Runtime (ortdecode,
Optimum) T intra-op threads, 1 inter-op thread (sequential execution: the inter-op pool is unused), spin-waiting
as "spinning" says (ONNX Runtime's default: on; ortdecode by default spins during a run and stops when it ends);
CTranslate2 intra_threads=T, inter_threads=1; PyTorch set_num_threads(T), 1 inter-op thread; and the driver
starts every engine's process with OMP_NUM_THREADS = MKL_NUM_THREADS = OPENBLAS_NUM_THREADS = T.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str  # "greedy", "sampling", "beam 4"
    num_beams: int = 1
    do_sample: bool = False
    top_p: float = 1.0

    def hf_options(self) -> dict:
        """transformers / Optimum / ortdecode options; top_k=0 so sampling is pure nucleus everywhere."""
        if self.do_sample:
            return dict(do_sample=True, top_p=self.top_p, top_k=0, num_beams=1)
        return dict(do_sample=False, num_beams=self.num_beams)


WORKLOADS = {
    "greedy": Workload("greedy"),
    "sampling": Workload("sampling", do_sample=True, top_p=0.9),
    "beam 4": Workload("beam 4", num_beams=4),
}


def padded(sources: list[np.ndarray], pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(sources), max(len(s) for s in sources)), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, source in enumerate(sources):
        ids[row, :len(source)] = source
        mask[row, :len(source)] = 1
    return ids, mask


def ort_session_options(threads: int | None, spinning: bool = True, config: dict | None = None,
                        cpu_mem_arena: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = cpu_mem_arena
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, str(value))
    return options


class OrtDecodeEngine:
    name = "ortdecode"

    def __init__(self, export_dir, provider: str = "cpu", threads: int | None = None, label: str | None = None,
                 spinning: bool = True, session_config: dict | None = None, decoder_layout: str = "auto",
                 cpu_mem_arena: bool = True, share_weights: bool = False):
        import ortdecode

        # ortdecode's own session options unless a case changes them: its threads' spinning policy (spinning
        # during a run, stopped when the run ends) is part of what is measured.
        own = spinning and not session_config and cpu_mem_arena
        options = None if own else ort_session_options(threads, spinning, session_config, cpu_mem_arena)
        self.generator = ortdecode.load(export_dir, provider=provider, decoder_layout=decoder_layout,
                                        threads=threads if own else None, session_options=options,
                                        share_weights=share_weights)
        self.name = label or self.name

    def run(self, sources, workload: Workload, new_tokens: int, seed: int = 0) -> np.ndarray:
        ids, mask = padded(sources)
        result = self.generator.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                         min_new_tokens=new_tokens, seed=seed, **workload.hf_options())
        return result.sequences


class TransformersEngine:
    name = "transformers"

    def __init__(self, checkpoint, device: str = "cpu", threads: int | None = None):
        import torch
        from transformers import T5ForConditionalGeneration

        if threads:
            torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        self.torch = torch
        self.device = device
        self.model = T5ForConditionalGeneration.from_pretrained(checkpoint).eval().to(device)

    def run(self, sources, workload: Workload, new_tokens: int, seed: int = 0) -> np.ndarray:
        ids, mask = padded(sources)
        self.torch.manual_seed(seed)
        with self.torch.inference_mode():
            out = self.model.generate(input_ids=self.torch.from_numpy(ids).to(self.device),
                                      attention_mask=self.torch.from_numpy(mask).to(self.device),
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, **workload.hf_options())
        return out.cpu().numpy()


class OptimumEngine:
    name = "Optimum"

    def __init__(self, export_dir, provider: str = "cpu", threads: int | None = None, spinning: bool = True):
        import torch
        from optimum.onnxruntime import ORTModelForSeq2SeqLM

        options = ort_session_options(threads, spinning)
        torch.set_num_interop_threads(1)
        self.torch = torch
        cuda = provider == "cuda"
        self.device = "cuda" if cuda else "cpu"
        self.model = ORTModelForSeq2SeqLM.from_pretrained(
            export_dir, provider="CUDAExecutionProvider" if cuda else "CPUExecutionProvider", session_options=options,
            use_merged=False, use_io_binding=cuda)

    def run(self, sources, workload: Workload, new_tokens: int, seed: int = 0) -> np.ndarray:
        ids, mask = padded(sources)
        self.torch.manual_seed(seed)
        with self.torch.inference_mode():
            out = self.model.generate(input_ids=self.torch.from_numpy(ids).to(self.device),
                                      attention_mask=self.torch.from_numpy(mask).to(self.device),
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, **workload.hf_options())
        return out.cpu().numpy()


class CTranslate2Engine:
    name = "CTranslate2"

    def __init__(self, converted_dir, device: str = "cpu", compute_type: str = "float32",
                 threads: int | None = None, label: str | None = None):
        import ctranslate2

        self.translator = ctranslate2.Translator(str(converted_dir), device=device, compute_type=compute_type,
                                                 inter_threads=1, intra_threads=threads or 0)
        # The converter writes the vocabulary it mapped ids to; token id i is entry i.
        self.vocabulary = json.loads((Path(converted_dir) / "shared_vocabulary.json").read_text())
        self.index = {token: i for i, token in enumerate(self.vocabulary)}
        self.name = label or self.name

    def run(self, sources, workload: Workload, new_tokens: int, seed: int = 0) -> np.ndarray:
        tokens = [[self.vocabulary[t] for t in source] for source in sources]
        if workload.do_sample:
            options = dict(beam_size=1, sampling_topk=0, sampling_topp=workload.top_p, sampling_temperature=1.0)
        else:
            options = dict(beam_size=workload.num_beams)
        results = self.translator.translate_batch(tokens, max_decoding_length=new_tokens,
                                                  min_decoding_length=new_tokens, **options)
        rows = [[self.index.get(t, 2) for t in r.hypotheses[0]] for r in results]
        return np.array([row + [0] * (new_tokens - len(row)) for row in rows], dtype=np.int64)


# The libraries each engine kind imports, so that import time and memory are told apart from loading.
LIBRARIES = {"ortdecode": ("ortdecode",), "transformers": ("torch", "transformers"),
             "optimum": ("torch", "optimum.onnxruntime"), "ctranslate2": ("ctranslate2",)}


def make_engine(spec: dict):
    """An engine from a JSON-able spec: {"kind": "ortdecode" | "transformers" | "optimum" | "ctranslate2",
    "path": folder, "device": "cpu" | "cuda", "threads": T, "spinning": bool, "label": name, plus
    "compute_type" (CTranslate2), "session_config" (ONNX Runtime config entries), "decoder_layout",
    "cpu_mem_arena" and "share_weights" (ortdecode)}."""
    kind, path, device, threads = spec["kind"], spec["path"], spec.get("device", "cpu"), spec.get("threads")
    provider = "cuda" if device == "cuda" else "cpu"
    if kind == "ortdecode":
        return OrtDecodeEngine(path, provider, threads, label=spec.get("label"), spinning=spec.get("spinning", True),
                               session_config=spec.get("session_config"),
                               decoder_layout=spec.get("decoder_layout", "auto"),
                               cpu_mem_arena=spec.get("cpu_mem_arena", True),
                               share_weights=spec.get("share_weights", False))
    if kind == "transformers":
        return TransformersEngine(path, device, threads)
    if kind == "optimum":
        return OptimumEngine(path, provider, threads, spinning=spec.get("spinning", True))
    if kind == "ctranslate2":
        return CTranslate2Engine(path, device=device, compute_type=spec["compute_type"], threads=threads,
                                 label=spec.get("label"))
    raise ValueError(f"unknown engine kind {kind!r}; known: ortdecode, transformers, optimum, ctranslate2")
