"""ONNX Runtime's transformer fusions for T5, for CUDA exports only.

`onnxruntime.transformers.optimizer` (model_type "t5") fuses T5's RMS norms into
(Skip)SimplifiedLayerNormalization and its attention blocks into com.microsoft attention ops. Several of
those kernels exist only for the CUDA execution provider, so a fused graph is marked target "cuda" in
the manifest and is not loadable on the CPU provider. Optionally the graph is converted to float16:
the KV cache inputs and outputs too (it then moves at half the bytes), but not the logits, which stay
float32 for the samplers.
"""

from __future__ import annotations

from pathlib import Path

from onnxruntime.transformers.optimizer import optimize_model


def fuse_for_cuda(source: Path, target: Path, num_heads: int, hidden_size: int, fp16: bool) -> None:
    model = optimize_model(str(source), model_type="t5", num_heads=num_heads, hidden_size=hidden_size,
                           opt_level=0, use_gpu=True, only_onnxruntime=False)
    if fp16:
        # The attention-mask and token-id inputs are integers and stay as they are.
        logits = [o.name for o in model.model.graph.output if o.name == "logits"]
        model.convert_float_to_float16(keep_io_types=logits)
    model.save_model_to_file(str(target))
