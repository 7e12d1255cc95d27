"""The alert rules: pure functions over windows, documents and history fetched beforehand. No I/O.

The persist stage judges them inside its transaction, on the windows it has just
recomputed (worker/stages/persist.py): a rule always sees windows that equal a
recomputation from the stored documents, and an alert is stored atomically with the
aggregate that fired it, under the same per-key advisory lock, so two workers cannot
race on a cooldown. An alert fires the first time its window satisfies the rule, with
the values of that moment. Its id is a hash of (subscription, key, window), so a
redelivered batch, a restart or a replay finds the alert already there and adds
nothing. Sending it happens after the commit, from the outbox (worker/delivery/outbox.py).

The order of a judgement: `baseline_ranges` says which history spike rules need, the
store fetches it in one query; `candidates` judges every rule; `cooldown_queries` says
which stored alerts could silence a candidate, the store fetches them in one query;
`after_cooldown` keeps the candidates no cooldown silences.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas.alerts import (
    ANY_KEY,
    InstantRule,
    SpikeRule,
    Subscription,
    ThresholdRule,
    alert_id,
)
from schemas.news import ScoredItem
from worker.stages.aggregates import as_datetime, epoch_seconds, keys_of, window_start

WindowKey = tuple[int, int, str, str, str]  # window_s, window start (epoch s), key_type, key, model_version
SeriesKey = tuple[int, str, str, str]  # window_s, key_type, key, model_version
# Stored windows of a series: start (epoch s) -> (volume, count_negative)
Baselines = dict[SeriesKey, dict[int, tuple[int, int]]]
# (subscription_id, key_type, key) -> [(window_start, alert_id)] of stored alerts
Recent = dict[tuple[str, str, str], list[tuple[datetime, str]]]
Candidate = tuple[Subscription, dict[str, Any]]


def watches(subscription: Subscription, key_type: str, key: str) -> bool:
    return subscription.key_type == key_type and subscription.key in (ANY_KEY, key)


def window_metric(metric: str, aggregate: Mapping[str, Any]) -> float:
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


def threshold_fires(rule: ThresholdRule, aggregate: Mapping[str, Any]) -> float | None:
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


def by_window(aggregates: Iterable[Mapping[str, Any]]) -> dict[WindowKey, Mapping[str, Any]]:
    """Recomputed aggregate rows keyed by their window."""
    return {
        (a["window_s"], epoch_seconds(a["window_start"]), a["key_type"], a["key"], a["model_version"]): a
        for a in aggregates
    }


def _spikes_to_judge(
    subscriptions: Sequence[Subscription], windows: Mapping[WindowKey, Mapping[str, Any]]
) -> Iterable[tuple[Subscription, SpikeRule, WindowKey, float]]:
    """Spike rules whose window holds enough to be judged; checked first, since only they need history."""
    spikes = [s for s in subscriptions if isinstance(s.rule, SpikeRule)]
    for window, aggregate in windows.items() if spikes else ():
        window_s, _, key_type, key, _ = window
        for sub in spikes:
            rule = sub.rule
            assert isinstance(rule, SpikeRule)
            if sub.window_s == window_s and watches(sub, key_type, key):
                observed = window_metric(rule.metric, aggregate)
                if observed >= rule.min_count:
                    yield sub, rule, window, observed


def baseline_ranges(
    subscriptions: Sequence[Subscription], windows: Mapping[WindowKey, Mapping[str, Any]]
) -> dict[SeriesKey, tuple[int, int]]:
    """Per series, the [first, end) window starts (epoch s) that spike rules compare with."""
    ranges: dict[SeriesKey, tuple[int, int]] = {}
    for _, rule, (window_s, start, key_type, key, version), _ in _spikes_to_judge(subscriptions, windows):
        series = (window_s, key_type, key, version)
        first = start - rule.baseline_windows * window_s
        old = ranges.get(series)
        ranges[series] = (min(first, old[0]), max(start, old[1])) if old else (first, start)
    return ranges


def baseline(rule: SpikeRule, window: WindowKey, baselines: Baselines) -> list[float]:
    """The `baseline_windows` windows before this one; a window with no documents counts 0."""
    window_s, start, key_type, key, version = window
    stored = baselines.get((window_s, key_type, key, version), {})
    values = []
    for n in range(1, rule.baseline_windows + 1):
        volume, negative = stored.get(start - n * window_s, (0, 0))
        values.append(float(volume if rule.metric == "volume" else negative))
    return values


def candidates(
    subscriptions: Sequence[Subscription],
    items: Iterable[ScoredItem],
    windows: Mapping[WindowKey, Mapping[str, Any]],
    baselines: Baselines,
    *,
    now: datetime,
    deliver_webhooks: bool = True,
) -> list[Candidate]:
    """Every alert the rules would fire for one stored batch, before cooldowns, in firing order."""
    if not subscriptions:
        return []
    fields = {"now": now, "deliver_webhooks": deliver_webhooks}
    found = _threshold_alerts(subscriptions, windows, fields)
    for sub, rule, window, observed in _spikes_to_judge(subscriptions, windows):
        score = spike_score(rule, observed, baseline(rule, window, baselines))
        if score.value >= rule.threshold:
            row = _as_row(sub, window, rule="spike", metric=rule.metric, observed=observed, value=score.value,
                          threshold=rule.threshold, spike=score, volume=windows[window]["volume"], **fields)
            found.append((sub, row))
    found += _instant_alerts(subscriptions, items, windows, fields)
    found.sort(key=lambda c: (c[1]["window_start"], c[1]["alert_id"]))
    return found


def cooldown_queries(found: Sequence[Candidate]) -> list[tuple[str, str, str, datetime, int]]:
    """(subscription, key_type, key, window start, cooldown) of each candidate a cooldown could silence."""
    return [
        (sub.id, row["key_type"], row["key"], row["window_start"], sub.cooldown_s)
        for sub, row in found
        if sub.cooldown_s > 0
    ]


def after_cooldown(found: Sequence[Candidate], recent: Recent) -> list[dict[str, Any]]:
    """The candidates no other alert of the same subscription and key silences (stored or fired just before)."""
    fired: dict[tuple[str, str, str], list[tuple[datetime, str]]] = {k: list(v) for k, v in recent.items()}
    kept = []
    for sub, row in found:
        key = (sub.id, row["key_type"], row["key"])
        start, cooldown = row["window_start"], timedelta(seconds=sub.cooldown_s)
        if sub.cooldown_s > 0 and any(
            abs(other - start) < cooldown and other_id != row["alert_id"] for other, other_id in fired.get(key, ())
        ):
            continue
        kept.append(row)
        fired.setdefault(key, []).append((start, row["alert_id"]))
    return kept


def _threshold_alerts(
    subscriptions: Sequence[Subscription], windows: Mapping[WindowKey, Mapping[str, Any]], fields: dict[str, Any]
) -> list[Candidate]:
    """Threshold rules, on every window the batch recomputed."""
    by_size: dict[tuple[int, str], list[Subscription]] = {}  # so a window meets only its subscriptions
    for sub in subscriptions:
        if isinstance(sub.rule, ThresholdRule):
            by_size.setdefault((sub.window_s, sub.key_type), []).append(sub)
    found: list[Candidate] = []
    for window, aggregate in windows.items():
        window_s, _, key_type, key, _ = window
        for sub in by_size.get((window_s, key_type), ()):
            rule = sub.rule
            assert isinstance(rule, ThresholdRule)
            if not watches(sub, key_type, key):
                continue
            observed = threshold_fires(rule, aggregate)
            if observed is not None:
                row = _as_row(sub, window, rule="threshold", metric=rule.metric, observed=observed,
                              value=observed, threshold=rule.value, volume=aggregate["volume"], **fields)
                found.append((sub, row))
    return found


def _instant_alerts(
    subscriptions: Sequence[Subscription],
    items: Iterable[ScoredItem],
    windows: Mapping[WindowKey, Mapping[str, Any]],
    fields: dict[str, Any],
) -> list[Candidate]:
    """Instant rules, on every confidently negative document; at most one alert per window survives the insert."""
    instant = [(s, s.rule) for s in subscriptions if isinstance(s.rule, InstantRule)]
    found: list[Candidate] = []
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
                    found.append((sub, row))
    return found
