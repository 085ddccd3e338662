"""Bad input: a clear error naming the argument, the expectation and what was given."""

import re

import pytest
import torch

import kvtp_kernels

T, N, D = 4, 5, 3


def good(**over):
    kw = dict(tokens=torch.randn(2, T, N, D), scores=torch.randn(2, T), budget=0.5)
    kw.update(over)
    return kw


def call(**kw):
    tokens, scores, budget = kw.pop("tokens"), kw.pop("scores"), kw.pop("budget")
    return kvtp_kernels.prune(tokens, scores, budget, **kw)


CASES = [
    # (overrides, argument named, fragment of the message)
    (dict(tokens=torch.randn(T, N)), "tokens", r"\[B, T, N, D\] or \[T, N, D\].*\(4, 5\)"),
    (dict(tokens=torch.randn(1, 2, T, N, D)), "tokens", r"shape \[B, T, N, D\]"),
    (dict(tokens=torch.ones(2, T, N, D, dtype=torch.int64)), "tokens", "floating-point.*torch.int64"),
    (dict(tokens=torch.randn(2, 0, N, D), scores=torch.randn(2, 0)), "tokens", "non-empty"),
    (dict(tokens=torch.randn(2, T, 0, D)), "tokens", "non-empty"),
    (dict(tokens=[[1.0]]), "tokens", "torch.Tensor.*list"),
    (dict(scores=torch.randn(3, T)), "scores", r"shape \[2, 4\].*\(3, 4\)"),
    (dict(scores=torch.randn(2, T + 1)), "scores", r"shape \[2, 4\].*\(2, 5\)"),
    (dict(scores=torch.randn(2, T, 1)), "scores", r"shape \[2, 4\]"),
    (dict(scores=torch.ones(2, T, dtype=torch.int32)), "scores", "floating-point"),
    (dict(scores=torch.randn(2, T, device="meta")), "scores", "on cpu.*meta"),
    (dict(budget=0), "budget", "> 0"),
    (dict(budget=-3), "budget", "> 0"),
    (dict(budget=0.0), "budget", r"in \(0, 1\]"),
    (dict(budget=1.5), "budget", r"in \(0, 1\] as a ratio.*1.5"),
    (dict(budget=float("nan")), "budget", r"in \(0, 1\]"),
    (dict(budget=T * N + 1), "budget", r"<= T\*N = 4\*5 = 20.*21"),
    (dict(budget=7, min_tokens_per_frame=2), "budget", r"min_tokens_per_frame\*T = 2\*4 = 8"),
    (dict(budget=True), "budget", "float ratio.*True"),
    (dict(budget="half"), "budget", "float ratio"),
    (dict(allocation="greedy"), "allocation", r"one of \('exact', 'paper'\).*greedy"),
    (dict(min_tokens_per_frame=-1), "min_tokens_per_frame", ">= 0.*-1"),
    (dict(min_tokens_per_frame=N + 1), "min_tokens_per_frame", "<= N = 5"),
    (dict(min_tokens_per_frame=1.5), "min_tokens_per_frame", "an int"),
    (dict(temperature=0.0), "temperature", "> 0.0"),
    (dict(temperature=-2.0), "temperature", "> 0.0"),
    (dict(temperature=float("inf")), "temperature", "finite"),
    (dict(token_scores=torch.randn(2, T, N + 1)), "token_scores", r"\[2, 4, 5\].*\(2, 4, 6\)"),
    (dict(token_scores=torch.randn(2, T, N, device="meta")), "token_scores", "on cpu"),
    (dict(frame_embeds=torch.randn(2, T, 8)), "frame_embeds", "None when `scores` is given"),
    (dict(scores=None), "scores", "or None together with both"),
    (dict(scores=None, frame_embeds=torch.randn(2, T, 8)), "scores", "query_embeds=None"),
    (dict(scores=None, frame_embeds=torch.randn(2, T, 8), query_embeds=torch.randn(2, 1, 9)),
     "query_embeds", r"\[2, \*, 8\]"),
    (dict(scores=None, frame_embeds=torch.randn(2, T, 8), query_embeds=torch.randn(2, 0, 8)),
     "query_embeds", "at least one chunk"),
    (dict(scores=None, frame_embeds=torch.randn(2, T, 8), query_embeds=torch.randn(2, 1, 8),
          logit_scale=torch.ones(2)), "logit_scale", "one element"),
    (dict(scores=None, frame_embeds=torch.randn(2, T, 8), query_embeds=torch.randn(2, 1, 8),
          logit_bias=float("nan")), "logit_bias", "finite"),
    (dict(backend="cuda"), "backend", r"None or one of \('reference', 'cpu', 'triton'\)"),
    (dict(tokens=torch.randn(2, T, N, D, device="meta"), scores=torch.randn(2, T, device="meta"),
          backend="cpu"), "backend", "'cpu' runs the C\\+\\+ CPU kernel"),
]


@pytest.mark.parametrize("overrides,arg,fragment", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_prune_rejects(overrides, arg, fragment):
    with pytest.raises(ValueError, match=re.compile(rf"`{arg}`.*{fragment}", re.S)):
        call(**good(**overrides))


def test_keep_counts_rejects():
    with pytest.raises(ValueError, match=r"`scores` must be of shape \[B, T\] or \[T\]"):
        kvtp_kernels.keep_counts(torch.randn(2, 3, 4), 0.5, 10)
    with pytest.raises(ValueError, match=r"`num_tokens` must be >= 1"):
        kvtp_kernels.keep_counts(torch.randn(2, 3), 0.5, 0)
    with pytest.raises(ValueError, match=r"`budget` must be <= T\*N"):
        kvtp_kernels.keep_counts(torch.randn(3), 31, 10)
    with pytest.raises(ValueError, match=r"`scores` must be non-empty"):
        kvtp_kernels.keep_counts(torch.randn(2, 0), 0.5, 10)


def test_cpu_op_checks_its_own_arguments():
    """The C++ op validates what it relies on even when called without the front door."""
    tokens = torch.randn(1, 3, 4, 2)
    counts = torch.tensor([[1, 2, 9]], dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"frame_counts must lie in \[0, N=4\]"):
        torch.ops.kvtp.prune_tokens(tokens, None, None, None, None, None, None, counts, 0, 12, 2.0, 0)
    counts = torch.tensor([[1, 2, 3]], dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"total_rows=5 but the frame counts sum to 6"):
        torch.ops.kvtp.prune_tokens(tokens, None, None, None, None, None, None, counts, 0, 5, 2.0, 0)
