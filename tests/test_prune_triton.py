"""Triton-specific checks of kvtp::prune_tokens_triton / kvtp::keep_counts_triton.

tests/test_prune.py compares every backend with the reference; this file covers what
only the Triton kernels have: the GPU tile sizes (the interpreter normally runs bigger
tiles), three launches per exact-mode call, the op contracts (opcheck, fullgraph compile),
64-bit offsets, allocation corner cases at the kernel level, and an ahead-of-time
compile of every kernel variant for sm_90 (the interpreter cannot see GPU-only errors).
"""

import pytest
import torch
from helpers import DEVICE, LaunchCounter, assert_same, compile_for_sm90, needs_triton_device

import kvtp_kernels
from kvtp_kernels import reference as ref
from kvtp_kernels.kernels import prune_triton

# Under the interpreter (conftest.py's default) the Triton kernels run on CPU tensors;
# with TRITON_INTERPRET=0 on a CUDA machine the same tests run on the GPU.
pytestmark = [needs_triton_device, pytest.mark.usefixtures("triton_device")]


def _prune_both(tokens, scores, budget, **kw):
    expected = kvtp_kernels.prune(tokens, scores, budget, backend="reference", **kw)
    out = kvtp_kernels.prune(tokens, scores, budget, backend="triton", **kw)
    if tokens.dtype == torch.float64:  # assert_same compares float64 rows by value: NaN != NaN
        assert_same(out._replace(tokens=out.tokens.view(torch.int64)),
                    expected._replace(tokens=expected.tokens.view(torch.int64)))
    else:
        assert_same(out, expected)
    return out


# ----------------------------------------------------------------------------------
# Tile sizes: the interpreter runs big tiles; force the GPU ones (and tiny ones, so
# that every chunk loop takes several trips) and compare with the reference.
# ----------------------------------------------------------------------------------
@pytest.fixture(params=["gpu", "tiny"])
def gpu_tiles(request, monkeypatch):
    monkeypatch.setattr(prune_triton, "_INTERPRETING", False)
    if request.param == "tiny":
        for name in ("_GPU_COPY_BYTES_PER_THREAD", "_GPU_EMBED_PER_THREAD", "_GPU_EMBED_PER_THREAD_SHARED",
                     "_GPU_DISTINCT_PER_THREAD",
                     "_GPU_COMPARE_PER_THREAD"):
            monkeypatch.setattr(prune_triton, name, 1)
    return request.param


def test_gpu_tiles_default_scores(gpu_tiles):
    # T=37 -> 4 (gpu) / 16 (tiny) chunks of frames; N=45 -> 2 / 8 chunks of tokens
    D = 300 if gpu_tiles == "gpu" else 40
    base = torch.randn(1, 37, 45, D + 3).to(torch.bfloat16)
    tokens = base[..., 3:]  # strided rows
    scores = torch.randn(1, 37) * 3
    _prune_both(tokens, scores, 0.3, min_tokens_per_frame=1)


def test_gpu_tiles_token_scores_and_embeds(gpu_tiles):
    B, T, N, D, C = 2, 37, 45, 24, 3
    E = 150 if gpu_tiles == "gpu" else 20  # 2 / 3 chunks of the embedding dim
    tokens = torch.randn(B, T, N, D).to(torch.float16)
    token_scores = torch.randn(B, T, N).to(torch.float16).round(decimals=1)  # many ties
    token_scores[0, :, ::7] = float("nan")
    frame_embeds = torch.randn(B, E, T).transpose(1, 2)  # non-contiguous
    query_embeds = torch.randn(B, C, E)
    _prune_both(tokens, None, 0.25, token_scores=token_scores, frame_embeds=frame_embeds,
                query_embeds=query_embeds, logit_scale=torch.tensor(1.7), logit_bias=-0.4)


def test_gpu_tiles_paper(gpu_tiles):
    tokens = torch.randn(2, 37, 45, 8)
    _prune_both(tokens, torch.randn(2, 37) * 4, 0.3, allocation="paper", min_tokens_per_frame=2)
    # paper counts from embeddings: the keep-count kernel's similarity code
    embeds = dict(frame_embeds=torch.randn(2, 37, 20), query_embeds=torch.randn(2, 2, 20), logit_scale=2.0)
    _prune_both(tokens, None, 0.3, allocation="paper", **embeds)


def test_gpu_tiles_keep_counts_long_video(gpu_tiles):
    scores = torch.randn(2, 130) * 5
    for allocation in ("exact", "paper"):
        got = kvtp_kernels.keep_counts(scores, 0.15, 196, allocation=allocation, backend="triton")
        want = kvtp_kernels.keep_counts(scores, 0.15, 196, allocation=allocation, backend="reference")
        assert torch.equal(got, want)


# ----------------------------------------------------------------------------------
# Near ties: data whose decisions are exact ties in exact arithmetic and stay exact ties
# in float64 whatever the order of the sums (scaling by powers of two commutes with
# rounding, FMA or not; duplicates compute the same values). A GPU that contracted a
# product into an FMA in one place but not another, or two kernels that recomputed the
# counts in different reduction trees, would break them; on CUDA these run compiled.
# ----------------------------------------------------------------------------------
def _scaled_duplicates(B, T, N, D, dtype):
    """Tokens where most of a frame are power-of-two multiples or copies of a few tokens."""
    tokens = torch.randn(B, T, N, D).to(dtype)
    scales = torch.tensor([1.0, 2.0, 0.5, 4.0, 0.25, 8.0, 1.0])
    for n in range(3, N):
        tokens[:, :, n] = tokens[:, :, n % 3] * scales[n % len(scales)]
    return tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_near_tie_scaled_duplicate_tokens(gpu_tiles, dtype):
    B, T, N = 2, 5, 21
    D = 300 if gpu_tiles == "gpu" else 40  # several slices of D at the GPU sizes
    tokens = _scaled_duplicates(B, T, N, D, dtype)
    scores = ref.distinctiveness_ref(tokens)
    assert (scores[..., 3:] == scores[..., torch.arange(3, N) % 3]).all()  # exact ties in the reference
    for budget in (0.3, 0.5, 17):  # cuts inside tie groups
        _prune_both(tokens, torch.randn(B, T), budget, min_tokens_per_frame=1)


def test_near_tie_equal_logits(gpu_tiles):
    """Equal frame logits (copies and power-of-two multiples of one frame embedding, equal
    given scores): equal probabilities, remainders that tie, resolved by frame index; the
    prune reads the counts that keep_counts computes."""
    B, T, N, E = 2, 12, 9, 40

    def signs(*shape):  # 16 entries +-1, the rest 0: norm 4, every product and sum exact on any device
        x = torch.zeros(*shape, E)
        for row in x.view(-1, E):
            row[torch.randperm(E)[:16]] = torch.randint(0, 2, (16,)).float() * 2 - 1
        return x

    frame_embeds = signs(B, T)
    frame_embeds[:, 4:] = frame_embeds[:, :1] * torch.tensor([1.0, 2.0, 4.0, 0.5])[torch.arange(T - 4) % 4, None]
    embeds = dict(frame_embeds=frame_embeds, query_embeds=signs(B, 3), logit_scale=1.3, logit_bias=-2.0)
    logits = ref.frame_scores_ref(frame_embeds, embeds["query_embeds"], 1.3, -2.0)
    assert (logits[:, 4:] == logits[:, :1]).all()
    tokens = torch.randn(B, T, N, 8)
    equal = torch.zeros(B, T)
    for budget in (7, 0.5, T * N - 5):
        out = _prune_both(tokens, None, budget, **embeds)
        assert torch.equal(out.frame_counts, kvtp_kernels.keep_counts(logits, budget, N, backend="triton"))
        out = _prune_both(tokens, equal, budget, min_tokens_per_frame=0)
        counts = kvtp_kernels.keep_counts(equal, budget, N, backend="triton")
        assert torch.equal(out.frame_counts, counts)
        assert (counts.diff(dim=1) <= 0).all()  # the remainder goes to the lower frame indices


def test_near_tie_parallel_frame_embeds_paper():
    """Paper counts of power-of-two-parallel frame embeddings: same decisions as the reference."""
    B, T, E = 1, 16, 24
    frame_embeds = torch.randn(B, 1, E) * torch.tensor([1.0, 2.0, 0.25, 8.0] * 4)[None, :, None]
    tokens = torch.randn(B, T, 10, 4)
    _prune_both(tokens, None, 0.4, allocation="paper", frame_embeds=frame_embeds,
                query_embeds=torch.randn(B, 2, E))


# ----------------------------------------------------------------------------------
# Allocation corner cases (the kernel follows exact_counts_ref step by step)
# ----------------------------------------------------------------------------------
def _hard_scores(T=24):
    cases = {
        "dominant": torch.tensor([60.0] + [0.0] * (T - 1)),
        "flushed": torch.tensor([0.0, 0.0] + [-5000.0] * (T - 2)),  # p = 0 after the flush
        "neg_inf": torch.tensor([1.0, float("-inf"), 2.0, float("nan")] * (T // 4)),
        "pos_inf": torch.tensor([float("inf"), 0.0, float("inf")] + [1.0] * (T - 3)),
        "all_neg_inf": torch.full((T,), float("-inf")),
        "ties": torch.zeros(T),
        "two_levels": torch.tensor([3.0, -3.0] * (T // 2)),
        "random": torch.randn(T) * 8,
    }
    return torch.stack(list(cases.values())), list(cases)


@pytest.fixture(params=["sweep", "search"])
def allocation_path(request, monkeypatch):
    """The exact allocation's two ways to its decisions (_exact_counts): O(T^2) sweeps
    (short videos) or the threshold search (long videos), each forced at every T."""
    monkeypatch.setattr(prune_triton, "_SEARCH_FROM", 1 if request.param == "search" else 1 << 30)
    return request.param


@pytest.mark.parametrize("min_tokens", [0, 3])
@pytest.mark.parametrize("budget", [1, 24 * 3, 24 * 19 // 2, 24 * 19 - 5, 24 * 19])
def test_keep_counts_corner_cases(budget, min_tokens, allocation_path):
    scores, names = _hard_scores()
    N = 19
    if budget < min_tokens * scores.shape[1]:
        budget = min_tokens * scores.shape[1]
    for temperature in (2.0, 0.37):
        got = torch.ops.kvtp.keep_counts_triton(scores, None, None, None, None, N, budget, 0.0, temperature,
                                                min_tokens, False)
        want = ref.keep_counts_ref(scores, budget, N, temperature, min_tokens, False, 0.0)
        assert torch.equal(got, want), [n for n, g, w in zip(names, got, want) if not torch.equal(g, w)]
        assert (got.sum(dim=1) == budget).all()
        ratio = budget / (scores.shape[1] * N)
        got = torch.ops.kvtp.keep_counts_triton(scores, None, None, None, None, N, budget, ratio, temperature,
                                                min_tokens, True)
        assert torch.equal(got, ref.keep_counts_ref(scores, budget, N, temperature, min_tokens, True, ratio))


def test_prune_corner_case_scores(allocation_path):
    scores, _ = _hard_scores(T=12)
    tokens = torch.randn(scores.shape[0], scores.shape[1], 7, 5)
    _prune_both(tokens, scores, 0.4, min_tokens_per_frame=1)


@pytest.mark.parametrize("T", [300, 1024])
def test_keep_counts_long_videos(T, allocation_path):
    """Long videos (the search's default range from T = 256 on), both ways: random and
    peaked logits, equal logits (every remainder ties: resolved by frame index), a few
    frames with p = 0 beside capped ones, and budgets at both ends."""
    g = torch.Generator().manual_seed(T)
    N = 49
    scores = torch.stack([torch.randn(T, generator=g) * 3, torch.randn(T, generator=g) * 40, torch.zeros(T),
                          torch.where(torch.arange(T) % 7 == 0, -5000.0, torch.randn(T, generator=g))])
    for budget, m in ((int(0.2 * T * N + 0.5), 0), (T * N - 3, 0), (2 * T, 2), (int(0.05 * T * N), 1), (T * N, 4)):
        got = torch.ops.kvtp.keep_counts_triton(scores, None, None, None, None, N, budget, 0.0, 0.5, m, False)
        want = ref.keep_counts_ref(scores, budget, N, 0.5, m, False, 0.0)
        assert torch.equal(got, want), (budget, m, (got != want).nonzero().tolist()[:5])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_nan_inf_tokens(dtype):
    # bf16 is widened by a bit shift in the kernel; float64 tokens need no conversion
    tokens = torch.randn(2, 6, 11, 33).to(dtype)
    tokens[0, 1, 3, 4] = float("nan")
    tokens[0, 2, 5, 0] = float("inf")
    tokens[1, 3, :, 7] = float("-inf")
    tokens[1, 4, 2] = 0.0  # zero token: distinctiveness 1
    _prune_both(tokens, torch.randn(2, 6), 0.5)


def test_paper_mode_can_keep_nothing():
    tokens = torch.randn(2, 4, 3, 5)
    out = _prune_both(tokens, torch.zeros(2, 4), 1, allocation="paper")  # every k_t = floor(3 * 1/12 * 4 * 1/4)
    assert out.tokens.shape == (0, 5) and out.cu_seqlens.tolist() == [0, 0, 0]


# ----------------------------------------------------------------------------------
# One launch, static shapes, op contracts
# ----------------------------------------------------------------------------------
def test_exact_mode_is_three_launches(monkeypatch):
    """plan (counts once per video), select, copy; paper mode adds its keep-count launch."""
    counter = LaunchCounter(torch.library.wrap_triton)
    monkeypatch.setattr(torch.library, "wrap_triton", counter)
    tokens = torch.randn(2, 5, 7, 3)
    three = ["_plan_kernel", "_select_kernel", "_copy_rows_kernel"]
    kvtp_kernels.prune(tokens, torch.randn(2, 5), 0.5, backend="triton")
    kvtp_kernels.prune(tokens, None, 0.5, frame_embeds=torch.randn(2, 5, 4), query_embeds=torch.randn(2, 2, 4),
                       token_scores=torch.randn(2, 5, 7), backend="triton")
    assert counter.kernels == three * 2
    counter.kernels.clear()
    kvtp_kernels.prune(tokens, torch.randn(2, 5), 0.5, allocation="paper", backend="triton")
    assert counter.kernels == ["_plan_kernel"] + three


def _op_args(B=2, T=5, N=7, D=3, **kw):
    K = 12
    args = dict(tokens=torch.randn(B, T, N, D), scores=torch.randn(B, T),
                frame_embeds=None, query_embeds=None, logit_scale=None, logit_bias=None, token_scores=None,
                frame_counts=None, budget=K, total_rows=B * K, temperature=2.0, min_tokens=0)
    args.update(kw)
    return tuple(args.values())


def test_opcheck_prune_tokens(fake_safe_launches):
    test_utils = fake_safe_launches
    op = torch.ops.kvtp.prune_tokens_triton.default
    torch.library.opcheck(op, _op_args(), test_utils=test_utils)
    counts = torch.tensor([[1, 0, 3, 2, 7], [0, 0, 1, 1, 1]], dtype=torch.int32)
    torch.library.opcheck(op, _op_args(scores=None, frame_counts=counts, budget=0, total_rows=16,
                                       token_scores=torch.randn(2, 5, 7)), test_utils=test_utils)
    E = 6
    embeds = dict(frame_embeds=torch.randn(2, 5, E), query_embeds=torch.randn(2, 3, E),
                  logit_scale=torch.tensor([0.5], dtype=torch.float64))
    torch.library.opcheck(op, _op_args(scores=None, **embeds), test_utils=test_utils)


def test_opcheck_keep_counts(fake_safe_launches):
    scores = torch.randn(3, 9)
    for paper in (False, True):
        torch.library.opcheck(torch.ops.kvtp.keep_counts_triton.default,
                              (scores, None, None, None, None, 11, 30, 30 / 99, 2.0, 1, paper),
                              test_utils=fake_safe_launches)


def test_fullgraph_compile_exact_mode(fake_safe_launches):
    """Exact mode has static shapes and no host sync: the whole prune is one graph."""
    tokens, scores = torch.randn(2, 5, 7, 3), torch.randn(2, 5)
    backend = "eager" if DEVICE == "cpu" else "inductor"  # interpreted kernels cannot be traced
    compiled = torch.compile(lambda x, s: kvtp_kernels.prune(x, s, 0.5, backend="triton"), fullgraph=True,
                             backend=backend)
    assert_same(compiled(tokens, scores), kvtp_kernels.prune(tokens, scores, 0.5, backend="reference"))


def test_gradient_scatters_to_kept_rows():
    tokens = torch.randn(2, 5, 7, 3, requires_grad=True)
    out = kvtp_kernels.prune(tokens, torch.randn(2, 5), 0.5, backend="triton")
    out.tokens.sum().backward()
    kept = torch.zeros(2 * 5 * 7)
    kept[out.indices] = 1.0
    assert torch.equal(tokens.grad.reshape(-1, 3), kept[:, None].expand(-1, 3))


# ----------------------------------------------------------------------------------
# 64-bit offsets: a strided view whose frames lie beyond 2^31 elements of a sparse,
# privately mapped file (nothing near that size is ever read or allocated)
# ----------------------------------------------------------------------------------
@pytest.mark.skipif(DEVICE != "cpu", reason="mmap-backed CPU tensor; on a GPU run the big-tensor benchmarks")
def test_offsets_beyond_int32(tmp_path):
    T, N, D = 4, 5, 8
    frame_stride = 2**30 + 64  # t * frame_stride overflows int32 from t = 2 on
    numel = (T - 1) * frame_stride + N * D
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(numel * 2)
    storage = torch.from_file(str(path), shared=False, size=numel, dtype=torch.float16)
    tokens = storage.as_strided((1, T, N, D), (0, frame_stride, D, 1))
    values = torch.randn(T, N, D).to(torch.float16)
    for t in range(T):
        tokens[0, t] = values[t]  # copy-on-write: touches a few pages only
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    out = _prune_both(tokens, scores, 0.6)
    assert torch.equal(out.tokens, values.reshape(-1, D)[out.indices])


# ----------------------------------------------------------------------------------
# The interpreter cannot see GPU-only compile errors (e.g. a loop-carried variable that
# changes shape): compile every kernel variant for sm_90 ahead of time, no GPU needed
# (tests/compile_sm90.py: the launches, ptxas's spill report, the headline copy's grid
# and 16-byte loads, the plan kernel's unfused float64 products).
# ----------------------------------------------------------------------------------
@pytest.mark.skipif(DEVICE != "cpu", reason="the GPU run compiles the kernels anyway")
def test_kernels_compile_for_sm90():
    assert compile_for_sm90("prune") == "compiled 21"
