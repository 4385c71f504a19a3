"""A decoder attention mask in the exported decoder graphs, for continuous batching.

A request that joins a running batch brings a self-attention cache shorter than the batch's. The batch
left-pads it with zeros and masks the padding (TGI's `Seq2SeqLMBatch.concatenate`). That is exact for T5:
its relative position bias depends only on key position minus query position, and left padding shifts
a row's keys and its query by the same amount; the padded keys get the mask's large negative bias.

Optimum's stock T5 export has no such input. This Optimum ONNX config adds one (as optimum-onnx's
`Pix2StructOnnxConfig` does, with `PAD_ATTENTION_MASK_TO_PAST`): int64[rows, past + 1] in the first-step,
with-past and merged decoders ([rows, target_len] in the first-step graph when it takes a whole target).
Optimum names it `attention_mask` in the decoder graphs (its decoder input map); the manifest records it
as `decoder_attention_mask`.
"""

from __future__ import annotations

from optimum.exporters.onnx.base import ConfigBehavior
from optimum.exporters.onnx.model_configs import T5OnnxConfig

# The graph name Optimum gives the mask in the decoder graphs (`torch_to_onnx_input_map`).
DECODER_MASK_GRAPH_NAME = "attention_mask"


class T5WithDecoderMaskOnnxConfig(T5OnnxConfig):
    PAD_ATTENTION_MASK_TO_PAST = True  # the with-past dummy mask spans past + current positions

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        inputs = super().inputs
        if self._behavior in {ConfigBehavior.DECODER, ConfigBehavior.MONOLITH}:
            length = "past_decoder_sequence_length + 1" if self.use_past_in_inputs else "decoder_sequence_length"
            inputs["decoder_attention_mask"] = {0: "batch_size", 1: length}
        return inputs


def decoder_mask_onnx_configs(config) -> dict:
    """`main_export(custom_onnx_configs=...)` for a T5/mT5 config: encoder, first-step and with-past decoders."""
    base = T5WithDecoderMaskOnnxConfig(config, task="text2text-generation", use_past=True)
    return {
        "encoder_model": base.with_behavior("encoder"),
        "decoder_model": base.with_behavior("decoder", use_past=True, use_past_in_inputs=False),
        "decoder_with_past_model": base.with_behavior("decoder", use_past=True, use_past_in_inputs=True),
    }
