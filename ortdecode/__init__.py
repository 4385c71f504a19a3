"""ortdecode: decode T5-family models exported to ONNX with ONNX Runtime and NumPy, no framework at run time.

    import ortdecode
    generator = ortdecode.load()                  # the embedded default model, CUDA if available
    generator.generate("spell out: 4521").texts   # ['four thousand five hundred twenty-one']
"""

from .config import GenerationConfig
from .errors import (GenerationInterrupted, InputTooLongError, ModelFolderError, NonFiniteLogitsError, OrtDecodeError,
                     ProviderError)
from .generator import Generator, UnvalidatedExportWarning, default_model_path, load
from .manifest import Manifest, read_manifest, verify_checksums
from .results import GenerationResult, ScoreResult

__version__ = "0.1.0"

__all__ = [
    "GenerationConfig", "GenerationInterrupted", "GenerationResult", "Generator", "InputTooLongError", "Manifest",
    "ModelFolderError", "NonFiniteLogitsError", "OrtDecodeError", "ProviderError", "ScoreResult",
    "UnvalidatedExportWarning", "default_model_path", "load", "read_manifest", "verify_checksums", "__version__",
]
