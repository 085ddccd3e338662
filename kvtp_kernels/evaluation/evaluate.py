"""Multiple-choice video QA with and without KVTP: what ``kvtp eval`` runs (SparseKV-QA style).

For every sample (see :mod:`.data` for the file format) the video is decoded with
:func:`kvtp_kernels.load_video` (1 fps, at most ``max_frames`` uniformly otherwise),
preprocessed without an HF processor (:func:`kvtp_kernels.integrations.video_pixel_values`:
resize to the vision tower's image size, normalise with the checkpoint's processor
mean/std), and the model answers twice on the same inputs:

- ``full``: the unpatched ``LlavaOnevisionForConditionalGeneration``;
- ``kvtp``: the same instance inside :func:`~kvtp_kernels.integrations.apply_kvtp` /
  :func:`~kvtp_kernels.integrations.remove_kvtp` (budget, predictor, temperature,
  allocation, ...), which keeps ``K = floor(beta*T*N + 1/2)`` of the video's tokens.

Scoring: option-letter likelihood at the answer position. The prompt (question, the
options as ``A. ...`` lines, an instruction to answer with the letter) ends where the
answer's first token goes; ONE forward pass with ``logits_to_keep=1`` gives the logits
of that position, and the prediction is the option whose letter token ("B", or " B"
when the tokenizer has it, the larger logit of the two) scores highest. This is greedy
decoding constrained to the valid letters: no free text to parse, no answer that is
not an option, the same cost as the prefill that KVTP shortens, and the per-option
logits are kept in the output for analysis. Ties go to the earlier option.

Batching: samples are run ``batch_size`` at a time with left padding; videos of one
forward pass must have the same frame count (HF LlavaOnevision takes one tensor), so a
batch is split by frame count when needed.

Measured per sample and mode: prediction, correctness, vision tokens the LLM sees (the
video block: ``T*N + 1`` unpruned, ``K + 1`` with KVTP), LLM tokens, LLM prefill FLOPs
(:func:`kvtp_kernels.integrations.prefill_flops` of the sample's sequence length), the
FLOPs pruning does not remove (:func:`kvtp_kernels.integrations.vision_tower_flops`: the
model's vision tower over the T frames, plus, for ``kvtp``, the predictor's SigLIP vision
tower over them; the predictor's text tower is not counted), and
latency = wall time of the batch's forward pass (synchronised on CUDA; for ``kvtp`` it
includes the predictor and the pruning) divided by the batch size. Video decoding and
preprocessing are shared by both modes and not timed.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..options import METHODS, MODES
from ..video import VideoDecodeError, load_video
from .data import ResultsFile, Sample, SampleError, option_letter
from .errors import EvalError
from .models import (  # noqa: F401  (re-exported: they were defined here)
    VideoModel,
    load_predictor,
    load_video_model,
    processor_normalization,
    resolve_device,
    resolve_dtype,
)
from .prompts import (  # noqa: F401  (re-exported: they were defined here)
    DEFAULT_INSTRUCTION,
    PromptBuilder,
    left_padded,
    multiple_choice_text,
    option_token_ids,
)
from .report import format_summary, summarize

__all__ = [
    "DEFAULT_INSTRUCTION",
    "METHODS",
    "MODES",
    "EvalError",
    "EvalReport",
    "EvalSettings",
    "Evaluator",
    "PromptBuilder",
    "VideoModel",
    "format_summary",
    "load_predictor",
    "load_video_model",
    "multiple_choice_text",
    "option_token_ids",
    "processor_normalization",
    "resolve_device",
    "resolve_dtype",
    "summarize",
]

_VIDEO_CACHE = 4  # decoded videos kept (questions often share a video)


# ----------------------------------------------------------------------------------
# Settings and the run
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class EvalSettings:
    """Everything that fixes the results (stored in every output record; a rerun must match).

    Attributes:
        model, predictor: as given on the command line (predictor None: uniform frame scores).
        budget: ratio (float) or token count (int) kept per video.
        method: within-frame rule: "topk", "prumerge" (the paper's best; needs the predictor),
            "tome" or "random".
        merge, num_neighbors: prumerge's fold ("paper" or "mean") and neighbours per kept token.
        temperature, allocation, min_tokens_per_frame, layout: as :func:`~kvtp_kernels.integrations.apply_kvtp`.
        modes: ("full", "kvtp") or one of them.
        fps, max_frames: video sampling.
        dtype: model dtype name.
        prompt_format, instruction: the prompt.
    """

    model: str
    predictor: str | None = None
    budget: float | int = 0.2
    method: str = "topk"
    merge: str = "paper"
    num_neighbors: int | None = None
    temperature: float = 2.0
    allocation: str = "exact"
    min_tokens_per_frame: int = 0
    layout: str = "video"
    modes: tuple[str, ...] = MODES
    fps: float = 1.0
    max_frames: int = 128
    dtype: str = "float32"
    prompt_format: str = "auto"
    instruction: str = DEFAULT_INSTRUCTION

    def __post_init__(self):
        self.modes = tuple(self.modes)
        if not self.modes or any(m not in MODES for m in self.modes) or len(set(self.modes)) != len(self.modes):
            raise EvalError(f"--modes must be one or both of {MODES}; got {self.modes}")
        if self.method not in METHODS:
            raise EvalError(f"--method must be one of {METHODS}; got {self.method!r}")
        if self.method == "prumerge" and self.predictor is None and "kvtp" in self.modes:
            raise EvalError("--method prumerge needs --predictor: its token importance (SigLIP's attention pooling) "
                            "gives the merge weights")
        if self.method != "prumerge" and (self.merge != "paper" or self.num_neighbors is not None):
            raise EvalError("--merge and --num-neighbors are options of --method prumerge")
        from ..integrations import KVTPSettings

        try:  # the integration's own checks (budget range, temperature, allocation, layout, method)
            KVTPSettings(**self.kvtp_kwargs())
        except ValueError as exc:
            raise EvalError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def kvtp_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~kvtp_kernels.integrations.apply_kvtp` (but the predictor)."""
        return {"budget": self.budget, "temperature": self.temperature, "allocation": self.allocation,
                "min_tokens_per_frame": self.min_tokens_per_frame, "layout": self.layout, "method": self.method,
                "merge": self.merge, "num_neighbors": self.num_neighbors}


@dataclasses.dataclass
class EvalReport:
    """What :meth:`Evaluator.run` returns.

    Attributes:
        records: the output records of the samples asked for, in their order (resumed ones included).
        evaluated: samples run now.
        resumed: samples found finished in the output file.
        errors: samples skipped (data errors passed in + video/model errors met now).
    """

    records: list[dict]
    evaluated: int
    resumed: int
    errors: list[SampleError]


class _VideoCache:
    """The last few decoded videos (several questions often share one)."""

    def __init__(self, fps: float | None, max_frames: int | None, size: int = _VIDEO_CACHE):
        self.fps, self.max_frames, self.size = fps, max_frames, size
        self._items: collections.OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = collections.OrderedDict()

    def get(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        if path in self._items:
            self._items.move_to_end(path)
            return self._items[path]
        item = load_video(path, fps=self.fps, max_frames=self.max_frames)
        self._items[path] = item
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return item


#: A decoded sample: the sample, its uint8 frames [T, H, W, 3] and their times in seconds.
_Decoded = tuple[Sample, torch.Tensor, list[float]]


@dataclasses.dataclass
class _Batch:
    """One forward pass's inputs (a group of samples with the same frame count) and what scoring needs."""

    ids: torch.Tensor
    mask: torch.Tensor
    pixels: dict[str, torch.Tensor]
    queries: list[str]
    frames: list[torch.Tensor]
    lengths: list[int]  # LLM tokens per sample, unpruned
    letters: list[list[list[int]]]  # per sample, the token ids of each option letter
    spans: list[int]  # video tokens per sample, unpruned


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Evaluator:
    """Runs samples through the model with and without KVTP and writes one record per sample.

    Args:
        video_model: a :class:`VideoModel`.
        settings: :class:`EvalSettings`.
        predictor: a FrameRelevancePredictor or None (uniform frame scores).
        chat_template: overrides the tokenizer's template.
        warmup: untimed runs of each mode on the first batch (CUDA kernels, allocator).
    """

    def __init__(self, video_model: VideoModel, settings: EvalSettings, *, predictor: Any = None,
                 chat_template: str | None = None, warmup: int = 1):
        if video_model.tokenizer is None:
            raise EvalError("the model has no tokenizer")
        self.vm = video_model
        self.settings = settings
        self.predictor = predictor
        self.prompts = PromptBuilder(video_model.tokenizer, settings.prompt_format, chat_template)
        self.warmup = warmup
        self._letters: list[list[int]] = []

    def _letter_ids(self, count: int) -> list[list[int]]:
        if len(self._letters) < count:
            self._letters = option_token_ids(self.vm.tokenizer, count)
        return self._letters[:count]

    # ------------------------------------------------------------------ one forward per mode
    def _forward(self, mode: str, ids: torch.Tensor, mask: torch.Tensor, video: dict[str, torch.Tensor],
                 queries: list[str], frames: list[torch.Tensor]) -> tuple[torch.Tensor, Any, float]:
        """-> (last-position logits float32 [B, vocab], KVTPStats or None, seconds)."""
        from ..integrations import apply_kvtp, remove_kvtp

        model = self.vm.model
        extra: dict[str, Any] = {}
        if mode == "kvtp":
            kwargs = self.settings.kvtp_kwargs()
            if model.config.model_type != "llava_onevision" and kwargs["layout"] == "video":
                kwargs["layout"] = None  # the default newline layout is LLaVA-OneVision's; the others have none
            apply_kvtp(model, predictor=self.predictor, **kwargs)
            if self.predictor is not None:
                extra = {"kvtp_query": queries, "kvtp_frames": frames}
        try:
            _synchronize(self.vm.device)
            start = time.perf_counter()
            with torch.inference_mode():
                out = model(input_ids=ids, attention_mask=mask, **video, logits_to_keep=1, use_cache=False, **extra)
            _synchronize(self.vm.device)
            seconds = time.perf_counter() - start
            stats = model.kvtp_stats if mode == "kvtp" else None
        finally:
            if mode == "kvtp":
                remove_kvtp(model)
        return out.logits[:, -1].float().cpu(), stats, seconds

    def _batch(self, group: list[_Decoded]) -> _Batch:
        """The group's prompts, left-padded, and its videos as the model's input tensors."""
        vm, settings = self.vm, self.settings
        rows, letters, spans = [], [], []
        for sample, frames, stamps in group:
            before, after = self.prompts.encode(multiple_choice_text(sample.question, sample.options,
                                                                     settings.instruction))
            spans.append(vm.inputs.video_tokens(frames))
            rows.append(before + vm.inputs.span(frames, stamps, vm.tokenizer) + after)
            letters.append(self._letter_ids(len(sample.options)))
        ids, mask = left_padded(rows, vm.pad_token_id)
        ids, mask = ids.to(vm.device), mask.to(vm.device)
        frames = [f for _, f, _ in group]
        pixels = vm.inputs.tensors(frames, ids, [stamps for *_, stamps in group], device=vm.device, dtype=vm.dtype)
        queries = [s.query or s.question for s, *_ in group]
        return _Batch(ids, mask, pixels, queries, frames, [len(r) for r in rows], letters, spans)

    def _tower_flops(self, num_frames: int) -> dict[str, int | None]:
        """Per mode, the vision FLOPs pruning does not remove (None: not counted for this family's tower)."""
        from ..integrations import vision_tower_flops

        tower = {"full": self.vm.inputs.tower_flops(num_frames)}
        tower["kvtp"] = None if tower["full"] is None else tower["full"] + (
            vision_tower_flops(self.predictor.siglip.config.vision_config, num_frames)
            if self.predictor is not None else 0)
        return tower

    def _run_group(self, group: list[_Decoded]) -> list[dict]:
        """Samples whose videos have the same frame count -> their records."""
        T = group[0][1].shape[0]
        batch = self._batch(group)
        for _ in range(self.warmup):
            for mode in self.settings.modes:
                self._forward(mode, batch.ids, batch.mask, batch.pixels, batch.queries, batch.frames)
        self.warmup = 0
        records = [{"id": s.id, "subset": s.subset, "video": s.video, "question": s.question, "options": s.options,
                    "answer": s.answer_letter, "num_frames": T} for s, *_ in group]
        tower = self._tower_flops(T)
        for mode in self.settings.modes:
            logits, stats, seconds = self._forward(mode, batch.ids, batch.mask, batch.pixels, batch.queries,
                                                   batch.frames)
            for b, (sample, *_) in enumerate(group):
                records[b][mode] = self._result(batch, b, sample, logits, stats, seconds / len(group), tower[mode])
        return records

    def _result(self, batch: _Batch, b: int, sample: Sample, logits: torch.Tensor, stats: Any, latency_s: float,
                vision_flops: int | None) -> dict[str, Any]:
        """One sample's result in one mode: the predicted option and what it cost."""
        from ..integrations import prefill_flops

        scores = [max(float(logits[b, t]) for t in token_ids) for token_ids in batch.letters[b]]
        predicted = max(range(len(scores)), key=lambda i: (scores[i], -i))
        if stats is None:
            vision, llm, kept = batch.spans[b], batch.lengths[b], None
        else:
            v = stats.sample_to_video[b]
            vision, llm, kept = stats.video_tokens_after[v], stats.sequence_lengths_after[b], stats.kept_per_frame[v]
        result = {"prediction": option_letter(predicted), "correct": predicted == sample.answer,
                  "option_logits": [round(s, 6) for s in scores], "vision_tokens": vision, "llm_tokens": llm,
                  "prefill_flops": prefill_flops(self.vm.model.config, llm), "latency_s": latency_s}
        if vision_flops is not None:
            result["vision_flops"] = vision_flops
        if kept is not None:
            result["kept_per_frame"] = kept
        return result

    # ------------------------------------------------------------------ the run
    def run(self, samples: Sequence[Sample], results: ResultsFile, *, batch_size: int = 1,
            data_errors: Sequence[SampleError] = (), progress: bool = True,
            log: Callable[[str], None] | None = None) -> EvalReport:
        """Evaluate the samples not yet in ``results``; append a record per finished sample.

        Per-sample problems (a video that does not decode, a batch the model rejects, out of
        memory) are collected in the report and the run goes on.
        """
        from tqdm.auto import tqdm

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EvalError(f"--batch-size must be an int >= 1; got {batch_size!r}")
        log = log or (lambda message: print(message, file=sys.stderr))
        errors = list(data_errors)
        pending = [s for s in samples if s.id not in results]
        resumed = len(samples) - len(pending)
        if resumed:
            log(f"kvtp eval: {resumed} of {len(samples)} samples already in {results.path}; resuming with "
                f"{len(pending)}")
        if pending:  # problems that would fail every sample stop the run here, before any video is decoded
            self._letter_ids(max(len(s.options) for s in pending))
            self.prompts.encode(multiple_choice_text(pending[0].question, pending[0].options,
                                                     self.settings.instruction))
        cache = _VideoCache(self.settings.fps, self.settings.max_frames)
        evaluated = 0
        with tqdm(total=len(pending), desc="kvtp eval", unit="sample", disable=not progress) as bar:
            for start in range(0, len(pending), batch_size):
                groups = self._decoded_groups(pending[start:start + batch_size], cache, errors, bar)
                for group in groups.values():
                    for record in self._group_records(group, errors):
                        results.append(record)
                        evaluated += 1
                    bar.update(len(group))
        records = [results.records[s.id] for s in samples if s.id in results]
        return EvalReport(records, evaluated, resumed, errors)

    def _decoded_groups(self, chunk: Sequence[Sample], cache: _VideoCache, errors: list[SampleError],
                        bar: Any) -> dict[int, list[_Decoded]]:
        """The chunk's decoded videos, grouped by frame count; a video that does not decode is an error."""
        groups: dict[int, list[_Decoded]] = {}
        for sample in chunk:
            try:
                frames, stamps = cache.get(sample.video)
            except (OSError, VideoDecodeError) as exc:
                errors.append(SampleError(sample.origin, str(exc), sample.id))
                bar.update(1)
                continue
            groups.setdefault(frames.shape[0], []).append((sample, frames, stamps.tolist()))
        return groups

    def _group_records(self, group: list[_Decoded], errors: list[SampleError]) -> list[dict]:
        """:meth:`_run_group`; a failure of this group's model run (not a usage error) becomes an error of each
        of its samples (and no records)."""
        try:
            return self._run_group(group)
        except EvalError:
            raise
        except (ValueError, torch.OutOfMemoryError) as exc:
            if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            hint = " (try a smaller --batch-size or --max-frames)" if isinstance(exc, torch.OutOfMemoryError) else ""
            for sample, *_ in group:
                errors.append(SampleError(sample.origin, f"the model run failed: {exc}{hint}", sample.id))
            return []
