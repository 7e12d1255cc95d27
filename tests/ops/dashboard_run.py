"""Helpers for the dashboard test: a real Prometheus server, the dashboard's queries made concrete, and a picture.

No Grafana server can be had here (no package of it in the registries this project reaches), so the
test does what Grafana would: it reads ops/grafana/dashboards/finpulse.json, fills in the variables,
runs every PromQL query against a real Prometheus scraping a real worker and every SQL query against
the run's PostgreSQL database, and `render` lays the results out as the dashboard's grid with
matplotlib. The picture says it was not made by Grafana.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tests.integration.conftest import _free_port as free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "finpulse.json"
PROM_DIR = ROOT / "ops" / "prometheus"
SQL_KINDS = {"grafana-postgresql-datasource"}


class Prometheus:
    """The Debian `prometheus` server with ops/prometheus/prometheus.yml, pointed at one worker, scraping every second."""

    def __init__(self, binary: str, workdir: Path, target: str, scrape_s: int = 1) -> None:
        config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": f"{scrape_s}s", "evaluation_interval": f"{scrape_s}s"}
        config["rule_files"] = [str(PROM_DIR / pattern) for pattern in config["rule_files"]]
        (job,) = config["scrape_configs"]
        job.update(scrape_interval=f"{scrape_s}s", scrape_timeout=f"{scrape_s}s", static_configs=[{"targets": [target]}])
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.job = job["job_name"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"prometheus not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def api(self, path: str, **params: Any) -> dict[str, Any]:
        """GET /api/v1/PATH; the parsed answer, also when Prometheus refuses the query (status 'error')."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read())

    def value(self, expr: str) -> float | None:
        result = self.api("query", query=expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def promql(expr: str, job: str, rate_interval: str) -> str:
    """A dashboard expression with Grafana's variables filled in the way Grafana would."""
    return expr.replace("$__rate_interval", rate_interval).replace("$job", job)  # a single value: Grafana inserts it as it is


def sql(text: str, *, window: int, model: str, entities: list[str], start: float, end: float) -> str:
    """A dashboard SQL query with Grafana's macros and variables filled in (PostgreSQL data source semantics)."""
    quoted = ", ".join("'" + e.replace("'", "''") + "'" for e in entities) or "NULL"
    text = re.sub(
        r"\$__timeFilter\((\w+)\)",
        lambda m: f"{m.group(1)} BETWEEN to_timestamp({start:.0f}) AND to_timestamp({end:.0f})",
        text,
    )
    return text.replace("$window", str(window)).replace("$model", model.replace("'", "''")).replace("$entity", quoted)


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) if fmt else json.dumps(labels)


# --- the picture -------------------------------------------------------------------------------------

BG, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ff7383", "#96d98d", "#fade2a"]


def _fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "–"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    suffix = "/s" if unit == "cps" else ""
    return (f"{value / 1000:.1f}k" if abs(value) >= 1000 else f"{value:.3g}") + suffix


def render(results: dict[str, Any], title: str, note: str, out: Path, span: tuple[float, float]) -> None:
    """Draw the dashboard's grid with RESULTS (panel title -> series or table rows) over SPAN (unix s) into OUT (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import PercentFormatter

    layout = json.loads(DASHBOARD.read_text())["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in layout)
    width_in, unit_h, top = 22.0, 0.4, 1.0  # figure width; inches per grid row; header
    height = rows * unit_h + top
    fig = plt.figure(figsize=(width_in, height), facecolor=BG)
    x_span = (datetime.fromtimestamp(span[0], UTC), datetime.fromtimestamp(span[1], UTC))

    def rect(gp: dict[str, int], left: float = 0.0, right: float = 0.0, top_in: float = 0.0, bottom: float = 0.0) -> list[float]:
        """Figure coordinates of a grid box, inset by inches."""
        x0 = gp["x"] / 24 * width_in + 0.04 + left
        w = gp["w"] / 24 * width_in - 0.08 - left - right
        y1 = height - top - gp["y"] * unit_h - 0.04 - top_in
        h = gp["h"] * unit_h - 0.08 - top_in - bottom
        return [x0 / width_in, (y1 - h) / height, w / width_in, h / height]

    fig.text(0.005, 1 - 0.35 / height, title, color=TEXT, fontsize=17, weight="bold", va="center")
    fig.text(0.005, 1 - 0.75 / height, note, color="#f2cc0c", fontsize=10.5, va="center")
    for p in layout:
        gp = p["gridPos"]
        if p["type"] == "row":
            x, y, _, h = rect(gp)
            fig.text(x, y + h / 2, p["title"], color=TEXT, fontsize=12.5, weight="bold", va="center")
            continue
        x, y, w, h = rect(gp)
        fig.patches.append(Rectangle((x, y), w, h, transform=fig.transFigure, facecolor=PANEL, edgecolor=GRID, zorder=-10))
        fig.text(x + 0.08 / width_in, y + h - 0.18 / height, p["title"], color=TEXT, fontsize=10, weight="bold", va="center")
        data = results.get(p["title"], [])
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if p["type"] == "stat":
            ax = fig.add_axes(rect(gp, 0.1, 0.1, 0.35, 0.1), facecolor=PANEL)
            ax.axis("off")
            series = data[0]["points"] if data else []
            value = series[-1][1] if series else float("nan")
            if series:
                ax.fill_between([datetime.fromtimestamp(t, UTC) for t, _ in series], [v for _, v in series], color="#73bf69", alpha=0.15)
            ax.text(0.5, 0.45, _fmt(value, unit), color="#73bf69", fontsize=24, ha="center", va="center", transform=ax.transAxes, weight="bold")
            continue
        if p["type"] == "table":
            ax = fig.add_axes(rect(gp, 0.1, 0.1, 0.35, 0.1), facecolor=PANEL)
            ax.axis("off")
            if data:
                cols = list(data[0].keys())
                cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()] for row in data[:10]]
                tbl = ax.table(cellText=cells, colLabels=cols, loc="upper center", cellLoc="left")
                tbl.auto_set_font_size(False)
                tbl.set_fontsize(8.5)
                for cell in tbl.get_celld().values():
                    cell.set_facecolor(PANEL), cell.set_edgecolor(GRID), cell.get_text().set_color(TEXT)
            continue
        state = p["type"] == "state-timeline"
        ax = fig.add_axes(rect(gp, 1.2 if state else 0.55, 0.15, 0.35, 0.35), facecolor=PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=TEXT, labelsize=7.5)
        ax.grid(color=GRID, linewidth=0.5)
        sql_times = [t for s in data for t, _ in s["points"]] if p["datasource"]["type"] in SQL_KINDS else []
        ax.set_xlim(min([x_span[0], *(datetime.fromtimestamp(t, UTC) for t in sql_times)]), x_span[1])
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=6))
        custom = p.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
        bars = custom.get("drawStyle") == "bars"
        if state:
            for i, s in enumerate(data):
                times = [datetime.fromtimestamp(t, UTC) for t, _ in s["points"]]
                colors = ["#f2495c" if v >= 1 else "#73bf69" for _, v in s["points"]]
                ax.scatter(times, [i] * len(times), c=colors, marker="s", s=40, linewidths=0)
            ax.set_yticks(range(len(data)), [s["name"] for s in data], fontsize=7.5)
            ax.set_ylim(-0.8, max(len(data), 1) - 0.2)
            if not data:
                ax.text(0.5, 0.5, "nothing stalled (no series)", color=TEXT, ha="center", transform=ax.transAxes)
            continue
        bottom: dict[float, float] = {}
        step = min((b[0] - a[0] for s in data for a, b in zip(s["points"], s["points"][1:])), default=60.0)
        for i, s in enumerate(data[:10]):
            ts = [t for t, _ in s["points"]]
            vs = [v for _, v in s["points"]]
            times = [datetime.fromtimestamp(t, UTC) for t in ts]
            color = COLORS[i % len(COLORS)]
            if bars:
                base = [bottom.get(t, 0.0) for t in ts]
                ax.bar(times, vs, bottom=base, width=step / 86400 * 0.8, color=color, label=s["name"], align="edge")
                for t, v in zip(ts, vs):
                    bottom[t] = bottom.get(t, 0.0) + (v if v == v else 0.0)
            else:
                ax.plot(times, vs, color=color, linewidth=1.3, label=s["name"], marker="o" if len(ts) < 8 else None, markersize=4)
        if custom.get("scaleDistribution", {}).get("type") == "log":
            ax.set_yscale("log")
        if data:
            ax.legend(loc="upper left", fontsize=7, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT, ncol=3, framealpha=0.8)
        else:
            ax.text(0.5, 0.5, "no data", color=TEXT, ha="center", transform=ax.transAxes)
        if unit == "percentunit":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        elif unit in {"cps", "s"}:
            ax.set_ylabel({"cps": "per second", "s": "seconds"}[unit], color=TEXT, fontsize=8)
    fig.savefig(out, dpi=80, facecolor=BG)
    plt.close(fig)
