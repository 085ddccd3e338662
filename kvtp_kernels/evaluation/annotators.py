"""The annotators of ``kvtp annotate``: what writes a sample's debiased query and its per-frame labels.

:class:`LocalAnnotator` (a transformers model loaded from a path):

- a text-only causal LM never sees the video. Each frame is described by a caption when
  the sample has them (``captions``: one per sampled frame, or clip captions with start /
  end seconds) and otherwise only by its position ("frame 7 of 40, at 6.0 s"). With
  captions it rates how relevant the described content is (the authors' pipeline:
  caption clips with a VLM, then score the captions with a language model); without
  them it can only follow temporal cues in the question ("at the end", "first") and
  gives a prior, not a measurement. Use captions, or a model that sees the frames.
- a LlavaOnevision VLM (e.g. the LLaVA-Video checkpoint being evaluated) sees each
  frame (as a one-frame video, preprocessed like ``kvtp eval`` does, :meth:`.models.VideoModel.pixel_values`,
  no HF processor).

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
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..options import IMAGE_FORMATS
from .annotation_text import (
    DEBIAS_PROMPT,
    FRAME_PROMPT,
    MAX_LABEL,
    NO_CAPTION,
    SCORE_HEADER,
    SCORE_REPLY,
    clean_query,
    parse_scores,
)
from .chat_http import chat_endpoint, post_chat
from .data import option_letter
from .errors import AnnotationError, EvalError
from .images import encode_image, has_pillow
from .models import VideoModel, _require_transformers, load_video_model
from .prompts import PromptBuilder, left_padded, symbol_token_ids

__all__ = ["Annotator", "LocalAnnotator", "OpenAIAnnotator"]


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
        """The debiased query (see :mod:`kvtp_kernels.evaluation.annotate`). Raises AnnotationError."""

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
        video_model: for a VLM, its :class:`~kvtp_kernels.evaluation.models.VideoModel`
            (frames are shown as one-frame videos); None for a text-only LM.
        batch_size: frames scored per forward pass.
        max_new_tokens: length cap of the rewritten query.
        prompt_format: "auto", "chat" or "plain" (see :class:`~.prompts.PromptBuilder`).
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
        endpoint = chat_endpoint(url)
        if endpoint is None:
            raise EvalError(f"--url must be an http(s) URL of an OpenAI-compatible server; got {url!r}")
        if not model:
            raise EvalError("--model: the model name the endpoint serves is required with --annotator openai")
        self.endpoint = endpoint
        for arg, value, low in (("frames_per_request", frames_per_request, 1), ("retries", retries, 0),
                                ("max_tokens", max_tokens, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise EvalError(f"--{arg.replace('_', '-')} must be an int >= {low}; got {value!r}")
        if image_format not in IMAGE_FORMATS:
            raise EvalError(f"--image-format must be one of {IMAGE_FORMATS}; got {image_format!r}")
        if image_format == "jpeg" and not has_pillow():
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
        request = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        return post_chat(self.endpoint, request, api_key=self.api_key, timeout=self.timeout,
                         retries=self.max_retries, retry_delay=self.retry_delay, sleep=self.sleep,
                         on_retry=self._count_retry)

    def _count_retry(self) -> None:
        self.retried += 1

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
