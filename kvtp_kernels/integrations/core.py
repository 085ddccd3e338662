"""Model-agnostic KVTP for a VLM's LLM input: video features + placeholder mask -> pruned inputs.

Any VLM that splices projected video tokens into a placeholder span of its prompt
can use KVTP through :func:`prune_video_inputs`:

    inputs: the embedded prompts ``inputs_embeds`` [B, L, D] (placeholder positions
            included, any content), the placeholder mask [B, L], the attention mask,
            and the video features [V, T, N, D] (or a list of V [T_v, N, D] for videos
            of different lengths), plus optional frame scores / token importance.
    output: shortened ``inputs_embeds`` [B, L', D], ``attention_mask`` [B, L'],
            ``position_ids`` [B, L'] (and labels, if given), where each sample's
            placeholder span is replaced by its video's K kept tokens (+ newlines).

It runs :func:`kvtp_kernels.prune` (one call per distinct frame count T) and
:func:`kvtp_kernels.pack_multimodal` (one call, padded output). Video v goes to
the v-th sample that has a placeholder span (the order in which HF's
``masked_scatter`` fills placeholders); samples without a span keep their text
untouched; one video per sample.

Models whose positions are not the token index (M-RoPE), whose placeholders are split
(one span per frame) or that take their kept rows through their own encoder call use the
keep-mask path instead (:func:`.keep_mask.prune_to_keep_mask`, wired by
:mod:`.keep_mask_adapter` for Qwen-VL and LLaVA-NeXT-Video).

Wiring another VLM (what :mod:`.llava_onevision` does for LLaVA-Video):

1. Find the entry points that fix the sequence length (``forward`` and
   ``generate``) and wrap them on the instance with ``functools.wraps`` so that
   signatures, which ``generate`` inspects, are kept.
2. In the wrapper, when video pixels are present: embed the prompt
   (``model.get_input_embeddings()(input_ids)``), compute the video features
   with the model's own vision path (for HF models, ``get_video_features``), and
   reshape them to [V, T, N, D] (split off any newline rows the model appends:
   pass the model's newline embedding as ``newline`` and pick the ``layout``
   that reproduces its newline placement).
3. Call :func:`prune_video_inputs` and then the original forward/generate with
   ``inputs_embeds``, the new ``attention_mask`` and (for forward, if the user
   gave them) ``position_ids``; drop the video pixels so the model does not
   encode them again. Keep image inputs: the model fills image placeholders
   itself (text rows, image placeholders included, are copied bit for bit).
4. For generate, re-prepend the prompt ids to the returned new tokens (HF
   returns only new tokens when given ``inputs_embeds``).

Host syncs: :func:`locate_videos` reads per-sample counts (one ``tolist``) to map
samples to videos and to check every placeholder span; the padding side is read
from the mask's first/last column; packing reads its summary once; the
accounting reads the output lengths and keep counts; videos of different lengths
read their offsets once more to merge the per-length prune calls. These are a few
small integration-level reads per call (the prompt is processed once), not
per-token work; the kernels themselves stay sync-free in exact mode.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .. import options
from .._errors import as_int, fail
from .._errors import describe as _describe
from .._numerics import offsets_from_counts
from ..api import PrunedTokens, prune
from ..options import ALLOCATIONS, BACKENDS, LAYOUTS, MERGES, METHODS
from ..pack import PackedInputs, pack_multimodal
from ..pixels import frames_to_pixels

__all__ = [
    "LAYOUTS",
    "KVTPSettings",
    "KVTPStats",
    "VideoPlacement",
    "VideoPruneResult",
    "infer_padding_side",
    "locate_videos",
    "placeholder_length",
    "predictor_scores",
    "prune_video_inputs",
    "renormalize_pixels",
    "video_pixel_values",
]


_fail = functools.partial(fail, "kvtp_kernels.integrations")


# ----------------------------------------------------------------------------------
# Settings and results
# ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KVTPSettings:
    """How videos are pruned (checked on construction; the meaning is :func:`kvtp_kernels.prune`'s).

    Attributes:
        budget: float in (0, 1]: keep ``K = floor(beta*T*N + 1/2)`` of each video's
            T*N tokens; int >= 1: keep K tokens per video (must be <= T*N).
        temperature: tau of ``softmax(s / tau)`` over frame scores (> 0).
        allocation: "exact" or "paper".
        min_tokens_per_frame: m >= 0.
        layout: newlines in the pruned video block: "video" (one after the video,
            HF LlavaOnevision), "grid" (after each grid row that kept a token,
            original LLaVA-Video), "frame" (after each frame) or "none".
        backend: None (by device), "reference", "cpu" or "triton".
        method: the within-frame method: "topk", "prumerge" (needs token scores,
            e.g. a predictor's token importance), "tome" or "random".
        merge: prumerge's fold, "paper" or "mean".
        num_neighbors: prumerge's neighbours per kept token (None: min(32, N-1)).
    """

    budget: float | int = 0.2
    temperature: float = 2.0
    allocation: str = "exact"
    min_tokens_per_frame: int = 0
    layout: str = "video"
    backend: str | None = None
    method: str = "topk"
    merge: str = "paper"
    num_neighbors: int | None = None

    def __post_init__(self):
        # the same checks as kvtp_kernels.prune's (options.py); numbers stored as Python ints / floats
        def store(name, value):  # frozen: normalised values are set once, here
            object.__setattr__(self, name, value)

        store("budget", options.check_budget(_fail, self.budget))
        store("temperature", options.check_temperature(_fail, self.temperature))
        options.check_choice(_fail, "allocation", self.allocation, ALLOCATIONS)
        store("min_tokens_per_frame", options.check_min_tokens(_fail, self.min_tokens_per_frame))
        options.check_choice(_fail, "layout", self.layout, LAYOUTS)
        options.check_choice(_fail, "backend", self.backend, BACKENDS, allow_none=True)
        options.check_choice(_fail, "method", self.method, METHODS)
        options.check_choice(_fail, "merge", self.merge, MERGES)
        store("num_neighbors", options.check_num_neighbors(_fail, self.num_neighbors))


@dataclasses.dataclass
class KVTPStats:
    """Accounting of one call (per sample and per video; plain Python numbers).

    Attributes:
        sequence_lengths_before: [B] tokens the LLM would see unpruned (non-padding).
        sequence_lengths_after: [B] tokens it sees after KVTP.
        video_tokens_before: [V] placeholder tokens of each video (its unpruned block).
        video_tokens_after: [V] kept tokens + newlines of each video.
        kept_per_frame: [V][T_v] tokens kept in each frame.
        sample_to_video: [B] video of each sample, -1 for none.
        prefill_flops_before / prefill_flops_after: LLM prefill FLOPs summed over the
            samples (:func:`~kvtp_kernels.integrations.flops.prefill_flops`, causal,
            no lm_head), or None when no config was given.
    """

    sequence_lengths_before: list[int]
    sequence_lengths_after: list[int]
    video_tokens_before: list[int]
    video_tokens_after: list[int]
    kept_per_frame: list[list[int]]
    sample_to_video: list[int]
    prefill_flops_before: int | None = None
    prefill_flops_after: int | None = None

    @property
    def tokens_before(self) -> int:
        return sum(self.sequence_lengths_before)

    @property
    def tokens_after(self) -> int:
        return sum(self.sequence_lengths_after)

    @property
    def token_ratio(self) -> float:
        """LLM tokens after / before, whole batch."""
        return self.tokens_after / max(self.tokens_before, 1)

    @property
    def video_token_ratio(self) -> float:
        """Video tokens (with newlines) after / before, whole batch."""
        return sum(self.video_tokens_after) / max(sum(self.video_tokens_before), 1)

    @property
    def flops_ratio(self) -> float | None:
        """LLM prefill FLOPs after / before, or None without a config."""
        if self.prefill_flops_before is None or self.prefill_flops_after is None:
            return None
        return self.prefill_flops_after / max(self.prefill_flops_before, 1)

    def summary(self) -> str:
        text = (f"KVTP: {self.tokens_before} -> {self.tokens_after} LLM tokens ({self.token_ratio:.1%}); "
                f"video tokens {sum(self.video_tokens_before)} -> {sum(self.video_tokens_after)}")
        if self.flops_ratio is not None:
            text += (f"; prefill {self.prefill_flops_before / 1e9:.3g} -> {self.prefill_flops_after / 1e9:.3g} "
                     f"GFLOPs ({self.flops_ratio:.1%})")
        return text


class VideoPlacement(NamedTuple):
    """Where the videos sit in the batch (host lists, from :func:`locate_videos`).

    Attributes:
        sample_to_video: [B] video index of each sample, -1 for a sample without one.
        span_lengths: [B] placeholder positions of each sample (0 without video).
        text_lengths: [B] non-padding positions of each sample (placeholders included).
        first_positions: [B] index of each sample's first non-padding position.
    """

    sample_to_video: list[int]
    span_lengths: list[int]
    text_lengths: list[int]
    first_positions: list[int]


class VideoPruneResult(NamedTuple):
    """What :func:`prune_video_inputs` returns.

    Attributes:
        inputs_embeds: [B, L', D], dtype of the input embeddings; padding rows are zeros.
        attention_mask: [B, L'], 1 on tokens, 0 on padding (dtype of the given mask, int64 without).
        position_ids: int64 [B, L']: 0, 1, ... over each sample's tokens, 0 on padding.
        labels: [B, L'] text labels moved with their rows (``ignore_index`` on video,
            newline and padding rows), or None.
        pruned: the :class:`~kvtp_kernels.api.PrunedTokens` of all videos ([V, T_max]
            frame counts; shorter videos have trailing zero-count frames).
        packed: the :class:`~kvtp_kernels.pack.PackedInputs` (``source_index`` maps every
            output row back to its text position / video row; see ``kvtp_kernels.unpack``).
        stats: :class:`KVTPStats`.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    pruned: PrunedTokens
    packed: PackedInputs
    stats: KVTPStats


# ----------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------
def placeholder_length(num_frames: int, tokens_per_frame: int, layout: str, grid_width: int | None = None) -> int:
    """Tokens of an unpruned video block: T*N plus the layout's newlines.

    "video": T*N + 1; "frame": T*(N + 1); "grid": T*(N + N/W) (one per grid row);
    "none": T*N.
    """
    T, N = num_frames, tokens_per_frame
    if layout == "video":
        return T * N + 1
    if layout == "frame":
        return T * (N + 1)
    if layout == "grid":
        if not grid_width:
            _fail("grid_width", "an int >= 1 for layout='grid'", repr(grid_width))
        return T * (N + -(-N // grid_width))
    return T * N


def infer_padding_side(attention_mask: torch.Tensor | None) -> str:
    """"left" when every row ends with a token (left padding or none), "right" when every row starts with one.

    Raises:
        ValueError: a mask padded on both sides (or with a row that is all padding).
    """
    if attention_mask is None or attention_mask.shape[1] == 0:
        return "left"
    mask = attention_mask.ne(0)
    ends, starts = mask[:, -1].all(), mask[:, 0].all()
    if bool(ends):
        return "left"
    if bool(starts):
        return "right"
    _fail("attention_mask", "left- or right-padded (every row ending, or every row starting, with a token)",
          "rows padded on both sides")


def locate_videos(video_mask: torch.Tensor, attention_mask: torch.Tensor | None, num_videos: int) -> VideoPlacement:
    """Map samples to videos and check every placeholder span (one host sync).

    Video v belongs to the v-th sample (in batch order) that has placeholder
    positions. Each sample has at most one contiguous span, inside its attention mask.

    Args:
        video_mask: [B, L] bool/int, nonzero at the video placeholder positions.
        attention_mask: [B, L] or None (every position is a token).
        num_videos: V, videos given with the batch.
    """
    if not isinstance(video_mask, torch.Tensor) or video_mask.dim() != 2:
        _fail("video_mask", "a [B, L] tensor", _describe(video_mask))
    B, L = video_mask.shape
    vmask = video_mask.ne(0)
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, L):
            _fail("attention_mask", f"a 2-D [B, L] = [{B}, {L}] tensor (4-D masks are not supported with video)",
                  _describe(attention_mask))
        tmask = attention_mask.to(vmask.device).ne(0)
    else:
        tmask = torch.ones_like(vmask)
    starts = vmask.clone()
    starts[:, 1:] &= ~vmask[:, :-1]
    outside = (vmask & ~tmask).any(1)
    first = tmask.to(torch.uint8).argmax(1)
    table = torch.stack([vmask.sum(1), starts.sum(1), tmask.sum(1), outside.long(), first], 1)
    rows = table.tolist()  # the one host sync
    sample_to_video, v = [], 0
    for b, (count, runs, _text, out, _first) in enumerate(rows):
        if runs > 1:
            _fail("input_ids", "at most one video placeholder span per sample (KVTP prunes one video per sample)",
                  f"{runs} separate spans in sample {b}")
        if out:
            _fail("attention_mask", "1 on every video placeholder position", f"placeholders masked out in sample {b}")
        sample_to_video.append(v if count else -1)
        v += 1 if count else 0
    if v != num_videos:
        _fail("input_ids", f"one video placeholder span per video ({num_videos} videos given)",
              f"{v} samples with video placeholders")
    return VideoPlacement(sample_to_video, [r[0] for r in rows], [r[2] for r in rows], [r[4] for r in rows])


def _channel_values(values: Sequence[float], name: str, device: torch.device) -> torch.Tensor:
    """One or three numbers (RGB) -> float32 [3, 1, 1] on ``device``."""
    t = torch.as_tensor(values, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(3)
    if t.numel() != 3:
        _fail(name, "one or three numbers (RGB)", repr(values))
    return t.reshape(3, 1, 1)


def renormalize_pixels(pixel_values: torch.Tensor, source_mean: Sequence[float], source_std: Sequence[float],
                       target_mean: Sequence[float], target_std: Sequence[float]) -> torch.Tensor:
    """Pixels normalised for one vision tower -> normalised for another (same size).

    ``x01 = x * source_std + source_mean`` (back to [0, 1]), then
    ``(x01 - target_mean) / target_std``. Channels are dimension -3: [..., 3, H, W].
    """
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() < 3 or pixel_values.shape[-3] != 3:
        _fail("pixel_values", "a float [..., 3, H, W] tensor", _describe(pixel_values))

    channel = functools.partial(_channel_values, device=pixel_values.device)
    x = pixel_values.float() * channel(source_std, "source_std") + channel(source_mean, "source_mean")
    return (x - channel(target_mean, "target_mean")) / channel(target_std, "target_std")


def video_pixel_values(frames: torch.Tensor, image_size: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                       std: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """Processor-free video preprocessing: uint8 RGB frames -> normalised pixel values for a vision tower.

    Each frame is resized to ``image_size`` x ``image_size`` (bicubic with
    antialiasing, rounded to whole grey levels like PIL's uint8 output; the aspect
    ratio is not kept, like HF's LLaVA-OneVision video processor), scaled to [0, 1]
    and normalised with ``mean`` / ``std`` (SigLIP's 0.5 / 0.5 by default; pass the
    checkpoint's processor values).

    Args:
        frames: uint8 [T, H, W, 3] (e.g. from :func:`kvtp_kernels.load_video`) or [V, T, H, W, 3].

    Returns:
        float32 [T, 3, S, S] (or [V, T, 3, S, S]); add a leading video dimension for
        ``pixel_values_videos``.
    """
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.dim() not in (4, 5) or frames.shape[-1] != 3 or frames.numel() == 0:
        _fail("frames", "non-empty uint8 RGB frames [T, H, W, 3] or [V, T, H, W, 3]", _describe(frames))
    image_size = as_int(_fail, "image_size", image_size, what="an int >= 1")
    if image_size < 1:
        _fail("image_size", "an int >= 1", repr(image_size))
    lead = frames.shape[:-3]
    channel = functools.partial(_channel_values, device=frames.device)
    x = frames_to_pixels(frames.reshape(-1, *frames.shape[-3:]), image_size, channel(mean, "mean"),
                         channel(std, "std"))
    return x.reshape(*lead, 3, image_size, image_size)


def _per_video(arg: str, value: Any, num_videos: int) -> list:
    """A [V, ...] tensor or a sequence of V items -> a list of V items."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != num_videos:
            _fail(arg, f"a [V, ...] tensor or a sequence of V = {num_videos} entries (one per video)",
                  _describe(value))
        return list(value.unbind(0))
    if isinstance(value, (list, tuple)):
        if len(value) != num_videos:
            _fail(arg, f"one entry per video (V = {num_videos})", f"{len(value)} entries")
        return list(value)
    _fail(arg, "a tensor or a sequence of per-video tensors", _describe(value))


def predictor_scores(
    predictor: Any,
    frames: Sequence[torch.Tensor],
    queries: Sequence[Any],
    *,
    token_grid: tuple[int, int] | None = None,
    token_pool: str | None = None,
    use_fusion_head: bool | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Frame scores and token importance of V videos from a :class:`~kvtp_kernels.predictor.FrameRelevancePredictor`.

    Videos with the same frame count share one predictor pass (no autograd).

    Args:
        predictor: the predictor.
        frames: V entries, each uint8 RGB frames [T_v, H, W, 3] (any size: the
            predictor resizes them) or the predictor's pixel values float
            [T_v, 3, S, S] (S = ``predictor.image_size``).
        queries: V queries (strings, which need the predictor's tokenizer, or token ids).
        token_grid: the LLM's token grid (h, w) for the token importance (None: the
            predictor's config).
        token_pool: how the patch attention is resampled to it (None: the config's).

    Returns:
        ``(scores, token_scores)``: V float64 [T_v] frame logits; V float32
        [T_v, h*w] token importances (None when the predictor gives none).

    Raises:
        ValueError: pixel values whose size is not the predictor's image size, or
            frames that are neither uint8 [T, H, W, 3] nor float [T, 3, S, S].
    """
    V = len(frames)
    if len(queries) != V:
        _fail("queries", f"one query per video (V = {V})", f"{len(queries)}")
    S = int(predictor.image_size)
    frames = [f if isinstance(f, torch.Tensor) else torch.as_tensor(f) for f in frames]
    pixels = []
    for v, f in enumerate(frames):
        if f.dtype == torch.uint8 and f.dim() == 4 and f.shape[-1] == 3:
            pixels.append(None)  # preprocessed per group below
        elif f.is_floating_point() and f.dim() == 4 and f.shape[1] == 3:
            if tuple(f.shape[-2:]) != (S, S):
                _fail(f"kvtp_frames[{v}]", f"the predictor's pixel values [T, 3, {S}, {S}] (its image_size is {S}), "
                      "or raw uint8 frames [T, H, W, 3] that the predictor resizes", _describe(f))
            pixels.append(f)
        else:
            _fail(f"kvtp_frames[{v}]", "uint8 RGB frames [T, H, W, 3] or the predictor's float pixel values "
                  f"[T, 3, {S}, {S}]", _describe(f))
    groups: dict[int, list[int]] = {}
    for v, f in enumerate(frames):
        T = f.shape[0]
        if T == 0:
            _fail(f"kvtp_frames[{v}]", "at least one frame", _describe(f))
        groups.setdefault(T, []).append(v)
    scores: list[Any] = [None] * V
    importance: list[Any] = [None] * V
    with torch.no_grad():
        for ids in groups.values():
            px = [predictor.preprocess(frames[v]) if pixels[v] is None else pixels[v].to(predictor.device)
                  for v in ids]
            out = predictor(torch.stack(px), [queries[v] for v in ids], token_grid=token_grid,
                            token_pool=token_pool, use_fusion_head=use_fusion_head)
            for j, v in enumerate(ids):
                scores[v] = out.scores[j]
                importance[v] = out.token_importance[j] if out.token_importance is not None else None
    return scores, (importance if all(t is not None for t in importance) else None)


# ----------------------------------------------------------------------------------
# Pruning several videos (possibly of different lengths) into one PrunedTokens
# ----------------------------------------------------------------------------------
def _prune_videos(features: list[torch.Tensor], scores: list | None, token_scores: list | None,
                  settings: KVTPSettings) -> tuple[PrunedTokens, int]:
    """-> (PrunedTokens over [V, T_max, N] indices, T_max)."""
    V = len(features)
    N = features[0].shape[1]
    groups: dict[int, list[int]] = {}
    for v, f in enumerate(features):
        groups.setdefault(f.shape[0], []).append(v)
    T_max = max(groups)
    results = []
    for T, ids in groups.items():
        tokens = torch.stack([features[v] for v in ids])
        device = tokens.device
        if scores is None:
            s = torch.zeros((len(ids), T), dtype=torch.float32, device=device)  # uniform frame probabilities
        else:
            s = torch.stack([scores[v].to(device) for v in ids])
        ts = None  # tome and random choose tokens without scores
        if token_scores is not None and settings.method in ("topk", "prumerge"):
            ts = torch.stack([token_scores[v].to(device) for v in ids])
        merge_kw = dict(merge=settings.merge, num_neighbors=settings.num_neighbors) if settings.method == "prumerge" \
            else {}
        results.append((ids, T, prune(tokens, s, settings.budget, token_scores=ts,
                                      temperature=settings.temperature, allocation=settings.allocation,
                                      min_tokens_per_frame=settings.min_tokens_per_frame,
                                      method=settings.method, backend=settings.backend, **merge_kw)))
    if len(results) == 1:
        return results[0][2], T_max
    # Mixed lengths: reorder rows video by video and re-express indices in [V, T_max, N].
    device = features[0].device
    pieces: list[Any] = [None] * V
    for ids, T, out in results:
        cu = out.cu_seqlens.tolist()  # host offsets of each video's rows (mixed lengths only)
        for j, v in enumerate(ids):
            lo, hi = cu[j], cu[j + 1]
            local = out.indices[lo:hi] - j * T * N
            counts = torch.zeros(T_max, dtype=torch.int32, device=device)
            counts[:T] = out.frame_counts[j]
            pieces[v] = (out.tokens[lo:hi], local + v * T_max * N, counts, hi - lo)
    tokens = torch.cat([p[0] for p in pieces])
    indices = torch.cat([p[1] for p in pieces])
    frame_counts = torch.stack([p[2] for p in pieces])
    cu_seqlens, frame_cu = offsets_from_counts(frame_counts)
    return PrunedTokens(tokens, indices, frame_counts, cu_seqlens, frame_cu, max(p[3] for p in pieces)), T_max


# ----------------------------------------------------------------------------------
# The core
# ----------------------------------------------------------------------------------
def prune_video_inputs(
    inputs_embeds: torch.Tensor,
    video_mask: torch.Tensor,
    video_features: torch.Tensor | Sequence[torch.Tensor],
    *,
    attention_mask: torch.Tensor | None = None,
    scores: torch.Tensor | Sequence[torch.Tensor] | None = None,
    token_scores: torch.Tensor | Sequence[torch.Tensor] | None = None,
    settings: KVTPSettings | None = None,
    newline: torch.Tensor | None = None,
    grid_width: int | None = None,
    placeholders_per_video: Sequence[int] | None = None,
    padding_side: str | None = None,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    placement: VideoPlacement | None = None,
    flops_config: Any = None,
) -> VideoPruneResult:
    """Replace each sample's video placeholder span by its KVTP-pruned video.

    Args:
        inputs_embeds: [B, L, D] embedded prompts (float32/16, bfloat16); text rows
            (image placeholders included) are copied bit for bit.
        video_mask: [B, L] bool/int, nonzero on the video placeholder positions
            (one contiguous span per sample with a video, none otherwise).
        video_features: [V, T, N, D] or a sequence of V [T_v, N, D] tensors (videos
            of different lengths): the projected tokens of every frame, without
            newline rows. Cast to the dtype/device of ``inputs_embeds`` (as HF's
            ``masked_scatter`` path does).
        attention_mask: [B, L] (1 = token) or None (no padding).
        scores: frame relevance logits, [V, T] or V tensors [T_v]; None = uniform
            (every frame gets K/T tokens by largest remainder: plain per-frame top-k).
        token_scores: within-frame importance, [V, T, N] or V [T_v, N]; None =
            distinctiveness (``kvtp_kernels.prune``'s default).
        settings: :class:`KVTPSettings` (budget, temperature, allocation, m, layout, backend).
        newline: [D] newline embedding; required unless ``settings.layout == "none"``.
        grid_width: W of the N = H x W token grid (layout "grid").
        placeholders_per_video: expected span length of each video (V ints); None:
            :func:`placeholder_length` of the layout. Checked per sample.
        padding_side: "left" / "right" for the output; None: that of ``attention_mask``.
        labels: [B, L] optional; moved with the text rows.
        placement: a :class:`VideoPlacement` already computed (skips the sync).
        flops_config: an LLM config for the FLOPs accounting (None: no FLOPs).

    Returns:
        :class:`VideoPruneResult`.

    Raises:
        ValueError: naming the argument: bad shapes, a placeholder count that does
            not match its video, several spans in one sample, a layout "frame" with
            videos of different lengths, a budget larger than a video.
    """
    settings = settings if settings is not None else KVTPSettings()
    if not isinstance(settings, KVTPSettings):
        _fail("settings", "a KVTPSettings", _describe(settings))
    if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3 or not inputs_embeds.is_floating_point():
        _fail("inputs_embeds", "a float [B, L, D] tensor", _describe(inputs_embeds))
    B, L, D = inputs_embeds.shape
    dtype, device = inputs_embeds.dtype, inputs_embeds.device
    if not isinstance(video_mask, torch.Tensor) or tuple(video_mask.shape) != (B, L):
        _fail("video_mask", f"a [B, L] = [{B}, {L}] tensor", _describe(video_mask))
    video_mask = video_mask.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)

    # Video features -> a list of [T_v, N, D] in the embeddings' dtype.
    if isinstance(video_features, torch.Tensor):
        if video_features.dim() != 4:
            _fail("video_features", "a [V, T, N, D] tensor or a sequence of [T_v, N, D]", _describe(video_features))
        features = list(video_features.unbind(0))
    elif isinstance(video_features, (list, tuple)) and len(video_features) > 0:
        features = list(video_features)
    else:
        _fail("video_features", "a [V, T, N, D] tensor or a non-empty sequence of [T_v, N, D]",
              _describe(video_features))
    V = len(features)
    N = None
    for v, f in enumerate(features):
        if not isinstance(f, torch.Tensor) or f.dim() != 3 or f.shape[-1] != D or not f.is_floating_point() or (
                N is not None and f.shape[1] != N) or min(f.shape) == 0:
            _fail(f"video_features[{v}]", f"a non-empty float [T_v, N, D = {D}] tensor"
                  + (f" with N = {N}" if N is not None else ""), _describe(f))
        N = f.shape[1]
        features[v] = f.to(device=device, dtype=dtype)
    frame_counts = [f.shape[0] for f in features]
    layout = settings.layout
    if layout == "frame" and len(set(frame_counts)) > 1:
        _fail("layout", "'video', 'grid' or 'none' for videos of different lengths (the 'frame' layout writes "
              "the same number of newlines for every video)", f"'frame' with frame counts {frame_counts}")
    if layout == "grid":
        grid_width = as_int(_fail, "grid_width", grid_width, what="an int >= 1 for layout='grid'")
        if grid_width < 1:
            _fail("grid_width", "an int >= 1 for layout='grid'", repr(grid_width))
    if layout != "none" and (not isinstance(newline, torch.Tensor) or newline.numel() != D):
        _fail("newline", f"a [D = {D}] tensor for layout={layout!r}", _describe(newline))
    newline = newline.reshape(D).to(device=device, dtype=dtype) if layout != "none" else None

    score_list = None if scores is None else _per_video("scores", scores, V)
    token_list = None if token_scores is None else _per_video("token_scores", token_scores, V)
    for v, T in enumerate(frame_counts):
        if score_list is not None and (not isinstance(score_list[v], torch.Tensor)
                                       or tuple(score_list[v].shape) != (T,)):
            _fail(f"scores[{v}]", f"a [T_v = {T}] tensor (one score per frame of video {v})",
                  _describe(score_list[v]))
        if token_list is not None and (not isinstance(token_list[v], torch.Tensor)
                                       or tuple(token_list[v].shape) != (T, N)):
            _fail(f"token_scores[{v}]", f"a [T_v, N] = [{T}, {N}] tensor (video {v})", _describe(token_list[v]))

    if placement is None:
        placement = locate_videos(video_mask, attention_mask, V)
    expected = ([placeholder_length(T, N, layout, grid_width) for T in frame_counts]
                if placeholders_per_video is None else list(placeholders_per_video))
    if len(expected) != V:
        _fail("placeholders_per_video", f"V = {V} ints", repr(expected))
    for b, v in enumerate(placement.sample_to_video):
        if v >= 0 and placement.span_lengths[b] != expected[v]:
            _fail("input_ids", f"{expected[v]} video placeholder tokens in sample {b} (its video {v} has "
                  f"T = {frame_counts[v]} frames x N = {N} tokens)", f"{placement.span_lengths[b]} placeholders")
    if padding_side is None:
        padding_side = infer_padding_side(attention_mask)

    pruned, T_max = _prune_videos(features, score_list, token_list, settings)
    packed = pack_multimodal(inputs_embeds, attention_mask, video_mask, pruned, newline=newline, layout=layout,
                             grid_width=grid_width, tokens_per_frame=N, sample_to_video=placement.sample_to_video,
                             output="padded", padding_side=padding_side)

    new_labels = None
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (B, L):
            _fail("labels", f"a [B, L] = [{B}, {L}] tensor", _describe(labels))
        src = packed.source_index
        is_text = (src >= 0) & (src < B * L)
        moved = labels.to(device).reshape(-1).index_select(0, src.clamp(0, B * L - 1).reshape(-1)).view_as(src)
        new_labels = torch.where(is_text, moved, torch.full_like(moved, ignore_index))

    # Accounting (host numbers; one small read).
    after = packed.cu_seqlens.diff().tolist()
    counts = pruned.frame_counts.tolist()
    before = placement.text_lengths
    video_before, video_after = [0] * V, [0] * V
    for b, v in enumerate(placement.sample_to_video):
        if v >= 0:
            video_before[v] = placement.span_lengths[b]
            video_after[v] = after[b] - (before[b] - placement.span_lengths[b])
    stats = KVTPStats(list(before), after, video_before, video_after, [c[:T] for c, T in zip(counts, frame_counts)],
                      list(placement.sample_to_video))
    if flops_config is not None:
        from .flops import prefill_flops

        stats.prefill_flops_before = sum(prefill_flops(flops_config, n) for n in before)
        stats.prefill_flops_after = sum(prefill_flops(flops_config, n) for n in after)
    return VideoPruneResult(packed.embeds, packed.attention_mask, packed.position_ids, new_labels, pruned, packed,
                            stats)
