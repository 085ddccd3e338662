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

Annotators
----------
:class:`LocalAnnotator` (a transformers model loaded from a path):

- a text-only causal LM never sees the video. Each frame is described by a caption when
  the sample has them (``captions``: one per sampled frame, or clip captions with start /
  end seconds) and otherwise only by its position ("frame 7 of 40, at 6.0 s"). With
  captions it rates how relevant the described content is (the authors' pipeline:
  caption clips with a VLM, then score the captions with a language model); without
  them it can only follow temporal cues in the question ("at the end", "first") and
  gives a prior, not a measurement. Use captions, or a model that sees the frames.
- a LlavaOnevision VLM (e.g. the LLaVA-Video checkpoint being evaluated) sees each
  frame (as a one-frame video, preprocessed like :mod:`.evaluate` does, no HF processor).

Scores come from the next-token logits: the prompt ends with "Relevance (0-5):" and the
label is the digit 0..5 whose token has the highest logit, so every answer is valid and
nothing has to be parsed (frames are batched, left-padded). The debiased query is
generated greedily (special tokens suppressed, so a VLM never emits a placeholder).

:class:`OpenAIAnnotator`: any OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI,
vLLM, SGLang, llama.cpp, Ollama ...), over ``urllib`` only. Frames are sent as base64
data URLs (JPEG when Pillow is installed, else PNG written with ``zlib``), resized so the
longer side is at most ``image_size``, ``frames_per_request`` per request (each request
names the question and the frames' numbers and times). The reply must hold one integer per
frame; :func:`parse_scores` takes a JSON list, "Frame k: s" lines or plain numbers, rounds
non-integers, clamps values outside 0..5 (counted in the report). A reply that does not
give the right count is answered with a correction and retried (``retries`` times), then
the sample fails. Network errors, HTTP 429 and 5xx are retried with exponential backoff;
401/403/404 or an unreachable server stop the run (every sample would fail).

The sparsity split
------------------
The authors skip a sample when no frame's keep ratio reaches 0.2 at temperature 2: with
the labels y as frame scores, KVTP's paper-mode allocation (METHOD.md section 2) gives
frame t the keep ratio ``k_t / N`` with ``p = softmax(y / 2)``, ``r_t = 0.2 * T * p_t``,
``k_t = floor(N * min(r_t, 1))`` (N tokens per frame, 169 in the authors' LLaVA-Video
evaluation). :func:`is_sparse` keeps a sample when ``max_t k_t / N >= threshold``.

Since the r_t average to the budget (0.2), some frame always reaches it in exact
arithmetic; it is the whole-token rounding that makes the criterion bite. With the
defaults (threshold = budget = 0.2) it drops exactly the samples whose labels are flat
(uniform, e.g. the all-zero answer of an annotator that found nothing) or so nearly flat
that no frame gets a whole token more than the uniform share. A larger ``threshold`` asks
for more: 0.4 means some frame must get twice the average share.
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import io
import json
import math
import os
import re
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..options import IMAGE_FORMATS
from ..video import VideoDecodeError, load_video
from .data import ResultsFile, Sample, SampleError, option_letter
from .evaluate import EvalError, PromptBuilder, VideoModel, left_padded, symbol_token_ids

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

MAX_LABEL = 5

DEBIAS_PROMPT = (
    "Rewrite the question below as one short, neutral query that says what has to be found in a video to answer "
    "it.\n"
    "- Keep what must be seen: people, objects, actions, places, times, on-screen text.\n"
    "- Remove instructions, requests about the answer format, greetings and any other noise.\n"
    "- Do not answer the question, do not favour any choice, do not add facts.\n"
    "- If there are choices, keep all of them, shortened, after 'Choices:'.\n"
    "Reply with the query only, on one line.\n\n"
    "Question: {question}{choices}"
)
SCORE_HEADER = (
    "You rate how relevant frames of a video are to a question, each with an integer from 0 (unrelated) to 5 "
    "(shows what is needed to answer it). Do not answer the question.\n"
    "Question: {query}\n"
    "The video lasts {duration:.1f} s; {count} frames were sampled from it. Frames to rate:"
)
SCORE_REPLY = ("Reply with a JSON list of exactly {n} integers from 0 to 5, one per frame in the order shown, and "
               "nothing else. Example for 3 frames: [0, 4, 1]")
FRAME_PROMPT = (
    "Rate how relevant one frame of a video is to a question, from 0 (unrelated) to 5 (shows what is needed to "
    "answer it). Do not answer the question.\n"
    "Question: {query}\n"
    "The video lasts {duration:.1f} s; {count} frames were sampled from it.\n"
    "Frame {number} of {count}, at {time:.1f} s: {description}\n"
    "Relevance (0-5):"
)
NO_CAPTION = "no description is available; judge only from where the frame lies in the video"


class AnnotationError(RuntimeError):
    """One sample could not be annotated (the run goes on; reported at the end)."""


class AnnotatorUnavailable(RuntimeError):
    """The annotator cannot work at all (bad credentials, wrong URL or model, server unreachable)."""


# ----------------------------------------------------------------------------------
# Parsing answers
# ----------------------------------------------------------------------------------
class ParsedScores:
    """Scores parsed from a reply: ``scores`` (ints 0..5) and ``clamped`` (how many were out of range)."""

    __slots__ = ("scores", "clamped")

    def __init__(self, scores: list[int], clamped: int):
        self.scores, self.clamped = scores, clamped

    def __repr__(self) -> str:
        return f"ParsedScores(scores={self.scores}, clamped={self.clamped})"


_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_LIST = re.compile(r"\[([^\[\]]*)\]")
_NUMBERS_ONLY = re.compile(r"[\s,;]*(?:" + _NUMBER + r"[\s,;]*)+")
_PAIR = re.compile(r"(?:frame|#)?\s*(\d+)\s*(?:\)|\]|:|=|-|–|—)\s*(" + _NUMBER + r")(?![\d.])", re.IGNORECASE)


def _to_label(token: str) -> tuple[int, bool]:
    value = float(token)
    label = math.floor(value + 0.5)  # 3.5 -> 4: half up
    clamped = min(max(label, 0), MAX_LABEL)
    return clamped, clamped != label


def parse_scores(text: str, expected: int) -> ParsedScores:
    """Extract ``expected`` relevance scores 0..5 from an annotator's reply.

    Tried in order: a bracketed list of exactly ``expected`` numbers (the last such list),
    ``"Frame k: s"`` / ``"k: s"`` pairs whose k are 1..expected (or 0..expected-1), then every
    number in the text when there are exactly ``expected``. Non-integers are rounded half up;
    values outside 0..5 are clamped (counted in ``clamped``).

    Raises:
        AnnotationError: no reading gives ``expected`` numbers (the message quotes the reply).
    """
    if not isinstance(text, str):
        raise AnnotationError(f"expected a text reply; got {type(text).__name__}")
    body = re.sub(r"```[a-zA-Z]*", "", text)
    candidates: list[list[str]] = []
    lists = [re.findall(_NUMBER, m.group(1)) for m in _LIST.finditer(body) if _NUMBERS_ONLY.fullmatch(m.group(1))]
    exact = [items for items in lists if len(items) == expected]
    if exact:
        candidates.append(exact[-1])
    pairs = _PAIR.findall(body)
    if pairs:
        by_index = {}
        for index, value in pairs:
            by_index.setdefault(int(index), value)
        for first in (1, 0):
            if sorted(by_index) == list(range(first, first + expected)):
                candidates.append([by_index[i] for i in range(first, first + expected)])
                break
    numbers = re.findall(_NUMBER, body)
    if len(numbers) == expected:
        candidates.append(numbers)
    if not candidates:
        found = f"lists of {sorted({len(x) for x in lists})} numbers" if lists else f"{len(numbers)} numbers"
        shown = text if len(text) <= 300 else text[:300] + "..."
        raise AnnotationError(f"expected {expected} scores 0..{MAX_LABEL}, found {found} in the reply {shown!r}")
    labels = [_to_label(token) for token in candidates[0]]
    return ParsedScores([label for label, _ in labels], sum(c for _, c in labels))


def clean_query(text: str) -> str:
    """The first non-empty line of a rewrite, without quotes, code fences or a "Query:" label.

    Raises:
        AnnotationError: nothing is left.
    """
    if not isinstance(text, str):
        raise AnnotationError(f"expected a text reply for the query; got {type(text).__name__}")
    for line in re.sub(r"```[a-zA-Z]*", "", text).splitlines():
        line = re.sub(r"^\s*(?:[-*]\s*)?(?:\*\*)?(?:rewritten query|debiased query|query|output|answer)\s*(?:\*\*)?"
                      r"\s*:\s*(?:\*\*)?\s*", "", line, flags=re.IGNORECASE)
        line = " ".join(line.strip().strip("\"'`“”‘’").split())
        if line:
            return line
    raise AnnotationError(f"the annotator's rewrite of the question is empty: {text[:200]!r}")


# ----------------------------------------------------------------------------------
# The sparsity split
# ----------------------------------------------------------------------------------
def frame_keep_ratios(labels: Sequence[int], *, temperature: float = 2.0, budget: float = 0.2,
                      tokens_per_frame: int = 169) -> list[float]:
    """Each frame's keep ratio ``k_t / N`` under KVTP's paper-mode allocation, with the labels as frame scores.

    ``p = softmax(labels / temperature)``, ``r_t = budget * T * p_t``,
    ``k_t = floor(N * min(r_t, 1))`` (METHOD.md section 2; 1e-9 is added before the floor so
    that float rounding does not cost a token).

    Args:
        labels: T relevance labels (numbers).
        temperature: tau (the authors': 2).
        budget: beta (the authors': 0.2).
        tokens_per_frame: N (the authors' LLaVA-Video evaluation: 13 x 13 = 169).
    """
    if not labels:
        raise ValueError("frame_keep_ratios: `labels` must not be empty")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"frame_keep_ratios: `temperature` must be > 0; got {temperature!r}")
    if not (isinstance(budget, (int, float)) and 0 < budget <= 1):
        raise ValueError(f"frame_keep_ratios: `budget` must be in (0, 1]; got {budget!r}")
    if isinstance(tokens_per_frame, bool) or not isinstance(tokens_per_frame, int) or tokens_per_frame < 1:
        raise ValueError(f"frame_keep_ratios: `tokens_per_frame` must be an int >= 1; got {tokens_per_frame!r}")
    scaled = [float(y) / temperature for y in labels]
    top = max(scaled)
    weights = [math.exp(s - top) for s in scaled]
    total = sum(weights)
    T, N = len(labels), tokens_per_frame
    return [math.floor(N * min(budget * T * w / total, 1.0) + 1e-9) / N for w in weights]


def is_sparse(labels: Sequence[int], *, threshold: float = 0.2, temperature: float = 2.0, budget: float = 0.2,
              tokens_per_frame: int = 169) -> bool:
    """The authors' criterion: keep a sample when some frame's keep ratio reaches ``threshold``.

    ``max_t frame_keep_ratios(labels)[t] >= threshold`` (see the module docstring for what
    the default threshold = budget = 0.2 selects).
    """
    ratios = frame_keep_ratios(labels, temperature=temperature, budget=budget, tokens_per_frame=tokens_per_frame)
    return max(ratios) >= threshold


def frame_captions(captions: Any, timestamps: Sequence[float]) -> list[str] | None:
    """A sample's ``captions`` column -> one caption per sampled frame (or None).

    Accepted: a list of strings, one per sampled frame; or clip captions, a list of objects
    ``{"start": s, "end": s, "text": ...}`` (seconds; a frame gets the texts of every clip
    whose [start, end] holds its time, "" when none does).

    Raises:
        AnnotationError: a per-frame list of the wrong length or a malformed entry.
    """
    if captions is None or captions == "":
        return None
    if isinstance(captions, str):
        try:
            captions = json.loads(captions)
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"column 'captions' is a string that is not JSON ({exc})") from exc
    if not isinstance(captions, list) or not captions:
        raise AnnotationError("column 'captions' must be a non-empty list (one caption per sampled frame, or clip "
                              "captions {start, end, text})")
    T = len(timestamps)
    if all(isinstance(c, str) for c in captions):
        if len(captions) != T:
            raise AnnotationError(f"column 'captions' has {len(captions)} captions but the video gives {T} sampled "
                                  "frames (give one per frame of the same --fps / --max-frames sampling, or clip "
                                  "captions with start/end times)")
        return [c.strip() for c in captions]
    clips = []
    for i, clip in enumerate(captions):
        if (not isinstance(clip, dict) or not isinstance(clip.get("text"), str)
                or not all(isinstance(clip.get(k), (int, float)) and not isinstance(clip.get(k), bool)
                           for k in ("start", "end"))):
            raise AnnotationError(f"column 'captions': entry {i} must be a string (per-frame captions) or an object "
                                  f"with numbers 'start', 'end' (seconds) and a string 'text'; got {clip!r}")
        clips.append((float(clip["start"]), float(clip["end"]), clip["text"].strip()))
    return [" / ".join(text for start, end, text in clips if start - 1e-6 <= t <= end + 1e-6) for t in timestamps]


# ----------------------------------------------------------------------------------
# Images for the HTTP annotator
# ----------------------------------------------------------------------------------
def _png(pixels: torch.Tensor) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (8-bit RGB, no filtering, zlib level 6): stdlib only."""
    H, W, _ = pixels.shape
    rows = torch.cat([torch.zeros((H, 1), dtype=torch.uint8), pixels.reshape(H, W * 3)], dim=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.numpy().tobytes(), 6))
            + chunk(b"IEND", b""))


def _has_pillow() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def encode_image(frame: torch.Tensor, *, max_side: int | None = 384, image_format: str = "auto") -> str:
    """uint8 [H, W, 3] -> a ``data:image/...;base64,`` URL (resized so the longer side is <= ``max_side``).

    ``image_format``: "jpeg" (quality 90, needs Pillow), "png" (stdlib), "auto" (JPEG when Pillow
    is installed, else PNG).
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}; got {image_format!r}")
    frame = torch.as_tensor(frame)
    if frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[-1] != 3:
        raise ValueError(f"encode_image: expected a uint8 [H, W, 3] frame; got {frame.dtype} {tuple(frame.shape)}")
    H, W = frame.shape[:2]
    if max_side is not None and max(H, W) > max_side:
        scale = max_side / max(H, W)
        size = (max(1, round(H * scale)), max(1, round(W * scale)))
        x = frame.permute(2, 0, 1)[None].float()
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        frame = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
    frame = frame.contiguous().cpu()
    if image_format == "jpeg" or (image_format == "auto" and _has_pillow()):
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(frame.numpy()).save(buffer, format="JPEG", quality=90)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return "data:image/png;base64," + base64.b64encode(_png(frame)).decode("ascii")


# ----------------------------------------------------------------------------------
# Annotators
# ----------------------------------------------------------------------------------
def _choices_text(options: Sequence[str]) -> str:
    if not options:
        return ""
    return "\nChoices: " + " ".join(f"({option_letter(i)}) {o}" for i, o in enumerate(options))


class Annotator(abc.ABC):
    """Writes the debiased query and the per-frame labels of one sample.

    Attributes:
        clamped: scores that were outside 0..5 and clamped, so far.
        retried: requests repeated after a bad reply or a transient error, so far.
    """

    name = "annotator"

    def __init__(self) -> None:
        self.clamped = 0
        self.retried = 0

    @abc.abstractmethod
    def rewrite_query(self, question: str, options: Sequence[str] = ()) -> str:
        """The debiased query (see the module docstring). Raises AnnotationError."""

    @abc.abstractmethod
    def score_frames(self, query: str, frames: torch.Tensor, timestamps: Sequence[float],
                     captions: Sequence[str] | None = None) -> list[int]:
        """One label 0..5 per frame. ``frames``: uint8 [T, H, W, 3]. Raises AnnotationError."""

    def describe(self) -> dict[str, Any]:
        """What identifies this annotator in the output's settings."""
        return {"annotator": self.name}


def _duration(timestamps: Sequence[float]) -> float:
    return float(timestamps[-1]) + 1.0 if len(timestamps) else 0.0


class LocalAnnotator(Annotator):
    """A transformers model on this machine: a text-only causal LM or a LlavaOnevision VLM.

    Args:
        model: the model (eval mode, on its device).
        tokenizer: its tokenizer.
        video_model: for a VLM, its :class:`~kvtp_kernels.evaluation.evaluate.VideoModel`
            (frames are shown as one-frame videos); None for a text-only LM.
        batch_size: frames scored per forward pass.
        max_new_tokens: length cap of the rewritten query.
        prompt_format: "auto", "chat" or "plain" (see :class:`~.evaluate.PromptBuilder`).
        name: recorded in the output's settings.
    """

    name = "local"

    def __init__(self, model: Any, tokenizer: Any, *, video_model: VideoModel | None = None, batch_size: int = 8,
                 max_new_tokens: int = 64, prompt_format: str = "auto", name: str | None = None):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EvalError(f"--batch-size must be an int >= 1; got {batch_size!r}")
        self.model, self.tokenizer, self.video_model = model, tokenizer, video_model
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.prompts = PromptBuilder(tokenizer, prompt_format, answer_cue="")
        self.digits = symbol_token_ids(tokenizer, [str(d) for d in range(MAX_LABEL + 1)], "digit")
        self.model_name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = video_model.pad_token_id if video_model is not None else (
            pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0))
        self.device = next(model.parameters()).device
        # Never generated in a query: special tokens but EOS (a VLM fed its own placeholder would fail), and ids
        # the model has but the tokenizer does not (embedding padding; they decode to nothing).
        eos = getattr(tokenizer, "eos_token_id", None)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        if video_model is not None:
            config = model.config
            special |= {config.video_token_id, getattr(config, "image_token_id", config.video_token_id)}
        output = model.get_output_embeddings()
        known = set(tokenizer.get_vocab().values())
        unused = {i for i in range(output.weight.shape[0]) if i not in known} if output is not None else set()
        self.suppressed = sorted(i for i in special | unused if i is not None and i != eos)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: torch.device, dtype: torch.dtype,
                        **kwargs: Any) -> LocalAnnotator:
        """Load a causal LM (AutoModelForCausalLM) or a llava_onevision VLM and its tokenizer."""
        from .evaluate import _require_transformers, load_video_model

        transformers = _require_transformers()
        try:
            config = transformers.AutoConfig.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            raise EvalError(f"--model {name_or_path!r}: cannot load its config ({exc})") from exc
        if config.model_type == "llava_onevision":
            vm = load_video_model(name_or_path, device=device, dtype=dtype)
            return cls(vm.model, vm.tokenizer, video_model=vm, name=name_or_path, **kwargs)
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
            tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            raise EvalError(f"--model {name_or_path!r}: cannot load it as a causal LM with a tokenizer ({exc})") \
                from exc
        return cls(model.to(device).eval(), tokenizer, name=name_or_path, **kwargs)

    @property
    def sees_frames(self) -> bool:
        return self.video_model is not None

    def describe(self) -> dict[str, Any]:
        return {"annotator": self.name, "model": self.model_name, "sees_frames": self.sees_frames}

    def rewrite_query(self, question: str, options: Sequence[str] = ()) -> str:
        ids = self.prompts.encode_text(DEBIAS_PROMPT.format(question=question.strip(), choices=_choices_text(options)))
        input_ids = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      max_new_tokens=self.max_new_tokens, min_new_tokens=1, do_sample=False,
                                      suppress_tokens=self.suppressed or None, pad_token_id=self.pad_id)
        new = out[0, input_ids.shape[1]:].tolist()
        return clean_query(self.tokenizer.decode(new, skip_special_tokens=True))

    def _frame_prompt(self, query: str, number: int, count: int, time_s: float, duration: float,
                      caption: str | None) -> str:
        if self.sees_frames:
            description = "the frame shown above" + (f" (caption: {caption})" if caption else "")
        else:
            description = caption if caption else NO_CAPTION
        return FRAME_PROMPT.format(query=query, duration=duration, count=count, number=number, time=time_s,
                                   description=description)

    def score_frames(self, query: str, frames: torch.Tensor, timestamps: Sequence[float],
                     captions: Sequence[str] | None = None) -> list[int]:
        T = len(timestamps)
        duration = _duration(timestamps)
        labels: list[int] = []
        vm = self.video_model
        for start in range(0, T, self.batch_size):
            rows, indices = [], range(start, min(T, start + self.batch_size))
            for t in indices:
                text = self._frame_prompt(query, t + 1, T, float(timestamps[t]), duration,
                                          captions[t] if captions else None)
                if vm is not None:
                    before, after = self.prompts.encode(text)
                    rows.append(before + [vm.video_token_id] * vm.placeholders(1) + after)
                else:
                    rows.append(self.prompts.encode_text(text))
            ids, mask = left_padded(rows, self.pad_id)
            kwargs: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                                      "logits_to_keep": 1, "use_cache": False}
            if vm is not None:
                kwargs["pixel_values_videos"] = vm.pixel_values([frames[t][None] for t in indices])
            with torch.inference_mode():
                logits = self.model(**kwargs).logits[:, -1].float().cpu()
            for b in range(len(rows)):
                scores = [max(float(logits[b, i]) for i in ids_) for ids_ in self.digits]
                labels.append(max(range(len(scores)), key=lambda d: (scores[d], -d)))
        return labels


class OpenAIAnnotator(Annotator):
    """Any OpenAI-compatible chat-completions endpoint, over ``urllib`` (see the module docstring).

    Args:
        url: the server's base URL (``https://api.openai.com/v1``, ``http://localhost:8000/v1``) or
            the full ``.../chat/completions`` URL.
        model: the model name sent in each request.
        api_key: sent as ``Authorization: Bearer ...`` (None: no header, for local servers).
        frames_per_request: frames rated per request.
        image_size: longer side of the frames sent, in pixels (None: native size).
        image_format: "auto", "jpeg" or "png".
        text_only: send captions / frame times instead of images (for text-only models).
        timeout: seconds per request.
        retries: extra attempts after a bad reply or a transient error.
        retry_delay: first backoff in seconds (doubled each attempt; a Retry-After header wins).
        max_tokens: reply length cap.
        sleep: the sleep function (tests pass a no-op).
    """

    name = "openai"

    def __init__(self, url: str, model: str, *, api_key: str | None = None, frames_per_request: int = 8,
                 image_size: int | None = 384, image_format: str = "auto", text_only: bool = False,
                 timeout: float = 120.0, retries: int = 3, retry_delay: float = 1.0, max_tokens: int = 256,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__()
        parsed = urllib.parse.urlparse(url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise EvalError(f"--url must be an http(s) URL of an OpenAI-compatible server; got {url!r}")
        if not model:
            raise EvalError("--model: the model name the endpoint serves is required with --annotator openai")
        path = parsed.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path = (path or "/v1") + "/chat/completions"
        self.endpoint = urllib.parse.urlunparse(parsed._replace(path=path))
        for arg, value, low in (("frames_per_request", frames_per_request, 1), ("retries", retries, 0),
                                ("max_tokens", max_tokens, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise EvalError(f"--{arg.replace('_', '-')} must be an int >= {low}; got {value!r}")
        if image_format not in IMAGE_FORMATS:
            raise EvalError(f"--image-format must be one of {IMAGE_FORMATS}; got {image_format!r}")
        if image_format == "jpeg" and not _has_pillow():
            raise EvalError("--image-format jpeg needs Pillow (pip install pillow); use png")
        self.model, self.api_key = model, api_key
        self.frames_per_request, self.image_size, self.image_format = frames_per_request, image_size, image_format
        self.text_only, self.timeout, self.max_retries = text_only, timeout, retries
        self.retry_delay, self.max_tokens, self.sleep = retry_delay, max_tokens, sleep

    def describe(self) -> dict[str, Any]:
        return {"annotator": self.name, "url": self.endpoint, "model": self.model, "text_only": self.text_only,
                "frames_per_request": self.frames_per_request, "image_size": self.image_size}

    # ------------------------------------------------------------------ HTTP
    def _post(self, messages: list[dict]) -> str:
        """One chat completion -> the reply text (transient failures retried)."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retried += 1
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            wait = self.retry_delay * 2 ** attempt
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:300]
                if exc.code in (401, 403):
                    raise AnnotatorUnavailable(f"{self.endpoint}: HTTP {exc.code} (not authorised: check the key in "
                                               f"--api-key-env) {detail}") from exc
                if exc.code == 404:
                    raise AnnotatorUnavailable(f"{self.endpoint}: HTTP 404 (check --url and --model {self.model!r}) "
                                               f"{detail}") from exc
                if exc.code not in (408, 409, 429) and exc.code < 500:
                    hint = " (request too large: lower --frames-per-request or --image-size)" if exc.code == 413 else ""
                    raise AnnotationError(f"{self.endpoint}: HTTP {exc.code}{hint}: {detail}") from exc
                last = f"HTTP {exc.code}: {detail}"
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.strip().isdigit():
                    wait = min(float(retry_after), 60.0)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                if attempt == self.max_retries:
                    raise AnnotatorUnavailable(f"cannot reach {self.endpoint} after {self.max_retries + 1} attempts "
                                               f"({last})") from exc
            else:
                try:
                    data = json.loads(payload.decode("utf-8"))
                    content = data["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    raise AnnotationError(f"{self.endpoint}: not a chat-completions response: "
                                          f"{payload[:300]!r}") from exc
                if isinstance(content, list):  # content parts
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                if not isinstance(content, str):
                    raise AnnotationError(f"{self.endpoint}: the reply has no text content: {payload[:300]!r}")
                return content
            if attempt < self.max_retries:
                self.sleep(wait)
        raise AnnotationError(f"{self.endpoint}: failed after {self.max_retries + 1} attempts ({last})")

    def _ask(self, messages: list[dict], parse: Callable[[str], Any], correction: Callable[[str], str]) -> Any:
        """Post, parse; on a bad reply, answer with a correction and retry."""
        for attempt in range(self.max_retries + 1):
            reply = self._post(messages)
            try:
                return parse(reply)
            except AnnotationError as exc:
                if attempt == self.max_retries:
                    raise AnnotationError(f"{exc} (after {self.max_retries + 1} attempts)") from exc
                self.retried += 1
                messages = [*messages, {"role": "assistant", "content": reply},
                            {"role": "user", "content": correction(str(exc))}]
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the two tasks
    def rewrite_query(self, question: str, options: Sequence[str] = ()) -> str:
        prompt = DEBIAS_PROMPT.format(question=question.strip(), choices=_choices_text(options))
        return self._ask([{"role": "user", "content": prompt}], clean_query,
                         lambda _: "That was empty. Reply with the rewritten query only, on one line.")

    def score_frames(self, query: str, frames: torch.Tensor, timestamps: Sequence[float],
                     captions: Sequence[str] | None = None) -> list[int]:
        T = len(timestamps)
        duration = _duration(timestamps)
        labels: list[int] = []
        for start in range(0, T, self.frames_per_request):
            indices = list(range(start, min(T, start + self.frames_per_request)))
            parts: list[dict] = [{"type": "text", "text": SCORE_HEADER.format(query=query, duration=duration,
                                                                              count=T)}]
            for t in indices:
                caption = captions[t] if captions else None
                label = f"Frame {t + 1} of {T}, at {float(timestamps[t]):.1f} s"
                if self.text_only:
                    parts.append({"type": "text", "text": f"{label}: {caption or NO_CAPTION}"})
                else:
                    parts.append({"type": "text", "text": label + (f" (caption: {caption})" if caption else "") + ":"})
                    parts.append({"type": "image_url", "image_url": {
                        "url": encode_image(frames[t], max_side=self.image_size, image_format=self.image_format)}})
            n = len(indices)
            parts.append({"type": "text", "text": SCORE_REPLY.format(n=n)})
            parsed = self._ask([{"role": "user", "content": parts}], lambda reply, n=n: parse_scores(reply, n),
                               lambda problem, n=n: f"{problem}. Reply with a JSON list of exactly {n} integers "
                                                    "from 0 to 5 and nothing else.")
            self.clamped += parsed.clamped
            labels += parsed.scores
        return labels


# ----------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------
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
        if target is None:
            continue
        record: dict[str, Any] = {"id": sample.id, "video": _relative(sample.video, target.path),
                                  "question": sample.question, "query": query, "labels": labels,
                                  "timestamps": timestamps, "max_keep_ratio": round(max(ratios), 6), "sparse": sparse}
        if sample.options:
            record["options"] = sample.options
        if sample.answer is not None:
            record["answer"] = sample.answer_letter
        record["subset"] = sample.subset
        target.append(record)
    return AnnotateReport(kept, dense, resumed, errors, annotator.clamped, annotator.retried)
