"""Triton-specific checks of kvtp::merge_neighbors_triton (PruMerge's merge step).

tests/test_methods.py compares ``prune(method="prumerge")`` on every backend with the
reference; this file covers what only the Triton kernel has: the GPU tile sizes (the
interpreter normally runs bigger ones: several row blocks per frame, several key chunks,
a multi-step row-range search, one key bit per bisection step), strided inputs, exact
cosine ties (NaN / zero / infinite keys), frames of one token, num_neighbors = N-1,
bit-identical rows without neighbours, non-finite tokens, one launch, the op contracts
(opcheck, fullgraph compile), and an ahead-of-time compile of every kernel variant for
sm_90 (no spills, float64 MMA, only the output written as torch.compile sees it).
"""

import pytest
import torch
from helpers import DEVICE, TOLERANCES, LaunchCounter, compile_for_sm90, needs_triton_device

import kvtp_kernels
from kvtp_kernels import reference as ref
from kvtp_kernels.kernels import merge_triton

pytestmark = [needs_triton_device, pytest.mark.usefixtures("triton_device")]

ALL_TOLERANCES = {**TOLERANCES, torch.float64: (1e-12, 1e-12)}


def merge(tokens, keys, weights, indices, num_neighbors, mean):
    return torch.ops.kvtp.merge_neighbors_triton(tokens, keys, weights, indices, num_neighbors, mean)


def kept_indices(N, counts, seed=0):
    """int64 [sum(counts)]: ``counts[f]`` distinct random tokens of frame f, frame by frame, raster order."""
    generator = torch.Generator().manual_seed(seed)
    rows = [f * N + torch.randperm(N, generator=generator)[:k].sort().values for f, k in enumerate(counts)]
    return torch.cat(rows).to(DEVICE)


def check(tokens, keys, weights, indices, num_neighbors, mean):
    """The Triton rows against prumerge_ref, with the per-dtype tolerances of helpers.TOLERANCES."""
    out = merge(tokens, keys, weights, indices, num_neighbors, mean)
    want = ref.prumerge_ref(tokens, keys, weights, indices, num_neighbors, mean)
    assert out.dtype == tokens.dtype and out.shape == want.shape
    atol, rtol = ALL_TOLERANCES[tokens.dtype]
    torch.testing.assert_close(out, want, atol=atol, rtol=rtol)
    return out


def merge_cpu(tokens, keys, weights, indices, num_neighbors, mean):
    """The C++ kernel's rows (kvtp::merge_neighbors), on CPU copies of the inputs."""
    return torch.ops.kvtp.merge_neighbors(tokens.cpu(), keys.cpu(), weights.cpu(), indices.cpu(), num_neighbors,
                                          mean)


def check_with_cpu(tokens, keys, weights, indices, num_neighbors, mean):
    """``check``, and the Triton rows against the C++ kernel's to 1e-12 (same decisions)."""
    out = check(tokens, keys, weights, indices, num_neighbors, mean)
    cpu = merge_cpu(tokens, keys, weights, indices, num_neighbors, mean)
    torch.testing.assert_close(out.cpu(), cpu, atol=1e-12, rtol=1e-12)


def bits(x):
    return x.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()])


# ----------------------------------------------------------------------------------
# Tile sizes: force the GPU ones, and tiny ones (every budget 1: one-column gathers,
# 16-wide key chunks, a 2-probe search that takes ~7 steps), and compare with the reference.
# ----------------------------------------------------------------------------------
@pytest.fixture(params=["gpu", "tiny"])
def gpu_tiles(request, monkeypatch):
    monkeypatch.setattr(merge_triton, "_INTERPRETING", False)
    if request.param == "tiny":
        for name in ("_GPU_F64_PER_THREAD", "_GPU_COMPARE_PER_THREAD"):
            monkeypatch.setattr(merge_triton, name, 1)
        monkeypatch.setattr(merge_triton, "_GPU_ROWS_LANE_DIVISOR", 64)  # 4-column tiles: several per row
        monkeypatch.setattr(merge_triton, "_GPU_SEARCH", 2)
    return request.param


@pytest.mark.parametrize("mean", [False, True], ids=["paper", "mean"])
def test_gpu_tiles(gpu_tiles, mean):
    # N=45: frames keeping 45 / 17 / 16 rows take 3 / 2 / 1 blocks of ROWS=16; Dk=150 is
    # 3 (gpu) / 10 (tiny) chunks of keys; strided bf16 tokens, transposed fp16 keys.
    B, T, N, D, Dk = 1, 5, 45, 20, 150
    tokens = torch.randn(B, T, N, D + 3).to(torch.bfloat16)[..., 3:]
    keys = torch.randn(B, T, Dk, N).to(torch.float16).transpose(2, 3)
    weights = torch.rand(B, T, 2 * N, dtype=torch.float64)[..., ::2]
    indices = kept_indices(N, [45, 0, 17, 1, 16])
    check(tokens, keys, weights, indices, 7, mean)


@pytest.mark.parametrize("N,num_neighbors", [(11, 6), (20, 19)], ids=["N11-M6", "N20-M19"])
def test_gpu_tiles_neighbour_counts(gpu_tiles, N, num_neighbors):
    # N=11 at GPU sizes takes 2 key bits per bisection step and lists all neighbours at
    # once (3-D tiles); N=20 with M = N-1 one bit and one neighbour per step
    tokens = torch.randn(2, 2, N, 9)
    weights = torch.rand(2, 2, N)
    indices = kept_indices(N, [N, 3, 1, N - 2])
    for mean in (False, True):
        check(tokens, tokens, weights, indices, num_neighbors, mean)


def test_gpu_tiles_near_tie_parallel_keys(gpu_tiles):
    """Parallel keys (power-of-two multiples and copies of four keys) whose cosines tie
    exactly in every implementation: each base key has 64 entries +-1 and the rest 0, so
    |k| is a power of two, every product and sum is exact (FMA or not, in any order: BLAS
    on the CPU, DMMA on a GPU) and cosines are multiples of 1/64. Neighbours are then
    decided by the tie rule alone (lowest index first) and must be the reference's."""
    B, T, N, Dk = 1, 3, 29, 150  # 3 (gpu) / 10 (tiny) chunks of keys
    base = torch.zeros(B, T, 4, Dk)
    for f in range(T):
        for g in range(4):
            base[0, f, g, torch.randperm(Dk)[:64]] = torch.randint(0, 2, (64,)).float() * 2 - 1
    scales = torch.tensor([1.0, 2.0, 0.5, 4.0, 0.125])
    keys = base[:, :, torch.arange(N) % 4] * scales[torch.arange(N) % len(scales), None]
    cos = ref.cosine_gram_ref(keys)
    assert (cos[..., 4:, :] == cos[..., torch.arange(4, N) % 4, :]).all()  # exact ties in the reference
    tokens = torch.randn(B, T, N, 12, dtype=torch.float64)
    weights = torch.rand(B, T, N, dtype=torch.float64)
    indices = kept_indices(N, [12, N, 5])
    for num_neighbors in (3, 11, N - 1):
        for mean in (False, True):
            check_with_cpu(tokens, keys, weights, indices, num_neighbors, mean)


# ----------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------
def test_strides_do_not_change_the_result():
    B, T, N, D, Dk = 2, 3, 23, 13, 10
    tokens = torch.randn(B, T, N, D, dtype=torch.float16)
    keys = torch.randn(B, T, N, Dk)
    weights = torch.rand(B, T, N).to(torch.bfloat16)
    indices = kept_indices(N, [5, 23, 0, 1, 9, 12])
    strided = (
        tokens.permute(3, 0, 2, 1).contiguous().permute(1, 3, 2, 0),  # D outermost in memory
        keys.transpose(0, 3).contiguous().transpose(0, 3),
        torch.stack([weights, weights], dim=-1)[..., 0],
        torch.stack([indices, indices], dim=-1)[:, 1],
    )
    assert not any(t.is_contiguous() for t in strided)
    for mean in (False, True):
        out = check(*strided, 6, mean)
        assert torch.equal(bits(out), bits(merge(tokens, keys, weights, indices, 6, mean)))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
def test_exact_ties_nan_zero_and_inf_keys():
    """Cosines that tie exactly must pick the lower index, NaN ones come last, as in rank_ref."""
    N = 13
    keys = torch.randn(2, 2, N, 6)
    keys[0, 0, 3] = float("nan")  # a kept token with a NaN key: all its cosines are NaN
    keys[0, 0, 7] = float("nan")  # a NaN column for the others
    keys[0, 0, 9, 4] = float("inf")  # an infinite key: NaN cosines too, its row included
    keys[0, 1] = 0.0  # a frame of zero keys: every cosine is 0, neighbours = lowest indices
    keys[0, 1, 5] = 1.0
    keys[1, 1, ::2] = keys[1, 1, 1]  # seven parallel keys: cosines 1 (ties only up to rounding) ...
    keys[1, 1, ::2] *= 2.0  # ... made exact duplicates, scaled by 2 (exact in both implementations)
    tokens = torch.randn(2, 2, N, 5, dtype=torch.float64)
    weights = torch.rand(2, 2, N)
    indices = kept_indices(N, [N, N, 4, 6])
    for num_neighbors in (1, 4, N - 1):
        for mean in (False, True):
            check_with_cpu(tokens, keys, weights, indices, num_neighbors, mean)


def test_frames_of_one_token():
    tokens = torch.randn(2, 3, 1, 7).to(torch.bfloat16)
    indices = torch.tensor([0, 2, 3, 5])
    for mean in (False, True):
        out = merge(tokens, tokens, torch.rand(2, 3, 1), indices, 0, mean)
        assert torch.equal(bits(out), bits(tokens.reshape(-1, 7)[indices]))


def test_frames_keeping_one_token():
    N = 9
    tokens = torch.randn(3, 2, N, 11)
    indices = kept_indices(N, [1, 1, 0, 1, N, 1])
    for mean in (False, True):
        check(tokens, torch.randn(3, 2, N, 4), torch.rand(3, 2, N), indices, N - 1, mean)


def test_all_other_tokens_by_hand():
    """num_neighbors = N-1: every other token is a neighbour, whatever the keys."""
    B, T, N, D = 1, 2, 6, 3
    tokens = torch.randn(B, T, N, D, dtype=torch.float64)
    weights = torch.rand(B, T, N, dtype=torch.float64)
    indices = torch.tensor([0, 4, 5, 7, 11])
    x, a = tokens.reshape(B * T, N, D), weights.reshape(B * T, N)
    frame, token = indices // N, indices % N
    others = a[frame] * (torch.arange(N)[None, :] != token[:, None])  # [R, N]
    paper = x[frame, token] + torch.einsum("rn,rnd->rd", others, x[frame])
    mean = torch.einsum("rn,rnd->rd", a[frame], x[frame]) / a[frame].sum(dim=1, keepdim=True)
    keys = torch.randn(B, T, N, 4)
    torch.testing.assert_close(merge(tokens, keys, weights, indices, N - 1, False), paper, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(merge(tokens, keys, weights, indices, N - 1, True), mean, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_no_neighbours_copies_bits(dtype):
    tokens = torch.randn(2, 3, 8, 5).to(dtype)
    tokens[0, 0, 1, 0] = -0.0
    tokens[0, 0, 2, 1] = float("nan")
    tokens[1, 2, 3, 4] = float("-inf")
    indices = kept_indices(8, [8, 0, 8, 1, 2, 4])
    for mean in (False, True):
        out = merge(tokens, torch.randn(2, 3, 8, 4), torch.rand(2, 3, 8), indices, 0, mean)
        assert torch.equal(bits(out), bits(tokens.reshape(-1, 5)[indices]))


def test_mean_with_zero_total_weight_keeps_the_row():
    tokens = torch.randn(1, 2, 7, 4)
    tokens[0, 0, 2, 0] = -0.0
    weights = torch.rand(1, 2, 7)
    weights[0, 0] = 0.0  # frame 0: W = 0 for every row
    indices = torch.tensor([2, 5, 8, 12])
    out = merge(tokens, tokens, weights, indices, 3, True)
    assert torch.equal(bits(out[:2]), bits(tokens.reshape(-1, 4)[indices[:2]]))
    torch.testing.assert_close(out, ref.prumerge_ref(tokens, tokens, weights, indices, 3, True))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
def test_non_finite_tokens_reach_only_their_mergers():
    """A NaN / inf token changes only the rows it is a neighbour of (like the C++ kernel).

    prumerge_ref differs here: its einsum multiplies every token of the frame, neighbour
    or not, by its coefficient, and 0 * NaN = NaN poisons the whole frame.
    """
    N = 10
    tokens = torch.randn(1, 2, N, 6)
    keys = torch.randn(1, 2, N, 3)
    tokens[0, 0, 4] = float("nan")
    tokens[0, 1, 7, 2] = float("inf")
    weights = torch.rand(1, 2, N)
    # negative coefficients a_j / W for the rows of frame 1: x_i = inf then stays inf
    weights[0, 1] = -0.1
    weights[0, 1, 7] = 5.0
    indices = kept_indices(N, [N, N])
    for mean in (False, True):
        out = merge(tokens, keys, weights, indices, 3, mean)
        torch.testing.assert_close(out.cpu(), merge_cpu(tokens, keys, weights, indices, 3, mean), equal_nan=True)
        assert out[:N].isfinite().all(dim=1).sum() >= 1  # some row of frame 0 does not merge token 4
        assert out[N + 7, 2] == float("inf")


def test_empty_selection():
    out = merge(torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 3), torch.rand(1, 2, 5),
                torch.empty(0, dtype=torch.int64), 2, True)
    assert out.shape == (0, 3)


def test_rows_breaking_the_preconditions_are_skipped():
    """Out-of-range or unsorted indices: those rows are not written and nothing is read out of bounds."""
    tokens, weights = torch.randn(1, 4, 7, 3), torch.rand(1, 4, 7)
    indices = torch.tensor([-5, 3, 9, 10**6])
    out = merge(tokens, tokens, weights, indices, 2, False)
    torch.testing.assert_close(out[1:3], ref.prumerge_ref(tokens, tokens, weights, indices[1:3], 2, False))
    # not sorted by frame: frame 0's search range holds row 0, whose index lies 4 MB past `tokens`
    assert merge(tokens, tokens, weights, torch.tensor([10**6, 3]), 2, False).shape == (2, 3)


BAD = [
    (dict(indices=torch.zeros(3, dtype=torch.int32)), "indices", "int64"),
    (dict(weights=torch.rand(2, 3, 4)), "weights", r"\[B, T, N\] = \[2, 3, 5\]"),
    (dict(merge_keys=torch.randn(2, 3, 4, 2)), "merge_keys", r"\[2, 3, 5, \*\]"),
    (dict(num_neighbors=5), "num_neighbors", r"\[0, 4\]"),
]


@pytest.mark.parametrize("overrides,arg,fragment", BAD, ids=[b[1] for b in BAD])
def test_bad_input(overrides, arg, fragment):
    args = dict(tokens=torch.randn(2, 3, 5, 4), merge_keys=torch.randn(2, 3, 5, 2), weights=torch.rand(2, 3, 5),
                indices=torch.zeros(3, dtype=torch.int64), num_neighbors=2, mean=False)
    args.update(overrides)
    with pytest.raises(ValueError, match=rf"`{arg}`.*{fragment}"):
        merge(*args.values())


# ----------------------------------------------------------------------------------
# One launch, op contracts
# ----------------------------------------------------------------------------------
def test_prumerge_launches(monkeypatch):
    """prune (three launches) + merge (two), no host sync in between (exact mode)."""
    counter = LaunchCounter(torch.library.wrap_triton)
    monkeypatch.setattr(torch.library, "wrap_triton", counter)
    tokens = torch.randn(2, 5, 7, 3)
    kvtp_kernels.prune(tokens, torch.randn(2, 5), 0.5, token_scores=torch.rand(2, 5, 7), method="prumerge",
                       num_neighbors=2, backend="triton")
    assert counter.kernels == ["_plan_kernel", "_select_kernel", "_copy_rows_kernel", "_merge_select_kernel",
                               "_merge_rows_kernel"]


def test_opcheck_merge_neighbors(fake_safe_launches):  # conftest.py: opcheck under the interpreter
    op = torch.ops.kvtp.merge_neighbors_triton.default
    tokens, keys, weights = torch.randn(2, 3, 11, 5), torch.randn(2, 3, 11, 4), torch.rand(2, 3, 11)
    indices = torch.tensor([0, 3, 10, 12, 40, 41, 60])
    for num_neighbors, mean in ((4, True), (10, False), (0, True)):
        torch.library.opcheck(op, (tokens, keys, weights, indices, num_neighbors, mean),
                              test_utils=fake_safe_launches)
    torch.library.opcheck(op, (tokens.to(torch.bfloat16), keys, weights, indices, 3, False),
                          test_utils=fake_safe_launches)


def test_fullgraph_compile(fake_safe_launches):
    tokens, scores, attention = torch.randn(2, 5, 7, 3), torch.randn(2, 5), torch.rand(2, 5, 7)
    backend = "eager" if DEVICE == "cpu" else "inductor"  # interpreted kernels cannot be traced

    def fn(x, s, a, backend_name):
        out = kvtp_kernels.prune(x, s, 0.5, token_scores=a, method="prumerge", merge="mean", num_neighbors=3,
                                 backend=backend_name)
        return out.tokens, out.indices

    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    got, want = compiled(tokens, scores, attention, "triton"), fn(tokens, scores, attention, "reference")
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0])


# ----------------------------------------------------------------------------------
# The interpreter cannot see GPU-only compile errors (e.g. the float64 MMA rejecting a
# 16-bit operand width) nor register use: compile every kernel variant for sm_90 ahead
# of time, as the launcher would specialise it (ints == 1 constant, multiples of 16
# marked divisible), check ptxas's spill report and the float64 MMA (select kernel
# only), and run torch.compile's mutation analysis of user kernels on the same launches.
# ----------------------------------------------------------------------------------
@pytest.mark.skipif(DEVICE != "cpu", reason="the GPU run compiles the kernels anyway")
def test_kernel_compiles_for_sm90():
    assert compile_for_sm90("merge") == "compiled 11"
