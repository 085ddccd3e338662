"""torch.library integration: opcheck on every op, torch.compile, autograd."""

import pytest
import torch

import kvtp_kernels
from kvtp_kernels import ops

BACKEND_OPS = {
    "reference": ("keep_counts_ref", "prune_tokens_ref"),
    "cpu": ("keep_counts", "prune_tokens"),
    "triton": ("keep_counts_triton", "prune_tokens_triton"),
}


def _op(name):
    return getattr(torch.ops.kvtp, name).default


def prune_args(variant):
    B, T, N, D, E = 2, 6, 7, 5, 8
    tokens = torch.randn(B, T, N, D)
    scores = torch.randn(B, T)
    K = 17
    no_embeds = (None, None, None, None)
    if variant == "scores":
        return (tokens, scores, *no_embeds, None, None, K, B * K, 2.0, 1)
    if variant == "token_scores":
        return (tokens, scores, *no_embeds, torch.randn(B, T, N), None, K, B * K, 2.0, 0)
    if variant == "embeds":
        embeds = (torch.randn(B, T, E), torch.randn(B, 3, E), torch.full((1,), 1.5, dtype=torch.float64),
                  torch.full((1,), -0.5, dtype=torch.float64))
        return (tokens, None, *embeds, None, None, K, B * K, 2.0, 0)
    counts = torch.tensor([[1, 0, 7, 2, 3, 3], [0, 0, 0, 1, 1, 1]], dtype=torch.int32)
    return (tokens, scores, *no_embeds, None, counts, 0, int(counts.sum()), 2.0, 0)


# The Triton ops' opcheck lives in test_prune_triton.py: under TRITON_INTERPRET the
# interpreted kernel would run on the fake tensors of a trace, which needs a workaround.
@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("variant", ["scores", "token_scores", "embeds", "frame_counts"])
def test_opcheck_prune_tokens(backend, variant):
    torch.library.opcheck(_op(BACKEND_OPS[backend][1]), prune_args(variant))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("paper", [False, True])
def test_opcheck_keep_counts(backend, paper):
    scores = torch.randn(3, 9)
    torch.library.opcheck(_op(BACKEND_OPS[backend][0]), (scores, None, None, None, None, 19, 40, 0.3, 2.0, 1, paper))
    embeds = (torch.randn(3, 9, 4), torch.randn(3, 2, 4), None, torch.zeros(1, dtype=torch.float64))
    torch.library.opcheck(_op(BACKEND_OPS[backend][0]), (None, *embeds, 19, 40, 0.3, 2.0, 1, paper))


def test_every_backend_is_registered():
    assert ops.HAS_CPP and ops.HAS_TRITON, (ops.CPP_IMPORT_ERROR, ops.TRITON_IMPORT_ERROR)
    for names in BACKEND_OPS.values():
        for name in names:
            assert hasattr(torch.ops.kvtp, name)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_compile_fullgraph_exact_mode(backend):
    tokens, scores = torch.randn(2, 8, 19, 16), torch.randn(2, 8)
    token_scores = torch.randn(2, 8, 19)

    def fn(x, s, ts):
        out = kvtp_kernels.prune(x, s, 0.3, token_scores=ts, backend=backend)
        return out.tokens * 2, out.indices, out.frame_counts, out.cu_seqlens, out.frame_cu_seqlens

    compiled = torch.compile(fn, fullgraph=True)
    got, want = compiled(tokens, scores, token_scores), fn(tokens, scores, token_scores)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_gradient_flows_to_kept_rows(backend):
    tokens = torch.randn(2, 4, 6, 3, requires_grad=True)
    out = kvtp_kernels.prune(tokens, torch.randn(2, 4), 0.5, backend=backend)
    weights = torch.randn_like(out.tokens)
    (out.tokens * weights).sum().backward()
    expected = torch.zeros(48, 3)
    expected[out.indices] = weights
    assert torch.equal(tokens.grad, expected.view(2, 4, 6, 3))
