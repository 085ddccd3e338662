"""Run every GPU kernel of kvtp_kernels once at small shapes (for compute-sanitizer).

``python -m tools.gpu_driver [--device cuda|cpu]`` (from the repository root): each public call that launches a
Triton kernel or a CUDA kernel of ``_C`` (prune with given / distinctiveness / fused
similarity token scores, exact and paper allocation, random, PruMerge, keep_counts,
pack_multimodal) runs once on odd sizes, and its output is compared with the reference
backend, so a kernel that reads or writes out of bounds shows up under
``compute-sanitizer --tool memcheck`` and one that races under ``--tool racecheck``.
``--device cpu`` (with ``TRITON_INTERPRET=1``) runs the same calls through the Triton
interpreter and the C++ pack kernel: the dry run of tools/gpu_check.sh.
Prints one line per call; exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import sys

import torch

import kvtp_kernels
from kvtp_kernels.pack import pack_multimodal

B, T, N, D, E, C = 2, 5, 19, 40, 24, 3


def _inputs(device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    x = dict(tokens=torch.randn(B, T, N, D, generator=g).to(torch.bfloat16),
             scores=torch.randn(B, T, generator=g), token_scores=torch.rand(B, T, N, generator=g),
             frame_embeds=torch.randn(B, T, E, generator=g), query_embeds=torch.randn(B, C, E, generator=g),
             merge_keys=torch.randn(B, T, N, E, generator=g).to(torch.bfloat16))
    return {k: v.to(device) for k, v in x.items()}


def _calls(x: dict) -> dict:
    def prune(backend, **kw):
        return kvtp_kernels.prune(x["tokens"], kw.pop("scores", x["scores"]), 0.3, backend=backend, **kw)

    return {
        "prune given": lambda be: prune(be, token_scores=x["token_scores"]),
        "prune distinct": lambda be: prune(be),
        "prune similarity": lambda be: prune(be, scores=None, frame_embeds=x["frame_embeds"],
                                             query_embeds=x["query_embeds"], logit_scale=2.0, logit_bias=-1.0),
        "prune paper": lambda be: prune(be, token_scores=x["token_scores"], allocation="paper",
                                        min_tokens_per_frame=1),
        "prune random": lambda be: prune(be, method="random", generator=7),
        "prumerge": lambda be: prune(be, token_scores=x["token_scores"], method="prumerge",
                                     merge_keys=x["merge_keys"], num_neighbors=4),
        "keep_counts": lambda be: kvtp_kernels.keep_counts(x["scores"], 0.3, N, backend=be),
    }


def _same(a, b, exact: bool) -> bool:
    """Bit-equal (copied rows, indices, counts), or within bfloat16 tolerance (PruMerge's merged rows)."""
    if isinstance(a, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        a, b = a.cpu(), b.cpu()
        if exact or not a.dtype.is_floating_point:
            return torch.equal(a, b)
        return torch.allclose(a.float(), b.float(), atol=1e-2, rtol=8e-3)  # tests/helpers.py TOLERANCES[bf16]
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(p, q, exact) for p, q in zip(a, b))
    return a == b


def _pack(x: dict, device: torch.device) -> tuple[object, object]:
    video = kvtp_kernels.prune(x["tokens"], x["scores"], 0.3, token_scores=x["token_scores"])
    L = 12
    text = torch.randn(B, L, D, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).to(device)
    video_mask = torch.zeros(B, L, dtype=torch.bool)
    video_mask[:, 3:6] = True
    newline = torch.zeros(D, dtype=torch.bfloat16, device=device)
    args = (text, torch.ones(B, L, dtype=torch.int64, device=device), video_mask.to(device), video)
    kw = dict(newline=newline, layout="grid", grid_width=5, tokens_per_frame=N)
    got = pack_multimodal(*args, **kw)
    # the CPU reference of the same plan: everything moved to the CPU
    cpu_video = type(video)(*(t.cpu() if isinstance(t, torch.Tensor) else t for t in video))
    want = pack_multimodal(text.cpu(), args[1].cpu(), args[2].cpu(), cpu_video, **dict(kw, newline=newline.cpu()))
    return got.embeds.cpu(), want.embeds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    device = torch.device(parser.parse_args(argv).device)
    x = _inputs(device)
    failures = 0
    for name, call in _calls(x).items():
        got, want = call("triton"), call("reference")
        ok = _same(got, want, exact=name != "prumerge")
        failures += not ok
        print(f"[gpu_driver] {name}: {'ok' if ok else 'MISMATCH with the reference'}", flush=True)
    got, want = _pack(x, device)
    ok = torch.equal(got, want)
    failures += not ok
    print(f"[gpu_driver] pack_multimodal ({'CUDA' if device.type == 'cuda' else 'C++'} pack_rows): "
          f"{'ok' if ok else 'MISMATCH with the CPU kernel'}", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
