"""Within-frame methods under KVTP's counts: prumerge, tome, random (METHOD.md section 3)."""

import numpy as np
import pytest
import torch
from helpers import DTYPES, TOLERANCES

import kvtp_kernels
from kvtp_kernels import reference as ref


def inputs(B, T, N, D, dtype, Dk=None):
    tokens = torch.randn(B, T, N, D).to(dtype)
    scores = torch.randn(B, T) * 3
    attention = torch.softmax(torch.randn(B, T, N) * 2, dim=-1)
    keys = None if Dk is None else torch.randn(B, T, N, Dk).to(dtype)
    return tokens, scores, attention, keys


def assert_rows_close(out, expected):
    atol, rtol = TOLERANCES[out.tokens.dtype]
    assert torch.equal(out.indices, expected.indices)
    assert torch.equal(out.frame_counts, expected.frame_counts)
    assert torch.equal(out.cu_seqlens, expected.cu_seqlens)
    assert torch.equal(out.frame_cu_seqlens, expected.frame_cu_seqlens)
    torch.testing.assert_close(out.tokens, expected.tokens, atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------------
# prumerge
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("merge", ["paper", "mean"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 3, None), (3, 7, 19, 111, None), (2, 5, 37, 17, 24)], ids=str)
def test_prumerge_matches_reference(backend, dtype, merge, shape):
    B, T, N, D, Dk = shape
    tokens, scores, attention, keys = inputs(B, T, N, D, dtype, Dk)
    kw = dict(method="prumerge", token_scores=attention, merge=merge, merge_keys=keys, num_neighbors=min(5, N - 1))
    expected = kvtp_kernels.prune(tokens, scores, 0.3, backend="reference", **kw)
    out = kvtp_kernels.prune(tokens, scores, 0.3, backend=backend, **kw)
    assert_rows_close(out, expected)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("merge", ["paper", "mean"])
def test_prumerge_without_neighbours_is_topk(backend, merge):
    tokens, scores, attention, _ = inputs(2, 6, 19, 9, torch.bfloat16)
    topk = kvtp_kernels.prune(tokens, scores, 0.25, token_scores=attention, backend=backend)
    merged = kvtp_kernels.prune(tokens, scores, 0.25, token_scores=attention, method="prumerge", merge=merge,
                                num_neighbors=0, backend=backend)
    assert torch.equal(merged.tokens, topk.tokens) and torch.equal(merged.indices, topk.indices)


def test_prumerge_formula_by_hand():
    """One frame of 4 tokens, keys chosen so token 0's nearest other token is 2."""
    tokens = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]]]])
    keys = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]]]])
    a = torch.tensor([[[0.5, 0.1, 0.3, 0.1]]])
    for merge, want in (("paper", [1.0 + 0.3 * 2.0, 0.0]), ("mean", [(0.5 * 1 + 0.3 * 2) / 0.8, 0.0])):
        out = kvtp_kernels.prune(tokens, torch.zeros(1, 1), 1, token_scores=a, method="prumerge", merge=merge,
                                 merge_keys=keys, num_neighbors=1, backend="cpu")
        assert out.indices.tolist() == [0]
        torch.testing.assert_close(out.tokens, torch.tensor([want]))


def test_prumerge_default_neighbour_count_and_keys():
    tokens, scores, attention, _ = inputs(1, 3, 40, 6, torch.float32)
    out = kvtp_kernels.prune(tokens, scores, 0.2, token_scores=attention, method="prumerge", backend="cpu")
    flat = tokens.reshape(-1, 6).double()
    cos = ref.cosine_gram_ref(tokens.reshape(3, 40, 6))
    for row, idx in enumerate(out.indices.tolist()):
        f, i = divmod(idx, 40)
        others = [j for j in range(40) if j != i]
        nearest = sorted(others, key=lambda j: (-cos[f, i, j].item(), j))[:32]  # default: 32 neighbours
        want = flat[idx] + sum(attention[0, f, j].double() * flat[f * 40 + j] for j in nearest)
        torch.testing.assert_close(out.tokens[row].double(), want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------
# tome
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1, 3, None), (3, 7, 19, 11, None), (2, 4, 37, 5, 16)], ids=str)
def test_tome_matches_reference(backend, dtype, shape):
    B, T, N, D, Dk = shape
    tokens, scores, _, keys = inputs(B, T, N, D, dtype, Dk)
    expected = kvtp_kernels.prune(tokens, scores, 0.3, method="tome", merge_keys=keys, backend="reference")
    out = kvtp_kernels.prune(tokens, scores, 0.3, method="tome", merge_keys=keys, backend=backend)
    assert_rows_close(out, expected)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1, 3, None), (3, 7, 19, 11, None), (2, 4, 37, 5, 16), (1, 3, 64, 24, 8)],
                         ids=str)
def test_tome_equals_reference_bit_for_bit(dtype, shape):
    # README: every backend equals the reference bit for bit (ToMe differed by up to 1.2e-7 before)
    B, T, N, D, Dk = shape
    tokens, scores, _, keys = inputs(B, T, N, D, dtype, Dk)
    tokens = tokens * torch.logspace(-3, 3, D, dtype=torch.float64).to(dtype)  # rows of wide dynamic range
    expected = kvtp_kernels.prune(tokens, scores, 0.3, method="tome", merge_keys=keys, backend="reference")
    for backend in ("cpu", "triton"):
        out = kvtp_kernels.prune(tokens, scores, 0.3, method="tome", merge_keys=keys, backend=backend)
        assert torch.equal(out.indices, expected.indices)
        assert torch.equal(out.tokens, expected.tokens)


def test_tome_keeping_everything_is_the_identity():
    tokens, scores, _, _ = inputs(2, 5, 13, 4, torch.bfloat16)
    for backend in ("reference", "cpu"):
        out = kvtp_kernels.prune(tokens, scores, 1.0, method="tome", backend=backend)
        assert torch.equal(out.tokens, tokens.reshape(-1, 4)) and torch.equal(out.indices, torch.arange(130))


def test_tome_by_hand():
    """4 tokens to 2: A = {0, 2}, B = {1, 3}; 0 is closest to 1, 2 to 3; both merge (r = 2)."""
    x = torch.tensor([[[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]]]])
    out = kvtp_kernels.prune(x, torch.zeros(1, 1), 2, method="tome", backend="cpu")
    assert out.indices.tolist() == [1, 3]
    torch.testing.assert_close(out.tokens, torch.tensor([[0.95, 0.05], [0.1, 0.9]]))
    # 4 tokens to 3: only the most similar pair merges (0 -> 1 has cos 0.994 > 2 -> 3's 0.970)
    out = kvtp_kernels.prune(x, torch.zeros(1, 1), 3, method="tome", backend="cpu")
    assert out.indices.tolist() == [1, 2, 3]


def test_tome_sizes_weight_later_merges():
    """Three identical-direction tokens merging into one: the size-weighted mean is the plain mean."""
    x = torch.tensor([[[[1.0, 0.0], [2.0, 0.0], [4.0, 0.0]]]])
    out = kvtp_kernels.prune(x, torch.zeros(1, 1), 1, method="tome", backend="cpu")
    torch.testing.assert_close(out.tokens, torch.tensor([[7.0 / 3.0, 0.0]]))
    ref_rows, _ = ref.tome_ref(x, x, torch.tensor([[1]]))
    torch.testing.assert_close(ref_rows, out.tokens)


# ----------------------------------------------------------------------------------
# random
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_random_is_reproducible_and_raster_ordered(backend):
    tokens, scores, _, _ = inputs(2, 6, 19, 5, torch.float16)
    a = kvtp_kernels.prune(tokens, scores, 0.3, method="random", generator=7, backend=backend)
    b = kvtp_kernels.prune(tokens, scores, 0.3, method="random", generator=np.int64(7), backend="reference")
    c = kvtp_kernels.prune(tokens, scores, 0.3, method="random", generator=8, backend=backend)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.tokens, b.tokens)  # an int seed: same on every backend
    assert not torch.equal(a.indices, c.indices)
    g1 = kvtp_kernels.prune(tokens, scores, 0.3, method="random", generator=torch.Generator().manual_seed(7),
                            backend=backend)
    g2 = kvtp_kernels.prune(tokens, scores, 0.3, method="random", generator=torch.Generator().manual_seed(7),
                            backend=backend)
    assert torch.equal(g1.indices, g2.indices)
    topk = kvtp_kernels.prune(tokens, scores, 0.3, backend=backend)
    assert torch.equal(a.frame_counts, topk.frame_counts)  # KVTP's counts, whatever the method
    for f in range(12):
        idx = a.indices[a.frame_cu_seqlens[f]:a.frame_cu_seqlens[f + 1]]
        assert (idx[1:] > idx[:-1]).all() and (idx // 19 == f).all()


def test_random_is_uniform_chi_square():
    """Each of N=10 tokens is kept in about k/N of the draws (k=3 per frame)."""
    tokens = torch.randn(1, 1, 10, 2)
    generator = torch.Generator().manual_seed(1234)
    hits = torch.zeros(10)
    draws = 3000
    for _ in range(draws):
        out = kvtp_kernels.prune(tokens, torch.zeros(1, 1), 3, method="random", generator=generator, backend="cpu")
        hits[out.indices] += 1
    expected = draws * 3 / 10
    chi2 = float(((hits - expected) ** 2 / expected).sum())
    assert chi2 < 27.88, (chi2, hits)  # chi-square, 9 degrees of freedom, p = 0.001


# ----------------------------------------------------------------------------------
# shared: counts and bad input
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["topk", "prumerge", "tome", "random"])
@pytest.mark.parametrize("allocation", ["exact", "paper"])
def test_counts_are_kvtps_for_every_method(method, allocation):
    tokens, scores, attention, _ = inputs(2, 9, 23, 4, torch.float32)
    kw = dict(allocation=allocation, min_tokens_per_frame=1)
    want = kvtp_kernels.keep_counts(scores, 0.2, 23, **kw)
    extra = {"prumerge": dict(token_scores=attention), "random": dict(generator=3)}.get(method, {})
    out = kvtp_kernels.prune(tokens, scores, 0.2, method=method, backend="cpu", **kw, **extra)
    assert torch.equal(out.frame_counts, want)
    assert out.tokens.shape == (int(want.sum()), 4) and out.indices.shape == (int(want.sum()),)
    assert torch.equal(out.frame_cu_seqlens[1:].long(), want.reshape(-1).cumsum(0))


BAD = [
    (dict(method="fastv"), "method", r"one of \('topk', 'prumerge', 'tome', 'random'\)"),
    (dict(method="prumerge"), "token_scores", "no default"),
    (dict(method="prumerge", token_scores=torch.rand(2, 4, 6), merge="sum"), "merge", r"one of \('paper', 'mean'\)"),
    (dict(method="prumerge", token_scores=torch.rand(2, 4, 6), num_neighbors=-1), "num_neighbors", ">= 0"),
    (dict(method="prumerge", token_scores=torch.rand(2, 4, 6), num_neighbors=6), "num_neighbors", "<= N-1 = 5"),
    (dict(method="prumerge", token_scores=torch.rand(2, 4, 6), merge_keys=torch.randn(2, 4, 5, 3)),
     "merge_keys", r"\[2, 4, 6, \*\]"),
    (dict(method="tome", merge_keys=torch.randn(2, 4, 6)), "merge_keys", r"\[2, 4, 6, \*\]"),
    (dict(method="topk", merge_keys=torch.randn(2, 4, 6, 3)), "merge_keys", "only 'prumerge' and 'tome'"),
    (dict(method="topk", num_neighbors=3), "num_neighbors", "only 'prumerge'"),
    (dict(method="tome", token_scores=torch.rand(2, 4, 6)), "token_scores", "not by score"),
    (dict(method="random", token_scores=torch.rand(2, 4, 6)), "token_scores", "drawn uniformly"),
    (dict(method="random", generator="seed"), "generator", "Generator or an int"),
    (dict(method="topk", generator=3), "generator", "only 'random'"),
]


@pytest.mark.parametrize("overrides,arg,fragment", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_method_bad_input(overrides, arg, fragment):
    with pytest.raises(ValueError, match=rf"`{arg}`.*{fragment}"):
        kvtp_kernels.prune(torch.randn(2, 4, 6, 3), torch.randn(2, 4), 0.5, **overrides)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_opcheck_merge_ops(backend):
    tokens, _, attention, keys = inputs(2, 3, 11, 5, torch.float32, Dk=4)
    indices = torch.tensor([0, 3, 10, 12, 40, 41, 60])
    name = "merge_neighbors_ref" if backend == "reference" else "merge_neighbors"
    torch.library.opcheck(getattr(torch.ops.kvtp, name).default, (tokens, keys, attention, indices, 4, True))
    counts = torch.tensor([[3, 0, 11], [1, 2, 5]], dtype=torch.int32)
    name = "tome_merge_ref" if backend == "reference" else "tome_merge"
    torch.library.opcheck(getattr(torch.ops.kvtp, name).default, (tokens, keys, counts, 22))


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("merge", ["paper", "mean"])
def test_prumerge_unpicked_nan_token_stays_out(backend, merge):
    """A NaN token that is nobody's neighbour must not leak into the merged rows."""
    x = torch.randn(1, 1, 6, 3)
    x[0, 0, 5] = float("nan")
    keys = torch.randn(1, 1, 6, 4)
    keys[0, 0, 1] = keys[0, 0, 0] * 1.01  # token 0's nearest other token is 1
    a = torch.rand(1, 1, 6)
    a[0, 0, 0] = 1.0  # kept
    out = kvtp_kernels.prune(x, torch.zeros(1, 1), 1, token_scores=a, method="prumerge", merge=merge,
                             merge_keys=keys, num_neighbors=1, backend=backend)
    assert out.indices.tolist() == [0] and torch.isfinite(out.tokens).all()
