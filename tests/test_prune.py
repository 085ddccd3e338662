"""prune / keep_counts: every backend equals the reference, bit for bit."""

import pytest
import torch
from helpers import DTYPES, assert_same

import kvtp_kernels
from kvtp_kernels import reference as ref

FAST_BACKENDS = ["cpu", "triton"]

# (B, T, N, D): every size named by the issue appears (T 1/7/64, N 1/19/196,
# D 1/111/3584), B 1 and 3; the interpreter keeps the largest ones few.
SHAPES = [
    (1, 1, 1, 1),
    (3, 1, 19, 111),
    (1, 7, 1, 3584),
    (3, 7, 19, 1),
    (3, 7, 196, 111),
    (1, 64, 19, 111),
    (3, 64, 196, 1),
    (1, 64, 196, 3584),
]


def make_inputs(B, T, N, D, dtype, *, scale=3.0):
    tokens = torch.randn(B, T, N, D).to(dtype)
    scores = torch.randn(B, T) * scale
    return tokens, scores


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}N{}D{}".format(*s))
def test_matches_reference_default_scores(backend, dtype, shape):
    B, T, N, D = shape
    tokens, scores = make_inputs(B, T, N, D, dtype)
    expected = kvtp_kernels.prune(tokens, scores, 0.3, backend="reference")
    out = kvtp_kernels.prune(tokens, scores, 0.3, backend=backend)
    assert_same(out, expected)
    assert out.tokens.shape == (B * int(0.3 * T * N + 0.5), D)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 7, 19, 111), (1, 64, 196, 97)], ids=str)
def test_matches_reference_given_token_scores(backend, dtype, shape):
    B, T, N, D = shape
    tokens, scores = make_inputs(B, T, N, D, dtype)
    # low-precision scores make plenty of exact ties: they must go to the lower index
    token_scores = torch.randn(B, T, N).to(dtype).round(decimals=1)
    kw = dict(token_scores=token_scores, min_tokens_per_frame=1)
    expected = kvtp_kernels.prune(tokens, scores, 0.2, backend="reference", **kw)
    out = kvtp_kernels.prune(tokens, scores, 0.2, backend=backend, **kw)
    assert_same(out, expected)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_non_contiguous_inputs(backend):
    base = torch.randn(2, 9, 40, 3, 60)  # slice and permute into [B, T, N, D] views
    tokens = base[:, 1:8, ::2, 1, :]
    assert not tokens.is_contiguous()
    scores = torch.randn(7, 2).t()
    token_scores = torch.randn(2, 7, 20, 2)[..., 0]
    for ts in (None, token_scores):
        expected = kvtp_kernels.prune(tokens, scores, 0.25, token_scores=ts, backend="reference")
        out = kvtp_kernels.prune(tokens, scores, 0.25, token_scores=ts, backend=backend)
        assert_same(out, expected)
        contiguous = kvtp_kernels.prune(tokens.contiguous(), scores.contiguous(), 0.25,
                                        token_scores=None if ts is None else ts.contiguous(), backend=backend)
        assert_same(out, contiguous)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("budget", [1, 0.05, 0.5, 1.0, 133])
@pytest.mark.parametrize("min_tokens", [0, 2])
def test_budgets_and_minimum(backend, budget, min_tokens):
    tokens, scores = make_inputs(2, 16, 19, 8, torch.float32, scale=6.0)
    if isinstance(budget, int) and budget < min_tokens * 16:
        budget = min_tokens * 16
    if isinstance(budget, float) and int(budget * 16 * 19 + 0.5) < min_tokens * 16:
        budget = 0.2
    kw = dict(min_tokens_per_frame=min_tokens)
    expected = kvtp_kernels.prune(tokens, scores, budget, backend="reference", **kw)
    out = kvtp_kernels.prune(tokens, scores, budget, backend=backend, **kw)
    assert_same(out, expected)
    K = budget if isinstance(budget, int) else int(budget * 16 * 19 + 0.5)
    assert out.frame_counts.sum(dim=1).tolist() == [K, K]
    assert out.frame_counts.min() >= min_tokens and out.frame_counts.max() <= 19


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_budget_one_keeps_everything_in_order(backend):
    tokens, scores = make_inputs(2, 5, 7, 3, torch.bfloat16)
    out = kvtp_kernels.prune(tokens, scores, 1.0, backend=backend)
    assert torch.equal(out.indices, torch.arange(2 * 5 * 7))
    assert torch.equal(out.tokens, tokens.reshape(-1, 3))
    assert out.frame_counts.eq(7).all()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_similarity_matches_reference(backend, dtype):
    B, T, N, D, C, E = 3, 11, 19, 33, 2, 24
    tokens = torch.randn(B, T, N, D).to(dtype)
    frame_embeds = torch.randn(B, T, E).to(dtype)
    query_embeds = torch.randn(B, C, E).to(dtype)
    kw = dict(frame_embeds=frame_embeds, query_embeds=query_embeds, logit_scale=2.3, logit_bias=-1.5)
    expected = kvtp_kernels.prune(tokens, None, 0.3, backend="reference", **kw)
    out = kvtp_kernels.prune(tokens, None, 0.3, backend=backend, **kw)
    assert_same(out, expected)
    # and it is the same as passing the similarity as scores
    scores = ref.frame_scores_ref(frame_embeds, query_embeds, 2.3, -1.5)
    assert_same(kvtp_kernels.prune(tokens, scores, 0.3, backend=backend), expected)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("budget", [0.2, 0.9, 150])
def test_paper_allocation(backend, budget):
    tokens, scores = make_inputs(2, 12, 19, 16, torch.float16, scale=5.0)
    kw = dict(allocation="paper", min_tokens_per_frame=1)
    expected = kvtp_kernels.prune(tokens, scores, budget, backend="reference", **kw)
    out = kvtp_kernels.prune(tokens, scores, budget, backend=backend, **kw)
    assert_same(out, expected)
    ratio = budget if isinstance(budget, float) else budget / (12 * 19)
    p = torch.softmax(scores.double() / 2.0, dim=-1)
    want = torch.floor(19 * torch.clamp(ratio * 12 * p, max=1.0)).clamp_min(1).int()
    assert torch.equal(out.frame_counts, want)
    assert out.max_seqlen == int(want.sum(1).max())


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_unbatched_input(backend):
    tokens, scores = make_inputs(1, 6, 10, 4, torch.float32)
    out = kvtp_kernels.prune(tokens[0], scores[0], 0.5, backend=backend)
    batched = kvtp_kernels.prune(tokens, scores, 0.5, backend=backend)
    assert out.frame_counts.shape == (6,)
    assert torch.equal(out.frame_counts, batched.frame_counts[0])
    assert torch.equal(out.indices, batched.indices) and torch.equal(out.tokens, batched.tokens)
    assert out.cu_seqlens.tolist() == [0, 30] and out.frame_cu_seqlens.shape == (7,)


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_output_layout(backend):
    """Packed rows are the kept rows in (video, frame, raster) order, offsets consistent."""
    tokens, scores = make_inputs(3, 5, 13, 6, torch.float32)
    token_scores = torch.randn(3, 5, 13)
    out = kvtp_kernels.prune(tokens, scores, 0.4, token_scores=token_scores, backend=backend)
    flat = tokens.reshape(-1, 6)
    assert torch.equal(out.tokens, flat[out.indices])
    assert torch.equal(out.frame_cu_seqlens[1:].long(), out.frame_counts.reshape(-1).cumsum(0))
    assert torch.equal(out.cu_seqlens[1:].long(), out.frame_counts.sum(1).cumsum(0))
    for f in range(15):
        lo, hi = out.frame_cu_seqlens[f], out.frame_cu_seqlens[f + 1]
        idx = out.indices[lo:hi]
        assert (idx // 13 == f).all() and (idx[1:] > idx[:-1]).all()  # own frame, raster order
        k = int(hi - lo)
        kept = set((idx % 13).tolist())
        # exactly the top-k by score (ties to the lower index)
        order = sorted(range(13), key=lambda i: (-token_scores.reshape(15, 13)[f, i].item(), i))
        assert kept == set(order[:k])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_nan_and_inf(backend):
    tokens, scores = make_inputs(3, 6, 11, 5, torch.float32)
    scores[0, 2] = float("nan")
    scores[1, 4] = float("inf")
    scores[2] = float("-inf")
    token_scores = torch.randn(3, 6, 11)
    token_scores[0, :, ::3] = float("nan")
    token_scores[1, :, 1] = float("-inf")
    token_scores[2, :, 5] = float("inf")
    tokens[0, 0, 0, 0] = float("nan")
    for ts in (None, token_scores):
        expected = kvtp_kernels.prune(tokens, scores, 0.5, token_scores=ts, backend="reference")
        out = kvtp_kernels.prune(tokens, scores, 0.5, token_scores=ts, backend=backend)
        assert_same(out, expected)
        assert (out.indices >= 0).all() and (out.indices < 3 * 6 * 11).all()
    # the +inf frame takes everything it can; all--inf video is uniform
    assert out.frame_counts[1, 4] == 11
    assert out.frame_counts[2].tolist() == [6, 6, 6, 5, 5, 5]


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_keep_counts(backend):
    scores = torch.randn(4, 30) * 4
    for allocation in ("exact", "paper"):
        got = kvtp_kernels.keep_counts(scores, 0.2, 196, allocation=allocation, backend=backend,
                                       min_tokens_per_frame=2)
        want = kvtp_kernels.keep_counts(scores, 0.2, 196, allocation=allocation, backend="reference",
                                        min_tokens_per_frame=2)
        assert got.dtype == torch.int32 and torch.equal(got, want)
    assert kvtp_kernels.keep_counts(scores[0], 100, 196, backend=backend).sum() == 100
