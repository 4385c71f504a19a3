"""Errors ortdecode reports to its users.

Invalid generation options raise plain `ValueError` (as transformers does). The classes here cover the
rest: a folder that is not an export, a provider that cannot start, logits that stop being numbers.
The CLI prints any of them as one line. Notices that are not errors are `OrtDecodeNotice` warnings.
"""


class OrtDecodeError(Exception):
    """Base class of the errors ortdecode raises on purpose."""


class ModelFolderError(OrtDecodeError, ValueError):
    """The model folder is missing, is not an ortdecode export, or does not match its manifest."""


class ProviderError(OrtDecodeError, RuntimeError):
    """The requested ONNX Runtime execution provider is not available or failed to start."""


class NonFiniteLogitsError(OrtDecodeError, FloatingPointError):
    """A decoding step produced NaN or +inf logits or scores."""


class InputTooLongError(ValueError):
    """An input has more tokens than `max_input_tokens` and `truncate_input` was not asked for."""

    def __init__(self, index: int, length: int, limit: int):
        super().__init__(f"input {index} has {length} tokens, more than `max_input_tokens` ({limit}); raise the "
                         "limit or pass truncate_input=True to cut it")
        self.index, self.length, self.limit = index, length, limit


class OrtDecodeNotice(UserWarning):
    """A notice worth a line on stderr (the CPU provider used instead of CUDA, generation_config.json fields
    ortdecode ignores). Shown once per message by Python's default warning filter; the CLI prints it as
    "ortdecode: <message>"."""


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C during `generate`: a KeyboardInterrupt that carries what was generated so far in `result`
    (finish reason "interrupted" for the sequences that were still running)."""

    def __init__(self, result):
        super().__init__("generation interrupted")
        self.result = result
