"""Autograd through prune: every method, every backend, with tokens that require grad.

topk/random are row selections; prumerge and tome are linear in the tokens once their
decisions are fixed, and differentiable w.r.t. the tokens (prumerge also w.r.t. the
token scores, its merge weights). gradcheck in float64 against finite differences;
the decisions (kept tokens, neighbours, merge pairs) come from inputs that are not
perturbed (merge_keys), or are far from ties, so they stay fixed under the check.
"""

from __future__ import annotations

import pytest
import torch

import kvtp_kernels

B, T, N, D, DK = 1, 3, 6, 4, 5


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, T, N, D, generator=g, dtype=torch.float64)
    scores = torch.randn(B, T, generator=g, dtype=torch.float64)
    attention = torch.rand(B, T, N, generator=g, dtype=torch.float64) + 0.1
    keys = torch.randn(B, T, N, DK, generator=g, dtype=torch.float64)
    return tokens, scores, attention, keys


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("merge", ["paper", "mean"])
def test_prumerge_gradcheck(backend, merge):
    tokens, scores, attention, keys = _inputs()
    tokens.requires_grad_(True)
    attention.requires_grad_(True)

    def fn(x, a):
        return kvtp_kernels.prune(x, scores, 0.5, method="prumerge", token_scores=a, merge_keys=keys, merge=merge,
                                  num_neighbors=2, backend=backend).tokens

    assert torch.autograd.gradcheck(fn, (tokens, attention), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_tome_gradcheck(backend):
    tokens, scores, _, keys = _inputs(1)
    tokens.requires_grad_(True)

    def fn(x):
        return kvtp_kernels.prune(x, scores, 0.5, method="tome", merge_keys=keys, backend=backend).tokens

    assert torch.autograd.gradcheck(fn, (tokens,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("method", ["topk", "random", "prumerge", "tome"])
def test_forward_and_backward_with_grad_in_float32(backend, method):
    # The case: a plain model(...) call without torch.no_grad(), keys = the tokens.
    tokens = torch.randn(2, 4, 9, 8, requires_grad=True)
    scores = torch.randn(2, 4)
    extra = {"prumerge": dict(token_scores=torch.rand(2, 4, 9)), "random": dict(generator=3)}.get(method, {})
    out = kvtp_kernels.prune(tokens, scores, 0.4, method=method, backend=backend, **extra)
    with torch.no_grad():
        plain = kvtp_kernels.prune(tokens, scores, 0.4, method=method, backend=backend, **extra)
    assert torch.equal(out.tokens.detach(), plain.tokens)
    assert out.tokens.requires_grad
    out.tokens.sum().backward()
    assert tokens.grad is not None and tokens.grad.shape == tokens.shape
    # every kept or merged token receives gradient; for topk/random exactly the kept ones
    if method in ("topk", "random"):
        assert torch.equal((tokens.grad.reshape(-1, 8) != 0).any(1).nonzero().squeeze(1), out.indices.sort().values)
