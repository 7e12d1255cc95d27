"""`finpulse compare-models --out page.html`: the comparison of two model versions as a self-contained page.

It draws the dict `worker/entrypoints/compare_models.compare_models` returns, with the
report's page (`worker/report/page.py`: plotly.js inlined once, cells escaped): the overall
confusion of sentiment labels, flip rates per language, topic and entity, the global mean
score per window and the volume per topic under both versions, then the tables.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import plotly.graph_objects as go

from worker.report.charts import COLOURS
from worker.report.page import Link, Section, Table, render_page

LABELS = ("negative", "neutral", "positive")
OLD_COLOUR, NEW_COLOUR = "#829ab1", "#0b69a3"
TOP_KEYS = 25
TABLE_ROWS = 300


def _layout(figure: go.Figure, title: str, **extra: Any) -> go.Figure:
    figure.update_layout(**{"title": title, "template": "plotly_white", "height": 360,
                            "margin": {"l": 60, "r": 20, "t": 50, "b": 60}, **extra})
    return figure


def confusion_chart(flips: dict[str, Any]) -> go.Figure:
    z = [[flips["confusion"][old][new] for new in LABELS] for old in LABELS]
    figure = go.Figure(go.Heatmap(z=z, x=list(LABELS), y=list(LABELS), colorscale="Blues", text=z, texttemplate="%{text}",
                                  hovertemplate="old %{y} -> new %{x}: %{z}<extra></extra>"))
    return _layout(figure, "Sentiment labels, old (rows) against new (columns)", xaxis_title="new", yaxis_title="old",
                   yaxis_autorange="reversed")


def flip_rate_chart(rows: list[dict[str, Any]]) -> go.Figure:
    figure = go.Figure()
    for key_type in ("lang", "topic", "entity"):
        chosen = [r for r in rows if r["key_type"] == key_type][:TOP_KEYS]
        figure.add_bar(name=key_type, x=[f"{key_type}:{r['key']}" for r in chosen], y=[r["flip_rate"] for r in chosen],
                       customdata=[[r["flipped"], r["documents"]] for r in chosen],
                       hovertemplate="%{x}: %{customdata[0]} of %{customdata[1]} flipped<extra></extra>")
    return _layout(figure, "Share of documents whose sentiment label changed", yaxis_tickformat=".0%")


def mean_score_chart(aggregates: list[dict[str, Any]], old: str, new: str) -> go.Figure | None:
    rows = [a for a in aggregates if a["key_type"] == "global"]
    if not rows:
        return None
    smallest = min(a["window_s"] for a in rows)
    rows = [a for a in rows if a["window_s"] == smallest]
    times = [datetime.fromisoformat(a["window_start"]) for a in rows]
    figure = go.Figure()
    for side, name, colour in (("old", old, OLD_COLOUR), ("new", new, NEW_COLOUR)):
        figure.add_scatter(x=times, y=[a[f"mean_score_{side}"] for a in rows], name=name, mode="lines+markers",
                           line={"color": colour})
    return _layout(figure, f"Mean score of every document, per {smallest} s window", yaxis_range=[-1, 1])


def topic_volume_chart(aggregates: list[dict[str, Any]], old: str, new: str) -> go.Figure | None:
    rows = [a for a in aggregates if a["key_type"] == "topic"]
    if not rows:
        return None
    smallest = min(a["window_s"] for a in rows)
    volume: dict[str, dict[str, int]] = defaultdict(lambda: {"old": 0, "new": 0})
    for a in rows:
        if a["window_s"] == smallest:
            volume[a["key"]]["old"] += a["volume_old"]
            volume[a["key"]]["new"] += a["volume_new"]
    topics = sorted(volume, key=lambda t: -max(volume[t].values()))
    figure = go.Figure()
    for side, name, colour in (("old", old, OLD_COLOUR), ("new", new, NEW_COLOUR)):
        figure.add_bar(x=topics, y=[volume[t][side] for t in topics], name=name, marker_color=colour)
    return _layout(figure, "Documents per topic", barmode="group")


def label_mix_chart(flips: dict[str, Any], old: str, new: str) -> go.Figure:
    before = {o: sum(flips["confusion"][o].values()) for o in LABELS}
    after = {n: sum(flips["confusion"][o][n] for o in LABELS) for n in LABELS}
    figure = go.Figure()
    for label in LABELS:
        figure.add_bar(y=[old, new], x=[before[label], after[label]], name=label, orientation="h",
                       marker_color=COLOURS[label])
    return _layout(figure, "Sentiment labels of the documents both scored", barmode="stack", height=240,
                   yaxis_autorange="reversed")


def _delta(a: dict[str, Any]) -> float | None:
    if a["mean_score_old"] is None or a["mean_score_new"] is None:
        return None
    return a["mean_score_new"] - a["mean_score_old"]


def render_comparison(result: dict[str, Any]) -> str:
    old, new, docs, alerts = result["old"], result["new"], result["documents"], result["alerts"]
    flips = result["flips"]
    overall = flips[0] if flips and flips[0]["key_type"] == "global" else None
    summary = (f"{docs['old']} documents scored by {old} and {docs['new']} by {new} in the period; {docs['paired']} by both,"
               f" of which {docs['flipped']} changed sentiment label and {docs['topic_flipped']} changed topic. Alerts of"
               f" {result['subscriptions']} enabled subscriptions judged over each version's windows: {alerts['old']} with"
               f" {old}, {alerts['new']} with {new}, {alerts['both']} with both.")
    flip_items: list[Any] = [summary]
    if overall:
        flip_items += [confusion_chart(overall), label_mix_chart(overall, old, new)]
    flip_items += [flip_rate_chart(flips), Table(
        ["key", "documents", "flipped", "flip rate", "topic changed", "mean score old", "mean score new"],
        [[f"{r['key_type']}:{r['key']}", r["documents"], r["flipped"], f"{r['flip_rate']:.1%}", r["topic_flipped"],
          r["mean_score_old"], r["mean_score_new"]] for r in flips[:TABLE_ROWS]], id="flips",
    )]
    examples = overall["examples"] if overall else []
    example_table = Table(
        ["document", "lang", "text", "old", "new", "score old", "score new", "topic old", "topic new"],
        [[Link(e["doc_id"], e["url"]), e["lang"], e["text"], e["label_old"], e["label_new"], e["score_old"],
          e["score_new"], e["topic_old"], e["topic_new"]] for e in examples], id="examples", empty="no label changed",
    )
    changed = [a for a in result["aggregates"] if a["volume_old"] != a["volume_new"] or _delta(a) not in (None, 0.0)]
    changed.sort(key=lambda a: -abs(_delta(a) or 0.0))
    aggregate_items: list[Any] = [c for c in (mean_score_chart(result["aggregates"], old, new),
                                              topic_volume_chart(result["aggregates"], old, new)) if c is not None]
    aggregate_items.append(Table(
        ["window", "start", "key", "volume old", "volume new", "negative old", "negative new", "mean old", "mean new", "change"],
        [[f"{a['window_s']} s", datetime.fromisoformat(a["window_start"]), f"{a['key_type']}:{a['key']}", a["volume_old"],
          a["volume_new"], a["negative_old"], a["negative_new"], a["mean_score_old"], a["mean_score_new"], _delta(a)]
         for a in changed[:TABLE_ROWS]], id="aggregates", empty="no window changed",
    ))
    alert_table = Table(
        ["subscription", "rule", "key", "window", "start", f"fires with {old}", f"fires with {new}", "observed", "threshold"],
        [[a["subscription_name"], f"{a['rule']} {a['metric']}", f"{a['key_type']}:{a['key']}", f"{a['window_s']} s",
          datetime.fromisoformat(a["window_start"]), "yes" if a["fires_old"] else "no", "yes" if a["fires_new"] else "no",
          a["observed"], a["threshold"]] for a in alerts["differences"]], id="alerts", float_format="{:.3f}",
        empty="every alert fires the same way with both versions",
    )
    sections = [
        Section("Label flips", flip_items, id="label-flips",
                intro="Documents scored by both versions, per key: global, language, topic (as the old version saw it), entity."),
        Section("Largest flips", [example_table], id="largest-flips"),
        Section("Aggregates", aggregate_items, id="aggregate-changes",
                intro=f"Stored windows starting in the period; {len(changed)} of {len(result['aggregates'])} changed,"
                      " largest mean-score moves first."),
        Section("Alerts that would fire differently", [alert_table], id="alert-changes",
                intro="The subscriptions' rules judged over each version's windows as if the period were judged afresh."),
    ]
    return render_page(f"Model comparison: {old} -> {new}", sections, subtitle=f"event time {result['from']} to {result['to']}")
