"""The raw torch.ops.kvtp ops check every shape and value they rely on.

Each case hands an op arguments that are inconsistent with each other (what the public
API would never pass) and expects a ValueError naming the argument, from every backend
and from the op's fake (torch.compile's view). Before these checks the C++ kernels read
past their buffers on several of them; .ci/run runs this file against an
AddressSanitizer build of the extension, where any out-of-bounds access fails the run.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import kvtp_kernels  # noqa: F401  (registers the ops)

ops = torch.ops.kvtp
KEEP = {"cpu": ops.keep_counts, "reference": ops.keep_counts_ref, "triton": ops.keep_counts_triton}
PRUNE = {"cpu": ops.prune_tokens, "reference": ops.prune_tokens_ref, "triton": ops.prune_tokens_triton}
MERGE = {"cpu": ops.merge_neighbors, "reference": ops.merge_neighbors_ref, "triton": ops.merge_neighbors_triton}
TOME = {"batched": ops.tome_merge, "reference": ops.tome_merge_ref}
OP_BACKENDS = ["cpu", "reference", "triton", "fake"]


def _run(table, backend, *args):
    if backend != "fake":
        return table[backend](*args)
    op = table["reference"] if "reference" in table else next(iter(table.values()))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        return op(*fake)


def _expect(arg, fragment=""):
    return pytest.raises(ValueError, match=re.compile(rf"`{re.escape(arg)}`.*{fragment}", re.S))


def _prune_args(**over):
    kw = dict(tokens=torch.randn(1, 8, 4, 4), scores=torch.randn(1, 8), frame_embeds=None, query_embeds=None,
              logit_scale=None, logit_bias=None, token_scores=None, frame_counts=None, budget=4, total_rows=4,
              temperature=2.0, min_tokens=0)
    kw.update(over)
    return list(kw.values())


PRUNE_CASES = [
    # the reproducer: scores [1, 2] for 8 frames (heap-buffer-overflow at prune_cpu.cpp:173 before)
    (dict(scores=torch.randn(1, 2)), "scores", r"\[1, 2\]"),
    (dict(scores=torch.randn(2, 8)), "scores", ""),
    (dict(scores=torch.randn(8)), "scores", ""),
    (dict(scores=torch.ones(1, 8, dtype=torch.int32)), "scores", "(int32|Int)"),
    (dict(scores=None), "scores", "frame_embeds"),
    (dict(scores=None, frame_embeds=torch.randn(1, 3, 5), query_embeds=torch.randn(1, 2, 5)), "frame_embeds", ""),
    (dict(scores=None, frame_embeds=torch.randn(1, 8, 5), query_embeds=torch.randn(1, 2, 6)), "query_embeds", ""),
    (dict(scores=None, frame_embeds=torch.randn(1, 8, 5), query_embeds=torch.randn(1, 0, 5)), "query_embeds", ""),
    (dict(scores=None, frame_embeds=torch.randn(1, 8, 5), query_embeds=torch.randn(1, 2, 5),
          logit_scale=torch.ones(2, dtype=torch.float64)), "logit_scale", "one element"),
    (dict(token_scores=torch.randn(1, 8, 3)), "token_scores", r"\[1, 8, 3\]"),
    (dict(token_scores=torch.randn(1, 8, 4, 1)), "token_scores", ""),
    (dict(frame_counts=torch.ones(1, 7, dtype=torch.int32), total_rows=7), "frame_counts", r"\[1, 7\]"),
    (dict(frame_counts=torch.ones(1, 8)), "frame_counts", "(float32|Float)"),
    (dict(budget=33, total_rows=33), "budget", ""),
    (dict(budget=4, total_rows=5), "total_rows", ""),
    (dict(total_rows=-1), "total_rows", ""),
    (dict(min_tokens=5), "min_tokens", ""),
    (dict(temperature=0.0), "temperature", ""),
    (dict(temperature=float("nan")), "temperature", ""),
    (dict(tokens=torch.randn(1, 8, 4)), "tokens", r"\[1, 8, 4\]"),
    (dict(tokens=torch.randn(1, 8, 4, 4).to(torch.float8_e4m3fn)), "tokens", "(float8|Float8)"),
    (dict(tokens=torch.ones(1, 8, 4, 4, dtype=torch.int64)), "tokens", "(int64|Long)"),
]


# Values of given counts: the kernels read them (the shape-only fake cannot).
PRUNE_DATA_CASES = [
    (dict(frame_counts=torch.full((1, 8), 5, dtype=torch.int32), total_rows=40), "frame_counts", r"\[0, N"),
    (dict(frame_counts=torch.full((1, 8), -1, dtype=torch.int32), total_rows=0), "frame_counts", r"\[0, N"),
    (dict(frame_counts=torch.full((1, 8), 2**32 + 1, dtype=torch.int64), total_rows=8), "frame_counts", r"\[0, N"),
    (dict(frame_counts=torch.ones(1, 8, dtype=torch.int32), total_rows=5), "total_rows|frame_counts", "sum"),
]


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("over, arg, fragment", PRUNE_CASES)
def test_prune_tokens_checks_its_arguments(backend, over, arg, fragment):
    with pytest.raises(ValueError, match=re.compile(rf"`({arg})`.*{fragment}", re.S)):
        _run(PRUNE, backend, *_prune_args(**over))


@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
@pytest.mark.parametrize("over, arg, fragment", PRUNE_DATA_CASES)
def test_prune_tokens_checks_given_counts(backend, over, arg, fragment):
    with pytest.raises(ValueError, match=re.compile(rf"`?({arg})`?.*{fragment}", re.S)):
        _run(PRUNE, backend, *_prune_args(**over))


def _counts_args(**over):
    kw = dict(scores=torch.randn(2, 6), frame_embeds=None, query_embeds=None, logit_scale=None, logit_bias=None,
              num_tokens=10, budget=12, ratio=0.2, temperature=2.0, min_tokens=0, paper=False)
    kw.update(over)
    return list(kw.values())


KEEP_CASES = [
    (dict(num_tokens=0), "num_tokens", ""),
    (dict(num_tokens=2**40, budget=2**40), "num_tokens", r"2147483647|2\*\*31"),  # counts would wrap at 32 bits
    (dict(budget=61), "budget", ""),
    (dict(budget=-1), "budget", ""),
    (dict(min_tokens=11), "min_tokens", ""),
    (dict(paper=True, ratio=0.0), "ratio", ""),
    (dict(paper=True, ratio=1.5), "ratio", ""),
    (dict(temperature=-1.0), "temperature", ""),
    (dict(scores=torch.randn(2, 6, 1)), "scores", ""),
    (dict(scores=None, frame_embeds=torch.randn(2, 6, 4), query_embeds=torch.randn(3, 1, 4)), "query_embeds", ""),
]


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("over, arg, fragment", KEEP_CASES)
def test_keep_counts_checks_its_arguments(backend, over, arg, fragment):
    with _expect(arg, fragment):
        _run(KEEP, backend, *_counts_args(**over))


def _merge_args(**over):
    kw = dict(tokens=torch.randn(1, 2, 5, 3), merge_keys=torch.randn(1, 2, 5, 4), weights=torch.rand(1, 2, 5),
              indices=torch.tensor([0, 3, 6]), num_neighbors=2, mean=False)
    kw.update(over)
    return list(kw.values())


MERGE_CASES = [
    (dict(merge_keys=torch.randn(1, 2, 4, 4)), "merge_keys", ""),
    (dict(merge_keys=torch.ones(1, 2, 5, 4, dtype=torch.int64)), "merge_keys", "(int64|Long)"),
    (dict(weights=torch.rand(1, 2, 6)), "weights", ""),
    (dict(indices=torch.tensor([0, 3, 6], dtype=torch.int32)), "indices", "(int32|Int)"),
    (dict(indices=torch.tensor([[0, 3]])), "indices", ""),
    (dict(num_neighbors=5), "num_neighbors", ""),
    (dict(num_neighbors=-1), "num_neighbors", ""),
    (dict(tokens=torch.randn(1, 2, 5, 3).to(torch.float8_e5m2)), "tokens", "(float8|Float8)"),
]
MERGE_DATA_CASES = [
    (dict(indices=torch.tensor([0, 3, 10])), "indices", r"\[0, B\*T\*N\)"),
    (dict(indices=torch.tensor([-1, 3])), "indices", r"\[0, B\*T\*N\)"),
    (dict(indices=torch.tensor([6, 0])), "indices", "frame by frame|sorted"),
]


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("over, arg, fragment", MERGE_CASES)
def test_merge_neighbors_checks_its_arguments(backend, over, arg, fragment):
    with _expect(arg, fragment):
        _run(MERGE, backend, *_merge_args(**over))


@pytest.mark.parametrize("backend", ["cpu", "reference"])  # the Triton kernel skips such rows (test_merge_triton)
@pytest.mark.parametrize("over, arg, fragment", MERGE_DATA_CASES)
def test_merge_neighbors_checks_its_indices(backend, over, arg, fragment):
    with _expect(arg, fragment):
        _run(MERGE, backend, *_merge_args(**over))


TOME_CASES = [
    (dict(counts=torch.ones(1, 3, dtype=torch.int32)), "counts", ""),
    (dict(counts=torch.ones(1, 2)), "counts", "(float32|Float)"),
    (dict(merge_keys=torch.randn(1, 2, 4, 2)), "merge_keys", ""),
    (dict(total_rows=-2), "total_rows", ""),
]
TOME_DATA_CASES = [
    (dict(counts=torch.tensor([[6, 1]], dtype=torch.int32), total_rows=7), "counts", r"\[0, N\]"),
    (dict(counts=torch.tensor([[2, 1]], dtype=torch.int32), total_rows=4), "counts", "total_rows"),
]


def _tome_args(**over):
    kw = dict(tokens=torch.randn(1, 2, 5, 3), merge_keys=torch.randn(1, 2, 5, 4),
              counts=torch.tensor([[2, 3]], dtype=torch.int32), total_rows=5)
    kw.update(over)
    return list(kw.values())


@pytest.mark.parametrize("backend", ["batched", "reference", "fake"])
@pytest.mark.parametrize("over, arg, fragment", TOME_CASES)
def test_tome_merge_checks_its_arguments(backend, over, arg, fragment):
    with _expect(arg, fragment):
        _run(TOME, backend, *_tome_args(**over))


@pytest.mark.parametrize("backend", ["batched", "reference"])
@pytest.mark.parametrize("over, arg, fragment", TOME_DATA_CASES)
def test_tome_merge_checks_its_counts(backend, over, arg, fragment):
    with _expect(arg, fragment):
        _run(TOME, backend, *_tome_args(**over))


def test_good_arguments_pass_every_backend():
    args = _prune_args()
    outs = [PRUNE[b](*args) for b in ("cpu", "reference", "triton")]
    for o in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs[0], o))
    margs = _merge_args()
    merged = [MERGE[b](*margs) for b in ("cpu", "reference", "triton")]
    assert all(torch.equal(merged[0], m) for m in merged[1:])


# ----------------------------------------------------------------------------------
# pack_rows with a plan that does not fit its tensors (out-of-bounds reads before)
# ----------------------------------------------------------------------------------
def _plan(layout="grid"):
    B, L, D = 2, 6, 4
    text = torch.randn(B, L, D)
    video_mask = torch.zeros(B, L, dtype=torch.bool)
    video_mask[:, 2:4] = True
    pruned = kvtp_kernels.prune(torch.randn(B, 3, 4, D), torch.randn(B, 3), 0.5)
    newline = torch.randn(D)
    plan = ops.pack_plan(None, video_mask, None, pruned.cu_seqlens, pruned.indices, layout, 3, 2, 4)
    cu, info, rank, newline_cu, summary = plan
    total = int(summary[0])
    return dict(text_embeds=text, video_tokens=pruned.tokens, newline=newline, cu_seqlens=cu, sample_info=info,
                text_rank=rank, frame_cu_seqlens=pruned.frame_cu_seqlens, newline_cu=newline_cu, layout=layout,
                num_frames=3, length=total, padded=False, left_padding=False)


def _bad(field, fn):
    def make(kw):
        kw[field] = fn(kw[field].clone())
        return kw

    return make


def _set(t, index, value):
    t[index] = value
    return t


PACK_CASES = [
    ("sample_info", _bad("sample_info", lambda t: _set(t, (1, 2), 100)), "sample_info"),  # first video row
    ("sample_info", _bad("sample_info", lambda t: _set(t, (0, 3), 1000)), "sample_info"),  # video rows
    ("sample_info", _bad("sample_info", lambda t: _set(t, (0, 0), 50)), "sample_info"),  # text before the span
    ("sample_info", _bad("sample_info", lambda t: _set(t, (1, 4), 99)), "sample_info"),  # video block length
    ("sample_info", _bad("sample_info", lambda t: _set(t, (0, 5), 99)), "sample_info"),  # sequence length
    ("cu_seqlens", _bad("cu_seqlens", lambda t: _set(t, 1, 3)), "cu_seqlens"),
    ("text_rank", _bad("text_rank", lambda t: _set(t, (0, 5), 40)), "text_rank"),
    ("newline_cu", _bad("newline_cu", lambda t: _set(t, 3, 70)), "newline_cu"),
    ("frame_cu_seqlens", _bad("frame_cu_seqlens", lambda t: _set(t, 2, 1000)), "frame_cu_seqlens"),
]


@pytest.mark.parametrize("name, corrupt, arg", PACK_CASES, ids=[c[0] + str(i) for i, c in enumerate(PACK_CASES)])
def test_pack_rows_checks_its_plan(name, corrupt, arg):
    kw = corrupt(_plan())
    with _expect(arg):
        ops.pack_rows(*kw.values())


def test_pack_rows_frame_layout_checks_frame_offsets():
    kw = _plan("frame")
    kw["sample_info"] = _set(kw["sample_info"].clone(), (1, 1), 7)  # a video that does not exist
    with _expect("sample_info"):
        ops.pack_rows(*kw.values())


def test_pack_rows_good_plan_still_packs():
    kw = _plan()
    embeds, source, _ = ops.pack_rows(*kw.values())
    assert embeds.shape[0] == kw["length"] and (source >= 0).all()
