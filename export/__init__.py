"""ortdecode's export tooling (installed as `ortdecode_export`; needs the `export` extra: torch,
transformers, Optimum). The runtime package `ortdecode` never imports it."""

from .adopt import adopt_optimum_export
from .pipeline import ExportError, ExportWarning, export_model
from .validate import ValidationReport, validate_export

__all__ = ["ExportError", "ExportWarning", "ValidationReport", "adopt_optimum_export", "export_model",
           "validate_export"]
