"""KVTP as an lmms-eval model: any lmms-eval video benchmark, pruned or not, on one GPU or many.

Once ``kvtp_kernels`` is installed, lmms-eval finds the model by itself (the entry point
``lmms_eval.models`` in pyproject.toml names :func:`model_manifests`)::

    accelerate launch --num_processes 8 -m lmms_eval eval --model kvtp_llava_onevision \\
      --model_args pretrained=CKPT,predictor=DIR,budget=0.2,method=prumerge,max_frames_num=64 \\
      --tasks videomme,egoschema,nextqa_mc_test --batch_size 1 --output_path logs --log_samples

(CKPT: an HF-format LLaVA-Video checkpoint, e.g. ``llava-hf/LLaVA-Video-7B-Qwen2-hf``; DIR: a
saved relevance predictor.)

Model args (``--model_args k=v,k=v``; lmms-eval turns ``true``/``false`` into booleans and
digits into numbers):

==========================  =====================================================================
``pretrained``              the HF checkpoint (hub name or directory), required
``predictor``               a saved :class:`~kvtp_kernels.predictor.FrameRelevancePredictor`
                            (directory or hub name); unset: uniform frame scores
``budget``                  ratio kept per video (a float in (0, 1], ``0.2``) or the token count K
                            (an int; ``budget=1`` means one token, write ``1.0`` for all of them)
``method``                  within-frame rule: ``topk`` (default), ``prumerge`` (needs ``predictor``),
                            ``tome``, ``random``
``allocation``              ``exact`` (default) or ``paper``
``max_frames_num``          frames per video (default 32): with ``fps`` unset, this many uniformly over
                            the whole video (all frames of a shorter one)
``fps``                     sample at this rate instead (LLaVA-Video: ``fps=1``), capped at
                            ``max_frames_num`` (uniform over the video beyond it)
``query_field``             what the predictor scores frames against (below)
``kvtp``                    ``true`` (default) or ``false``: the unpruned model in the same wrapper,
                            same prompts, frames and decoding (the baseline)
``score_temperature``       tau of the frame softmax (2.0); ``min_tokens_per_frame``, ``layout``,
                            ``merge``, ``num_neighbors``: as :func:`~kvtp_kernels.integrations.apply_kvtp`
``device``, ``dtype``       ``auto`` (default): cuda when available (each process its own GPU),
                            bfloat16 on CUDA, float32 on CPU
``attn_implementation``     passed to ``from_pretrained``
``chat_template``           a Jinja template (a file path or the text) overriding the tokenizer's;
                            ``prompt_format``: ``auto`` / ``chat`` / ``plain`` (as ``kvtp eval``)
``max_new_tokens``          default for tasks whose ``generation_kwargs`` do not set it (1024)
==========================  =====================================================================

The query: KVTP scores frames against the task's *question*, not lmms-eval's context
string (question + options + instructions). The raw document is
``self.task_dict[task][split][doc_id]``; ``query_field`` picks its field:

- unset: the document's ``question`` field, which the video benchmarks of lmms-eval
  0.7.3 use for the bare question (videomme, egoschema, nextqa, mlvu, mvbench,
  longvideobench, lvbench, perceptiontest, activitynetqa, tempcompass, cinepile,
  videommmu, moviechat, tomato, mmvu, ...); documents without one fall back to the
  context string (a warning names the task once);
- ``query_field=FIELD``: that field in every task (a document without it is an error
  naming the task, the document and its fields);
- ``query_field=TASK:FIELD;TASK:FIELD``: per task (a task named by prefix; others as unset);
- ``query_field=context``: the context string itself.

How each request is decoded, prompted, run and accounted for (``kvtp_stats`` in the logged
samples), how processes share the work and how to add another VLM family: docs/lmms_eval.md.

lmms-eval 0.7.3 passes every model output through ``unwrap_generation_output``, which
turns a loglikelihood pair ``(float, bool)`` into its ``str()`` (multiple-choice scoring
then fails: "too many values to unpack"), and takes a ``GenerationResult``'s text as it
is. ``loglikelihood`` therefore returns each pair as the text of a ``GenerationResult``
(which also carries the token counts). Not supported: lmms-eval's ``--use_cache`` response
cache with loglikelihood tasks (its validation expects str texts).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import os
from typing import Any

import torch

try:
    from lmms_eval.api.instance import GenerationResult, TokenCounts
    from lmms_eval.api.model import lmms
except ImportError as _exc:  # pragma: no cover - exercised by the import test without lmms-eval
    raise ImportError("kvtp_kernels.integrations.lmms_eval needs lmms-eval 0.7.3: pip install '.[lmms-eval]' in "
                      "the kvtp_kernels checkout, or bash tools/install_lmms_eval.sh there and PYTHONPATH=.lmms-eval"
                      ) from _exc

from ..video import VideoDecodeError, load_video
from . import lmms_eval_args as args_
from .lmms_eval_args import log as _log
from .recording import collect_stats

__all__ = ["MODEL_CLASSES", "KVTPLlavaOnevision", "KVTPTokenCounts", "KVTPVideoLmms", "model_manifests"]

_VIDEO_CACHE = 4


@dataclasses.dataclass
class KVTPTokenCounts(TokenCounts):
    """lmms-eval's per-request token counts plus this request's KVTP accounting (see the module docstring)."""

    kvtp_stats: dict | None = None

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.kvtp_stats is not None:
            out["kvtp_stats"] = self.kvtp_stats
        return out


def _read_only(attribute: str) -> property:
    return property(lambda self: getattr(self, attribute))


class KVTPVideoLmms(lmms):
    """lmms-eval model: a video VLM with KVTP (``kvtp=true``) or without (``kvtp=false``).

    Family-independent: argument checks, processes and devices, documents, queries and
    videos, the ``generate_until`` / ``loglikelihood`` loops and the accounting. A family
    subclass sets :attr:`model_id` and implements the hooks below.
    """

    #: The ``--model`` name (a family subclass sets it).
    model_id: str = ""
    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        predictor: str | None = None,
        budget: float | int = 0.2,
        method: str = "topk",
        allocation: str = "exact",
        max_frames_num: int = 32,
        fps: float | None = None,
        query_field: str | None = None,
        kvtp: bool = True,
        score_temperature: float = 2.0,
        min_tokens_per_frame: int = 0,
        layout: str | None = None,
        merge: str = "paper",
        num_neighbors: int | None = None,
        device: str | None = None,
        dtype: str | None = "auto",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        attn_implementation: str | None = None,
        chat_template: str | None = None,
        prompt_format: str = "auto",
        max_new_tokens: int = 1024,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            accepted = [p for p in inspect.signature(KVTPVideoLmms.__init__).parameters if p not in ("self", "unknown")]
            raise TypeError(f"{self.model_id}: unknown model_args {sorted(unknown)}; accepted: {accepted}")
        predictor, kvtp = args_.check_model_args(
            self.model_id, pretrained=pretrained, predictor=predictor, kvtp=kvtp, max_frames_num=max_frames_num,
            fps=fps, max_new_tokens=max_new_tokens, batch_size=batch_size)
        self._query_fields = self._parse_query_field(query_field)
        self.kvtp_settings = args_.check_settings(self.model_id, {
            "budget": budget, "temperature": score_temperature, "allocation": allocation,
            "min_tokens_per_frame": min_tokens_per_frame, "layout": "video" if layout is None else layout,
            "method": method, "merge": merge, "num_neighbors": num_neighbors}, predictor, kvtp)
        self.kvtp_enabled = kvtp
        self.max_frames_num, self.fps = max_frames_num, None if fps is None else float(fps)
        self.max_new_tokens = max_new_tokens
        self.pretrained = pretrained
        self._place(device, dtype)
        self._load(pretrained, device=self._device, dtype=self._dtype, attn_implementation=attn_implementation,
                   chat_template=args_.read_template(chat_template), prompt_format=prompt_format)
        self.predictor = None
        if predictor is not None and kvtp:  # kvtp=false never scores frames
            from ..evaluation.evaluate import load_predictor

            self.predictor = self._resolve(load_predictor, "predictor", predictor, device=self._device)
        if kvtp:
            self._apply_kvtp(self.model, self.predictor, self.kvtp_settings)
        self._videos: collections.OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = collections.OrderedDict()
        self._warned: set[str] = set()
        if self.rank == 0:
            state = (f"KVTP budget={budget} method={method} allocation={allocation} "
                     f"predictor={predictor or 'none (uniform frame scores)'}") if kvtp else "KVTP off (baseline)"
            _log().info(f"{self.model_id}: {pretrained} on {self._device} ({self._dtype}), {self.world_size} "
                        f"process(es); {state}; frames: max_frames_num={max_frames_num} fps={fps}")

    def _place(self, device: str | None, dtype: str | None) -> None:
        """The accelerator, this process's device, rank, world size and dtype."""
        from accelerate import Accelerator

        from ..evaluation.evaluate import resolve_device, resolve_dtype

        accelerator = Accelerator()
        world, rank, local = args_.processes(accelerator)
        if world > 1:
            own = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
            if device not in (None, "auto") and not str(device).startswith(own.type):
                self._bad("device", f"unset or {own.type} with {world} processes (each process takes its own "
                                    "device)", device)
            self._device = own
            self._rank, self._world_size = rank, world
        else:
            self._device = self._resolve(resolve_device, "device", device)
            self._rank, self._world_size = 0, 1
        self.accelerator = accelerator
        self._dtype = self._resolve(resolve_dtype, "dtype", dtype, self._device)

    # ------------------------------------------------------------------ hooks of a family
    def _load(self, pretrained: str, *, device: torch.device, dtype: torch.dtype, attn_implementation: str | None,
              chat_template: str | None, prompt_format: str) -> None:
        """Load the model (set ``self._model``, ``self._tokenizer``, ``self._config``) and whatever
        :meth:`_model_inputs` needs."""
        raise NotImplementedError

    def _apply_kvtp(self, model: Any, predictor: Any, settings: dict) -> None:
        """Patch the model so that its forward / generate prune videos, recording ``model.kvtp_stats``."""
        raise NotImplementedError

    def _model_inputs(self, text: str, frames: torch.Tensor | None, continuation: str | None = None
                      ) -> tuple[dict[str, Any], int]:
        """The model's keyword inputs for one prompt (with ``continuation`` appended when given) and
        the number of continuation tokens at the end of ``input_ids``.

        ``text`` is the task's context without visual markers; ``frames`` uint8 [T, H, W, 3] or None.
        The returned dict must hold ``input_ids`` and ``attention_mask`` [1, L] on the model's device.
        """
        raise NotImplementedError

    def _unpruned_video(self, frames: torch.Tensor) -> tuple[list[int], int]:
        """For ``kvtp=false``'s accounting: (tokens of each frame unit as the integration counts them in
        ``kept_per_frame``, the video's placeholder tokens in the prompt, newlines included)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ lmms-eval's interface
    model = _read_only("_model")
    tokenizer = _read_only("_tokenizer")
    config = _read_only("_config")
    device = _read_only("_device")
    rank = _read_only("_rank")
    world_size = _read_only("_world_size")

    @property
    def eot_token_id(self):
        return self._tokenizer.eos_token_id

    @property
    def batch_size(self):
        return 1

    def generate_until(self, requests) -> list:
        results = []
        for (context, gen_kwargs, doc_to_visual, doc_id, task, _), doc in self._each(requests, "generate_until"):
            try:
                frames, query = self._document(task, doc_id, doc, doc_to_visual, context)
                text, counts = self._generate(context, frames, query, dict(gen_kwargs or {}))
            except (OSError, VideoDecodeError) as exc:
                text, counts = "", self._failed(exc, task, doc_id, "answering ''")
            results.append(GenerationResult(text=text, token_counts=counts))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return results

    def loglikelihood(self, requests) -> list:
        results = []
        for (context, target, doc_to_visual, doc_id, task, _), doc in self._each(requests, "loglikelihood"):
            continuation = target if isinstance(target, str) else target(doc)
            if not isinstance(continuation, str):
                raise TypeError(f"{self.model_id}: task {task} doc {doc_id}: the continuation must be a str; "
                                f"got {type(continuation).__name__}")
            try:
                frames, query = self._document(task, doc_id, doc, doc_to_visual, context)
                result, counts = self._loglikelihood(context, continuation, frames, query)
            except (OSError, VideoDecodeError) as exc:
                result = (float("-inf"), False)
                counts = self._failed(exc, task, doc_id, "log-likelihood -inf")
            results.append(GenerationResult(text=result, token_counts=counts))  # see the module docstring
            self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
        return results

    def _each(self, requests, kind: str):
        """(the first six request args, the document) of each request, with a progress bar on rank 0."""
        from tqdm.auto import tqdm

        for request in tqdm(requests, desc=f"{self.model_id} {kind}", disable=self.rank != 0):
            args = request.args[:6]
            _, _, _, doc_id, task, split = args
            yield args, self.task_dict[task][split][doc_id]

    def _failed(self, exc: Exception, task: str, doc_id: Any, answer: str) -> KVTPTokenCounts:
        """A request whose video could not be read: logged, its error in the accounting."""
        _log().error(f"{self.model_id}: task {task} doc {doc_id}: {exc}; {answer}")
        return KVTPTokenCounts(kvtp_stats={"error": f"{type(exc).__name__}: {exc}"})

    def generate_until_multi_round(self, requests) -> list:
        raise NotImplementedError(f"{self.model_id}: multi-round generation is not supported (single-turn video QA)")

    # ------------------------------------------------------------------ one request
    def _generate(self, context: str, frames: torch.Tensor | None, query: str | None, gen_kwargs: dict):
        until = gen_kwargs.pop("until", None)
        if isinstance(until, str):
            until = [until]
        if until is not None and (not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until)):
            raise ValueError(f"{self.model_id}: generation_kwargs `until` must be a str or a list of str; "
                             f"got {until!r}")
        max_new = gen_kwargs.get("max_new_tokens") or self.max_new_tokens
        temperature = float(gen_kwargs.get("temperature") or 0)
        do_sample = bool(gen_kwargs.get("do_sample", False)) or temperature > 0
        options: dict[str, Any] = {"max_new_tokens": int(max_new), "do_sample": do_sample,
                                   "num_beams": int(gen_kwargs.get("num_beams") or 1), "use_cache": True,
                                   "pad_token_id": self._pad_id(), "eos_token_id": self.eot_token_id}
        if do_sample:
            options["temperature"] = temperature if temperature > 0 else 1.0
            if gen_kwargs.get("top_p") is not None:
                options["top_p"] = float(gen_kwargs["top_p"])
        else:  # greedy: unset the checkpoint's sampling defaults instead of letting HF warn about them
            options.update(temperature=None, top_p=None, top_k=None)
        inputs, _ = self._model_inputs(self._strip(context), frames)
        prompt_len = inputs["input_ids"].shape[1]
        with torch.inference_mode(), collect_stats() as calls:
            out = self.model.generate(**inputs, **self._kvtp_kwargs(frames, query), **options)
        new = out[0, prompt_len:].tolist()
        text = self._tokenizer.decode(new, skip_special_tokens=True)
        for stop in until or ():
            if stop:
                text = text.split(stop)[0]
        stats = self._stats(inputs, frames, query, calls)
        return text, KVTPTokenCounts(input_tokens=stats["llm_tokens_after"], output_tokens=len(new), kvtp_stats=stats)

    def _loglikelihood(self, context: str, continuation: str, frames: torch.Tensor | None, query: str | None):
        inputs, n = self._model_inputs(self._strip(context), frames, continuation)
        if n < 1:
            raise ValueError(f"{self.model_id}: the continuation {continuation!r} has no tokens")
        ids = inputs["input_ids"]
        with torch.inference_mode(), collect_stats() as calls:
            out = self.model(**inputs, **self._kvtp_kwargs(frames, query), logits_to_keep=n + 1, use_cache=False)
        logits = out.logits[0, -n - 1:-1].float()  # positions predicting the n continuation tokens
        target = ids[0, -n:].to(logits.device)
        logprobs = torch.log_softmax(logits, dim=-1)
        total = float(logprobs.gather(1, target[:, None]).sum())
        greedy = bool((logits.argmax(-1) == target).all())
        stats = self._stats(inputs, frames, query, calls)
        return (total, greedy), KVTPTokenCounts(input_tokens=stats["llm_tokens_after"], kvtp_stats=stats)

    def _kvtp_kwargs(self, frames: torch.Tensor | None, query: str | None) -> dict[str, Any]:
        if not self.kvtp_enabled or frames is None or self.predictor is None:
            return {}
        return {"kvtp_query": [query], "kvtp_frames": [frames]}

    def _stats(self, inputs: dict, frames: torch.Tensor | None, query: str | None, calls: list) -> dict[str, Any]:
        """This request's accounting (plain numbers, JSON-serialisable); ``calls``: the KVTPStats of its
        patched calls (``collect_stats``: this thread's, even where threads share the model)."""
        from ..integrations import prefill_flops

        length = int(inputs["attention_mask"].sum())
        stats: dict[str, Any] = {"kvtp": self.kvtp_enabled, "budget": self.kvtp_settings["budget"],
                                 "method": self.kvtp_settings["method"], "query": query}
        if frames is None:
            T = 0
            kept, video_before, video_after, llm_after = [], 0, 0, length
        elif self.kvtp_enabled:
            if len(calls) != 1:
                raise RuntimeError(f"{self.model_id}: expected one pruned call for the video prompt, got {len(calls)}")
            record = calls[0]
            T = frames.shape[0]
            kept = list(record.kept_per_frame[0])
            video_before, video_after = record.video_tokens_before[0], record.video_tokens_after[0]
            llm_after = record.sequence_lengths_after[0]
            if record.sequence_lengths_before[0] != length:
                raise RuntimeError(f"{self.model_id}: the pruned call saw {record.sequence_lengths_before[0]} tokens, "
                                   f"the prompt has {length}")
        else:
            T = frames.shape[0]
            kept, video_before = self._unpruned_video(frames)
            video_after, llm_after = video_before, length
        before, after = prefill_flops(self.config, length), prefill_flops(self.config, llm_after)
        stats.update(num_frames=T, kept_per_frame=kept, video_tokens_before=video_before,
                     video_tokens_after=video_after, llm_tokens_before=length, llm_tokens_after=llm_after,
                     prefill_flops_before=before, prefill_flops_after=after, flops_ratio=after / max(before, 1))
        return stats

    # ------------------------------------------------------------------ documents, queries, videos
    def _document(self, task: str, doc_id: Any, doc: Any, doc_to_visual: Any, context: str):
        """-> (uint8 frames [T, H, W, 3] or None, the predictor's query or None)."""
        visuals = doc_to_visual(doc) if callable(doc_to_visual) else doc_to_visual
        visuals = list(args_.flatten(visuals or []))
        paths = [v for v in visuals if isinstance(v, (str, os.PathLike))]
        if len(paths) != len(visuals):
            kinds = sorted({type(v).__name__ for v in visuals if not isinstance(v, (str, os.PathLike))})
            raise ValueError(f"{self.model_id}: task {task} doc {doc_id}: doc_to_visual must give video file paths "
                             f"(this model evaluates video tasks); got {', '.join(kinds)}")
        if len(paths) > 1:
            raise ValueError(f"{self.model_id}: task {task} doc {doc_id}: one video per document; doc_to_visual gave "
                             f"{len(paths)}: {paths[:3]}")
        if not paths:
            return None, None
        frames = self._video(os.fspath(paths[0]))
        needs_query = self.kvtp_enabled and self.predictor is not None
        return frames, self._query(task, doc_id, doc, context) if needs_query else None

    def _video(self, path: str) -> torch.Tensor:
        if path in self._videos:
            self._videos.move_to_end(path)
            return self._videos[path][0]
        item = load_video(path, fps=self.fps, max_frames=self.max_frames_num)
        self._videos[path] = item
        if len(self._videos) > _VIDEO_CACHE:
            self._videos.popitem(last=False)
        return item[0]

    def _parse_query_field(self, value: Any) -> dict[str, str] | str | None:
        return args_.parse_query_field(self.model_id, value)

    def _query(self, task: str, doc_id: Any, doc: Any, context: str) -> str:
        return args_.pick_query(self.model_id, self._query_fields, self._warned, task, doc_id, doc, context)

    # ------------------------------------------------------------------ helpers
    def _bad(self, name: str, expected: str, got: Any):
        args_.bad(self.model_id, name, expected, got)

    def _resolve(self, function, name: str, value: Any, *args, **kwargs):
        """Call one of kvtp eval's loaders, re-labelling its error with the model arg's name."""
        from ..evaluation import EvalError

        try:
            return function(value, *args, **kwargs)
        except EvalError as exc:
            raise ValueError(f"{self.model_id}: model_args `{name}`={value!r}: {exc}") from exc

    def _pad_id(self) -> int:
        pad = getattr(self._tokenizer, "pad_token_id", None)
        return int(pad if pad is not None else self.eot_token_id)

    @staticmethod
    def _strip(context: str) -> str:
        return args_.strip_markers(context)


class KVTPLlavaOnevision(KVTPVideoLmms):
    """LLaVA-Video / LLaVA-OneVision in HF format (``LlavaOnevisionForConditionalGeneration``) with KVTP.

    Loading, preprocessing and prompts are ``kvtp eval``'s (:func:`~kvtp_kernels.evaluation.load_video_model`,
    :class:`~kvtp_kernels.evaluation.PromptBuilder`); pruning is :func:`~kvtp_kernels.integrations.apply_kvtp`.
    """

    model_id = "kvtp_llava_onevision"

    def _load(self, pretrained, *, device, dtype, attn_implementation, chat_template, prompt_format):
        from ..evaluation.evaluate import PromptBuilder, load_video_model

        vm = self._resolve(load_video_model, "pretrained", pretrained, device=device, dtype=dtype,
                           attn_implementation=attn_implementation)
        self._vm = vm
        self._model, self._tokenizer, self._config = vm.model, vm.tokenizer, vm.model.config
        self._prompts = self._resolve(lambda tok: PromptBuilder(tok, prompt_format, chat_template), "prompt_format",
                                      vm.tokenizer)

    def _apply_kvtp(self, model, predictor, settings):
        from ..integrations import apply_kvtp

        apply_kvtp(model, predictor=predictor, **settings)

    def _unpruned_video(self, frames):
        T = frames.shape[0]
        return [self._vm.tokens_per_frame] * T, self._vm.placeholders(T)

    def _model_inputs(self, text, frames, continuation=None):
        vm = self._vm
        if frames is None:
            ids = self._prompts.encode_text(text)
            extra = {}
        else:
            before, after = self._prompts.encode(text)
            ids = before + [vm.video_token_id] * vm.placeholders(frames.shape[0]) + after
            extra = {"pixel_values_videos": vm.pixel_values([frames])}
        n = 0
        if continuation is not None:
            cont = list(self._tokenizer(continuation, add_special_tokens=False)["input_ids"])
            ids, n = ids + cont, len(cont)
        input_ids = torch.tensor([ids], dtype=torch.long, device=vm.device)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **extra}, n


#: The model classes lmms-eval gets from :func:`model_manifests` (one ``--model`` name each).
MODEL_CLASSES: tuple[type[KVTPVideoLmms], ...] = (KVTPLlavaOnevision,)


def model_manifests() -> list:
    """The entry point lmms-eval calls (group ``lmms_eval.models``): one ``ModelManifest`` per model class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=cls.model_id, simple_class_path=f"{cls.__module__}.{cls.__qualname__}")
            for cls in MODEL_CLASSES]
