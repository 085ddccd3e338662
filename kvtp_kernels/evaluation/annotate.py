"""Data preparation for KVTP: debiased queries, per-frame relevance labels 0..5, the sparsity split.

What ``kvtp annotate`` runs. For each (video, question) sample (:mod:`.data` format):

1. the video is sampled like everywhere else (:func:`kvtp_kernels.load_video`: 1 fps, at
   most ``max_frames`` uniformly), so there is one label per frame that training and
   evaluation will see;
2. an :class:`Annotator` rewrites the question into a debiased query (instructions,
   answer-format requests and filler removed, all choices kept as a short list, no answer
   given) and scores every frame 0 (unrelated) .. 5 (shows what answers it);
3. the sample goes to the SparseKV-QA split when its labels are sparse enough
   (:func:`is_sparse`), to the optional ``--dense-output`` otherwise.

The output is JSONL in the format :func:`kvtp_kernels.predictor.train.read_relevance_labels`
reads (``video`` relative to the output file's folder when the video lies inside it, else
absolute; ``query``; ``labels``), with the
multiple-choice columns carried over so that ``kvtp eval`` can read the same file::

    {"id": "q1", "video": "videos/a.mp4", "question": "What does the man pick up?",
     "query": "What does the man pick up? Choices: cup, phone, key, book", "labels": [0, 0, 4, 5, 1, 0],
     "timestamps": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "options": [...], "answer": "B", "subset": "videomme",
     "max_keep_ratio": 0.53, "sparse": true, "settings": {...}}

The annotators (a local transformers model, or an OpenAI-compatible endpoint) are in
:mod:`.annotators`, the prompts and reply parsers in :mod:`.annotation_text`, the
sparsity criterion in :mod:`.sparsity`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..video import VideoDecodeError, load_video
from .annotation_text import (  # noqa: F401  (FRAME_PROMPT, NO_CAPTION re-exported: they were defined here)
    FRAME_PROMPT,
    MAX_LABEL,
    NO_CAPTION,
    ParsedScores,
    clean_query,
    frame_captions,
    parse_scores,
)
from .annotators import Annotator, LocalAnnotator, OpenAIAnnotator
from .data import ResultsFile, Sample, SampleError
from .errors import AnnotationError, AnnotatorUnavailable
from .images import encode_image
from .sparsity import frame_keep_ratios, is_sparse

__all__ = [
    "MAX_LABEL",
    "AnnotateReport",
    "AnnotateSettings",
    "AnnotationError",
    "Annotator",
    "AnnotatorUnavailable",
    "LocalAnnotator",
    "OpenAIAnnotator",
    "ParsedScores",
    "annotate",
    "clean_query",
    "encode_image",
    "frame_captions",
    "frame_keep_ratios",
    "is_sparse",
    "parse_scores",
]


@dataclasses.dataclass
class AnnotateSettings:
    """What fixes the annotations (stored in every output record; a rerun must match).

    Attributes:
        fps, max_frames: video sampling (use the values training will use).
        debias: rewrite the question (False: the ``query`` column or the question itself).
        threshold, temperature, budget, tokens_per_frame: :func:`is_sparse`'s arguments.
        keep_all: write every sample to the output (``sparse`` still recorded).
        annotator: :meth:`Annotator.describe`.
    """

    fps: float = 1.0
    max_frames: int = 128
    debias: bool = True
    threshold: float = 0.2
    temperature: float = 2.0
    budget: float = 0.2
    tokens_per_frame: int = 169
    keep_all: bool = False
    annotator: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class AnnotateReport:
    """What :func:`annotate` returns.

    Attributes:
        kept: samples written to the output now (the sparse split, or all with keep_all).
        dense: samples written to the dense output now (or dropped when there is none).
        resumed: samples found finished in the output files.
        errors: samples that failed (data errors passed in + video/annotation errors).
        clamped: scores clamped into 0..5.
        retries: requests repeated.
    """

    kept: int
    dense: int
    resumed: int
    errors: list[SampleError]
    clamped: int
    retries: int


def _relative(path: str, output: str) -> str:
    """``path`` relative to the output file's folder when it lies inside it (the set moves with its videos),
    else absolute."""
    try:
        relative = os.path.relpath(path, os.path.dirname(os.path.abspath(output)))
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith(os.pardir) else relative


def annotate(samples: Sequence[Sample], annotator: Annotator, output: ResultsFile, *,
             dense_output: ResultsFile | None = None, settings: AnnotateSettings | None = None,
             data_errors: Sequence[SampleError] = (), progress: bool = True,
             log: Callable[[str], None] | None = None) -> AnnotateReport:
    """Annotate the samples not yet in ``output`` / ``dense_output`` (see the module docstring).

    Raises:
        AnnotatorUnavailable: the annotator cannot work at all (what is done so far is saved).
    """
    from tqdm.auto import tqdm

    settings = settings or AnnotateSettings()
    log = log or (lambda message: print(message, file=sys.stderr))
    errors = list(data_errors)
    done = set(output.records) | (set(dense_output.records) if dense_output is not None else set())
    pending = [s for s in samples if s.id not in done]
    resumed = len(samples) - len(pending)
    if resumed:
        log(f"kvtp annotate: {resumed} of {len(samples)} samples already annotated; resuming with {len(pending)}")
    kept = dense = 0
    for sample in tqdm(pending, desc="kvtp annotate", unit="sample", disable=not progress):
        try:
            query, labels, timestamps = _annotate_sample(sample, annotator, settings)
        except (OSError, VideoDecodeError, AnnotationError) as exc:
            errors.append(SampleError(sample.origin, str(exc), sample.id))
            continue
        ratios = frame_keep_ratios(labels, temperature=settings.temperature, budget=settings.budget,
                                   tokens_per_frame=settings.tokens_per_frame)
        sparse = max(ratios) >= settings.threshold
        target = output if (sparse or settings.keep_all) else dense_output
        if target is output:
            kept += 1
        else:
            dense += 1
        if target is not None:
            target.append(_record(sample, target.path, query, labels, timestamps, max(ratios), sparse))
    return AnnotateReport(kept, dense, resumed, errors, annotator.clamped, annotator.retried)


def _annotate_sample(sample: Sample, annotator: Annotator,
                     settings: AnnotateSettings) -> tuple[str, list[int], list[float]]:
    """-> (query, labels, timestamps) of one sample. Raises OSError, VideoDecodeError, AnnotationError."""
    frames, stamps = load_video(sample.video, fps=settings.fps, max_frames=settings.max_frames)
    timestamps = [round(float(t), 3) for t in stamps]
    captions = frame_captions(sample.captions, timestamps)
    if settings.debias:
        query = annotator.rewrite_query(sample.question, sample.options)
    else:
        query = sample.query or sample.question
    labels = annotator.score_frames(query, frames, timestamps, captions)
    if len(labels) != len(timestamps) or any(not 0 <= y <= MAX_LABEL for y in labels):
        raise AnnotationError(f"the annotator returned {len(labels)} labels for {len(timestamps)} frames")
    return query, labels, timestamps


def _record(sample: Sample, path: str, query: str, labels: list[int], timestamps: list[float], max_ratio: float,
            sparse: bool) -> dict[str, Any]:
    """The output record of an annotated sample (written to the results file at ``path``)."""
    record: dict[str, Any] = {"id": sample.id, "video": _relative(sample.video, path),
                              "question": sample.question, "query": query, "labels": labels,
                              "timestamps": timestamps, "max_keep_ratio": round(max_ratio, 6), "sparse": sparse}
    if sample.options:
        record["options"] = sample.options
    if sample.answer is not None:
        record["answer"] = sample.answer_letter
    record["subset"] = sample.subset
    return record
