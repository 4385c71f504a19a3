"""ortdecode's export tooling (installed as `ortdecode_export`; needs the `export` extra: torch,
transformers, Optimum). The runtime package `ortdecode` never imports it."""

from .pipeline import ExportError, export_model

__all__ = ["ExportError", "export_model"]
