"""SparseKV-QA-style evaluation and data preparation for KVTP (the ``kvtp eval`` / ``kvtp annotate`` commands).

- :mod:`.data`: multiple-choice sample files (JSONL / JSON / CSV) with per-row errors that
  name the line; :mod:`.results`: the resumable JSONL results file; :mod:`.errors`: the
  errors the CLI reports.
- :mod:`.evaluate`: the evaluator, a video LLM with and without KVTP on the same samples,
  option-letter scoring, batched with left padding; :mod:`.models` loads the model and the
  predictor, :mod:`.prompts` builds the prompts and answer tokens, :mod:`.report` the
  per-subset summary table.
- :mod:`.annotate`: debiased queries and per-frame relevance labels 0..5 from an annotator
  (:mod:`.annotators`: a local transformers model, or an OpenAI-compatible endpoint through
  :mod:`.chat_http` with frames from :mod:`.images`), and the authors' sparsity split
  (:mod:`.sparsity`); the output is the predictor's training format.

transformers is imported only when a model is loaded.
"""

from .annotate import AnnotateReport, AnnotateSettings, annotate
from .annotation_text import frame_captions, parse_scores
from .annotators import Annotator, LocalAnnotator, OpenAIAnnotator
from .data import Sample, SampleError, read_samples
from .errors import AnnotationError, AnnotatorUnavailable, DataFileError, EvalError
from .evaluate import EvalReport, EvalSettings, Evaluator
from .models import VideoModel, load_predictor, load_video_model
from .prompts import PromptBuilder
from .report import format_summary, summarize
from .results import ResultsFile
from .sparsity import frame_keep_ratios, is_sparse

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
