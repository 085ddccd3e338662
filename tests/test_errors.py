"""Bad input: a clear error naming the argument, the expectation and what was given."""

import re

import numpy as np
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
    with pytest.raises(ValueError, match=r"`frame_counts` must lie in \[0, N=4\]; got min 1, max 9"):
        torch.ops.kvtp.prune_tokens(tokens, None, None, None, None, None, None, counts, 0, 12, 2.0, 0)
    counts = torch.tensor([[1, 2, 3]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"`total_rows`=5 but the frame counts sum to 6"):
        torch.ops.kvtp.prune_tokens(tokens, None, None, None, None, None, None, counts, 0, 5, 2.0, 0)


# ----------------------------------------------------------------------------------
# Keep counts at the int32 bound (issue 14, item 5): a clear error, never a wrap
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_keep_counts_refuse_counts_beyond_int32(backend):
    # before: [0, 0, 0, 0] (2**40 wrapped), INT_MIN counts, or "Expected a value of type 'int'"
    for budget, num_tokens in ((0.5, 2**40), (2**33, 2**31), (0.5, 2**62)):
        with pytest.raises(ValueError, match=r"`num_tokens` must be <= 2\*\*31 - 1 = 2147483647.*per-frame counts"):
            kvtp_kernels.keep_counts(torch.zeros(4), budget, num_tokens, backend=backend)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_keep_counts_at_the_int32_bound_are_exact(backend):
    N = 2**31 - 1
    counts = kvtp_kernels.keep_counts(torch.zeros(4), 4 * N, N, backend=backend)
    assert counts.dtype == torch.int32 and counts.tolist() == [N] * 4
    K = 3 * N + 5  # > 2**32: the budget itself needs 64 bits
    counts = kvtp_kernels.keep_counts(torch.tensor([0.0, 0.0, 50.0, 0.0]), K, N, backend=backend, temperature=1.0)
    assert counts.tolist()[2] == N and max(counts.tolist()) <= N and sum(counts.long().tolist()) == K


# ----------------------------------------------------------------------------------
# Number types (issue 14, item 6)
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_numpy_and_tensor_scalars_are_numbers(backend):
    tokens, scores = torch.randn(2, T, N, D), torch.randn(2, T)
    want = kvtp_kernels.prune(tokens, scores, 5, temperature=1.5, min_tokens_per_frame=1, backend=backend)
    for budget in (np.int64(5), np.int32(5), torch.tensor(5)):
        for temperature in (np.float32(1.5), np.float64(1.5), torch.tensor(1.5, dtype=torch.float64)):
            got = kvtp_kernels.prune(tokens, scores, budget, temperature=temperature, min_tokens_per_frame=np.int8(1),
                                     backend=backend)
            assert torch.equal(got.tokens, want.tokens) and got.max_seqlen == 5
    ratio = kvtp_kernels.prune(tokens, scores, 0.5, backend=backend)
    for budget in (np.float32(0.5), np.float64(0.5), torch.tensor(0.5)):
        assert torch.equal(kvtp_kernels.prune(tokens, scores, budget, backend=backend).indices, ratio.indices)
    counts = kvtp_kernels.keep_counts(scores, np.float32(0.5), np.int64(N), temperature=np.float16(2.0),
                                      backend=backend)
    assert torch.equal(counts, kvtp_kernels.keep_counts(scores, 0.5, N, backend=backend))
    merged = kvtp_kernels.prune(tokens, scores, 0.5, method="prumerge", token_scores=torch.rand(2, T, N),
                                num_neighbors=np.int64(2), backend=backend)
    assert merged.tokens.shape[0] == 2 * 10
    drawn = kvtp_kernels.prune(tokens, scores, 0.5, method="random", generator=np.int64(4), backend=backend)
    assert torch.equal(drawn.indices, kvtp_kernels.prune(tokens, scores, 0.5, method="random", generator=4,
                                                         backend=backend).indices)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64, torch.int32])
def test_unsupported_token_dtypes_are_refused_up_front(dtype):
    tokens = torch.randn(2, T, N, D).to(dtype)
    with pytest.raises(ValueError, match=rf"`tokens` must be a floating-point tensor \(float32, float16, bfloat16 or "
                                         rf"float64\); got a {dtype} tensor"):
        kvtp_kernels.prune(tokens, torch.randn(2, T), 0.5)
    with pytest.raises(ValueError, match=r"`scores` must be a floating-point tensor"):
        kvtp_kernels.prune(torch.randn(2, T, N, D), torch.randn(2, T).to(dtype), 0.5)


@pytest.mark.parametrize("value", [True, "3", 2.5, torch.tensor([3, 4]), np.array([3])])
def test_integer_arguments_still_refuse_non_integers(value):
    with pytest.raises(ValueError, match=r"`min_tokens_per_frame` must be an int"):
        kvtp_kernels.prune(torch.randn(2, T, N, D), torch.randn(2, T), 0.5, min_tokens_per_frame=value)
