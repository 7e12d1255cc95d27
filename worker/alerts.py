"""Alert rules, judged where the aggregates are recomputed: inside the store's transaction.

Judging there means a rule always sees windows that equal a recomputation from the
stored documents, and that an alert is stored atomically with the aggregate that fired
it — under the same per-key advisory lock, so two workers cannot race on a cooldown.
An alert fires the first time its window satisfies the rule, with the values of that
moment. Its id is a hash of (subscription, key, window), so a redelivered batch, a
restart or a replay finds the alert already there and adds nothing. Sending it to the
alerts topic and the webhook happens after the commit, from the outbox (worker/outbox.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.alerts import (
    ANY_KEY,
    Alert,
    InstantRule,
    SpikeRule,
    Subscription,
    ThresholdRule,
    alert_id,
)
from schemas.news import ScoredItem
from schemas.tables import Aggregate, AlertRow
from worker import metrics
from worker.aggregates import as_datetime, epoch_seconds, keys_of, window_start

WindowKey = tuple[int, int, str, str, str]  # window_s, window start (epoch s), key_type, key, model_version


def watches(subscription: Subscription, key_type: str, key: str) -> bool:
    return subscription.key_type == key_type and subscription.key in (ANY_KEY, key)


def window_metric(metric: str, aggregate: dict[str, Any]) -> float:
    volume = aggregate["volume"]
    if metric == "volume":
        return float(volume)
    if metric == "negative_count":
        return float(aggregate["count_negative"])
    if metric == "negative_ratio":
        return aggregate["count_negative"] / volume
    if metric == "mean_score":
        return float(aggregate["mean_score"])
    raise ValueError(f"unknown metric {metric!r}")


def threshold_fires(rule: ThresholdRule, aggregate: dict[str, Any]) -> float | None:
    """The metric's value when the rule fires, else None."""
    if aggregate["volume"] < rule.min_count:
        return None
    observed = window_metric(rule.metric, aggregate)
    fired = observed >= rule.value if rule.op == ">=" else observed <= rule.value
    return observed if fired else None


@dataclass(frozen=True)
class SpikeScore:
    value: float  # z-score or ratio
    mean: float
    std: float


def spike_score(rule: SpikeRule, observed: float, baseline: Sequence[float]) -> SpikeScore:
    """Compare a window with its trailing ones; the floors of 1 keep a flat or empty baseline finite."""
    mean = sum(baseline) / len(baseline)
    std = math.sqrt(sum((b - mean) ** 2 for b in baseline) / len(baseline))
    if rule.method == "zscore":
        return SpikeScore((observed - mean) / max(std, 1.0), mean, std)
    return SpikeScore(observed / max(mean, 1.0), mean, std)


def _as_row(
    subscription: Subscription,
    window: WindowKey,
    *,
    rule: str,
    metric: str,
    observed: float,
    value: float,
    threshold: float,
    volume: int,
    now: datetime,
    deliver_webhooks: bool,
    doc_id: str | None = None,
    spike: SpikeScore | None = None,
) -> dict[str, Any]:
    window_s, start, key_type, key, model_version = window
    start_at = as_datetime(start)
    if subscription.webhook_url is None:
        delivery = "none"
    else:
        delivery = "pending" if deliver_webhooks else "suppressed"
    return {
        "alert_id": alert_id(subscription.id, key_type, key, window_s, start_at),
        "subscription_id": subscription.id,
        "subscription_name": subscription.name,
        "rule": rule,
        "metric": metric,
        "observed": observed,
        "value": value,
        "threshold": threshold,
        "key_type": key_type,
        "key": key,
        "window_s": window_s,
        "window_start": start_at,
        "window_end": start_at + timedelta(seconds=window_s),
        "model_version": model_version,
        "volume": volume,
        "doc_id": doc_id,
        "baseline_mean": spike.mean if spike else None,
        "baseline_std": spike.std if spike else None,
        "fired_at": now,
        "published": False,
        "delivery": delivery,
        "delivery_attempts": 0,
        "next_attempt_at": now if delivery == "pending" else None,
    }


async def _baseline(conn: AsyncConnection, rule: SpikeRule, window: WindowKey) -> list[float]:
    window_s, start, key_type, key, model_version = window
    first = as_datetime(start - rule.baseline_windows * window_s)
    rows = await conn.execute(
        select(Aggregate.volume, Aggregate.count_negative).where(
            Aggregate.window_s == window_s,
            Aggregate.key_type == key_type,
            Aggregate.key == key,
            Aggregate.model_version == model_version,
            Aggregate.window_start >= first,
            Aggregate.window_start < as_datetime(start),
        )
    )
    found = [float(volume if rule.metric == "volume" else negative) for volume, negative in rows]
    return found + [0.0] * (rule.baseline_windows - len(found))


async def _in_cooldown(conn: AsyncConnection, row: dict[str, Any], cooldown_s: int) -> bool:
    if cooldown_s <= 0:
        return False
    start: datetime = row["window_start"]
    nearby = await conn.execute(
        select(AlertRow.alert_id)
        .where(
            and_(
                AlertRow.subscription_id == row["subscription_id"],
                AlertRow.key_type == row["key_type"],
                AlertRow.key == row["key"],
                AlertRow.window_start > start - timedelta(seconds=cooldown_s),
                AlertRow.window_start < start + timedelta(seconds=cooldown_s),
                AlertRow.alert_id != row["alert_id"],
            )
        )
        .limit(1)
    )
    return nearby.first() is not None


async def evaluate(
    conn: AsyncConnection,
    insert: Callable[..., Any],
    subscriptions: Sequence[Subscription],
    items: Iterable[ScoredItem],
    aggregates: Sequence[dict[str, Any]],
    *,
    deliver_webhooks: bool = True,
) -> int:
    """Judge every subscription against the windows and documents of one stored batch; return alerts added."""
    if not subscriptions:
        return 0
    now = datetime.now(UTC)
    windows: dict[WindowKey, dict[str, Any]] = {
        (a["window_s"], epoch_seconds(a["window_start"]), a["key_type"], a["key"], a["model_version"]): a
        for a in aggregates
    }
    fields = {"now": now, "deliver_webhooks": deliver_webhooks}
    candidates = await _window_alerts(conn, subscriptions, windows, fields)
    candidates += _instant_alerts(subscriptions, items, windows, fields)
    added = 0
    candidates.sort(key=lambda c: (c[1]["window_start"], c[1]["alert_id"]))
    for sub, row in candidates:
        if await _in_cooldown(conn, row, sub.cooldown_s):
            continue
        result = await conn.execute(insert(AlertRow).values(row).on_conflict_do_nothing())
        if result.rowcount:
            added += 1
            metrics.ALERTS_FIRED.labels(row["rule"]).inc()
    return added


Candidate = tuple[Subscription, dict[str, Any]]


async def _window_alerts(
    conn: AsyncConnection,
    subscriptions: Sequence[Subscription],
    windows: dict[WindowKey, dict[str, Any]],
    fields: dict[str, Any],
) -> list[Candidate]:
    """Threshold and spike rules, on every window the batch recomputed."""
    by_window: dict[tuple[int, str], list[Subscription]] = {}  # so a window meets only its subscriptions
    for sub in subscriptions:
        if not isinstance(sub.rule, InstantRule):
            by_window.setdefault((sub.window_s, sub.key_type), []).append(sub)
    candidates: list[Candidate] = []
    for window, aggregate in windows.items():
        window_s, _, key_type, key, _ = window
        for sub in by_window.get((window_s, key_type), ()):
            rule = sub.rule
            if not watches(sub, key_type, key):
                continue
            if isinstance(rule, ThresholdRule):
                observed = threshold_fires(rule, aggregate)
                if observed is not None:
                    row = _as_row(sub, window, rule="threshold", metric=rule.metric, observed=observed,
                                  value=observed, threshold=rule.value, volume=aggregate["volume"], **fields)
                    candidates.append((sub, row))
            elif isinstance(rule, SpikeRule):
                observed = window_metric(rule.metric, aggregate)
                if observed < rule.min_count:
                    continue  # checked first: the baseline costs a query
                score = spike_score(rule, observed, await _baseline(conn, rule, window))
                if score.value >= rule.threshold:
                    row = _as_row(sub, window, rule="spike", metric=rule.metric, observed=observed, value=score.value,
                                  threshold=rule.threshold, spike=score, volume=aggregate["volume"], **fields)
                    candidates.append((sub, row))
    return candidates


def _instant_alerts(
    subscriptions: Sequence[Subscription],
    items: Iterable[ScoredItem],
    windows: dict[WindowKey, dict[str, Any]],
    fields: dict[str, Any],
) -> list[Candidate]:
    """Instant rules, on every confidently negative document; at most one alert per window survives the insert."""
    instant = [(s, s.rule) for s in subscriptions if isinstance(s.rule, InstantRule)]
    candidates: list[Candidate] = []
    for item in items if instant else ():
        p_negative = item.sentiment.probs.get("negative", 0.0)
        if item.sentiment.label != "negative":
            continue
        for sub, rule in instant:
            if p_negative < rule.min_confidence:
                continue
            start = window_start(epoch_seconds(item.event_time), sub.window_s)
            for key_type, key in keys_of(item):
                window = (sub.window_s, start, key_type, key[:256], item.model_version)
                if watches(sub, key_type, key) and window in windows:
                    row = _as_row(sub, window, rule="instant", metric="p_negative", observed=p_negative,
                                  value=p_negative, threshold=rule.min_confidence, doc_id=item.id,
                                  volume=windows[window]["volume"], **fields)
                    candidates.append((sub, row))
    return candidates


def alert_of(row: Any) -> Alert:
    """An alerts-table row as the message the topic and webhooks carry."""
    return Alert.model_validate({field: getattr(row, field) for field in Alert.model_fields})
