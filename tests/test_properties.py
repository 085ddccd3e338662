"""Property tests (hypothesis) for the invariants of keep counts and selection."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvtp_kernels
from kvtp_kernels import reference as ref

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def allocation_problems(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 40))
    N = draw(st.integers(1, 64))
    m = draw(st.integers(0, N))
    K = draw(st.integers(max(1, m * T), N * T))  # budget must be > 0
    spread = draw(st.sampled_from([0.0, 0.1, 1.0, 10.0, 300.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    scores = torch.randn(B, T, generator=torch.Generator().manual_seed(seed)) * spread
    if draw(st.booleans()):  # sprinkle non-finite scores
        flat = scores.view(-1)
        for value in draw(st.lists(st.sampled_from([float("nan"), float("inf"), float("-inf")]), max_size=3)):
            flat[draw(st.integers(0, flat.numel() - 1))] = value
    tau = draw(st.sampled_from([0.5, 1.0, 2.0, 7.0]))
    return scores, K, N, m, tau


@settings(max_examples=300, **SETTINGS)
@given(allocation_problems())
def test_exact_counts_sum_to_budget_within_bounds(problem):
    scores, K, N, m, tau = problem
    counts = kvtp_kernels.keep_counts(scores, K, N, temperature=tau, min_tokens_per_frame=m, backend="cpu")
    assert counts.sum(dim=1).eq(K).all()
    assert counts.min() >= m and counts.max() <= N
    same = kvtp_kernels.keep_counts(scores, K, N, temperature=tau, min_tokens_per_frame=m, backend="reference")
    assert torch.equal(counts, same)


@settings(max_examples=40, **SETTINGS)
@given(allocation_problems())
def test_exact_counts_triton_equals_reference(problem):
    scores, K, N, m, tau = problem
    kw = dict(temperature=tau, min_tokens_per_frame=m)
    assert torch.equal(kvtp_kernels.keep_counts(scores, K, N, backend="triton", **kw),
                       kvtp_kernels.keep_counts(scores, K, N, backend="reference", **kw))


@settings(max_examples=200, **SETTINGS)
@given(allocation_problems())
def test_exact_counts_follow_the_capped_share(problem):
    """Each count is within one token of its real-valued capped share, and more relevant
    frames never keep fewer tokens (up to that rounding)."""
    scores, K, N, m, tau = problem
    counts = ref.keep_counts_ref(scores, K, N, tau, m, False, 0.0).long()
    p = ref.frame_probs_ref(scores, tau)
    # the share itself: bisection on lam of sum clamp(lam*K*p, m, N) = K (independent of the kernel's method)
    lo = torch.zeros(p.shape[0], 1, dtype=torch.float64)
    hi = torch.full_like(lo, 1e300)
    for _ in range(2000):
        mid = (lo + hi) / 2
        g = torch.where(p > 0, (mid * K * p).clamp(m, N), float(m)).sum(-1, keepdim=True)
        lo, hi = torch.where(g < K, mid, lo), torch.where(g < K, hi, mid)
    share = torch.where(p > 0, (hi * K * p).clamp(m, N), float(m))
    finite = (share.sum(-1) - K).abs() < 1e-6  # rows where the share exists (no zero-probability overflow)
    diff = (counts - share).abs()[finite]
    assert (diff < 1 + 1e-6).all(), diff.max()
    order = p.argsort(dim=-1)
    sorted_counts = counts.gather(-1, order)
    assert (sorted_counts[:, 1:] - sorted_counts[:, :-1] >= -1)[finite].all()


@st.composite
def selection_problems(draw):
    T = draw(st.integers(1, 6))
    N = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    # coarse values: many exact ties
    token_scores = torch.randint(-3, 4, (1, T, N), generator=gen).float()
    if draw(st.booleans()):
        token_scores[torch.rand(token_scores.shape, generator=gen) < 0.2] = float("nan")
    counts = torch.randint(0, N + 1, (1, T), generator=gen, dtype=torch.int32)
    return token_scores, counts


@settings(max_examples=150, **SETTINGS)
@given(selection_problems())
def test_kept_tokens_are_exactly_the_top_k(problem):
    token_scores, counts = problem
    _, T, N = token_scores.shape
    tokens = torch.arange(T * N, dtype=torch.float32).view(1, T, N, 1)
    total = int(counts.sum())
    outs = {}
    for name, op in (("cpu", torch.ops.kvtp.prune_tokens), ("reference", torch.ops.kvtp.prune_tokens_ref)):
        outs[name] = op(tokens, None, None, None, None, None, token_scores, counts, 0, total, 2.0, 0)
    assert torch.equal(outs["cpu"][1], outs["reference"][1])
    indices = outs["cpu"][1]
    for t in range(T):
        kept = sorted((indices[(indices // N) == t] % N).tolist())
        s = token_scores[0, t].tolist()
        key = [(1 if v != v else 0, -v if v == v else 0.0, i) for i, v in enumerate(s)]  # NaN last, high first
        want = sorted(i for *_, i in sorted(key)[: int(counts[0, t])])
        assert kept == want


@settings(max_examples=25, **SETTINGS)
@given(selection_problems())
def test_selection_triton_equals_cpu(problem):
    token_scores, counts = problem
    _, T, N = token_scores.shape
    tokens = torch.randn(1, T, N, 3)
    args = (tokens, None, None, None, None, None, token_scores, counts, 0, int(counts.sum()), 2.0, 0)
    a = torch.ops.kvtp.prune_tokens(*args)
    b = torch.ops.kvtp.prune_tokens_triton(*args)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
