"""Offline kernel report: what every GPU kernel of the package compiles to, and a model of its time.

``python -m bench.kernel_report`` (no GPU needed):

1. runs each public call of :mod:`bench.kernel_scenarios` at the headline (B=1, T=64,
   N=196, D=3584, bf16, beta=0.2), at B=8 and at T=1024 (N=49) with every Triton launch
   recorded, not run (:mod:`bench.kernel_launches`), so the kernels, grids, warps and
   constexprs are whatever the ops choose today;
2. compiles each distinct launch with Triton's own launcher specialisation for sm_80,
   sm_89, sm_90 and sm_100 and reads registers, spills, shared memory and the loads in
   flight per thread from the machine code (:mod:`bench.kernel_model`);
3. models each launch's time on an H100 SXM (132 SMs, 3.35 TB/s) against the bandwidth
   floor of its bytes (model in :mod:`bench.kernel_model`'s docstring), and each call's
   total against the floor of its minimal algorithm;
4. lists the CUDA kernels of the built extension per architecture (cuobjdump).

Bytes of a launch: every tensor argument once, at its full size, except an input the
launch gathers rows from (an input larger than a same-width tensor the op allocated,
e.g. the tokens next to the packed rows): the gathered rows only. Where a call's
minimal algorithm reads an input in full (``full_reads``) and no launch was charged that
much, the rest is charged to the last launch that reads it.

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

import torch  # noqa: E402

from bench import kernel_model as km  # noqa: E402
from bench.kernel_launches import Launch, compile_launch, record  # noqa: E402
from bench.kernel_scenarios import HEADLINE, SCENARIOS, SHAPES, Scenario, Shape  # noqa: E402

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
    bytes_moved: int
    writes_output: bool  # an argument is the call's returned tokens


def charge(scenario: Scenario, inputs: dict, launches: list[Launch]) -> list[int]:
    """Bytes moved per launch (rule in the module docstring)."""
    ids = {t.data_ptr(): name for name, t in inputs.items() if isinstance(t, torch.Tensor)}
    charged, full_read = [], {name: [] for name in scenario.full_reads}
    for i, launch in enumerate(launches):
        tensors = launch.tensors()
        made = [t for t in tensors if t.data_ptr() not in ids]
        total = 0
        for t in tensors:
            size = t.untyped_storage().nbytes() if t.data_ptr() in ids else t.numel() * t.element_size()
            name = ids.get(t.data_ptr())
            if name is not None:
                rows = [m for m in made if m.dim() and t.dim() and m.shape[-1] == t.shape[-1]
                        and m.element_size() == t.element_size() and m.numel() < t.numel()]
                if rows:
                    size = max(m.numel() for m in rows) * t.element_size()
                if name in full_read:
                    full_read[name].append((i, size, t.untyped_storage().nbytes()))
            total += size
        charged.append(total)
    for reads in full_read.values():
        if reads and max(size for _, size, _ in reads) < reads[-1][2]:
            i, size, full = reads[-1]
            charged[i] += full - size
    return charged


def collect(shapes) -> list[Row]:
    rows = []
    for shape in shapes:
        for scenario in SCENARIOS:
            inputs = scenario.make(shape)
            with record() as rec:
                out = scenario.run(inputs)
            out_tokens = getattr(out, "tokens", None)
            charged = charge(scenario, inputs, rec.launches)
            for launch, nbytes in zip(rec.launches, charged):
                writes = out_tokens is not None and any(t.data_ptr() == out_tokens.data_ptr()
                                                        for t in launch.tensors())
                rows.append(Row(shape, scenario, launch, nbytes, writes))
            if not rec.launches:
                raise SystemExit(f"bench.kernel_report: {scenario.name} at {shape.name} launched no Triton kernel "
                                 "(is TRITON_INTERPRET set, or triton missing?)")
    return rows


def usages(rows: list[Row], capabilities) -> dict:
    cache = {}
    for row in rows:
        for cap in capabilities:
            key = (row.launch.key(), cap)
            if key not in cache:
                print(f"[kernel_report] compiling {row.launch.name} ({row.scenario.name}, {row.shape.name}) "
                      f"for sm_{cap}", file=sys.stderr, flush=True)
                cache[key] = km.compiled_usage(compile_launch(row.launch, cap), cap)
    return cache


def _table(headers, lines) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *lines)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(x) for x in lines])


def _ratio(model_us: float, floor_us: float) -> str:
    return f"{model_us / floor_us:.1f}" if floor_us >= 0.1 else "-"  # a floor under 0.1 us: launch-bound


def launch_table(rows, usage) -> str:
    lines = []
    for r in rows:
        u = usage[(r.launch.key(), 90)]
        t = km.model(u, r.launch.num_warps, r.launch.ctas, r.bytes_moved, H100)
        floor = km.floor_us(r.bytes_moved, H100)
        lines.append([r.shape.name, r.scenario.name, r.launch.name, "x".join(map(str, r.launch.grid)),
                      r.launch.num_warps, u.registers, u.spill_bytes, f"{u.shared_bytes / 1024:.1f}", t.ctas_per_sm,
                      f"{t.waves:.2f}", f"{r.bytes_moved / 1e6:.1f}", f"{t.inflight_per_sm / 1024:.0f}",
                      f"{t.model_us:.1f}", f"{floor:.1f}", _ratio(t.model_us, floor)])
    return _table(["shape", "call", "kernel", "grid", "warps", "regs", "spill B", "smem KB", "CTA/SM", "waves",
                   "MB", "KB in flight/SM", "model us", "floor us", "x floor"], lines)


def call_table(rows, usage) -> tuple[str, list[str]]:
    lines, missed = [], []
    for shape in SHAPES:
        for scenario in SCENARIOS:
            mine = [r for r in rows if r.shape is shape and r.scenario is scenario]
            if not mine:
                continue
            model = sum(km.model(usage[(r.launch.key(), 90)], r.launch.num_warps, r.launch.ctas, r.bytes_moved,
                                 H100).model_us for r in mine)
            fp64 = km.fp64_us(scenario.fp64_flops(shape), H100)
            model = max(model, fp64)
            floor = km.floor_us(scenario.floor_bytes(shape), H100)
            verdict = "-"
            if shape is HEADLINE and scenario.name in TARGETS:
                kind, limit = TARGETS[scenario.name]
                ok = model <= limit * floor if kind == "floor" else model <= limit
                verdict = ("met" if ok else "MISSED") + (f" (<= {limit}x floor)" if kind == "floor"
                                                         else f" (<= {limit:.0f} us)")
                if not ok:
                    missed.append(f"{scenario.name}: modelled {model:.1f} us, target {verdict}")
            lines.append([shape.name, scenario.name, len(mine), f"{scenario.floor_bytes(shape) / 1e6:.1f}",
                          f"{floor:.1f}", f"{fp64:.1f}", f"{model:.1f}", _ratio(model, floor), verdict])
    return _table(["shape", "call", "launches", "min MB", "floor us", "fp64 us", "model us", "x floor", "target"],
                  lines), missed


def arch_table(rows, usage, capabilities) -> tuple[str, list[str]]:
    lines, failures, seen = [], [], set()
    for r in rows:
        if r.launch.key() in seen:
            continue
        seen.add(r.launch.key())
        cells = [r.shape.name, r.scenario.name, r.launch.name, r.launch.num_warps]
        for cap in capabilities:
            u, gpu = usage[(r.launch.key(), cap)], km.GPUS[cap]
            per_sm = km.ctas_per_sm(u, r.launch.num_warps, gpu)
            fits = u.shared_bytes <= gpu.smem_per_cta_kb * 1024 and per_sm > 0
            cells.append(f"{u.registers}/{u.spill_bytes}/{u.shared_bytes / 1024:.0f}/{per_sm}" + ("" if fits else "!"))
            where = f"{r.launch.name} ({r.scenario.name}, {r.shape.name}) on sm_{cap}"
            if not fits:
                failures.append(f"{where}: {u.shared_bytes} B of shared memory, {per_sm} CTAs/SM "
                                f"(the SM has {gpu.smem_per_cta_kb} KB per CTA)")
            if u.spill_bytes and r.scenario.hot:
                failures.append(f"{where}: spills {u.spill_bytes} bytes per thread")
        lines.append(cells)
    headers = ["shape", "call", "kernel", "warps"] + [f"sm_{c} reg/spill/smemKB/CTAs" for c in capabilities]
    return _table(headers, lines), failures


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
    return _table(["call (headline)", "fp64 GFLOP"] + [f"{km.GPUS[c].name} fp64 us / floor us" for c in
                                                        (80, 86, 89, 90, 100)], lines)


def copy_checks(rows, usage) -> list[str]:
    copies = [r for r in rows if r.shape is HEADLINE and r.scenario.name == "prune given" and r.writes_output]
    if not copies:
        return ["no launch of prune (given token scores) at the headline writes the returned rows"]
    failures = []
    for r in copies:
        t = km.model(usage[(r.launch.key(), 90)], r.launch.num_warps, r.launch.ctas, r.bytes_moved, H100)
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
    return _table(["CUDA kernel", "arch", "regs", "stack B", "static smem B", "local B"], lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default=",".join(map(str, CAPABILITIES)),
                        help="compute capabilities to compile for (default 80,89,90,100; 90 is always included)")
    parser.add_argument("--shapes", default=",".join(s.name for s in SHAPES),
                        help=f"subset of {[s.name for s in SHAPES]} (the headline is always included)")
    args = parser.parse_args(argv)
    caps = sorted({90, *(int(c) for c in args.arch.split(","))})
    shapes = [s for s in SHAPES if s is HEADLINE or s.name in args.shapes.split(",")]
    rows = collect(shapes)
    usage = usages(rows, caps)
    print(f"# Kernel report: sm_90 model on {H100.name} ({H100.sms} SMs, {H100.bandwidth_tbs} TB/s)\n")
    print(launch_table(rows, usage), "\n")
    calls, missed = call_table(rows, usage)
    print(calls, "\n")
    arch, failures = arch_table(rows, usage, caps)
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
