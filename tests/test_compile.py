"""torch.compile(fullgraph=True) over changing shapes, dynamic=True, and what cannot compile.

Every public entry point and every op traces without a graph break on at least three
shapes (dynamo recompiles with symbolic sizes from the second one on), and with
``dynamic=True`` from the first call; the compiled results equal eager ones exactly.
The "eager" backend runs dynamo and the fakes but not inductor, which keeps this quick
on a CPU; the Triton ops run in the interpreter.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import kvtp_kernels

SHAPES = [(2, 4, 8, 16), (2, 6, 8, 16), (3, 5, 12, 8), (1, 7, 10, 4)]


@pytest.fixture(autouse=True)
def _fresh_dynamo(fake_safe_launches):  # conftest.py: interpreted launches skip fake tensors
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _inputs(B, T, N, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, N, D, generator=g), torch.randn(B, T, generator=g),
            torch.rand(B, T, N, generator=g))


def _prune_fn(method, backend):
    def fn(tokens, scores, attention):
        extra = {"prumerge": dict(token_scores=attention), "random": dict(generator=11)}.get(method, {})
        out = kvtp_kernels.prune(tokens, scores, 0.25, method=method, backend=backend, **extra)
        return out.tokens, out.indices, out.frame_counts, out.cu_seqlens, out.frame_cu_seqlens

    return fn


def _check_shapes(fn, dynamic):
    compiled = torch.compile(fn, fullgraph=True, backend="eager", dynamic=dynamic)
    for shape in SHAPES:
        args = _inputs(*shape)
        got, want = compiled(*args), fn(*args)
        for g, w in zip(got, want):
            assert torch.equal(g, w), shape


@pytest.mark.parametrize("dynamic", [None, True], ids=["recompile", "dynamic"])
@pytest.mark.parametrize("method", ["topk", "random", "prumerge", "tome"])
@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
def test_prune_compiles_over_shapes(backend, method, dynamic):
    _check_shapes(_prune_fn(method, backend), dynamic)


@pytest.mark.parametrize("dynamic", [None, True], ids=["recompile", "dynamic"])
@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
def test_keep_counts_compiles_over_shapes(backend, dynamic):
    def fn(tokens, scores, attention):
        return (kvtp_kernels.keep_counts(scores, 0.3, tokens.shape[2], backend=backend),)

    _check_shapes(fn, dynamic)


@pytest.mark.parametrize("dynamic", [None, True], ids=["recompile", "dynamic"])
def test_frame_embeds_path_compiles_over_shapes(dynamic):
    def fn(tokens, scores, attention):
        B, T = scores.shape
        frames = tokens.mean(dim=2)  # [B, T, D] as frame embeddings
        query = tokens[:, :2].mean(dim=2)  # [B, 2, D] as two query chunks
        out = kvtp_kernels.prune(tokens, None, 0.5, frame_embeds=frames, query_embeds=query, logit_scale=1.5,
                                 backend="cpu")
        return out.tokens, out.indices

    _check_shapes(fn, dynamic)


@pytest.mark.parametrize("dynamic", [None, True], ids=["recompile", "dynamic"])
def test_pack_compiles_over_shapes(dynamic):
    def fn(tokens, scores, attention):
        B, T, N, D = tokens.shape
        pruned = kvtp_kernels.prune(tokens, scores, 0.5, backend="cpu")
        text = torch.arange(B * 9 * D, dtype=tokens.dtype).reshape(B, 9, D)
        video_mask = torch.zeros(B, 9, dtype=torch.bool)
        video_mask[:, 3:5] = True
        packed = kvtp_kernels.pack_multimodal(text, None, video_mask, pruned, layout="none",
                                              length=B * (7 + T * N))
        return packed.embeds, packed.source_index

    _check_shapes(fn, dynamic)


def test_paper_allocation_under_compile_is_a_clear_error():
    tokens, scores, _ = _inputs(*SHAPES[0])
    compiled = torch.compile(lambda t, s: kvtp_kernels.prune(t, s, 0.25, allocation="paper").tokens,
                             fullgraph=True, backend="eager")
    with pytest.raises(Exception, match=r"`allocation` must be 'exact' under torch.compile.*host sync"):
        compiled(tokens, scores)


def test_random_with_int_seed_is_one_draw_everywhere():
    tokens, scores, _ = _inputs(2, 6, 19, 4)
    draws = [kvtp_kernels.prune(tokens, scores, 0.3, method="random", generator=5, backend=b).indices
             for b in ("reference", "cpu", "triton")]
    assert all(torch.equal(draws[0], d) for d in draws[1:])
    u = kvtp_kernels.api.hashed_uniform(5, (4096,), torch.device("cpu"))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.02 and u.unique().numel() == 4096
