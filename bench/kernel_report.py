"""Offline kernel report: what every GPU kernel of the package compiles to, and a model of its time.

``python -m bench.kernel_report`` (no GPU needed):

1. runs each public call of :mod:`bench.kernel_scenarios` at the headline (B=1, T=64,
   N=196, D=3584, bf16, beta=0.2), at B=8 and at T=1024 (N=49) with every Triton launch
   recorded, not run (:mod:`bench.kernel_launches`), so the kernels, grids, warps and
   constexprs are whatever the ops choose today; once per architecture, since a launcher
   may choose by the GPU's capability (PruMerge's select warps);
2. compiles each distinct launch with Triton's own launcher specialisation for sm_80,
   sm_89, sm_90 and sm_100 and reads registers, spills, shared memory and the loads in
   flight per thread from the machine code (:mod:`bench.kernel_model`);
3. models each launch's time on an H100 SXM (132 SMs, 3.35 TB/s) against the bandwidth
   floor of its bytes (model in :mod:`bench.kernel_model`'s docstring), and each call's
   total against the floor of its minimal algorithm;
4. lists the CUDA kernels of the built extension per architecture (cuobjdump).

Bytes and work of a launch: the kernel's own model, declared beside it in its module
(``TRAFFIC[kernel name](args, grid)`` -> ``kvtp_kernels.kernels._traffic.Traffic``): what
its programs really read and write in the mode its constexprs select (a placeholder
tensor, or one a mode leaves unread, costs nothing), L2 re-reads, float64 work, dependent
round trips and the program that runs alone. A recorded kernel without a model stops
the report. Per call, the modelled time is the sum of its launches' (they run one after
the other on a stream) against the floor of its minimal algorithm, and beside it the
least the model gives any call with that many launches (``bound us``,
:func:`bench.kernel_model.launch_bound_us`).

Exit status 1 when a kernel on the hot path (every exact-mode call) spills on any
architecture, when a kernel's shared memory does not fit an architecture, or when the
launch that writes the kept rows at the headline (prune, given token scores) has fewer
than 264 CTAs (2 per SM) or fewer than 32 KB of loads in flight per SM. The issue's
targets (prune given <= 1.5x its floor, distinctiveness <= 2x, PruMerge <= 0.2 ms) are
printed as met / MISSED; they are model outputs and do not change the exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("bench.kernel_report: unset TRITON_INTERPRET (the report compiles the GPU kernels)")

from bench import kernel_model as km  # noqa: E402
from bench.kernel_launches import Launch, compile_launch, record  # noqa: E402
from bench.kernel_scenarios import HEADLINE, SCENARIOS, SHAPES, Scenario, Shape  # noqa: E402
from bench.report import format_table  # noqa: E402
from kvtp_kernels.kernels._traffic import Traffic  # noqa: E402

CAPABILITIES = (80, 89, 90, 100)
H100 = km.GPUS[90]
MIN_COPY_CTAS = 2 * H100.sms
MIN_INFLIGHT_KB = 32
TARGETS = {"prune given": ("floor", 1.5), "prune distinct": ("floor", 2.0), "prumerge": ("us", 200.0)}


@dataclass
class Row:
    shape: Shape
    scenario: Scenario
    launch: Launch
    traffic: Traffic
    writes_output: bool  # an argument is the call's returned tokens

    @property
    def bytes_moved(self) -> int:
        return self.traffic.moved


def traffic_of(launch: Launch) -> Traffic:
    """The kernel's own model of what ``launch`` moves (module docstring)."""
    module = sys.modules.get(launch.kernel.fn.__module__)
    models = getattr(module, "TRAFFIC", {})
    if launch.name not in models:
        raise SystemExit(f"bench.kernel_report: {launch.kernel.fn.__module__} declares no TRAFFIC model for "
                         f"{launch.name}; add one beside the kernel (kvtp_kernels/kernels/_traffic.py)")
    return models[launch.name](launch.values(), launch.grid)


def collect(shapes, capability: int = 90) -> list[Row]:
    """Every launch of every scenario, recorded as the ops launch it on ``sm_<capability>``
    (a launcher may choose tiles or warps by the GPU's capability)."""
    rows = []
    for shape in shapes:
        for scenario in SCENARIOS:
            inputs = scenario.make(shape)
            with record(capability) as rec:
                out = scenario.run(inputs)
            out_tokens = getattr(out, "tokens", None)
            for launch in rec.launches:
                writes = out_tokens is not None and any(t.data_ptr() == out_tokens.data_ptr()
                                                        for t in launch.tensors())
                rows.append(Row(shape, scenario, launch, traffic_of(launch), writes))
            if not rec.launches:
                raise SystemExit(f"bench.kernel_report: {scenario.name} at {shape.name} launched no Triton kernel "
                                 "(is TRITON_INTERPRET set, or triton missing?)")
    return rows


def timing(row: Row, usage) -> km.Timing:
    """sm_90 model of one launch on an H100."""
    return km.model(usage[(row.launch.key(), 90)], row.launch.num_warps, row.launch.ctas, row.bytes_moved, H100,
                    row.traffic)


def usages(rows_by_cap: dict[int, list[Row]]) -> dict:
    cache = {}
    for cap, rows in rows_by_cap.items():
        for row in rows:
            key = (row.launch.key(), cap)
            if key not in cache:
                print(f"[kernel_report] compiling {row.launch.name} ({row.scenario.name}, {row.shape.name}) "
                      f"for sm_{cap}", file=sys.stderr, flush=True)
                cache[key] = km.compiled_usage(compile_launch(row.launch, cap), cap)
    return cache


def _ratio(model_us: float, floor_us: float) -> str:
    return f"{model_us / floor_us:.1f}" if floor_us >= 0.1 else "-"  # a floor under 0.1 us: launch-bound


def launch_table(rows, usage) -> str:
    lines = []
    for r in rows:
        u = usage[(r.launch.key(), 90)]
        t = timing(r, usage)
        floor = km.floor_us(r.bytes_moved, H100)
        lines.append([r.shape.name, r.scenario.name, r.launch.name, "x".join(map(str, r.launch.grid)),
                      r.launch.num_warps, u.registers, u.spill_bytes, f"{u.shared_bytes / 1024:.1f}", t.ctas_per_sm,
                      f"{t.waves:.2f}", f"{r.traffic.read / 1e6:.2f}", f"{r.traffic.written / 1e6:.2f}",
                      f"{r.traffic.l2_read / 1e6:.1f}", f"{t.inflight_per_sm / 1024:.0f}", t.bound,
                      f"{t.model_us:.1f}", f"{floor:.1f}", _ratio(t.model_us, floor)])
    return format_table(["shape", "call", "kernel", "grid", "warps", "regs", "spill B", "smem KB", "CTA/SM",
                         "waves", "MB read", "MB written", "L2 MB", "KB in flight/SM", "bound", "model us", "floor us",
                         "x floor"], lines)


def call_table(rows, usage) -> tuple[str, list[str]]:
    lines, missed = [], []
    for shape in SHAPES:
        for scenario in SCENARIOS:
            mine = [r for r in rows if r.shape is shape and r.scenario is scenario]
            if not mine:
                continue
            model = sum(timing(r, usage).model_us for r in mine)
            fp64 = km.fp64_us(scenario.fp64_flops(shape), H100)
            moved = sum(r.bytes_moved for r in mine)
            floor = km.floor_us(scenario.floor_bytes(shape), H100)
            bound = km.launch_bound_us(len(mine), floor)
            verdict = "-"
            if shape is HEADLINE and scenario.name in TARGETS:
                kind, limit = TARGETS[scenario.name]
                ok = model <= limit * floor if kind == "floor" else model <= limit
                verdict = ("met" if ok else "MISSED") + (f" (<= {limit}x floor)" if kind == "floor"
                                                         else f" (<= {limit:.0f} us)")
                if not ok:
                    missed.append(f"{scenario.name}: modelled {model:.1f} us, target {verdict}; the least any "
                                  f"{len(mine)}-launch call models is {bound:.1f} us ({_ratio(bound, floor)}x floor)")
            lines.append([shape.name, scenario.name, len(mine), f"{scenario.floor_bytes(shape) / 1e6:.1f}",
                          f"{moved / 1e6:.1f}", f"{floor:.1f}", f"{fp64:.1f}", f"{model:.1f}", _ratio(model, floor),
                          f"{bound:.1f}", verdict])
    return format_table(["shape", "call", "launches", "min MB", "moved MB", "floor us", "fp64 us", "model us",
                         "x floor", "bound us", "target"], lines), missed


def arch_table(rows_by_cap, usage, capabilities) -> tuple[str, list[str]]:
    """Per launch (as recorded for sm_90) its resources on each architecture, compiled as the
    launcher chooses it there (a different warp count is shown as ``@<warps>w``)."""
    lines, failures, seen = [], [], set()
    for i, r in enumerate(rows_by_cap[90]):
        key = tuple(rows_by_cap[cap][i].launch.key() for cap in capabilities)
        if key in seen:
            continue
        seen.add(key)
        cells = [r.shape.name, r.scenario.name, r.launch.name, r.launch.num_warps]
        for cap in capabilities:
            launch = rows_by_cap[cap][i].launch
            u, gpu = usage[(launch.key(), cap)], km.GPUS[cap]
            per_sm = km.ctas_per_sm(u, launch.num_warps, gpu)
            fits = u.shared_bytes <= gpu.smem_per_cta_kb * 1024 and per_sm > 0
            warps = "" if launch.num_warps == r.launch.num_warps else f"@{launch.num_warps}w"
            cells.append(f"{u.registers}/{u.spill_bytes}/{u.shared_bytes / 1024:.0f}/{per_sm}{warps}"
                         + ("" if fits else "!"))
            where = f"{r.launch.name} ({r.scenario.name}, {r.shape.name}) on sm_{cap}"
            if not fits:
                failures.append(f"{where}: {u.shared_bytes} B of shared memory, {per_sm} CTAs/SM "
                                f"(the SM has {gpu.smem_per_cta_kb} KB per CTA)")
            if u.spill_bytes and r.scenario.hot:
                failures.append(f"{where}: spills {u.spill_bytes} bytes per thread")
        lines.append(cells)
    headers = ["shape", "call", "kernel", "warps"] + [f"sm_{c} reg/spill/smemKB/CTAs" for c in capabilities]
    return format_table(headers, lines), failures


def fp64_table(rows) -> str:
    lines = []
    for scenario in SCENARIOS:
        flops = scenario.fp64_flops(HEADLINE)
        if not flops:
            continue
        cells = [scenario.name, f"{flops / 1e9:.2f}"]
        for cap in (80, 86, 89, 90, 100):
            gpu = km.GPUS[cap]
            fp64, floor = km.fp64_us(flops, gpu), km.floor_us(scenario.floor_bytes(HEADLINE), gpu)
            cells.append(f"{fp64:.0f} / {floor:.0f}" + (" SLOW" if fp64 > floor else ""))
        lines.append(cells)
    return format_table(["call (headline)", "fp64 GFLOP"] + [f"{km.GPUS[c].name} fp64 us / floor us" for c in
                                                             (80, 86, 89, 90, 100)], lines)


def copy_checks(rows, usage) -> list[str]:
    copies = [r for r in rows if r.shape is HEADLINE and r.scenario.name == "prune given" and r.writes_output]
    if not copies:
        return ["no launch of prune (given token scores) at the headline writes the returned rows"]
    failures = []
    for r in copies:
        t = timing(r, usage)
        if r.launch.ctas < MIN_COPY_CTAS:
            failures.append(f"copy {r.launch.name} at the headline: {r.launch.ctas} CTAs < {MIN_COPY_CTAS} "
                            f"(2 per SM of an H100)")
        if t.inflight_per_sm < MIN_INFLIGHT_KB * 1024:
            failures.append(f"copy {r.launch.name} at the headline: {t.inflight_per_sm / 1024:.0f} KB of loads "
                            f"in flight per SM < {MIN_INFLIGHT_KB} KB")
    return failures


def cuda_table() -> str:
    import kvtp_kernels
    from kvtp_kernels import ops
    if not ops.HAS_CPP or not kvtp_kernels._C.WITH_CUDA:
        return "(the extension was built without CUDA kernels)"
    usage = km.resource_usage(kvtp_kernels._C.__file__)
    lines = [[km.demangle(key.split("@")[0]), key.split("@")[1], *v] for key, v in sorted(usage.items())]
    return format_table(["CUDA kernel", "arch", "regs", "stack B", "static smem B", "local B"], lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default=",".join(map(str, CAPABILITIES)),
                        help="compute capabilities to compile for (default 80,89,90,100; 90 is always included)")
    parser.add_argument("--shapes", default=",".join(s.name for s in SHAPES),
                        help=f"subset of {[s.name for s in SHAPES]} (the headline is always included)")
    args = parser.parse_args(argv)
    caps = sorted({90, *(int(c) for c in args.arch.split(","))})
    shapes = [s for s in SHAPES if s is HEADLINE or s.name in args.shapes.split(",")]
    rows_by_cap = {cap: collect(shapes, cap) for cap in caps}
    if any(len(rows_by_cap[cap]) != len(rows_by_cap[90]) for cap in caps):
        raise SystemExit("bench.kernel_report: the ops launch a different number of kernels per architecture")
    rows = rows_by_cap[90]
    usage = usages(rows_by_cap)
    print(f"# Kernel report: sm_90 model on {H100.name} ({H100.sms} SMs, {H100.bandwidth_tbs} TB/s)\n")
    print(launch_table(rows, usage), "\n")
    calls, missed = call_table(rows, usage)
    print(calls, "\n")
    arch, failures = arch_table(rows_by_cap, usage, caps)
    print("# Per architecture (registers / spill bytes / shared KB / CTAs per SM; ! = does not fit)\n")
    print(arch, "\n")
    print("# float64 work at the headline against the bandwidth floor (SLOW: float64 takes longer)\n")
    print(fp64_table(rows), "\n")
    print("# CUDA kernels of kvtp_kernels._C (cuobjdump --dump-resource-usage)\n")
    print(cuda_table(), "\n")
    failures += copy_checks(rows, usage)
    for line in missed:
        print(f"target MISSED (model, not a failure): {line}")
    for line in failures:
        print(f"FAIL: {line}")
    print(f"kernel report: {'FAILED' if failures else 'passed'} ({len(failures)} failures)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
