"""Prefill tokens and LLM FLOPs before / after KVTP for every supported family, from the checkpoints' config values.

No weights, no download: the sizes are the real checkpoints' ``config.json`` values
(``kvtp_kernels/integrations/checkpoints.py`` names the source of each)::

    python python/video_vlm_flops.py [--frames 64] [--budget 0.2] [--text-tokens 64] [--frame-pixels 448]

A frame unit is one frame (LLaVA) or one temporal patch of 2 frames (Qwen-VL); Qwen-VL
frames are taken as ``--frame-pixels`` squares (the processor resizes to multiples of
28 / 32 px), LLaVA's input size is fixed. FLOPs: causal LLM prefill, no lm_head, no
vision tower (which pruning does not shorten).
"""

from __future__ import annotations

import argparse

from kvtp_kernels.integrations.checkpoints import VIDEO_VLMS, video_prefill_reduction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--frame-pixels", type=int, default=448)
    args = parser.parse_args()
    print(f"{args.frames}-frame video, {args.text_tokens}-token prompt, beta = {args.budget}, Qwen-VL frames "
          f"{args.frame_pixels}x{args.frame_pixels}")
    print("| model | units x N | video tokens -> K | LLM tokens | prefill TFLOPs | tokens kept | FLOPs kept |")
    print("|---|---|---|---|---|---|---|")
    for vlm in VIDEO_VLMS:
        units, N, f = video_prefill_reduction(vlm, num_frames=args.frames, budget=args.budget,
                                              text_tokens=args.text_tokens, frame_pixels=args.frame_pixels)
        print(f"| {vlm.name} | {units} x {N} | {units * N} -> {f.kept_video_tokens} | {f.tokens_before} -> "
              f"{f.tokens_after} | {f.flops_before / 1e12:.2f} -> {f.flops_after / 1e12:.2f} | "
              f"{f.tokens_after / f.tokens_before:.1%} | {f.ratio:.1%} |")


if __name__ == "__main__":
    main()
