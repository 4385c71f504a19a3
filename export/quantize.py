"""Dynamic int8 quantization for CPUs (ONNX Runtime's `quantize_dynamic`).

Weights of MatMuls with a constant right-hand side become int8 (per tensor); activations are quantized
on the fly. Attention-score MatMuls (both sides dynamic) stay in float: quantizing them costs accuracy
for no memory saving. The KV cache and the logits stay float32.
"""

from __future__ import annotations

import logging
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic


def quantize_graph_int8(source: Path, target: Path) -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing suggestion on the root logger
    try:
        quantize_dynamic(
            model_input=str(source),
            model_output=str(target),
            op_types_to_quantize=["MatMul"],
            per_channel=False,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)
