"""pytest-benchmark suite: every provider of every benchmark at a small size, checked before it is timed.

    pytest bench/ --benchmark-only                # CPU here; CUDA when a GPU is visible
    pytest bench/ --benchmark-only --benchmark-group-by=group
    pytest bench/                                 # also the oracle tests (no timing)

Not collected by ``pytest tests`` (``testpaths = ["tests"]``). The sizes are small so the
suite stays fast (torch.compile compiles once per score mode); the real numbers come from
``python -m bench.run``.
"""

from __future__ import annotations

import pytest
import torch

import kvtp_kernels
from bench import bench_e2e, bench_methods, bench_pack, bench_prune
from bench.core import Case, Point, RunConfig

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CONFIG = RunConfig(device=DEVICE, options={"compile_points": "all"})
SMALL = {"B": 2, "T": 8, "N": 16, "D": 64, "beta": 0.25}
#: N >= 33 so that PruMerge's 32 neighbours exist.
METHODS_SMALL = {"B": 2, "T": 4, "N": 37, "D": 64, "beta": 0.25}
METHOD_CASES = [("prumerge", "siglip"), ("prumerge", "tokens"), ("tome", "siglip"), ("tome", "tokens"),
                ("random", None), ("topk", None)]
#: N = 49: a 7 x 7 grid.
PACK_SMALL = {"T": 4, "N": 49, "D": 64, "beta": 0.25}
PACK_CASES = [(layout, output, B) for layout in bench_pack.SWEPT_LAYOUTS for output in bench_pack.OUTPUTS
              for B in (1, 3)]
DTYPE = torch.bfloat16
#: The tiny LlavaOnevision (N = 7 x 7 pooled tokens a frame, float32): 4 frames, a 24-token prompt.
E2E_SMALL = {"B": 1, "T": 4, "P": 24, "beta": 0.25}


def _on_device(providers):
    return [p for p in providers if DEVICE.type in p.devices]


@pytest.fixture(scope="module")
def case_for():
    cache: dict[tuple[str, Point], Case] = {}

    def get(module, point: Point) -> Case:
        key = (module.__name__, point)
        if key not in cache:
            cache[key] = module.make_case(point, DEVICE)
        return cache[key]

    return get


def _run(benchmark, module, case: Case, provider) -> None:
    """Build, call once untimed, check against the oracle, then time (the harness's steps)."""
    point = case.point
    reason = provider.skip(point, CONFIG) if provider.skip is not None else None
    if reason:
        pytest.skip(reason)
    try:
        fn = provider.build(case)
        output = fn()  # untimed: compiles (torch.compile, Triton) and warms up
    except Exception as exc:
        if not provider.optional:
            raise
        pytest.skip(f"error: {type(exc).__name__}: {exc}")  # the harness reports these as error rows too
    module.BENCHMARK.check(case, provider, output)  # raises MismatchError before anything is timed

    if DEVICE.type == "cuda":
        def timed():
            fn()
            torch.cuda.synchronize()
    else:
        timed = fn
    benchmark.group = f"{module.BENCHMARK.name} {point.label}"
    benchmark.extra_info.update(point=point.label, role=provider.role,
                                bytes_moved=module.BENCHMARK.bytes_moved(point))
    benchmark(timed)


@pytest.mark.parametrize("mode", bench_prune.SCORE_MODES)
@pytest.mark.parametrize("provider", _on_device(bench_prune.PROVIDERS), ids=lambda p: p.name)
def test_prune(benchmark, case_for, provider, mode):
    point = bench_prune.make_point(DTYPE, mode, **SMALL)
    _run(benchmark, bench_prune, case_for(bench_prune, point), provider)


@pytest.mark.parametrize("provider,method,keys", [
    pytest.param(p, m, k, id=f"{m}-{k}-{p.name}" if k else f"{m}-{p.name}")
    for m, k in METHOD_CASES for p in _on_device(bench_methods.PROVIDERS) if p.name in bench_methods.PROVIDERS_OF[m]])
def test_methods(benchmark, case_for, provider, method, keys):
    point = bench_methods.make_point(DTYPE, method, keys, **METHODS_SMALL)
    _run(benchmark, bench_methods, case_for(bench_methods, point), provider)


@pytest.mark.parametrize("layout,output,B", PACK_CASES, ids=lambda x: str(x))
@pytest.mark.parametrize("provider", _on_device(bench_pack.PROVIDERS), ids=lambda p: p.name)
def test_pack(benchmark, case_for, provider, layout, output, B):
    point = bench_pack.make_point(DTYPE, layout, output, B=B, **PACK_SMALL)
    _run(benchmark, bench_pack, case_for(bench_pack, point), provider)


@pytest.fixture
def e2e_model_released():
    yield
    bench_e2e.release()  # remove_kvtp: the cached tiny model is unpatched after each test


@pytest.mark.parametrize("provider", _on_device(bench_e2e.PROVIDERS), ids=lambda p: p.name)
def test_e2e(benchmark, case_for, e2e_model_released, provider):
    reason = bench_e2e.transformers_problem()
    if reason:
        pytest.skip(reason)
    point = bench_e2e.make_point(torch.float32, **E2E_SMALL)
    _run(benchmark, bench_e2e, case_for(bench_e2e, point), provider)


# ----------------------------------------------------------------------------------
# The oracles themselves (not timed; skipped under --benchmark-only)
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("keys", bench_methods.KEY_MODES)
def test_prumerge_oracle_is_the_reference(dtype, keys):
    """The frame-by-frame oracle and the authors' loop against prune(method="prumerge", backend="reference")."""
    point = bench_methods.make_point(dtype, "prumerge", keys, B=2, T=6, N=40, D=48)
    i = bench_methods.make_inputs(point, torch.device("cpu"))
    want = kvtp_kernels.prune(i["tokens"], i["scores"], i["budget"], backend="reference",
                              **bench_methods._prune_kwargs(point, i))
    rows = bench_methods.prumerge_oracle_rows(i["tokens"], i["merge_keys"], i["token_scores"], want.indices,
                                              bench_methods.NUM_NEIGHBORS)
    # the same neighbours and the same float64 sum up to its order: at most one rounding apart
    atol, rtol = bench_methods.TOLERANCES[dtype]
    torch.testing.assert_close(rows, want.tokens, atol=atol, rtol=rtol)
    loop = bench_methods.prumerge_authors_loop(i["tokens"], i["scores"], i["budget"], i["token_scores"],
                                               i["merge_keys"])
    assert torch.equal(loop.indices, want.indices) and torch.equal(loop.frame_counts, want.frame_counts)
    torch.testing.assert_close(loop.tokens, want.tokens, atol=atol, rtol=rtol)


@pytest.mark.parametrize("keys", bench_methods.KEY_MODES)
def test_tome_loop_is_the_reference(keys):
    """The ToMe loop against prune(method="tome", backend="reference") on every frame."""
    point = bench_methods.make_point(torch.float32, "tome", keys, B=2, T=5, N=30, D=20)
    i = bench_methods.make_inputs(point, torch.device("cpu"))
    want = kvtp_kernels.prune(i["tokens"], i["scores"], i["budget"], backend="reference",
                              **bench_methods._prune_kwargs(point, i))
    loop = bench_methods.tome_loop(i["tokens"], i["scores"], i["budget"], i["merge_keys"])
    assert torch.equal(loop.indices, want.indices) and torch.equal(loop.frame_counts, want.frame_counts)
    torch.testing.assert_close(loop.tokens, want.tokens, atol=1e-5, rtol=1e-5)


def test_methods_quick_points_on_cpu():
    """Quick CPU runs: ToMe at a reduced T, everything else at the headline, bfloat16 only."""
    points = bench_methods.points(RunConfig(device=torch.device("cpu")))
    assert {p["method"] for p in points} == set(bench_methods.SWEPT_METHODS)
    assert all(p.dtype == torch.bfloat16 for p in points)
    assert all(bench_methods.is_headline(p) == (p["method"] != "tome") for p in points)


def test_e2e_paper_configs_are_the_flops_module_constants():
    """The transformers config objects of the FLOPs table describe the models of kvtp_kernels.integrations.flops."""
    reason = bench_e2e.transformers_problem()
    if reason:
        pytest.skip(reason)
    from kvtp_kernels.integrations import flops

    llms, siglip = bench_e2e.paper_configs()
    assert [name for name, _, _ in llms] == ["LLaVA-Video-7B", "LLaVA-Video-72B"]
    for (_, config, _), fields in zip(llms, (flops.LLAVA_VIDEO_7B, flops.LLAVA_VIDEO_72B)):
        assert flops.decoder_shape(config) == flops.decoder_shape(fields)
    assert flops.vision_tower_flops(siglip, 64) == flops.vision_tower_flops(flops.SIGLIP_SO400M, 64)
