"""`ortdecode check DIR`: is this model folder safe and able to decode? Each check reports on its own.

1. the manifest reads and describes a complete export, and its validation against PyTorch passed (an
   export whose validation failed, did not finish or never ran is a FAIL);
2. every graph file and external-data file matches its sha256 (all layouts, not only the one `load` picks);
3. each decoder layout the export holds loads, and its graphs' inputs, outputs and KV shapes match the
   manifest (the checks of `load`);
4. a one-token smoke decode gives finite logits over the whole vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OrtDecodeError
from .manifest import read_manifest, validation_problem, verify_checksums


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str


def check_model_folder(folder: str | Path, provider: str = "cpu") -> list[CheckResult]:
    from .generator import load

    folder = Path(folder)
    results: list[CheckResult] = []

    def attempt(name, action) -> bool:
        try:
            detail = action()
        except (OrtDecodeError, ValueError) as exc:
            results.append(CheckResult(name, False, str(exc).strip().splitlines()[0]))
            return False
        results.append(CheckResult(name, True, detail))
        return True

    manifest = None

    def read():
        nonlocal manifest
        manifest = read_manifest(folder)
        return f"{manifest.model_type}, {len(manifest.graphs)} graphs, {manifest.num_decoder_layers} decoder layers, " \
               f"{manifest.dtype}, target {manifest.target}"

    if not attempt("manifest", read):
        return results

    def validation():
        problem = validation_problem(manifest)
        if problem is not None:
            raise OrtDecodeError(problem[1])
        record = manifest.validation
        return record.get("reason") or f"max |logits - PyTorch logits| = {record.get('max_abs_diff')}"

    attempt("validation", validation)

    def hashes():
        verify_checksums(folder, manifest)
        extra = sum(len(g.external_data) for g in manifest.graphs.values())
        return f"{len(manifest.graphs)} graph files" + (f" and {extra} external-data files" if extra else "") + \
            " match their sha256"

    attempt("sha256", hashes)
    for layout in manifest.decoder_layouts:
        generator = None

        def load_layout():
            nonlocal generator
            generator = load(folder, provider=provider, decoder_layout=layout, verify=False, allow_unvalidated=True)
            return f"graphs load on {generator.provider}; inputs, outputs and KV shapes match the manifest"

        if not attempt(f"load ({layout} decoder)", load_layout):
            continue

        def smoke():
            start = np.array([[manifest.eos_token_id[0]]], dtype=np.int64)  # the shortest valid input
            result = generator.generate(input_ids=start, max_new_tokens=1, return_logits=True)
            logits = result.logits[0]
            if logits.shape != (1, manifest.vocab_size) or not np.isfinite(logits).all():
                raise OrtDecodeError(f"the first step's logits are not {manifest.vocab_size} finite numbers")
            return f"one token decoded (id {int(result.sequences[0, 1])}), logits finite"

        attempt(f"smoke decode ({layout} decoder)", smoke)
    return results
