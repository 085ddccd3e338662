"""The per-subset summary of ``kvtp eval``'s records, and the table it prints."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..options import MODES

if TYPE_CHECKING:
    from .evaluate import EvalSettings

__all__ = ["format_summary", "summarize"]


def summarize(records: Sequence[dict], modes: Sequence[str] = MODES) -> list[dict[str, Any]]:
    """Per-subset numbers (subsets in order of first appearance, then "all" when there are several).

    Each row: ``subset``, ``n``, and per mode ``accuracy`` (fraction), ``vision_tokens`` and
    ``llm_tokens`` (means per sample), ``latency_ms`` (median per sample); ``flops_ratio``
    = sum of KVTP prefill FLOPs / sum of full prefill FLOPs, ``total_flops_ratio`` the same
    with the vision towers added to both sides (None unless both modes ran).
    """
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record.get("subset", "all"), []).append(record)
    if len(groups) > 1 or not groups:
        groups["all"] = list(records)

    def mean(values):
        return sum(values) / len(values) if values else None

    rows = []
    for subset, members in groups.items():
        row: dict[str, Any] = {"subset": subset, "n": len(members)}
        for key in ("accuracy", "vision_tokens", "llm_tokens", "latency_ms", "prefill_flops", "total_flops"):
            row[key] = {}
        for mode in modes:
            results = [r[mode] for r in members if mode in r]
            row["accuracy"][mode] = mean([float(x["correct"]) for x in results])
            row["vision_tokens"][mode] = mean([x["vision_tokens"] for x in results])
            row["llm_tokens"][mode] = mean([x["llm_tokens"] for x in results])
            row["latency_ms"][mode] = statistics.median(x["latency_s"] * 1e3 for x in results) if results else None
            row["prefill_flops"][mode] = sum(x["prefill_flops"] for x in results) if results else None
            row["total_flops"][mode] = sum(x["prefill_flops"] + x["vision_flops"] for x in results) \
                if results and all("vision_flops" in x for x in results) else None
        for key, ratio in (("prefill_flops", "flops_ratio"), ("total_flops", "total_flops_ratio")):
            full, pruned = row[key].get("full"), row[key].get("kvtp")
            row[ratio] = pruned / full if full and pruned is not None else None
        rows.append(row)
    return rows


def format_summary(rows: Sequence[dict], settings: EvalSettings | None = None) -> str:
    """The table ``kvtp eval`` prints: subsets as rows, full and KVTP side by side."""

    def pct(x, digits=2):
        return "-" if x is None else f"{100 * x:.{digits}f}"

    def num(x):
        return "-" if x is None else f"{x:.0f}"

    def ms(x):
        return "-" if x is None else f"{x:.1f}"

    def share(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    header = ["subset", "n", "acc full", "acc KVTP", "vision tok full", "vision tok KVTP", "LLM FLOPs KVTP/full",
              "+vision KVTP/full", "latency full ms", "latency KVTP ms"]
    table = [header]
    for row in rows:
        acc, vis, lat = row["accuracy"], row["vision_tokens"], row["latency_ms"]
        table.append([row["subset"], str(row["n"]), pct(acc.get("full")), pct(acc.get("kvtp")), num(vis.get("full")),
                      num(vis.get("kvtp")), share(row["flops_ratio"]), share(row.get("total_flops_ratio")),
                      ms(lat.get("full")), ms(lat.get("kvtp"))])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    if settings is not None:
        predictor = settings.predictor or "none (uniform frame scores)"
        method = settings.method + (f" (merge {settings.merge})" if settings.method == "prumerge" else "")
        lines.append(f"KVTP eval: model {settings.model}, predictor {predictor}, budget {settings.budget}, "
                     f"method {method}, temperature {settings.temperature}, allocation {settings.allocation}")
    for i, line in enumerate(table):
        lines.append("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in
                               enumerate(zip(line, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("accuracy in %; vision tokens: the video block the LLM sees (mean per sample); LLM FLOPs: the "
                 "LLM prefill; +vision: with the vision tower (and, for KVTP, the predictor's) on both sides; "
                 "latency: median per sample of the batched forward pass")
    return "\n".join(lines)
