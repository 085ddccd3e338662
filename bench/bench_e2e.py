"""End to end: prefill of a tiny random LLaVA-Video with and without KVTP, and LLaVA-Video-7B / 72B FLOPs.

==========  ========  =========================================================================
provider    role      what is timed
==========  ========  =========================================================================
full        baseline  the unpatched model's prefill: one ``forward`` with ``input_ids``
                      (``T*N + 1`` video placeholders), ``attention_mask`` and
                      ``pixel_values_videos``; vision tower, projector, pooling, the whole
                      sequence through the LLM; ``use_cache=False`` (every call starts from
                      nothing), ``logits_to_keep=1`` (the last position's logits, as
                      ``generate``'s prefill)
kvtp        ours      the same call on the same model after ``apply_kvtp(model, budget=beta)``
                      (no predictor: uniform frame scores, per-frame top-k by
                      distinctiveness, HF's one newline per video): vision path, prune,
                      pack, then ``K + 1 + P`` tokens through the LLM
==========  ========  =========================================================================

The model (built once per process and device, seed 0, no download): an HF
``LlavaOnevisionForConditionalGeneration`` with a Qwen2 text model (4 layers, hidden
256, MLP 1024, 8 query / 2 KV heads, vocab 1024) and a SigLIP vision tower (2 layers,
hidden 64, 112 px frames in 8 px patches: 14 x 14, pooled by HF to 7 x 7 = 49 tokens per
frame). Inputs: B prompts of P text tokens (16 before the video, the rest after it; random
ids) around ``T*N + 1`` video placeholders, random pixels; seeded by the point. The LLM is
large enough for its prefill, and so the call's time, to follow the sequence length.

Correctness before anything is timed (``make_case`` and ``check``):

- ``apply_kvtp(budget=1.0)``: the logits of every position equal the unpatched model's
  (atol 1e-5) and the sequence length is the unpatched one;
- ``full``: the logits equal the unpatched model's, run in ``make_case``, and the LLM gets
  ``P + T*N + 1`` tokens;
- ``kvtp`` at beta: the LLM gets ``P + K + 1`` tokens (``K = floor(beta*T*N + 1/2)``,
  read by a hook on the language model), ``model.kvtp_stats`` counts ``K + 1`` video
  tokens, and the last logits equal (atol 1e-5) those of the unpatched model fed the
  sequence built independently: the model's own video features, pruned by
  ``kvtp_kernels.prune(..., backend="reference")``, spliced with ``torch.cat``.

Per row (``metrics``, the CSV's ``metrics`` column): the LLM's sequence length, video tokens
before / after (newline included), the LLM prefill FLOPs of that length
(:func:`kvtp_kernels.integrations.flops.prefill_flops` with the tiny text config: matmuls,
causal, no lm_head) and the tiny vision tower's FLOPs (the same for both providers).

The report also prints a FLOPs table (computed, nothing timed): LLaVA-Video-7B (Qwen2-7B)
and -72B (Qwen2-72B), 64 frames x 196 tokens + 1 newline, a 64-token prompt, beta in {0.1,
0.2, 0.3}: sequence lengths, LLM prefill TFLOPs before / after and their ratio, and the
ratio with the SigLIP-so400m tower over the 64 frames (unchanged by pruning) added to
both sides, next to the paper's ~36% (7B) / ~23% (72B) at beta = 0.2.

Quick: B=1, T=16, P=64, beta=0.2. Full: beta in {0.1, 0.2, 0.3} x T in {16, 32}.
Run ``python -m bench.bench_e2e --help``; ``python -m bench.run`` runs this with every other
registered benchmark.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import zlib
from collections.abc import Sequence
from typing import Any

import torch

import kvtp_kernels
from kvtp_kernels.integrations import _compat
from kvtp_kernels.integrations.flops import decoder_shape, kvtp_prefill_flops, prefill_flops, vision_tower_flops

from .core import Case, MismatchError, Point, Provider, Result, RunConfig, dtype_name, register_module
from .harness import main
from .measure import Environment
from .report import format_table, ms, noise_note

#: The quick point: one video of 16 frames x 7 x 7 pooled tokens, a 64-token prompt, the paper's beta.
HEADLINE = {"B": 1, "T": 16, "N": 49, "P": 64, "beta": 0.2}
#: --full: every combination.
SWEEP = {"T": (16, 32), "beta": (0.1, 0.2, 0.3)}
#: The tiny model runs in float32 (the 1e-5 checks are float32 tolerances).
DTYPES = (torch.float32,)
ATOL = 1e-5
SEED = 0
#: Text tokens before the video placeholders (BOS included); the rest of the prompt follows the video.
TEXT_BEFORE = 16

VOCAB = 1024
PAD, EOS, BOS = 0, 1, 2
IMAGE_TOKEN, VIDEO_TOKEN = VOCAB - 2, VOCAB - 1
#: Tiny Qwen2 text model (head_dim 32, grouped-query attention 8 / 2).
TINY_TEXT = {"vocab_size": VOCAB, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
             "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 8192,
             "pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": BOS}
#: Tiny SigLIP: 112 / 8 = 14 x 14 patches, which HF's LlavaOnevision pools (bilinear, 2x) to 7 x 7.
TINY_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 112, "patch_size": 8}

#: The FLOPs table: LLaVA-Video's LLMs (config.json values of Qwen2-7B / Qwen2-72B) and vision tower.
PAPER_MODELS = (
    ("LLaVA-Video-7B", {"num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064}, "~36%"),
    ("LLaVA-Video-72B", {"num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 29568,
                         "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 152064}, "~23%"),
)
SIGLIP_SO400M = {"num_hidden_layers": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16,
                 "image_size": 384, "patch_size": 14}
PAPER_FRAMES, PAPER_TOKENS, PAPER_PROMPT = 64, 196, 64
PAPER_BETAS = (0.1, 0.2, 0.3)
#: beta at which the paper quotes its ratios (METHOD.md section 5).
PAPER_BETA = 0.2


def transformers_problem() -> str | None:
    """Why the tiny model cannot be built here (None: it can)."""
    try:
        import transformers
    except ImportError:
        return "transformers is not installed (pip install 'kvtp-kernels[hf]')"
    version = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())
    if version < (5, 0):
        return f"apply_kvtp needs transformers >= 5.0; found {transformers.__version__}"
    return None


def make_point(dtype: torch.dtype = torch.float32, **shape: Any) -> Point:
    sizes = {**HEADLINE, **shape}
    beta = sizes.pop("beta")
    return Point.make(dtype, sizes, beta=beta)


def is_headline(point: Point) -> bool:
    return all(point[k] == v for k, v in HEADLINE.items())


def kept_tokens(point: Point) -> int:
    """K = floor(beta*T*N + 1/2) per video (kvtp_kernels.prune's exact mode)."""
    return math.floor(point["beta"] * point["T"] * point["N"] + 0.5)


def sequence_lengths(point: Point) -> tuple[int, int]:
    """LLM tokens per sample (unpruned, pruned): the prompt, the video, HF's one newline."""
    return point["P"] + point["T"] * point["N"] + 1, point["P"] + kept_tokens(point) + 1


# ----------------------------------------------------------------------------------
# Points
# ----------------------------------------------------------------------------------
def points(config: RunConfig) -> list[Point]:
    if transformers_problem() is not None:
        return []  # the report says why
    dtypes = [d for d in (config.dtypes or DTYPES) if d in DTYPES]
    if config.full:
        return [make_point(dtype, T=T, beta=beta) for dtype in dtypes
                for T, beta in itertools.product(SWEEP["T"], SWEEP["beta"])]
    return [make_point(dtype) for dtype in dtypes]


# ----------------------------------------------------------------------------------
# The tiny model (one per process and device) and its state
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class TinyModel:
    """The cached model, whether apply_kvtp is on it (and at which budget), and what its LLM last received."""

    model: Any
    budget: float | None = None  # None: unpatched
    llm_tokens: int | None = None  # sequence length of the language model's last call (a forward pre-hook)
    keep_logits: bool = True  # forward accepts logits_to_keep

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def tokens_per_frame(self) -> int:
        vision = self.config.vision_config
        return math.ceil((vision.image_size // vision.patch_size) / 2) ** 2

    def use(self, budget: float | None) -> Any:
        """The model unpatched (``budget=None``) or with ``apply_kvtp(budget=budget)``; a no-op when it already is."""
        from kvtp_kernels.integrations import apply_kvtp, is_kvtp_applied, remove_kvtp

        if budget == self.budget and is_kvtp_applied(self.model) == (budget is not None):
            return self.model
        if is_kvtp_applied(self.model):
            remove_kvtp(self.model)
        self.budget = None
        if budget is not None:
            apply_kvtp(self.model, budget=budget)
            self.budget = budget
        return self.model

    def prefill(self, inputs: dict[str, Any], budget: float | None, *, all_logits: bool = False) -> PrefillOutput:
        """One forward from nothing (no cache) with the video; the logits of the last position (or of all)."""
        model = self.use(budget)
        keep = {} if all_logits or not self.keep_logits else {"logits_to_keep": 1}
        self.llm_tokens = None  # set again by the hook when the language model runs
        with torch.inference_mode():
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        pixel_values_videos=inputs["pixel_values_videos"], use_cache=False, **keep)
        logits = out.logits if all_logits else out.logits[:, -1:]
        return PrefillOutput(logits, self.llm_tokens, model.kvtp_stats if budget is not None else None)


class PrefillOutput:
    """What a provider returns: logits [B, 1 or L, V], the LLM's sequence length, and KVTP's accounting."""

    __slots__ = ("logits", "llm_tokens", "stats")

    def __init__(self, logits: torch.Tensor, llm_tokens: int | None, stats: Any):
        self.logits, self.llm_tokens, self.stats = logits, llm_tokens, stats


_MODELS: dict[tuple[str, torch.dtype], TinyModel] = {}


def tiny_config() -> Any:
    """kvtp_kernels.tiny_models' LlavaOnevision with the larger text and vision above."""
    from kvtp_kernels.tiny_models import tiny_llava_config

    return tiny_llava_config(text=TINY_TEXT, vision=TINY_VISION, image_token_id=IMAGE_TOKEN,
                             video_token_id=VIDEO_TOKEN)


def tiny_model(device: torch.device, dtype: torch.dtype = torch.float32) -> TinyModel:
    """The tiny LlavaOnevision on ``device`` (built once per process; seed 0, the global RNG left as it was)."""
    key = (str(device), dtype)
    if key not in _MODELS:
        import transformers

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = transformers.LlavaOnevisionForConditionalGeneration(tiny_config())
        model = model.to(device=device, dtype=dtype).eval()
        tiny = TinyModel(model, keep_logits="logits_to_keep" in inspect.signature(type(model).forward).parameters)

        def record(_module, args, kwargs):
            x = kwargs.get("inputs_embeds")
            if x is None:
                x = kwargs.get("input_ids", args[0] if args else None)
            tiny.llm_tokens = None if x is None else int(x.shape[1])

        model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
        _MODELS[key] = tiny
    return _MODELS[key]


def release() -> None:
    """remove_kvtp from every cached model (the end of a run, or of a test)."""
    for tiny in _MODELS.values():
        tiny.use(None)


# ----------------------------------------------------------------------------------
# Inputs and the oracle
# ----------------------------------------------------------------------------------
def make_inputs(point: Point, device: torch.device, tokens_per_frame: int, image_size: int) -> dict[str, Any]:
    """B prompts: BOS + 15 text ids, T*N + 1 <video> ids, P - 16 text ids; random pixels (seeded by the point)."""
    B, T, N, P = (point[k] for k in "BTNP")
    if N != tokens_per_frame:
        raise ValueError(f"bench e2e: N = {N}, but the tiny model pools each frame to {tokens_per_frame} tokens")
    if P <= TEXT_BEFORE:
        raise ValueError(f"bench e2e: P = {P} must exceed the {TEXT_BEFORE} text tokens before the video")
    gen = torch.Generator().manual_seed(zlib.crc32(point.label.encode()))
    words = torch.randint(3, IMAGE_TOKEN, (B, P - 1), generator=gen)
    video = torch.full((B, T * N + 1), VIDEO_TOKEN)
    bos = torch.full((B, 1), BOS)
    input_ids = torch.cat([bos, words[:, : TEXT_BEFORE - 1], video, words[:, TEXT_BEFORE - 1:]], dim=1)
    pixels = torch.randn(B, T, 3, image_size, image_size, generator=gen)
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device),
            "pixel_values_videos": pixels.to(device=device, dtype=point.dtype)}


def reference_pruned_embeds(tiny: TinyModel, inputs: dict[str, Any], beta: float) -> torch.Tensor:
    """The pruned LLM input built without the integration: the model's own video features, pruned by
    ``kvtp_kernels.prune(backend="reference")`` (uniform frame scores, distinctiveness), ``torch.cat`` per sample."""
    model = tiny.use(None)
    ids = inputs["input_ids"]
    B = ids.shape[0]
    N = tiny.tokens_per_frame
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(ids)
        pooled = _compat.get_video_features(model, inputs["pixel_values_videos"],
                                            return_dict=True).pooler_output  # [B, T*N + 1, D]: HF's newline last
    T = inputs["pixel_values_videos"].shape[1]
    features = pooled[:, : T * N].reshape(B, T, N, -1)
    pruned = kvtp_kernels.prune(features, torch.zeros(B, T, device=features.device), beta, backend="reference")
    cu = pruned.cu_seqlens.tolist()
    newline = model.model.image_newline.detach().to(embeds.dtype)[None]
    rows = []
    for b in range(B):
        span = (ids[b] == VIDEO_TOKEN).nonzero().squeeze(1)
        first, last = int(span[0]), int(span[-1])
        rows.append(torch.cat([embeds[b, :first], pruned.tokens[cu[b]:cu[b + 1]].to(embeds.dtype), newline,
                               embeds[b, last + 1:]]))
    return torch.stack(rows)


@dataclasses.dataclass
class Expected:
    full_logits: torch.Tensor  # [B, 1, V] of the unpatched model
    kvtp_logits: torch.Tensor  # [B, 1, V] of the unpatched model on the reference-pruned sequence
    full_tokens: int
    kvtp_tokens: int
    kept: int  # K


def _assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    if actual.shape != expected.shape:
        raise MismatchError(f"bench e2e: {name}: logits of shape {tuple(actual.shape)}, expected "
                            f"{tuple(expected.shape)} ({what})")
    err = (actual.float() - expected.float()).abs().max().item()
    if not err <= ATOL:
        raise MismatchError(f"bench e2e: {name}: logits differ by {err:.3g} > {ATOL} ({what})")


def _count(name: str, got: Any, want: Any, what: str) -> None:
    if got != want:
        raise MismatchError(f"bench e2e: {name}: {what} is {got}, expected {want}")


def make_case(point: Point, device: torch.device) -> Case:
    tiny = tiny_model(device, point.dtype)
    image_size = tiny.config.vision_config.image_size
    inputs = make_inputs(point, device, tiny.tokens_per_frame, image_size)
    full_tokens, kvtp_tokens = sequence_lengths(point)
    # Unpatched; then apply_kvtp(budget=1.0) must change nothing: the logits of every position, the length.
    full_all = tiny.prefill(inputs, None, all_logits=True)
    _count("unpatched", full_all.llm_tokens, full_tokens, "the LLM's sequence length")
    identity = tiny.prefill(inputs, 1.0, all_logits=True)
    _count("kvtp budget=1.0", identity.llm_tokens, full_tokens, "the LLM's sequence length")
    _assert_close("kvtp budget=1.0", identity.logits, full_all.logits, "every position, against the unpatched model")
    del identity
    # At beta: the unpatched model on the sequence built by the reference prune.
    embeds = reference_pruned_embeds(tiny, inputs, point["beta"])
    _count("reference", embeds.shape[1], kvtp_tokens, "the pruned sequence length")
    model = tiny.use(None)
    keep = {"logits_to_keep": 1} if tiny.keep_logits else {}
    with torch.inference_mode():
        kvtp_logits = model(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                                                            device=device),
                            use_cache=False, **keep).logits[:, -1:]
    expected = Expected(full_all.logits[:, -1:].clone(), kvtp_logits, full_tokens, kvtp_tokens, kept_tokens(point))
    return Case(point, device, inputs, expected)


# ----------------------------------------------------------------------------------
# Providers
# ----------------------------------------------------------------------------------
def _build(budget_of):
    def build(case: Case):
        tiny = tiny_model(case.device, case.point.dtype)
        budget = budget_of(case.point)
        tiny.use(budget)  # apply_kvtp / remove_kvtp outside the timed calls
        return lambda: tiny.prefill(case.inputs, budget)
    return build


def _skip(point: Point, config: RunConfig) -> str | None:
    return transformers_problem()


PROVIDERS = [
    Provider("full", "baseline", _build(lambda point: None), skip=_skip,
             description="the unpatched model: one forward with pixel_values_videos, T*N + 1 video tokens"),
    Provider("kvtp", "ours", _build(lambda point: point["beta"]), skip=_skip,
             description="the same model after apply_kvtp(budget=beta): K + 1 video tokens reach the LLM"),
]


def check(case: Case, provider: Provider, output: PrefillOutput) -> None:
    e: Expected = case.expected
    B = case.point["B"]
    if provider.name == "full":
        _count("full", output.llm_tokens, e.full_tokens, "the LLM's sequence length")
        _assert_close("full", output.logits, e.full_logits, "last position, against the unpatched model")
        return
    _count("kvtp", output.llm_tokens, e.kvtp_tokens, "the LLM's sequence length (P + K + newline)")
    _count("kvtp", output.stats.video_tokens_after, [e.kept + 1] * B, "kvtp_stats.video_tokens_after (K + newline)")
    _count("kvtp", output.stats.sequence_lengths_after, [e.kvtp_tokens] * B, "kvtp_stats.sequence_lengths_after")
    _assert_close("kvtp", output.logits, e.kvtp_logits,
                  "last position, against the unpatched model on the reference-pruned sequence")


def metrics(case: Case, provider: Provider, output: PrefillOutput) -> dict[str, Any]:
    point = case.point
    tiny = tiny_model(case.device, point.dtype)
    B, T, N = point["B"], point["T"], point["N"]
    video_after = T * N + 1 if output.stats is None else output.stats.video_tokens_after[0]
    return {
        "llm_tokens": output.llm_tokens,
        "video_tokens_before": T * N + 1,
        "video_tokens_after": video_after,
        "llm_prefill_flops": B * prefill_flops(tiny.config, output.llm_tokens),
        "vision_flops": vision_tower_flops(tiny.config.vision_config, B * T),
    }


# ----------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------
def _gflops(flops: int | None) -> str:
    return "-" if flops is None else f"{flops / 1e9:.2f}"


def _by_point(results: Sequence[Result]) -> dict[Point, dict[str, Result]]:
    out: dict[Point, dict[str, Result]] = {}
    for r in results:
        out.setdefault(r.point, {})[r.provider] = r
    return out


def point_table(point: Point, at: dict[str, Result]) -> str:
    full = at.get("full")
    base_ms = full.timing.median_ms if full is not None and full.timing is not None else None
    base_flops = full.metrics.get("llm_prefill_flops") if full is not None else None
    rows = []
    for r in at.values():
        t, m = r.timing, r.metrics
        speedup = None if t is None or base_ms is None else base_ms / t.median_ms
        flops = m.get("llm_prefill_flops")
        ratio = None if flops is None or not base_flops else flops / base_flops
        rows.append([r.provider, r.role, ms(t and t.median_ms), "-" if t is None else f"{ms(t.p10_ms)}-{ms(t.p90_ms)}",
                     "-" if speedup is None else f"{speedup:.2f}x", str(m.get("llm_tokens", "-")),
                     f"{m['video_tokens_before']} -> {m['video_tokens_after']}" if m else "-", _gflops(flops),
                     "-" if ratio is None else f"{ratio:.1%}", "-" if r.setup_s is None else f"{r.setup_s:.2f}",
                     r.status])
    vision = next((r.metrics["vision_flops"] for r in at.values() if "vision_flops" in r.metrics), None)
    text, vis = TINY_TEXT, TINY_VISION
    title = (f"### {'headline' if is_headline(point) else 'point'}: prefill of the tiny LlavaOnevision "
             f"({dtype_name(point.dtype)}; Qwen2 {text['num_hidden_layers']} x {text['hidden_size']}, "
             f"SigLIP {vis['image_size']} px / {vis['patch_size']}), {point.shape_str} beta={point['beta']}, "
             f"K={kept_tokens(point)}; vision tower {_gflops(vision)} GFLOPs in both")
    headers = ["provider", "role", "median ms", "p10-p90 ms", "t_full / t", "LLM tokens", "video tokens",
               "LLM GFLOPs", "FLOPs / full", "setup s", "status"]
    return title + "\n\n" + format_table(headers, rows)


def summary_table(results: Sequence[Result]) -> str | None:
    rows = []
    for point, at in _by_point(results).items():
        full, kvtp = at.get("full"), at.get("kvtp")
        if full is None or kvtp is None or full.timing is None or kvtp.timing is None:
            continue
        f, k = full.metrics, kvtp.metrics
        rows.append([point.shape_str, str(point["beta"]), ms(full.timing.median_ms), ms(kvtp.timing.median_ms),
                     f"{full.timing.median_ms / kvtp.timing.median_ms:.2f}x",
                     f"{f['llm_tokens']} -> {k['llm_tokens']}",
                     f"{k['llm_prefill_flops'] / f['llm_prefill_flops']:.1%}"])
    if len(rows) < 2:
        return None
    return "### all points\n\n" + format_table(
        ["point", "beta", "full ms", "kvtp ms", "speedup", "LLM tokens", "LLM FLOPs kvtp / full"], rows)


def paper_configs() -> tuple[list[tuple[str, Any, str]], Any]:
    """LLaVA-Video-7B / 72B text configs and SigLIP-so400m as transformers config objects (no download)."""
    import transformers

    llms = [(name, transformers.Qwen2Config(**fields), paper) for name, fields, paper in PAPER_MODELS]
    return llms, transformers.SiglipVisionConfig(**SIGLIP_SO400M)


def flops_table() -> str:
    """LLM prefill FLOPs of LLaVA-Video-7B / 72B before / after KVTP, with and without the vision tower."""
    llms, siglip = paper_configs()
    vision = vision_tower_flops(siglip, PAPER_FRAMES)
    patches = (siglip.image_size // siglip.patch_size) ** 2
    rows = []
    for name, config, paper in llms:
        for beta in PAPER_BETAS:
            r = kvtp_prefill_flops(config, PAPER_FRAMES, PAPER_TOKENS, beta, text_tokens=PAPER_PROMPT,
                                   fixed_flops=vision)
            rows.append([name, str(beta), str(r.kept_video_tokens), str(r.tokens_before), str(r.tokens_after),
                         f"{r.flops_before / 1e12:.1f}", f"{r.flops_after / 1e12:.1f}", f"{r.ratio:.1%}",
                         f"{r.total_ratio:.1%}", paper if beta == PAPER_BETA else "-"])
    shapes = "; ".join(f"{name}: {s.num_layers} layers, hidden {s.hidden_size}, MLP {s.intermediate_size}, "
                       f"{s.num_heads} / {s.num_kv_heads} heads" for name, s in
                       ((n, decoder_shape(c)) for n, c, _ in llms))
    title = (f"### LLaVA-Video prefill FLOPs (computed, not timed): {PAPER_FRAMES} frames x {PAPER_TOKENS} tokens "
             f"+ 1 newline, {PAPER_PROMPT} prompt tokens")
    notes = (f"LLM: matmuls, causal attention, no lm_head (kvtp_kernels.integrations.flops.prefill_flops); {shapes}. "
             f"'+ SigLIP': SigLIP-so400m ({siglip.num_hidden_layers} layers, hidden {siglip.hidden_size}, MLP "
             f"{siglip.intermediate_size}, {patches} patches per frame) over the {PAPER_FRAMES} frames, "
             f"{vision / 1e12:.1f} TFLOPs, added to both sides (pruning does not shorten it). "
             f"'paper': the figures quoted by the KVTP paper at beta = {PAPER_BETA}.")
    headers = ["model", "beta", "K", "tokens before", "tokens after", "LLM TFLOPs before", "LLM TFLOPs after",
               "LLM ratio", "+ SigLIP ratio", "paper"]
    return title + "\n\n" + format_table(headers, rows) + "\n\n" + notes


def report(results: list[Result], config: RunConfig, env: Environment) -> str:
    release()  # the run is over: every cached model is unpatched again
    parts = []
    problem = transformers_problem()
    if problem is not None:
        parts.append(f"(no prefill timed: {problem})")
    elif not results:
        parts.append(f"(no prefill timed: the tiny model runs in {', '.join(dtype_name(d) for d in DTYPES)} only)")
    by_point = _by_point(results)
    for point in sorted(by_point, key=lambda p: not is_headline(p))[:8]:
        parts.append(point_table(point, by_point[point]))
    summary = summary_table(results)
    if summary:
        parts.append(summary)
    if problem is None:
        parts.append(flops_table())
    parts.append(noise_note(env))
    return "\n\n".join(parts)


BENCHMARK = register_module(
    globals(), name="e2e",
    description="prefill of a tiny random LlavaOnevision with and without KVTP; LLaVA-Video-7B / 72B FLOPs",
    sync_check=False,  # HF's forward syncs by itself (mask checks, placeholder counts), with or without KVTP
)


if __name__ == "__main__":
    main([BENCHMARK], prog="python -m bench.bench_e2e", description=__doc__.split("\n\n")[0])
