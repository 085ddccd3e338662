"""The GPU calls the kernel report compiles: each public op at the report's shapes.

A scenario is one public call (``kvtp_kernels.prune`` / ``keep_counts`` with
``backend="triton"``), run under :func:`bench.kernel_launches.record`: nothing executes,
so the inputs are cheap (``torch.empty`` token tensors are never touched, so no page of
them is ever allocated). Each scenario also states the bytes of its minimal algorithm
(the bench's GB/s numerator, bench/README.md) and its float64 work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import kvtp_kernels

BETA = 0.2
EMBED_DIM = 1152  # SigLIP-so400m: frame embeddings and PruMerge keys
QUERY_CHUNKS = 4


@dataclass(frozen=True)
class Shape:
    name: str
    B: int
    T: int
    N: int
    D: int
    dtype: torch.dtype = torch.bfloat16

    @property
    def K(self) -> int:
        return int(BETA * self.T * self.N + 0.5)

    @property
    def s(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


HEADLINE = Shape("headline", 1, 64, 196, 3584)
SHAPES = (HEADLINE, Shape("B=8", 8, 64, 196, 3584), Shape("T=1024", 1, 1024, 49, 3584))


@dataclass
class Scenario:
    """One public call: ``run(inputs)`` returns its output; ``inputs`` are made by ``make``."""

    name: str
    make: Callable[[Shape], dict]
    run: Callable[[dict], object]
    floor_bytes: Callable[[Shape], int]
    fp64_flops: Callable[[Shape], float] = lambda sh: 0.0
    hot: bool = True  # on the exact-mode hot path (spills fail the report)
    inputs: dict = field(default_factory=dict)


def _base(sh: Shape) -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(tokens=torch.empty(sh.B, sh.T, sh.N, sh.D, dtype=sh.dtype),
                scores=torch.randn(sh.B, sh.T, generator=g),
                token_scores=torch.rand(sh.B, sh.T, sh.N, generator=g))


def _embeds(sh: Shape) -> dict:
    d = _base(sh)
    del d["scores"]
    d.update(frame_embeds=torch.empty(sh.B, sh.T, EMBED_DIM, dtype=sh.dtype),
             query_embeds=torch.empty(sh.B, QUERY_CHUNKS, EMBED_DIM, dtype=sh.dtype))
    return d


def _keys(sh: Shape) -> dict:
    return dict(_base(sh), merge_keys=torch.empty(sh.B, sh.T, sh.N, EMBED_DIM, dtype=sh.dtype))


def _given_bytes(sh: Shape) -> int:
    return 2 * sh.B * sh.K * sh.D * sh.s + 4 * sh.B * sh.T * sh.N


def _triton(**kw):
    return dict(kw, backend="triton")


SCENARIOS = [
    Scenario("prune given", _base,
             lambda x: kvtp_kernels.prune(x["tokens"], x["scores"], BETA, **_triton(token_scores=x["token_scores"])),
             _given_bytes),
    Scenario("prune distinct", _base, lambda x: kvtp_kernels.prune(x["tokens"], x["scores"], BETA, **_triton()),
             lambda sh: sh.B * sh.T * sh.N * sh.D * sh.s + sh.B * sh.K * sh.D * sh.s,
             fp64_flops=lambda sh: 5.0 * sh.B * sh.T * sh.N * sh.D),  # sum, x.mu and |x|^2 per element
    Scenario("prune similarity", _embeds,
             lambda x: kvtp_kernels.prune(x["tokens"], None, BETA, **_triton(
                 token_scores=x["token_scores"], frame_embeds=x["frame_embeds"], query_embeds=x["query_embeds"],
                 logit_scale=4.0, logit_bias=-2.0)),
             lambda sh: _given_bytes(sh) + sh.B * (sh.T + QUERY_CHUNKS) * EMBED_DIM * sh.s,
             fp64_flops=lambda sh: 6.0 * sh.B * sh.T * QUERY_CHUNKS * EMBED_DIM),
    Scenario("prumerge", _keys,
             lambda x: kvtp_kernels.prune(x["tokens"], x["scores"], BETA, **_triton(
                 token_scores=x["token_scores"], method="prumerge", merge_keys=x["merge_keys"])),
             lambda sh: sh.B * sh.T * sh.N * (sh.D * sh.s + EMBED_DIM * sh.s + 4) + sh.B * sh.K * sh.D * sh.s,
             fp64_flops=lambda sh: 2.0 * sh.B * sh.K * sh.N * EMBED_DIM),  # each kept key against its frame
    Scenario("keep_counts exact", _base,
             lambda x: kvtp_kernels.keep_counts(x["scores"], BETA, x["tokens"].shape[2], backend="triton"),
             lambda sh: 4 * sh.B * sh.T * 2),
    Scenario("keep_counts paper", _base,
             lambda x: kvtp_kernels.keep_counts(x["scores"], BETA, x["tokens"].shape[2], allocation="paper",
                                                backend="triton"),
             lambda sh: 4 * sh.B * sh.T * 2, hot=False),
]
