"""SparseKV-QA-style evaluation and data preparation for KVTP (the ``kvtp eval`` / ``kvtp annotate`` commands).

- :mod:`.data`: multiple-choice sample files (JSONL / JSON / CSV) with per-row errors that
  name the line, and the resumable JSONL results file.
- :mod:`.evaluate`: a LlavaOnevision model with and without KVTP on the same samples,
  option-letter scoring, batched with left padding; the per-subset summary table.
- :mod:`.annotate`: debiased queries and per-frame relevance labels 0..5 from a local
  transformers model or an OpenAI-compatible endpoint, and the authors' sparsity split;
  the output is the predictor's training format.

transformers is imported only when a model is loaded.
"""

from .annotate import (
    AnnotateReport,
    AnnotateSettings,
    AnnotationError,
    Annotator,
    AnnotatorUnavailable,
    LocalAnnotator,
    OpenAIAnnotator,
    annotate,
    frame_captions,
    frame_keep_ratios,
    is_sparse,
    parse_scores,
)
from .data import DataFileError, ResultsFile, Sample, SampleError, read_samples
from .evaluate import (
    EvalError,
    EvalReport,
    EvalSettings,
    Evaluator,
    PromptBuilder,
    VideoModel,
    format_summary,
    load_predictor,
    load_video_model,
    summarize,
)

__all__ = [
    "AnnotateReport",
    "AnnotateSettings",
    "AnnotationError",
    "Annotator",
    "AnnotatorUnavailable",
    "DataFileError",
    "EvalError",
    "EvalReport",
    "EvalSettings",
    "Evaluator",
    "LocalAnnotator",
    "OpenAIAnnotator",
    "PromptBuilder",
    "ResultsFile",
    "Sample",
    "SampleError",
    "VideoModel",
    "annotate",
    "format_summary",
    "frame_captions",
    "frame_keep_ratios",
    "is_sparse",
    "load_predictor",
    "load_video_model",
    "parse_scores",
    "read_samples",
    "summarize",
]
