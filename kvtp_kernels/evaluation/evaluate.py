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
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..integrations._compat import require_transformers
from ..options import METHODS, MODES, PROMPT_FORMATS
from ..video import VideoDecodeError, load_video
from .data import ResultsFile, Sample, SampleError, option_letter

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

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The instruction LLaVA-style models are tuned on for multiple choice.
DEFAULT_INSTRUCTION = "Answer with the option's letter from the given choices directly."
#: Stands for the video in rendered prompts; replaced by T*N + 1 video token ids.
VIDEO_MARKER = "<video>"
DEFAULT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # SigLIP's, LLaVA-OneVision's processor default
_PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json", "processor_config.json")
_VIDEO_CACHE = 4  # decoded videos kept (questions often share a video)


class EvalError(ValueError):
    """A problem with the model, tokenizer or options that stops the whole run (a usage error)."""


def _require_transformers():
    return require_transformers("kvtp eval", EvalError)


# ----------------------------------------------------------------------------------
# Devices, models, predictor
# ----------------------------------------------------------------------------------
def resolve_device(device: str | None) -> torch.device:
    """None / "auto" -> cuda when available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EvalError(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {device}: torch sees no CUDA device")
    return resolved


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """None / "auto" -> bfloat16 on CUDA, float32 on CPU."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise EvalError(f"--dtype must be auto or one of {list(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def processor_normalization(name_or_path: str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """``(image_mean, image_std, source)`` from the checkpoint's (video) processor config files.

    Looks in ``video_preprocessor_config.json``, ``preprocessor_config.json`` and
    ``processor_config.json`` (top level or under ``video_processor`` / ``image_processor``);
    falls back to 0.5 / 0.5 (SigLIP's, what LLaVA-OneVision checkpoints use).
    """
    for filename in _PROCESSOR_FILES:
        if os.path.isdir(name_or_path):
            path = os.path.join(name_or_path, filename)
            path = path if os.path.isfile(path) else None
        else:
            from transformers.utils import cached_file

            path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        if not path:
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError):
            continue
        for section in (data, data.get("video_processor"), data.get("image_processor")):
            if isinstance(section, dict) and section.get("image_mean") and section.get("image_std"):
                mean, std = section["image_mean"], section["image_std"]
                mean = (float(mean),) * 3 if isinstance(mean, (int, float)) else tuple(float(m) for m in mean)
                std = (float(std),) * 3 if isinstance(std, (int, float)) else tuple(float(s) for s in std)
                return mean, std, filename
    return DEFAULT_MEAN_STD[0], DEFAULT_MEAN_STD[1], "default (0.5, 0.5)"


@dataclasses.dataclass
class VideoModel:
    """A loaded LlavaOnevision model and what preprocessing needs to know about it.

    Attributes:
        model: the ``LlavaOnevisionForConditionalGeneration`` (eval mode).
        tokenizer: its tokenizer.
        image_size: S, the vision tower's input size (frames are resized to S x S).
        tokens_per_frame: N = ceil(S/patch / 2)^2 (HF's 2x bilinear pooling).
        pixel_mean, pixel_std: the processor's normalisation.
        video_token_id: the placeholder id (``config.video_token_id``).
        pad_token_id: id used for left padding.
        device, dtype: where it runs.
    """

    model: Any
    tokenizer: Any
    image_size: int
    tokens_per_frame: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    video_token_id: int
    pad_token_id: int
    device: torch.device
    dtype: torch.dtype
    inputs: Any = None  # the family's input builder (video_inputs.py)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, pixel_mean=DEFAULT_MEAN_STD[0],
                   pixel_std=DEFAULT_MEAN_STD[1]) -> VideoModel:
        """Wrap an already built model (e.g. a tiny random one)."""
        vision = model.config.vision_config
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        if pad is None:
            pad = getattr(model.config.get_text_config(), "pad_token_id", None)
        if pad is None and tokenizer is not None:
            pad = getattr(tokenizer, "eos_token_id", None)
        parameter = next(model.parameters())
        from .video_inputs import video_inputs_for

        inputs = video_inputs_for(model, pixel_mean, pixel_std)
        return cls(model, tokenizer, int(getattr(vision, "image_size", 0)), inputs.tokens_per_frame or 0,
                   tuple(pixel_mean), tuple(pixel_std), int(model.config.video_token_id),
                   int(pad if pad is not None else 0), parameter.device, parameter.dtype, inputs)

    def placeholders(self, num_frames: int) -> int:
        """Video placeholder tokens for T frames: T*N + 1 (HF appends one newline per video)."""
        return num_frames * self.tokens_per_frame + 1

    def pixel_values(self, videos: Sequence[torch.Tensor]) -> torch.Tensor:
        """V uint8 [T, H, W, 3] videos of one length -> [V, T, 3, S, S] on the model's device and dtype."""
        from ..integrations import video_pixel_values

        pixels = [video_pixel_values(v, self.image_size, self.pixel_mean, self.pixel_std) for v in videos]
        return torch.stack(pixels).to(device=self.device, dtype=self.dtype)


#: ``config.model_type`` -> the class ``kvtp eval`` / ``kvtp demo`` load (the classes apply_kvtp supports).
MODEL_CLASSES = {
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}


def load_video_model(name_or_path: str, *, device: torch.device, dtype: torch.dtype,
                     attn_implementation: str | None = None) -> VideoModel:
    """Load a checkpoint of a supported family (hub name or directory; the class chosen by its config's
    ``model_type``, :data:`MODEL_CLASSES`) and its tokenizer with ``from_pretrained``.

    Raises:
        EvalError: not found, not a llava_onevision model, no tokenizer.
    """
    transformers = _require_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise EvalError(f"--model {name_or_path!r}: cannot load its config ({exc})") from exc
    if config.model_type not in MODEL_CLASSES:
        raise EvalError(f"--model {name_or_path!r} is a {config.model_type!r} model; KVTP's HF integration supports "
                        f"{', '.join(MODEL_CLASSES.values())} (model types {', '.join(MODEL_CLASSES)})")
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = getattr(transformers, MODEL_CLASSES[config.model_type]).from_pretrained(name_or_path, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise EvalError(f"--model {name_or_path!r}: cannot load the model or its tokenizer ({exc})") from exc
    model = model.to(device).eval()
    mean, std, _ = processor_normalization(name_or_path)
    return VideoModel.from_model(model, tokenizer, pixel_mean=mean, pixel_std=std)


def load_predictor(name_or_path: str, *, device: torch.device, dtype: torch.dtype = torch.float32) -> Any:
    """A :class:`~kvtp_kernels.predictor.FrameRelevancePredictor` from a hub name or a saved directory."""
    from ..predictor import FrameRelevancePredictor

    try:
        predictor = FrameRelevancePredictor.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise EvalError(f"--predictor {name_or_path!r}: cannot load it ({exc})") from exc
    if predictor.tokenizer is None:
        raise EvalError(f"--predictor {name_or_path!r} has no tokenizer (save one next to it): the questions are text")
    return predictor.to(device=device, dtype=dtype).eval()


# ----------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------
def multiple_choice_text(question: str, options: Sequence[str], instruction: str = DEFAULT_INSTRUCTION) -> str:
    """``question`` / ``A. option`` lines / ``instruction``."""
    lines = [question.strip(), *(f"{option_letter(i)}. {o}" for i, o in enumerate(options))]
    if instruction:
        lines.append(instruction)
    return "\n".join(lines)


class PromptBuilder:
    """Renders a user turn that holds one video and tokenizes it around the video placeholder.

    Formats:
        ``chat``: the tokenizer's chat template (or ``chat_template``), user turn +
        generation prompt. The video goes first in the turn; templates that take string
        content get ``"<video>\\n" + text``, processor-style templates that take a list of
        parts get ``[{"type": "video"}, {"type": "text", ...}]`` (whichever renders the
        placeholder exactly once).
        ``plain``: ``[BOS] <video>\\n{text}\\n{answer_cue}``.
        ``auto``: chat when a template exists, else plain.

    Args:
        tokenizer: the model's tokenizer.
        prompt_format: "auto", "chat" or "plain".
        chat_template: a Jinja template overriding the tokenizer's.
        answer_cue: text after the user turn in plain format (default ``"Answer:"``).
    """

    def __init__(self, tokenizer: Any, prompt_format: str = "auto", chat_template: str | None = None,
                 answer_cue: str = "Answer:"):
        if prompt_format not in PROMPT_FORMATS:
            raise EvalError(f"--prompt-format must be one of {PROMPT_FORMATS}; got {prompt_format!r}")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        has_template = bool(chat_template or getattr(tokenizer, "chat_template", None))
        if prompt_format == "chat" and not has_template:
            raise EvalError("--prompt-format chat: the tokenizer has no chat template (use --prompt-format plain)")
        self.format = ("chat" if has_template else "plain") if prompt_format == "auto" else prompt_format
        self.answer_cue = answer_cue

    def render(self, text: str) -> str:
        """The full prompt as text, holding :data:`VIDEO_MARKER` exactly once."""
        if self.format == "plain":
            return f"{VIDEO_MARKER}\n{text}" + (f"\n{self.answer_cue}" if self.answer_cue else "")
        problems = []
        for content in (f"{VIDEO_MARKER}\n{text}", [{"type": "video"}, {"type": "text", "text": text}]):
            try:
                rendered = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": content}], chat_template=self.chat_template, tokenize=False,
                    add_generation_prompt=True)
            except Exception as exc:  # noqa: BLE001 - a template that rejects this content form; try the other
                problems.append(f"{type(exc).__name__}: {exc}")
                continue
            if isinstance(rendered, str) and rendered.count(VIDEO_MARKER) == 1:
                return rendered
            problems.append(f"rendered {VIDEO_MARKER!r} {rendered.count(VIDEO_MARKER)} times")
        raise EvalError("the chat template does not place one video placeholder in a user turn ("
                        + "; ".join(problems) + "); pass --prompt-format plain or --chat-template FILE")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _prefix(self) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return [bos] if self.format == "plain" and bos is not None else []

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the video placeholder."""
        before, after = self.render(text).split(VIDEO_MARKER)
        return self._prefix() + self._ids(before), self._ids(after)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a user turn without video (chat: template + generation prompt; plain: text + cue)."""
        if self.format == "plain":
            return self._prefix() + self._ids(f"{text}\n{self.answer_cue}" if self.answer_cue else text)
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                      chat_template=self.chat_template, tokenize=False,
                                                      add_generation_prompt=True)
        return self._ids(rendered)


def symbol_token_ids(tokenizer: Any, symbols: Sequence[str], what: str = "symbol") -> list[list[int]]:
    """For each symbol (an option letter, a digit), the single-token ids that spell it: ``s`` and
    ``" " + s`` when each is one token (the logit of either counts).

    Raises:
        EvalError: a symbol with no single-token spelling, or two symbols sharing a token.
    """
    table: list[list[int]] = []
    owner: dict[int, str] = {}
    unknown = getattr(tokenizer, "unk_token_id", None)
    for symbol in symbols:
        ids: list[int] = []
        for text in (symbol, " " + symbol):
            encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1 and encoded[0] != unknown and encoded[0] not in ids:
                ids.append(int(encoded[0]))
        if not ids:
            raise EvalError(f"the tokenizer has no single token for the {what} {symbol!r}; scoring by the next "
                            "token's logits needs one")
        for token in ids:
            if owner.setdefault(token, symbol) != symbol:
                raise EvalError(f"the {what}s {owner[token]!r} and {symbol!r} map to the same token {token}")
        table.append(ids)
    return table


def option_token_ids(tokenizer: Any, num_options: int) -> list[list[int]]:
    """The single-token spellings of the option letters A, B, ... (see :func:`symbol_token_ids`)."""
    return symbol_token_ids(tokenizer, [option_letter(i) for i in range(num_options)], "option letter")


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (input_ids, attention_mask) [B, L_max], padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[b, width - len(row):] = 1
    return ids, mask


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
        self._stamps: dict[str, list[float]] = {}  # sample id -> its frames' times (Qwen-VL timestamps)
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

    def _run_group(self, group: list[tuple[Sample, torch.Tensor]]) -> list[dict]:
        """Samples whose videos have the same frame count -> their records."""
        vm, settings = self.vm, self.settings
        T = group[0][1].shape[0]
        rows, letters, spans = [], [], []
        for sample, frames in group:
            before, after = self.prompts.encode(multiple_choice_text(sample.question, sample.options,
                                                                     settings.instruction))
            spans.append(vm.inputs.video_tokens(frames))
            rows.append(before + vm.inputs.span(frames, self._stamps.get(sample.id), vm.tokenizer) + after)
            letters.append(self._letter_ids(len(sample.options)))
        ids, mask = left_padded(rows, vm.pad_token_id)
        ids, mask = ids.to(vm.device), mask.to(vm.device)
        frames = [f for _, f in group]
        pixels = vm.inputs.tensors(frames, ids, [self._stamps.get(s.id) for s, _ in group], device=vm.device,
                                   dtype=vm.dtype)
        queries = [s.query or s.question for s, _ in group]
        for _ in range(self.warmup):
            for mode in settings.modes:
                self._forward(mode, ids, mask, pixels, queries, frames)
        self.warmup = 0
        records = [{"id": s.id, "subset": s.subset, "video": s.video, "question": s.question, "options": s.options,
                    "answer": s.answer_letter, "num_frames": T} for s, _ in group]
        lengths = [len(r) for r in rows]
        from ..integrations import prefill_flops, vision_tower_flops

        tower = {"full": vm.inputs.tower_flops(T)}  # None: not counted for this family's tower
        tower["kvtp"] = None if tower["full"] is None else tower["full"] + (
            vision_tower_flops(self.predictor.siglip.config.vision_config, T) if self.predictor is not None else 0)
        for mode in settings.modes:
            logits, stats, seconds = self._forward(mode, ids, mask, pixels, queries, frames)
            for b, (sample, _) in enumerate(group):
                scores = [max(float(logits[b, t]) for t in token_ids) for token_ids in letters[b]]
                predicted = max(range(len(scores)), key=lambda i: (scores[i], -i))
                if stats is None:
                    vision, llm, kept = spans[b], lengths[b], None
                else:
                    v = stats.sample_to_video[b]
                    vision, llm, kept = stats.video_tokens_after[v], stats.sequence_lengths_after[b], \
                        stats.kept_per_frame[v]
                result = {"prediction": option_letter(predicted), "correct": predicted == sample.answer,
                          "option_logits": [round(s, 6) for s in scores], "vision_tokens": vision, "llm_tokens": llm,
                          "prefill_flops": prefill_flops(vm.model.config, llm), "latency_s": seconds / len(group)}
                if tower[mode] is not None:
                    result["vision_flops"] = tower[mode]
                if kept is not None:
                    result["kept_per_frame"] = kept
                records[b][mode] = result
        return records

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
                chunk = pending[start:start + batch_size]
                groups: dict[int, list[tuple[Sample, torch.Tensor]]] = {}
                for sample in chunk:
                    try:
                        frames, stamps = cache.get(sample.video)
                        self._stamps[sample.id] = stamps.tolist()
                    except (OSError, VideoDecodeError) as exc:
                        errors.append(SampleError(sample.origin, str(exc), sample.id))
                        bar.update(1)
                        continue
                    groups.setdefault(frames.shape[0], []).append((sample, frames))
                for group in groups.values():
                    try:
                        records = self._run_group(group)
                    except EvalError:
                        raise
                    except (ValueError, torch.OutOfMemoryError) as exc:
                        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
                            torch.cuda.empty_cache()
                        hint = " (try a smaller --batch-size or --max-frames)" if isinstance(
                            exc, torch.OutOfMemoryError) else ""
                        for sample, _ in group:
                            errors.append(SampleError(sample.origin, f"the model run failed: {exc}{hint}", sample.id))
                        bar.update(len(group))
                        continue
                    for record in records:
                        results.append(record)
                    evaluated += len(records)
                    bar.update(len(group))
        records = [results.records[s.id] for s in samples if s.id in results]
        return EvalReport(records, evaluated, resumed, errors)


# ----------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------
def summarize(records: Sequence[dict], modes: Sequence[str] = MODES) -> list[dict[str, Any]]:
    """Per-subset numbers (subsets in order of first appearance, then "all" when there are several).

    Each row: ``subset``, ``n``, and per mode ``accuracy`` (fraction), ``vision_tokens`` and
    ``llm_tokens`` (means per sample), ``latency_ms`` (median per sample); ``flops_ratio``
    = sum of KVTP prefill FLOPs / sum of full prefill FLOPs, ``total_flops_ratio`` the same
    with the vision towers added to both sides (None unless both modes ran).
    """
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record.get("subset", "all"), []).append(record)
    if len(groups) > 1 or not groups:
        groups["all"] = list(records)

    def mean(values):
        return sum(values) / len(values) if values else None

    rows = []
    for subset, members in groups.items():
        row: dict[str, Any] = {"subset": subset, "n": len(members)}
        for key in ("accuracy", "vision_tokens", "llm_tokens", "latency_ms", "prefill_flops", "total_flops"):
            row[key] = {}
        for mode in modes:
            results = [r[mode] for r in members if mode in r]
            row["accuracy"][mode] = mean([float(x["correct"]) for x in results])
            row["vision_tokens"][mode] = mean([x["vision_tokens"] for x in results])
            row["llm_tokens"][mode] = mean([x["llm_tokens"] for x in results])
            row["latency_ms"][mode] = statistics.median(x["latency_s"] * 1e3 for x in results) if results else None
            row["prefill_flops"][mode] = sum(x["prefill_flops"] for x in results) if results else None
            row["total_flops"][mode] = sum(x["prefill_flops"] + x["vision_flops"] for x in results) \
                if results and all("vision_flops" in x for x in results) else None
        for key, ratio in (("prefill_flops", "flops_ratio"), ("total_flops", "total_flops_ratio")):
            full, pruned = row[key].get("full"), row[key].get("kvtp")
            row[ratio] = pruned / full if full and pruned is not None else None
        rows.append(row)
    return rows


def format_summary(rows: Sequence[dict], settings: EvalSettings | None = None) -> str:
    """The table ``kvtp eval`` prints: subsets as rows, full and KVTP side by side."""

    def pct(x, digits=2):
        return "-" if x is None else f"{100 * x:.{digits}f}"

    def num(x):
        return "-" if x is None else f"{x:.0f}"

    def ms(x):
        return "-" if x is None else f"{x:.1f}"

    def share(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    header = ["subset", "n", "acc full", "acc KVTP", "vision tok full", "vision tok KVTP", "LLM FLOPs KVTP/full",
              "+vision KVTP/full", "latency full ms", "latency KVTP ms"]
    table = [header]
    for row in rows:
        acc, vis, lat = row["accuracy"], row["vision_tokens"], row["latency_ms"]
        table.append([row["subset"], str(row["n"]), pct(acc.get("full")), pct(acc.get("kvtp")), num(vis.get("full")),
                      num(vis.get("kvtp")), share(row["flops_ratio"]), share(row.get("total_flops_ratio")),
                      ms(lat.get("full")), ms(lat.get("kvtp"))])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    if settings is not None:
        predictor = settings.predictor or "none (uniform frame scores)"
        method = settings.method + (f" (merge {settings.merge})" if settings.method == "prumerge" else "")
        lines.append(f"KVTP eval: model {settings.model}, predictor {predictor}, budget {settings.budget}, "
                     f"method {method}, temperature {settings.temperature}, allocation {settings.allocation}")
    for i, line in enumerate(table):
        lines.append("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in
                               enumerate(zip(line, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("accuracy in %; vision tokens: the video block the LLM sees (mean per sample); LLM FLOPs: the "
                 "LLM prefill; +vision: with the vision tower (and, for KVTP, the predictor's) on both sides; "
                 "latency: median per sample of the batched forward pass")
    return "\n".join(lines)
