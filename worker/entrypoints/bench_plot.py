"""`python -m worker.entrypoints.bench_plot`: the plot of docs/performance.md from `finpulse bench --pipeline` JSON.

    python -m worker.entrypoints.bench_plot --out docs/performance-pipeline.png \\
        "defaults=docs/performance/starter-default.json" "budget 2048=docs/performance/starter-b64-t2048.json"

Left: per run, the engine alone, the pipeline cold and the steady (latency) phase's rate with its
stored p99. Right: where the cold phase's CPU went, in ms per stored document by process (runs that
recorded it). Needs matplotlib (the `quality` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

KINDS = ("worker", "kafka", "postgres", "redis", "bench")


def load(runs: list[str]) -> list[tuple[str, dict[str, Any]]]:
    loaded = []
    for run in runs:
        label, sep, path = run.partition("=")
        if not sep:
            raise SystemExit(f"expected LABEL=FILE.json, got {run!r}")
        loaded.append((label.replace("\\n", "\n"), json.loads(Path(path).read_text())))
    return loaded


def plot(runs: list[tuple[str, dict[str, Any]]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_cpu = [(label, fig) for label, fig in runs if fig["phases"]["cold"].get("cpu_ms_per_doc")]
    fig, axes = plt.subplots(1, 2 if with_cpu else 1, figsize=(14 if with_cpu else 10, 4.8),
                             gridspec_kw={"width_ratios": [3, 2]} if with_cpu else None, squeeze=False)
    rates = axes[0][0]
    x = range(len(runs))
    width = 0.27
    rates.bar([i - width for i in x], [f["engine_docs_per_s"] for _, f in runs], width, color="#bbbbbb", label="engine alone")
    rates.bar(list(x), [f["pipeline_docs_per_s"] for _, f in runs], width, color="#1f77b4", label="pipeline, cold")
    steady = [f["steady_rate_docs_per_s"] for _, f in runs]
    rates.bar([i + width for i in x], steady, width, color="#9ecae1", label="steady rate of the latency phase")
    for i, (_, f) in enumerate(runs):
        rates.text(i + width, steady[i] + 1, f"p99\n{f['p99_stored_ms']:.0f} ms", ha="center", va="bottom", fontsize=8)
    rates.set_xticks(list(x), [label for label, _ in runs], fontsize=9)
    rates.set_ylabel("documents / s")
    rates.legend(fontsize=9)
    rates.set_title(title, fontsize=10)
    if with_cpu:
        cpu = axes[0][1]
        bottom = [0.0] * len(with_cpu)
        for kind in KINDS:
            values = [max(0.0, f["phases"]["cold"]["cpu_ms_per_doc"].get(kind, 0.0)) for _, f in with_cpu]
            cpu.bar(range(len(with_cpu)), values, 0.6, bottom=bottom, label=kind)
            bottom = [b + v for b, v in zip(bottom, values)]
        cpu.set_xticks(range(len(with_cpu)), [label.replace("\n", " ") for label, _ in with_cpu], fontsize=8,
                       rotation=20, ha="right")
        cpu.set_ylabel("CPU ms per stored document (cold phase)")
        cpu.set_title("where the CPU went, by process", fontsize=10)
        cpu.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=FILE.json (\\n in a label breaks the line)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="pipeline against its engine")
    args = parser.parse_args()
    plot(load(args.runs), args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
