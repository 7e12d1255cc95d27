"""The scale test's figures: docs/scaling/workers-<n>.json (one per run), docs/scaling.png and the table
between the markers in docs/scaling.md. `python -m tests.scale.report` redraws both from the JSON files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "scaling"
DOC = ROOT / "docs" / "scaling.md"
PLOT = ROOT / "docs" / "scaling.png"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"


def load(counts: list[int] | None = None) -> list[dict[str, Any]]:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("workers-*.json"))]
    runs = [r for r in runs if counts is None or r["workers"] in counts]
    return sorted(runs, key=lambda r: r["workers"])


def derived(run: dict[str, Any]) -> dict[str, float]:
    docs = run["documents"]
    worker_cpu = sum(run["worker_cpu_s"])
    return {
        "worker_cpu_s": worker_cpu,
        "docs_per_worker_cpu_s": docs / worker_cpu if worker_cpu else 0.0,
        "docs_per_pg_cpu_s": docs / run["postgres_cpu_s"] if run["postgres_cpu_s"] else 0.0,
        "machine_busy_share": run["machine_busy_cpu_s"] / (run["stored_s"] * run["machine_cpus"]),
        "ours_share": (worker_cpu + run["postgres_cpu_s"]) / (run["stored_s"] * run["machine_cpus"]),
        "tx_per_s": run["sql_transactions"] / run["stored_s"],
        "persist_tx_per_s": run["persist_transactions"] / run["stored_s"],
        "rows_per_doc": run["sql_rows_written"] / docs,
        "docs_per_persist_tx": run["persisted_documents"] / run["persist_transactions"] if run["persist_transactions"] else 0.0,
        "redelivered": run["persisted_documents"] - docs,
    }


def table(runs: list[dict[str, Any]]) -> str:
    """Two tables: what the group did, and what it cost."""
    base = runs[0]["docs_per_s"] if runs else 0.0
    speed = [
        "| workers | docs partitions each | documents | all stored after s | docs/s | steady docs/s (10-90 %)"
        " | speed-up | lag 0 after s | redelivered |",
        "| " + " | ".join(["---"] * 9) + " |",
    ]
    cost = [
        "| workers | worker CPU s | docs per worker CPU-s | PostgreSQL CPU s (this DB) | docs per PostgreSQL CPU-s"
        " | persist transactions/s (all commits/s) | docs per persist transaction | rows written per doc"
        " | advisory locks held / waited for | machine busy | of it this run |",
        "| " + " | ".join(["---"] * 11) + " |",
    ]
    for r in runs:
        d = derived(r)
        speed.append(
            f"| {r['workers']} | {'/'.join(map(str, r['docs_partitions_per_worker']))} | {r['documents']}"
            f" | {r['stored_s']:.1f} | {r['docs_per_s']:.0f} | {r['steady_docs_per_s']:.0f} | {r['docs_per_s'] / base:.2f}x"
            f" | {r['drained_s']:.1f} | {d['redelivered']:.0f} |"
        )
        cost.append(
            f"| {r['workers']} | {d['worker_cpu_s']:.1f} | {d['docs_per_worker_cpu_s']:.0f} | {r['postgres_cpu_s']:.1f}"
            f" | {d['docs_per_pg_cpu_s']:.0f} | {d['persist_tx_per_s']:.1f} ({d['tx_per_s']:.1f})"
            f" | {d['docs_per_persist_tx']:.0f} | {d['rows_per_doc']:.1f}"
            f" | {r['advisory_held_share']:.0%} / {r['advisory_wait_share']:.0%}"
            f" | {d['machine_busy_share']:.0%} | {d['ours_share']:.0%} |"
        )
    return "\n".join(speed) + "\n\n" + "\n".join(cost)


def plot(runs: list[dict[str, Any]], path: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, lag, stored, cost) = plt.subplots(1, 4, figsize=(20, 4.2))
    workers = [r["workers"] for r in runs]
    rate.plot(workers, [r["docs_per_s"] for r in runs], "o-", label="measured (burst / time to store)")
    rate.plot(workers, [r["steady_docs_per_s"] for r in runs], "s--", label="steady (10-90 % of the burst)")
    rate.plot(workers, [runs[0]["docs_per_s"] * w for w in workers], ":", color="grey", label="linear from 1 worker")
    rate.set(xlabel="worker processes", ylabel="documents / s", title="Throughput per worker count", xticks=workers)
    rate.set_ylim(bottom=0)
    rate.legend(fontsize=8)
    for r in runs:
        t = [s["t"] for s in r["samples"]]
        line, = lag.plot(t, [s["lag_docs"] for s in r["samples"]], label=f"{r['workers']} worker(s): docs")
        lag.plot(t, [s["lag_scored"] for s in r["samples"]], "--", color=line.get_color(), label=f"{r['workers']}: scored")
        stored.plot(t, [s["stored"] for s in r["samples"]], color=line.get_color(), label=f"{r['workers']} worker(s)")
    lag.set(xlabel="s since the first document was sent", ylabel="consumer-group lag (messages)", title="Lag draining")
    lag.legend(fontsize=7)
    stored.set(xlabel="s since the first document was sent", ylabel="documents in PostgreSQL", title="Documents stored")
    stored.legend(fontsize=8)
    cost.plot(workers, [derived(r)["docs_per_worker_cpu_s"] for r in runs], "o-", label="docs per worker CPU-second")
    cost.plot(workers, [derived(r)["docs_per_persist_tx"] for r in runs], "s-", label="docs per persist transaction")
    cost.set(xlabel="worker processes", ylabel="documents", title="Cost per document and SQL locks", xticks=workers)
    cost.set_ylim(bottom=0)
    locks = cost.twinx()
    locks.plot(workers, [100 * r["advisory_held_share"] for r in runs], "^:", color="tab:red", label="advisory lock held (%)")
    locks.plot(workers, [100 * r["advisory_wait_share"] for r in runs], "v:", color="tab:purple", label="... waited for")
    locks.set(ylabel="% of samples while storing", ylim=(0, 100))
    handles = cost.get_legend_handles_labels()[0] + locks.get_legend_handles_labels()[0]
    cost.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def persist_cost_table() -> str:
    """tests/scale/test_persist_cost.py's figures, one column per way of keeping the windows that was measured."""
    found = {json.loads(p.read_text())["implementation"]: json.loads(p.read_text())["runs"]
             for p in sorted(RESULTS.glob("persist-cost-*.json"))}
    if not found:
        return ""
    names = sorted(found)
    volumes = sorted({r["documents_in_hour"] for runs in found.values() for r in runs})
    lines = [
        "| documents already in the hour | "
        + " | ".join(f"one 500-document persist transaction, windows {n} (median s)" for n in names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for volume in volumes:
        cells = []
        for name in names:
            run = next((r for r in found[name] if r["documents_in_hour"] == volume), None)
            cells.append(f"{run['median_s']:.3f}" if run else "")
        lines.append(f"| {volume:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(counts: list[int] | None = None) -> None:
    runs = load(counts)
    plot(runs)
    text = DOC.read_text() if DOC.exists() else f"# Scaling\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    when = max(r["when"] for r in runs)
    DOC.write_text(f"{head}{BEGIN}\n<!-- written by tests/scale/report.py from docs/scaling/*.json; last run {when} -->\n\n"
                   f"{table(runs)}\n\n{persist_cost_table()}\n\n{END}{tail}")


if __name__ == "__main__":
    write([int(n) for n in sys.argv[1:]] or None)
    print(table(load()))
    print(persist_cost_table())
