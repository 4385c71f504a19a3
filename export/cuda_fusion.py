"""ONNX Runtime's transformer fusions for T5, for CUDA exports only.

`onnxruntime.transformers.optimizer` (model_type "t5") fuses T5's RMS norms into
(Skip)SimplifiedLayerNormalization and its attention blocks into com.microsoft attention ops. Several of
those kernels exist only for the CUDA execution provider, so a fused graph is marked target "cuda" in
the manifest and is not loadable on the CPU provider. Optionally the graph is converted to float16:
the KV cache inputs and outputs too (it then moves at half the bytes), but not the logits, which stay
float32 for the samplers.

The fusion is given T5's attention width, num_heads x d_kv, which is not d_model in mT5 or Flan-T5
shapes (flan-t5-small: 6 x 64 = 384, d_model 512). Where the fusion fails on a shape, the unfused graph
is written (float16 as asked) and the reason returned, for a warning and the manifest.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers.onnx_model import OnnxModel
from onnxruntime.transformers.optimizer import optimize_model


def fuse_for_cuda(source: Path, target: Path, num_heads: int, d_kv: int, fp16: bool) -> str | None:
    """Write the fused (and, with fp16, float16) graph of `source` to `target`. Returns None when fused,
    else why the graph was written unfused."""
    try:
        model = optimize_model(str(source), model_type="t5", num_heads=num_heads, hidden_size=num_heads * d_kv,
                               opt_level=0, use_gpu=True, only_onnxruntime=False)
        unfused = None
    except Exception as exc:  # noqa: BLE001  (ONNX Runtime's fusions assert on shapes they do not handle)
        model = OnnxModel(onnx.load(str(source)))
        unfused = (f"ONNX Runtime's T5 fusion failed ({type(exc).__name__}: {str(exc).strip() or 'no message'}); "
                   f"wrote the unfused {'float16 ' if fp16 else ''}graph")
    if fp16:
        # The attention-mask and token-id inputs are integers and stay as they are.
        logits = [o.name for o in model.model.graph.output if o.name == "logits"]
        model.convert_float_to_float16(keep_io_types=logits)
    model.save_model_to_file(str(target))
    return unfused
