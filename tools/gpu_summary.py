"""Final summary of tools/gpu_check.sh: every step's result and every ratio against its target.

``python -m tools.gpu_summary OUTDIR`` (from the repository root): reads OUTDIR/steps.tsv (one ``name<TAB>status<TAB>
seconds<TAB>detail`` line per step, written by gpu_check.sh) and OUTDIR/bench.csv (the
bench's rows), prints a table of the steps, then for the prune headline (given token
scores, per dtype) each target of bench.bench_prune.TARGETS for the device the rows
were taken on (ratio, target, met / MISSED), the host-sync check of ``ours``, and the
other headline speedups of ours (CUDA graph, torch.compile, methods, pack) for
reference. Writes the same text to OUTDIR/summary.txt. Exit 1 when a step failed.
"""

from __future__ import annotations

import csv
import os
import sys


def _steps(outdir: str) -> tuple[list[str], bool]:
    lines, ok = [], True
    path = os.path.join(outdir, "steps.tsv")
    if not os.path.exists(path):
        return ["(no steps recorded)"], False
    with open(path) as f:
        for line in f:
            name, status, seconds, detail = (line.rstrip("\n").split("\t") + ["", "", ""])[:4]
            ok &= status in ("passed", "skipped")
            lines.append(f"  {name:<34} {status:<8} {seconds:>6} s  {detail}")
    return lines, ok


def _prune_targets(rows: list[dict]) -> list[str]:
    from bench.bench_prune import HEADLINE, HEADLINE_SHAPE, TARGETS, target_met
    out = []
    head = [r for r in rows if r["bench"] == "prune" and r["shape"] == HEADLINE_SHAPE and "scores=given" in r["params"]
            and f"beta={HEADLINE['beta']}" in r["params"]]
    for dtype in sorted({r["dtype"] for r in head}):
        at = {r["provider"]: r for r in head if r["dtype"] == dtype}
        ours = at.get("ours")
        if ours is None or not ours["median_ms"]:
            out.append(f"  prune {dtype}: no timing of ours ({ours and ours['status']})")
            continue
        t_ours = float(ours["median_ms"])
        for provider, kind, factor in TARGETS.get(ours["device"], ()):
            other = at.get(provider)
            if other is None or not other["median_ms"]:
                out.append(f"  prune {dtype}: {provider}: not measured ({other and other['status']})")
                continue
            ratio = float(other["median_ms"]) / t_ours
            text = (f"ours {ratio:.2f}x faster than {provider} (target >= {factor:g}x)" if kind == "speedup"
                    else f"ours at {1 / ratio:.2f}x the time of {provider} (target <= {factor:g}x)")
            out.append(f"  prune {dtype}: {text}: {'met' if target_met(kind, factor, ratio) else 'MISSED'}")
        if ours["sync_free"]:
            out.append(f"  prune {dtype}: ours free of host syncs: {ours['sync_free']} (target true)")
        for variant in ("ours_graph", "ours_compile"):
            r = at.get(variant)
            if r is not None and r["median_ms"]:
                out.append(f"  prune {dtype}: {variant} {float(r['median_ms']) * 1e3:.1f} us = "
                           f"{float(r['median_ms']) / t_ours:.2f}x the time of ours (no target)")
    return out


def _other_speedups(rows: list[dict]) -> list[str]:
    out = []
    for bench in ("methods", "pack", "e2e"):
        mine = [r for r in rows if r["bench"] == bench and r["median_ms"]]
        by_point = {}
        for r in mine:
            by_point.setdefault((r["dtype"], r["shape"], r["params"]), {})[r["provider"]] = r
        for (dtype, shape, params), at in sorted(by_point.items()):
            ours = at.get("ours") or at.get("kvtp")
            if ours is None:
                continue
            for name, r in sorted(at.items()):
                if r is not ours and r["role"] == "baseline":
                    ratio = float(r["median_ms"]) / float(ours["median_ms"])
                    out.append(f"  {bench} {dtype} {shape} {params}: {ratio:.2f}x faster than {name} (no target)")
    return out


def main() -> int:
    outdir = sys.argv[1]
    steps, ok = _steps(outdir)
    text = ["# gpu_check summary", "steps:", *steps]
    path = os.path.join(outdir, "bench.csv")
    if os.path.exists(path):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        device = rows[0]["device_name"] if rows else "?"
        text += [f"targets (issue 15, bench rows on {device}):", *_prune_targets(rows), *_other_speedups(rows)]
    else:
        text.append("no bench.csv: the bench did not run")
    text.append(f"gpu_check: {'every step passed' if ok else 'a step FAILED'}")
    with open(os.path.join(outdir, "summary.txt"), "w") as f:
        f.write("\n".join(text) + "\n")
    print("\n".join(text))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
