"""The Grafana dashboard against a real run: a worker (tiny model) on real Kafka, Redis and PostgreSQL, scraped
by a real Prometheus that also evaluates ops/prometheus's rules. Every PromQL query of the dashboard must
parse and the key ones return data; every SQL query runs on the run's database and the entity panels
get rows. The results are drawn as the dashboard's grid (tests/ops/dashboard_run.py); with
FINPULSE_DASHBOARD_PNG=docs/observability-dashboard.png (and FINPULSE_DASHBOARD_RUN_S=120 for a
longer run) that picture is the one in the docs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import worker.metrics  # noqa: F401 - registers the worker's metrics for the name check
from tests.integration.conftest import ROOT, Pipeline, wait_for
from tests.ops.dashboard_run import DASHBOARD, SQL_KINDS, Prometheus, legend, panels, promql, render, sql
from worker.samples import sample_items

RATE = "10s"  # Grafana's $__rate_interval for a 1 s scrape, rounded up so short runs still get two samples
# Panels that must show data after the run below (the others must parse; stalls, webhooks need failures).
MUST_HAVE_DATA = {
    "Workers up", "Stored docs/s", "p95 Kafka → SQL", "Consumer lag", "Cache hit ratio", "Throughput per stage",
    "End-to-end latency", "DLQ by reason", "Engine seconds per batch", "Batch sizes", "SQL store", "Alerts and webhooks",
    "Mean sentiment per entity", "Entities in the period", "Negative documents per entity",
}


def exposed_names() -> set[str]:
    """Every sample name the worker's registry can expose (a labelled metric may have no series yet)."""
    suffixes = {"counter": ["_total", "_created"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count", "_created"]}
    return {
        f"{family.name}{suffix}"
        for family in REGISTRY.collect()
        if family.name.startswith("finpulse_")
        for suffix in suffixes.get(family.type, [""])
    }


def test_dashboard_and_rules_use_only_metrics_the_worker_defines() -> None:
    import re

    from ops.grafana.dashboard import queries

    names = exposed_names() | {"up"}
    rules = (ROOT / "ops" / "prometheus" / "rules" / "finpulse.yml").read_text()
    texts = [q["query"] for q in queries() if q["kind"] == "promql"] + [rules]
    used = {name for text in texts for name in re.findall(r"\b(finpulse_[a-z_]+|up)\b(?=\s*[{\[)])", text)}
    assert used and used - names == set(), "metrics named in the dashboard or rules but not defined in worker/metrics.py"


def test_committed_json_matches_its_generator_queries() -> None:
    """The JSON holds exactly the generator's queries (regenerate with `python -m ops.grafana.dashboard`)."""
    from ops.grafana.dashboard import queries

    committed = [
        (p["title"], t.get("expr", t.get("rawSql"))) for p in panels() for t in p["targets"]
    ]
    assert committed == [(q["panel"], q["query"]) for q in queries()]
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 39 and dash["uid"] == "finpulse-worker"
    assert {v["name"] for v in dash["templating"]["list"]} == {"prometheus", "postgres", "job", "window", "model", "entity"}


def test_committed_json_is_what_the_generator_writes() -> None:
    """Only where grafana-foundation-sdk is installed (not in the locks; pin in ops/grafana/dashboard.py)."""
    pytest.importorskip("grafana_foundation_sdk")
    from ops.grafana.dashboard import build

    assert build() == json.loads(DASHBOARD.read_text()), "regenerate: python -m ops.grafana.dashboard > ops/grafana/dashboards/finpulse.json"


def _subscribe_everything(pipeline: Pipeline) -> None:
    """A subscription that fires for every 60 s window with a document, so the alert panels have data."""
    env = {**pipeline.worker.env}
    rule = '{"type": "threshold", "metric": "volume", "value": 1}'
    subprocess.run(
        [sys.executable, "-m", "worker", "subscriptions", "add", "--name", "every window", "--key-type", "global",
         "--window", "60", "--rule", rule],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=120,
    )


def test_dashboard_queries_on_a_real_run(pipeline: Pipeline, prometheus_bin: str, tmp_path: Path) -> None:
    started = time.time()
    prom = Prometheus(prometheus_bin, tmp_path / "prometheus", f"127.0.0.1:{pipeline.worker.port}")
    try:
        prom.wait_ready()
        _subscribe_everything(pipeline)
        # Waves of documents: repeated texts (cache hits), malformed messages (DLQ), for FINPULSE_DASHBOARD_RUN_S.
        run_s = float(os.environ.get("FINPULSE_DASHBOARD_RUN_S", "12"))
        sent, wave = 0, 0
        while wave < 3 or time.time() - started < run_s:
            # 20 new texts and 10 sent in every wave (the same seed): cache hits from the second wave on
            items = sample_items(20, seed=wave, prefix=f"w{wave}") + sample_items(10, seed=999, prefix=f"r{wave}")
            pipeline.send_items(items)
            pipeline.send([b"{not json", b'{"text": ""}', b"\xff\xfe"])  # 3 of 33 (9 %) to the DLQ
            sent, wave = sent + len(items), wave + 1
            time.sleep(3)
        pipeline.wait_stored(sent)
        wait_for(lambda: prom.value("sum(finpulse_documents_stored_total)") == sent, 30, "Prometheus scraped the last commit")
        time.sleep(2)  # a few more scrapes, so rates over the last seconds exist
        end = time.time()

        results, empty = _run_promql(prom, started, end)
        results.update(_run_sql(pipeline, started, end))
        (tmp_path / "results.json").write_text(json.dumps(results, default=str))  # what the picture is drawn from
        for title in MUST_HAVE_DATA:
            assert results.get(title), f"panel {title!r} has no data after a real run"
        empty -= {t for t, r in results.items() if r}
        assert empty <= {"Stalled components"}, f"panels with no data at all: {empty}"

        reasons = {s["name"] for s in results["DLQ by reason"]}
        assert {"ingest: invalid_json", "ingest: empty_text", "ingest: invalid_utf8"} <= reasons
        assert any(v > 0 for _, v in results["Cache hit ratio"][0]["points"])  # the repeated texts
        assert prom.value(f'up{{job="{prom.job}"}}') == 1
        assert prom.value("sum(finpulse_alerts_fired_total)") >= 1  # the subscription fired for the run's windows
        wait_for(lambda: (prom.value("sum(finpulse_alerts_published_total)") or 0) >= 1, 20, "alerts published, scraped")

        # The operator's rules load and evaluate on the real metrics without error; nothing is stuck here,
        # while the DLQ share of this run (~10 %) is above FinpulseDLQRateHigh's 5 %: pending (for 10m).
        groups = prom.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) >= 11 and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        wait_for(lambda: _alert_states(prom).get("FinpulseDLQRateHigh") == "pending", 20, "FinpulseDLQRateHigh pending")
        states = _alert_states(prom)
        assert not {"FinpulseStoreStuck", "FinpulseWorkerDown", "FinpulseComponentStalled", "FinpulseNoDocumentsStored"} & set(states)

        out = Path(os.environ.get("FINPULSE_DASHBOARD_PNG") or tmp_path / "dashboard.png")
        when = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC")
        render(
            results, "finpulse — Grafana dashboard ops/grafana/dashboards/finpulse.json",
            f"Rendered with matplotlib from the Prometheus and PostgreSQL query results of a real run ({when}, {sent} documents,"
            " tiny random model, 1 worker), not by Grafana: no Grafana server is obtainable here.",
            out if out.is_absolute() else ROOT / out,
            (started, end),
        )
        assert (out if out.is_absolute() else ROOT / out).stat().st_size > 50_000
    finally:
        prom.stop()


def _alert_states(prom: Prometheus) -> dict[str, str]:
    return {a["labels"]["alertname"]: a["state"] for a in prom.api("alerts")["data"]["alerts"]}


def _run_promql(prom: Prometheus, start: float, end: float) -> tuple[dict[str, Any], set[str]]:
    """Each Prometheus panel's series over the run; every query must parse and evaluate."""
    results: dict[str, Any] = {}
    empty: set[str] = set()
    for panel in panels():
        if panel["datasource"]["type"] in SQL_KINDS:
            continue
        series = []
        for target in panel["targets"]:
            expr = promql(target["expr"], prom.job, RATE)
            answer = prom.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1")
            assert answer["status"] == "success", f"{panel['title']}: {expr}\n{answer}"
            for s in answer["data"]["result"]:
                points = [(float(t), float(v)) for t, v in s["values"]]
                series.append({"name": legend(target.get("legendFormat", ""), s["metric"]), "points": points})
        results[panel["title"]] = [s for s in series if any(v == v for _, v in s["points"])]  # drop all-NaN series
        if not series:
            empty.add(panel["title"])
    return results, empty


def _run_sql(pipeline: Pipeline, start: float, end: float) -> dict[str, Any]:
    """Each PostgreSQL panel's rows, with the variables' own queries deciding model and entities, as in Grafana."""
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    models = [r[0] for r in pipeline.db.fetch(variables["model"]["query"])]
    entities = [r[0] for r in pipeline.db.fetch(variables["entity"]["query"])]
    assert models and entities, "the variable queries found no model version or entity"
    results: dict[str, Any] = {}
    for panel in panels():
        if panel["datasource"]["type"] not in SQL_KINDS:
            continue
        (target,) = panel["targets"]
        text = sql(target["rawSql"], window=60, model=models[0], entities=entities, start=start - 120, end=end + 60)
        rows = [dict(r) for r in pipeline.db.fetch(text)]
        if target["format"] == "table":
            results[panel["title"]] = rows
        else:
            by_metric: dict[str, list[tuple[float, float]]] = {}
            value = [c for c in rows[0] if c not in {"time", "metric"}][0] if rows else ""
            for r in rows:
                by_metric.setdefault(r["metric"], []).append((r["time"].timestamp(), float(r[value])))
            results[panel["title"]] = [{"name": k, "points": v} for k, v in by_metric.items()]
    return results
