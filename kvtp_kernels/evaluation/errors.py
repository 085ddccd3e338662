"""The errors of ``kvtp eval`` / ``kvtp annotate`` (the CLI turns each into a one-line message)."""

from __future__ import annotations

__all__ = ["AnnotationError", "AnnotatorUnavailable", "DataFileError", "EvalError"]


class DataFileError(ValueError):
    """A data or results file that cannot be used at all (the message names the file and, where known, the line)."""


class EvalError(ValueError):
    """A problem with the model, tokenizer or options that stops the whole run (a usage error)."""


class AnnotationError(RuntimeError):
    """One sample could not be annotated (the run goes on; reported at the end)."""


class AnnotatorUnavailable(RuntimeError):
    """The annotator cannot work at all (bad credentials, wrong URL or model, server unreachable)."""
