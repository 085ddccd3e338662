"""What a run writes: CSV rows, Markdown tables and latency plots."""

from __future__ import annotations

import csv
import datetime
from collections.abc import Callable, Sequence
from pathlib import Path

from .core import Point, Result, RunConfig, dtype_name
from .measure import Environment

# ----------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------
CSV_COLUMNS = (
    "timestamp", "bench", "device", "device_name", "cores", "threads", "torch", "triton", "python", "git_sha",
    "dtype", "shape", "params", "provider", "role", "median_ms", "p10_ms", "p90_ms", "reps",
    "bytes_moved", "gbps", "setup_s", "sync_free", "metrics", "status",
)


def _fmt(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def csv_row(result: Result, env: Environment, timestamp: str) -> dict[str, str]:
    t = result.timing
    return {
        "timestamp": timestamp, "bench": result.bench, "device": env.device, "device_name": env.device_name,
        "cores": str(env.cores), "threads": str(env.threads), "torch": env.torch_version,
        "triton": env.triton_version, "python": env.python_version, "git_sha": env.git_sha,
        "dtype": dtype_name(result.point.dtype), "shape": result.point.shape_str, "params": result.point.params_str,
        "provider": result.provider, "role": result.role,
        "median_ms": _fmt(t and t.median_ms), "p10_ms": _fmt(t and t.p10_ms), "p90_ms": _fmt(t and t.p90_ms),
        "reps": "" if t is None else str(t.reps), "bytes_moved": "" if result.bytes_moved is None else
        str(result.bytes_moved), "gbps": _fmt(result.gbps, 4), "setup_s": _fmt(result.setup_s, 4),
        "sync_free": "" if result.sync_free is None else str(result.sync_free).lower(),
        "metrics": " ".join(f"{k}={v}" for k, v in result.metrics.items()), "status": result.status,
    }


def append_csv(path: Path, results: Sequence[Result], env: Environment) -> None:
    """Appends one row per result; writes the header when the file is new or empty.

    An existing file whose header differs from :data:`CSV_COLUMNS` is refused (rather
    than mixing two layouts in one file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != CSV_COLUMNS:
            raise ValueError(f"bench: {path} has a different header ({header}); expected {list(CSV_COLUMNS)}. "
                             "Write to a new file (--csv PATH).")
    timestamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        for result in results:
            writer.writerow(csv_row(result, env, timestamp))


# ----------------------------------------------------------------------------------
# Text tables and plots
# ----------------------------------------------------------------------------------
def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown pipe table, padded so it also reads well in a terminal."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def environment_line(env: Environment) -> str:
    return (f"device: {env.device} ({env.device_name}, {env.cores} cores, {env.threads} torch threads) | "
            f"torch {env.torch_version} | triton {env.triton_version} | python {env.python_version} | "
            f"git {env.git_sha}")


def results_table(results: Sequence[Result], config: RunConfig | None = None, env: Environment | None = None) -> str:
    """One row per point, one column of median ms per provider (the default report)."""
    providers = list(dict.fromkeys(r.provider for r in results))
    by_point: dict[Point, dict[str, Result]] = {}
    for r in results:
        by_point.setdefault(r.point, {})[r.provider] = r
    rows = []
    for point, row in by_point.items():
        cells = [point.label]
        for name in providers:
            r = row.get(name)
            cells.append("-" if r is None else ms(r.timing.median_ms) if r.timing else r.status.split(":")[0])
        rows.append(cells)
    return format_table(["point (median ms)", *providers], rows)


def join_report(parts: Sequence[str | None], results: Sequence[Result], env: Environment, *, max_points: int) -> str:
    """A benchmark's report: its own ``parts`` (None: a table with nothing to show), then the table of every
    point of ``results`` (:func:`all_points_section`) and the note on where it ran."""
    shown = [part for part in parts if part]
    return "\n\n".join([*shown, all_points_section(results, max_points), noise_note(env)])


def all_points_section(results: Sequence[Result], max_points: int) -> str:
    """The table of every point (median ms per provider) when there are at most ``max_points``, else a note."""
    n_points = len({r.point for r in results})
    if n_points <= max_points:
        return f"### all points (median ms)\n\n{results_table(results)}"
    return f"({n_points} points: every row is in the CSV, --csv PATH or --save)"


def noise_note(env: Environment) -> str:
    """The last line of every report: where the timings were taken."""
    return f"({environment_line(env)}; timings from a shared machine are noise)"


def plot_lines(results: Sequence[Result], path: Path, *, x: str, panel: Callable[[Point], str],
               keep: Callable[[Point], bool] = lambda point: True, title: str = "") -> None:
    """Median latency against ``point[x]``, one line per provider, one panel per ``panel(point)``;
    log-log axes, p10-p90 as a band."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    timed = [r for r in results if r.timing is not None and keep(r.point)]
    panels = list(dict.fromkeys(panel(r.point) for r in timed))
    if not panels:
        return
    providers = list(dict.fromkeys(r.provider for r in timed))
    colors = {name: f"C{i % 10}" for i, name in enumerate(providers)}  # same colour in every panel
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, name in zip(axes[0], panels):
        in_panel = [r for r in timed if panel(r.point) == name]
        for provider in dict.fromkeys(r.provider for r in in_panel):
            rs = sorted((r for r in in_panel if r.provider == provider), key=lambda r: r.point[x])
            xs = [r.point[x] for r in rs]
            style = "-" if rs[0].role == "ours" else ":" if rs[0].role == "roof" else "--"
            ax.plot(xs, [r.timing.median_ms for r in rs], style, marker="o", label=provider, color=colors[provider])
            ax.fill_between(xs, [r.timing.p10_ms for r in rs], [r.timing.p90_ms for r in rs], alpha=0.15,
                            color=colors[provider])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.point[x] for r in in_panel}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel("median latency (ms)")
        ax.set_title(name, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def speedup(result: Result, ours: Result | None) -> float | None:
    """``result``'s median time over ours (None when either was not timed)."""
    if result.timing is None or ours is None or ours.timing is None:
        return None
    return result.timing.median_ms / ours.timing.median_ms


def provider_table(rows: Sequence[Result], *, cuda: bool, gbps_digits: int = 1) -> str:
    """One row per provider at one point: median and p10-p90 ms, GB/s, time over ours, setup time, on CUDA
    whether it is free of host syncs, and the status."""
    ours = next((r for r in rows if r.role == "ours"), None)
    table = []
    for r in rows:
        t = r.timing
        ratio = speedup(r, ours)
        cells = [r.provider, r.role, ms(t and t.median_ms), "-" if t is None else f"{ms(t.p10_ms)}-{ms(t.p90_ms)}",
                 "-" if r.gbps is None else f"{r.gbps:.{gbps_digits}f}", "-" if ratio is None else f"{ratio:.2f}x",
                 "-" if r.setup_s is None else f"{r.setup_s:.2f}"]
        if cuda:
            cells.append("-" if r.sync_free is None else "yes" if r.sync_free else "NO")
        cells.append(r.status)
        table.append(cells)
    headers = ["provider", "role", "median ms", "p10-p90 ms", "GB/s", "t / t_ours", "setup s"]
    headers += ["sync-free"] if cuda else []
    headers.append("status")
    return format_table(headers, table)
