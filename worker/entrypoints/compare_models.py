"""`finpulse compare-models`: what making NEW live instead of OLD would change, read from the SQL store.

Both versions' rows lie side by side (a shadow replay writes NEW's beside the live OLD's,
worker/entrypoints/replay.py). For the documents whose event time lies in [from, to):

- label flips: documents scored by both, per key (global, language, topic as OLD saw it,
  entity): how many changed sentiment label, the confusion of OLD's labels against NEW's,
  topic changes, mean scores, and the flips that moved the score most as examples;
- aggregates: every stored window starting in [from, to), per window size and key, with
  both versions' volume, negative count and mean score side by side;
- alerts: the enabled subscriptions judged over each version's windows by the same pure
  rules the persist stage runs (worker/stages/rules.py), as if the range were judged afresh
  (cooldowns among the range's own alerts; spike baselines from the stored windows), and the
  alerts only one version fires. Stored alerts are not used: a shadow version has none, and
  a live alert fired on the window as it was then.

The result is a plain dict (JSON as it is): the CLI prints tables from it and the HTML page
(worker/report/compare.py) draws it. Documents are compared in memory: a range of a few
hundred thousand documents per version is fine, a year of them is not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.alerts import InstantRule, Subscription
from schemas.news import Prediction, ScoredItem
from schemas.tables import Aggregate, Document
from worker.stages import rules
from worker.stages.aggregates import GLOBAL, as_utc
from worker.store.subscriptions import SubscriptionRepository
from worker.store.unit_of_work import reading

LABELS = ("negative", "neutral", "positive")
KEY_ORDER = {"global": 0, "lang": 1, "topic": 2, "entity": 3}
GLOBAL_EXAMPLES = 20


class NothingToCompare(ValueError):
    """A version has no documents in the range."""


@dataclass
class Flips:
    """Paired documents of one key."""

    documents: int = 0
    flipped: int = 0
    topic_flipped: int = 0
    score_old: float = 0.0
    score_new: float = 0.0
    confusion: dict[str, Counter[str]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.documents += 1
        self.score_old += old["sentiment_score"]
        self.score_new += new["sentiment_score"]
        self.confusion.setdefault(old["sentiment_label"], Counter())[new["sentiment_label"]] += 1
        self.topic_flipped += old["topic_label"] != new["topic_label"]
        if old["sentiment_label"] != new["sentiment_label"]:
            self.flipped += 1
            self.examples.append(example(old, new))

    def as_dict(self, key_type: str, key: str, examples: int) -> dict[str, Any]:
        top = sorted(self.examples, key=lambda e: (-abs(e["score_new"] - e["score_old"]), e["doc_id"]))[:examples]
        return {
            "key_type": key_type, "key": key, "documents": self.documents, "flipped": self.flipped,
            "flip_rate": self.flipped / self.documents, "topic_flipped": self.topic_flipped,
            "mean_score_old": self.score_old / self.documents, "mean_score_new": self.score_new / self.documents,
            "confusion": {o: {n: self.confusion.get(o, Counter())[n] for n in LABELS} for o in LABELS},
            "examples": top,
        }


def example(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return {
        "doc_id": old["doc_id"], "lang": old["lang"], "source": old["source"], "url": old["url"],
        "text": old["text"][:300], "label_old": old["sentiment_label"], "label_new": new["sentiment_label"],
        "score_old": old["sentiment_score"], "score_new": new["sentiment_score"],
        "topic_old": old["topic_label"], "topic_new": new["topic_label"],
    }


def keys_for_flips(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The keys a paired document counts under: global, its language, OLD's topic, each entity."""
    return [GLOBAL, ("lang", doc["lang"] or "und"), ("topic", doc["topic_label"]), *(("entity", e) for e in doc["entities"])]


def label_flips(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], examples: int) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], Flips] = {}
    for doc_id, before in old.items():
        after = new.get(doc_id)
        if after is not None:
            for key in keys_for_flips(before):
                groups.setdefault(key, Flips()).add(before, after)
    ordered = sorted(groups.items(), key=lambda kv: (KEY_ORDER[kv[0][0]], -kv[1].documents, kv[0][1]))
    return [flips.as_dict(kt, k, GLOBAL_EXAMPLES if (kt, k) == GLOBAL else examples) for (kt, k), flips in ordered]


def aggregate_changes(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Both versions' windows side by side; a window only one version has shows 0 documents for the other."""
    paired: dict[tuple[int, datetime, str, str], dict[str, Any]] = {}
    for side, rows in (("old", old), ("new", new)):
        for row in rows:
            key = (row["window_s"], as_utc(row["window_start"]), row["key_type"], row["key"])
            entry = paired.setdefault(key, {
                "window_s": key[0], "window_start": key[1].isoformat(), "key_type": key[2], "key": key[3],
                **{f"{m}_{s}": 0 for m in ("volume", "negative") for s in ("old", "new")},
                "mean_score_old": None, "mean_score_new": None,
            })
            entry[f"volume_{side}"] = row["volume"]
            entry[f"negative_{side}"] = row["count_negative"]
            entry[f"mean_score_{side}"] = row["mean_score"]
    return [paired[k] for k in sorted(paired, key=lambda k: (k[0], k[1], KEY_ORDER.get(k[2], 9), k[2], k[3]))]


def scored_item(doc: dict[str, Any], version: str) -> ScoredItem:
    """A stored document as the rules see one (instant rules judge documents)."""
    return ScoredItem(
        id=doc["doc_id"], source=doc["source"], text=doc["text"], text_hash=doc["text_hash"], lang=doc["lang"],
        published_at=doc["published_at"], url=doc["url"], author=doc["author"], tickers=doc["tickers"],
        entities=doc["entities"], sentiment=Prediction(label=doc["sentiment_label"], probs=doc["sentiment_probs"]),
        topic=Prediction(label=doc["topic_label"], probs=doc["topic_probs"]), sentiment_score=doc["sentiment_score"],
        event_time=as_utc(doc["event_time"]), model_version=version, scored_at=doc["scored_at"], latency_ms=0.0,
        cached=False,
    )


async def would_fire(
    database: AsyncEngine, subscriptions: Sequence[Subscription], version: str,
    documents: Iterable[dict[str, Any]], windows: Sequence[dict[str, Any]], now: datetime,
) -> dict[str, dict[str, Any]]:
    """The alerts (by id) the rules fire over one version's windows, judged together in event-time order."""
    by_window = rules.by_window(windows)
    async with reading(database) as store:
        baselines = await store.aggregates.baselines(rules.baseline_ranges(subscriptions, by_window))
    instant = any(isinstance(s.rule, InstantRule) for s in subscriptions)
    items = [scored_item(d, version) for d in documents] if instant else []
    found = rules.candidates(subscriptions, items, by_window, baselines, now=now, deliver_webhooks=False)
    fired: dict[str, dict[str, Any]] = {}
    for row in rules.after_cooldown(found, {}):
        fired.setdefault(row["alert_id"], row)  # instant rules: the window's first document, as the insert keeps
    return fired


def alert_differences(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> dict[str, Any]:
    differences = []
    for alert_id in sorted(set(old) ^ set(new), key=lambda a: ((old.get(a) or new[a])["window_start"], a)):
        row = old.get(alert_id) or new[alert_id]
        differences.append({
            "alert_id": alert_id, "subscription_id": row["subscription_id"], "subscription_name": row["subscription_name"],
            "rule": row["rule"], "metric": row["metric"], "key_type": row["key_type"], "key": row["key"],
            "window_s": row["window_s"], "window_start": as_utc(row["window_start"]).isoformat(),
            "fires_old": alert_id in old, "fires_new": alert_id in new,
            "observed": row["observed"], "threshold": row["threshold"],
        })
    return {"old": len(old), "new": len(new), "both": len(set(old) & set(new)), "differences": differences}


async def _documents(conn: AsyncConnection, version: str, start: datetime, end: datetime) -> dict[str, dict[str, Any]]:
    table = Document.__table__
    query = select(table).where(table.c.model_version == version, table.c.event_time >= start, table.c.event_time < end)
    return {row.doc_id: dict(row._mapping) for row in await conn.execute(query)}


async def _windows(conn: AsyncConnection, version: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    table = Aggregate.__table__
    query = select(table).where(table.c.model_version == version, table.c.window_start >= start, table.c.window_start < end)
    return [dict(row._mapping) for row in await conn.execute(query)]


async def compare_models(
    database: AsyncEngine, old: str, new: str, start: datetime, end: datetime, *, examples: int = 3
) -> dict[str, Any]:
    """The whole comparison (see the module's docstring); raises NothingToCompare when a version has no documents."""
    async with database.connect() as conn:
        docs = {v: await _documents(conn, v, start, end) for v in (old, new)}
        windows = {v: await _windows(conn, v, start, end) for v in (old, new)}
        if not docs[old] or not docs[new]:
            found = await conn.execute(
                select(Document.model_version).where(Document.event_time >= start, Document.event_time < end).distinct()
            )
            present = sorted(r[0] for r in found) or ["none"]
            missing = old if not docs[old] else new
            raise NothingToCompare(f"model {missing!r} has no documents with an event time in [{start.isoformat()},"
                                   f" {end.isoformat()}); versions there: {', '.join(present)}")
    subscriptions = await SubscriptionRepository(database).list(enabled_only=True)
    now = datetime.now(UTC)
    fired = {v: await would_fire(database, subscriptions, v, docs[v].values(), windows[v], now) for v in (old, new)}
    flips = label_flips(docs[old], docs[new], examples)
    overall = flips[0] if flips and flips[0]["key_type"] == "global" else None
    return {
        "old": old, "new": new, "from": start.isoformat(), "to": end.isoformat(),
        "documents": {
            "old": len(docs[old]), "new": len(docs[new]), "paired": overall["documents"] if overall else 0,
            "flipped": overall["flipped"] if overall else 0, "topic_flipped": overall["topic_flipped"] if overall else 0,
        },
        "subscriptions": len(subscriptions),
        "flips": flips,
        "aggregates": aggregate_changes(windows[old], windows[new]),
        "alerts": alert_differences(fired[old], fired[new]),
    }
