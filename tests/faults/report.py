"""The suite's results: one Result per scenario, the tables, the timeline figure and docs/reliability.md.

Only a full, passing run rewrites the report (conftest decides); this module knows its format.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPORT = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"


@dataclass
class Result:
    scenario: str
    documents: int
    lost: int
    duplicated: int
    redelivered: int
    alerts: int
    alert_resends: int
    fault_s: float
    recovery_s: float
    duration_s: float
    workers_started: int
    notes: list[str] = field(default_factory=list)
    # For the timeline figure, in seconds since the stream started: documents stored in each
    # second (by `stored_at`), and the fault window.
    stored_per_s: list[int] = field(default_factory=list)
    fault_at: tuple[float, float] = (0.0, 0.0)


COLUMNS = ("scenario", "documents", "lost", "duplicated", "redelivered", "alerts (resent)",
           "fault", "recovery time", "scenario time")


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def table_rows(results: Sequence[Result]) -> list[tuple[str, ...]]:
    return [
        (r.scenario, f"{r.documents:,}", str(r.lost), str(r.duplicated), str(r.redelivered),
         f"{r.alerts} ({r.alert_resends})", _seconds(r.fault_s), _seconds(r.recovery_s), _seconds(r.duration_s))
        for r in results
    ]


def markdown_table(results: Sequence[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def text_table(results: Sequence[Result]) -> str:
    rows = [COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine() -> str:
    memory = ""
    try:
        kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")).split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}){memory}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def plot_timeline(results: Sequence[Result], path: Path) -> None:
    """One panel per scenario: documents stored per second, the fault window shaded, the recovery point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 1.7 * len(results) + 0.8), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        ax.axvspan(*r.fault_at, color="#dd8452", alpha=0.35, lw=0, zorder=0, label="fault")
        ax.bar(range(len(r.stored_per_s)), r.stored_per_s, width=1.0, align="edge", color="#4c72b0",
               zorder=1, label="documents stored per second")
        recovered = r.fault_at[1] + r.recovery_s
        ax.axvline(recovered, color="#c44e52", ls="--", lw=1.2, zorder=2, label="recovered")
        ax.annotate(f"recovered +{r.recovery_s:.1f} s", (recovered, 0.97), xycoords=("data", "axes fraction"),
                    xytext=(4, 0), textcoords="offset points", va="top", fontsize=8, color="#c44e52")
        ax.set_ylim(0, 1.3 * max(r.stored_per_s, default=1))
        ax.set_title(r.scenario, fontsize=9, loc="left")
        ax.set_ylabel("docs/s", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3, zorder=0)
    axes[-1, 0].set_xlabel("seconds since the stream started", fontsize=8)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: Sequence[Result], total_s: float, path: Path = REPORT) -> None:
    """Replace the generated section of docs/reliability.md (between the markers) with this run's table and figure."""
    notes = [f"- {r.scenario}: {note}" for r in results for note in r.notes]
    figure = path.with_name(f"{path.stem}-timeline.png")
    plot_timeline(results, figure)
    section = "\n".join([
        BEGIN,
        (f"Produced by `make test-faults` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
         f"{machine()}; the whole suite took {total_s / 60:.1f} min."),
        "",
        markdown_table(results),
        "",
        f"![Documents stored per second in each scenario](./{figure.name})",
        "",
        "*Documents stored per second (by `stored_at`) in each scenario; shaded: the fault; dashed: the recovery point.*",
        *(["", "Notes from this run:", *notes] if notes else []),
        END,
    ])
    text = path.read_text() if path.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + section + tail)
