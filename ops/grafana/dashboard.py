"""The finpulse Grafana dashboard, written with Grafana's own SDK (grafana-foundation-sdk, for Grafana 11.6).

    pip install 'grafana-foundation-sdk==1769699379!11.6.0'
    python -m ops.grafana.dashboard > ops/grafana/dashboards/finpulse.json

The JSON is committed (Grafana provisions it from ops/grafana/dashboards/); this module is how it is
made and changed. The SDK is imported inside `build()` only, so the module imports without it.
Panels on Prometheus read the worker's metrics (worker/metrics.py, docs/observability.md); the last
row reads the `aggregates` table in PostgreSQL. Variables: `job` (one deployment: a Prometheus job),
`window` (aggregate window, s), `model` (model version, newest first), `entity` (watched entities).
"""

from __future__ import annotations

import json
import sys
from typing import Any

UID = "finpulse-worker"
PROMETHEUS = {"type": "prometheus", "uid": "${prometheus}"}
POSTGRES = {"type": "grafana-postgresql-datasource", "uid": "${postgres}"}
J = 'job=~"$job"'
R = "$__rate_interval"

# Sentiment per watched entity, from PostgreSQL (schemas/tables.py: aggregates). key_type 'entity' holds the
# tickers of the watchlist and the producers' tickers; $model is one version, so a shadow model never mixes in.
ENTITY_FILTER = "key_type = 'entity' AND window_s = $window AND model_version = '$model'"
SQL_MEAN = (
    "SELECT window_start AS \"time\", key AS metric, mean_score\n"
    f"FROM aggregates\nWHERE {ENTITY_FILTER} AND key IN ($entity) AND $__timeFilter(window_start)\nORDER BY 1, 2"
)
SQL_NEGATIVE = (
    "SELECT window_start AS \"time\", key AS metric, count_negative\n"
    f"FROM aggregates\nWHERE {ENTITY_FILTER} AND key IN ($entity) AND $__timeFilter(window_start)\nORDER BY 1, 2"
)
SQL_TABLE = (
    "SELECT key AS entity, sum(volume) AS documents,\n"
    "  sum(score_sum) / NULLIF(sum(volume), 0) AS mean_score,\n"
    "  sum(count_negative)::float / NULLIF(sum(volume), 0) AS negative_share,\n"
    "  sum(count_positive)::float / NULLIF(sum(volume), 0) AS positive_share\n"
    f"FROM aggregates\nWHERE {ENTITY_FILTER} AND key IN ($entity) AND $__timeFilter(window_start)\n"
    "GROUP BY key\nORDER BY documents DESC\nLIMIT 25"
)
SQL_ENTITIES = (
    "SELECT key FROM aggregates WHERE key_type = 'entity' AND window_s = 3600\n"
    "GROUP BY key ORDER BY sum(volume) DESC LIMIT 50"
)
SQL_MODELS = "SELECT model_version FROM aggregates GROUP BY model_version ORDER BY max(updated_at) DESC"


def _q(quantile: float, metric: str, by: str = "", where: str = "") -> str:
    group = f"le{', ' + by if by else ''}"
    selector = J + (f", {where}" if where else "")
    return f"histogram_quantile({quantile}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{R}])))"


# Each panel: (kind, title, description, [(expr or SQL, legend)], width, height, options).
# kind: stat, timeseries, bars (stacked bars), state (state timeline), table (SQL), sql (SQL time series).
ROWS: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]], int, int, dict[str, Any]]]]] = [
    ("Overview", [
        ("stat", "Workers up", "Workers of the job that answer /metrics", [(f"sum(up{{{J}}})", "")], 4, 4, {}),
        ("stat", "Stored docs/s", "Documents committed to SQL per second", [(f"sum(rate(finpulse_documents_stored_total{{{J}}}[{R}]))", "")], 4, 4, {"unit": "cps"}),
        ("stat", "p95 Kafka → SQL", "95th percentile of the time from a document's Kafka timestamp to its SQL commit", [(_q(0.95, "finpulse_end_to_end_seconds", where='clock="kafka"'), "")], 4, 4, {"unit": "s"}),
        ("stat", "Consumer lag", "Messages behind the high-water mark, all topics", [(f"sum(finpulse_consumer_lag{{{J}}})", "")], 4, 4, {"unit": "short"}),
        ("stat", "DLQ/s", "Messages dead-lettered per second", [(f"sum(rate(finpulse_dlq_total{{{J}}}[{R}])) or vector(0)", "")], 4, 4, {"unit": "cps"}),
        ("stat", "Cache hit ratio", "Scores served from Redis, of all looked up", [(f"sum(rate(finpulse_cache_hits_total{{{J}}}[{R}])) / (sum(rate(finpulse_cache_hits_total{{{J}}}[{R}])) + sum(rate(finpulse_cache_misses_total{{{J}}}[{R}])))", "")], 4, 4, {"unit": "percentunit"}),
    ]),
    ("Throughput and latency", [
        ("timeseries", "Throughput per stage", "Messages per second through each stage: read from the docs topic, scored (by the model or from the cache), committed to SQL, dead-lettered", [
            (f"sum(rate(finpulse_docs_consumed_total{{{J}}}[{R}]))", "consumed"),
            (f"sum by (source_of_score) (rate(finpulse_scored_total{{{J}}}[{R}]))", "scored ({{source_of_score}})"),
            (f"sum(rate(finpulse_documents_stored_total{{{J}}}[{R}]))", "stored"),
            (f"sum(rate(finpulse_dlq_total{{{J}}}[{R}]))", "dead-lettered"),
        ], 12, 8, {"unit": "cps"}),
        ("timeseries", "End-to-end latency", "From the event time (published_at, else the Kafka time) and from the Kafka time to the SQL commit", [
            (_q(0.5, "finpulse_end_to_end_seconds", "clock"), "p50 {{clock}}"),
            (_q(0.95, "finpulse_end_to_end_seconds", "clock"), "p95 {{clock}}"),
            (_q(0.99, "finpulse_end_to_end_seconds", "clock"), "p99 {{clock}}"),
        ], 12, 8, {"unit": "s", "log": True}),
        ("timeseries", "Consumer lag", "Messages per topic not yet committed by the workers (high-water mark minus committed offset)", [
            (f"sum by (topic) (finpulse_consumer_lag{{{J}}})", "{{topic}}"),
        ], 12, 8, {"unit": "short"}),
        ("bars", "DLQ by reason", "Messages dead-lettered per second, by stage and reason code (README, Messages)", [
            (f"sum by (stage, reason) (rate(finpulse_dlq_total{{{J}}}[{R}]))", "{{stage}}: {{reason}}"),
        ], 12, 8, {"unit": "cps"}),
    ]),
    ("Model and cache", [
        ("timeseries", "Cache hit ratio", "Share of scores served from Redis; texts seen before are not scored again", [
            (f"sum(rate(finpulse_cache_hits_total{{{J}}}[{R}])) / (sum(rate(finpulse_cache_hits_total{{{J}}}[{R}])) + sum(rate(finpulse_cache_misses_total{{{J}}}[{R}])))", "hit ratio"),
            (f"min(finpulse_cache_up{{{J}}})", "cache up"),
        ], 8, 8, {"unit": "percentunit", "max": 1}),
        ("timeseries", "Engine seconds per batch", "Model time per micro-batch, by backend", [
            (_q(0.5, "finpulse_engine_batch_seconds", "backend"), "p50 {{backend}}"),
            (_q(0.95, "finpulse_engine_batch_seconds", "backend"), "p95 {{backend}}"),
        ], 8, 8, {"unit": "s"}),
        ("timeseries", "Batch sizes", "Texts per model call and documents per SQL transaction (mean over the interval)", [
            (f"sum(rate(finpulse_engine_batch_texts_sum{{{J}}}[{R}])) / sum(rate(finpulse_engine_batch_texts_count{{{J}}}[{R}]))", "texts per model call"),
            (f"sum(rate(finpulse_persist_batch_documents_sum{{{J}}}[{R}])) / sum(rate(finpulse_persist_batch_documents_count{{{J}}}[{R}]))", "documents per SQL transaction"),
        ], 8, 8, {"unit": "short"}),
    ]),
    ("Store, alerts and health", [
        ("timeseries", "SQL store", "Rows upserted and writes retried per second; store up is 0 while writes fail (and before the first write)", [
            (f"sum(rate(finpulse_store_rows_total{{{J}}}[{R}]))", "rows/s"),
            (f"sum(rate(finpulse_store_retries_total{{{J}}}[{R}]))", "retries/s"),
            (f"min(finpulse_store_up{{{J}}})", "store up (min)"),
        ], 8, 8, {"unit": "short"}),
        ("state", "Stalled components", "1 while a part of a worker is stuck (retrying a SQL write or a Kafka send, a partition paused); /health says why", [
            (f"max by (instance, component) (finpulse_stalled{{{J}}})", "{{instance}} {{component}}"),
            (f"sum(finpulse_partitions_paused{{{J}}})", "partitions paused"),
        ], 8, 8, {}),
        ("timeseries", "Alerts and webhooks", "Alerts fired (stored) by rule, published to the alerts topic, and webhook POSTs by outcome, in the last minute", [
            (f"sum by (rule) (increase(finpulse_alerts_fired_total{{{J}}}[1m]))", "fired ({{rule}})"),
            (f"sum(increase(finpulse_alerts_published_total{{{J}}}[1m]))", "published"),
            (f"sum by (outcome) (increase(finpulse_webhook_posts_total{{{J}}}[1m]))", "webhook {{outcome}}"),
        ], 8, 8, {"unit": "short"}),
    ]),
    ("Sentiment per watched entity (PostgreSQL)", [
        ("sql", "Mean sentiment per entity", "Mean of P(positive) − P(negative) per window, from the aggregates table", [(SQL_MEAN, "")], 12, 9, {"min": -1, "max": 1}),
        ("table", "Entities in the period", "Documents, mean score and shares of negative and positive documents per entity", [(SQL_TABLE, "")], 12, 9, {}),
        ("sqlbars", "Negative documents per entity", "Documents labelled negative per window and entity", [(SQL_NEGATIVE, "")], 24, 7, {}),
    ]),
]


def queries() -> list[dict[str, str]]:
    """Every query of the dashboard: panel title, kind ('promql' or 'sql'), text and legend; for the tests."""
    return [
        {"panel": title, "kind": "sql" if kind in {"sql", "sqlbars", "table"} else "promql", "query": text, "legend": legend}
        for _, panels in ROWS for kind, title, _, targets, *_ in panels for text, legend in targets
    ]


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus as pb
    from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog import variants as cogvariants
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm

    class SQLQuery(cogvariants.Dataquery):
        """A raw SQL target of Grafana's PostgreSQL data source (the SDK has no builder for it)."""

        def __init__(self, ref_id: str, sql: str, fmt: str) -> None:
            self.ref_id, self.sql, self.fmt = ref_id, sql, fmt

        def to_json(self) -> dict[str, Any]:
            return {"refId": self.ref_id, "datasource": POSTGRES, "editorMode": "code", "format": self.fmt,
                    "rawQuery": True, "rawSql": self.sql}

    class SQL(cogbuilder.Builder[SQLQuery]):
        def __init__(self, ref_id: str, sql: str, fmt: str) -> None:
            self._query = SQLQuery(ref_id, sql, fmt)

        def build(self) -> SQLQuery:
            return self._query

    prom_ref = dm.DataSourceRef(type_val=PROMETHEUS["type"], uid=PROMETHEUS["uid"])
    pg_ref = dm.DataSourceRef(type_val=POSTGRES["type"], uid=POSTGRES["uid"])

    def legend() -> Any:
        return cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST).placement(cm.LegendPlacement.BOTTOM).show_legend(True)

    def panel(kind: str, title: str, description: str, targets: list[tuple[str, str]], opts: dict[str, Any]) -> Any:
        sql = kind in {"sql", "sqlbars", "table"}
        if kind == "stat":
            p = stat.Panel().graph_mode(cm.BigValueGraphMode.AREA).color_mode(cm.BigValueColorMode.VALUE).reduce_options(
                cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        elif kind == "table":
            p = table.Panel()
        elif kind == "state":
            p = statetimeline.Panel().show_value(cm.VisibilityMode.NEVER).legend(legend()).thresholds(
                db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([
                    dm.Threshold(value=None, color="green"), dm.Threshold(value=1, color="red")])
            ).color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS)).mappings([dm.ValueMap(options={
                "0": dm.ValueMappingResult(text="ok", color="green", index=0),
                "1": dm.ValueMappingResult(text="stalled", color="red", index=1)})])
        else:
            p = timeseries.Panel().legend(legend()).line_width(1).fill_opacity(10)
            if kind in {"bars", "sqlbars"}:
                p = p.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80).stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
            if opts.get("log"):
                p = p.scale_distribution(cb.ScaleDistributionConfig().type(cm.ScaleDistribution.LOG).log(10))
        p = p.title(title).description(description).datasource(pg_ref if sql else prom_ref)
        for key in ("unit", "min", "max"):
            if key in opts:
                p = getattr(p, key)(opts[key])
        for i, (text, legend_format) in enumerate(targets):
            ref = chr(ord("A") + i)
            if sql:
                p = p.with_target(SQL(ref, text, "table" if kind == "table" else "time_series"))
            else:
                q = pb.Dataquery().expr(text).ref_id(ref).datasource(prom_ref).range()
                p = p.with_target(q.legend_format(legend_format) if legend_format else q)
        return p

    def option(text: str, value: str) -> dm.VariableOption:
        return dm.VariableOption(selected=True, text=text, value=value)

    dash = (
        db.Dashboard("finpulse")
        .uid(UID)
        .description("Throughput, latency, lag, DLQ, cache, model, store, alerts and sentiment per watched entity (docs/observability.md)")
        .tags(["finpulse", "kafka", "sentiment"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(db.DatasourceVariable("prometheus").label("Prometheus").type("prometheus"))
        .with_variable(db.DatasourceVariable("postgres").label("PostgreSQL").type("grafana-postgresql-datasource"))
        .with_variable(db.QueryVariable("job").label("Job").datasource(prom_ref)
                       .query({"query": "label_values(finpulse_docs_consumed_total, job)", "refId": "job"})
                       .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).current(option("finpulse-worker", "finpulse-worker")))
        .with_variable(db.CustomVariable("window").label("Window (s)").values("60,300,3600").current(option("300", "300")))
        .with_variable(db.QueryVariable("model").label("Model version").datasource(pg_ref).query(SQL_MODELS)
                       .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED))
        .with_variable(db.QueryVariable("entity").label("Entity").datasource(pg_ref).query(SQL_ENTITIES)
                       .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True)
                       .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))
    )
    for row_title, panels in ROWS:
        dash = dash.with_row(db.Row(row_title))
        for kind, title, description, targets, width, height, opts in panels:
            dash = dash.with_panel(panel(kind, title, description, targets, opts).span(width).height(height))
    return json.loads(json.dumps(dash.build(), cls=JSONEncoder))


def main() -> int:
    json.dump(build(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
