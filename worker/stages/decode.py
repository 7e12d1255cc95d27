"""Stage 1, decode: raw bytes to validated, normalised `NewsItem`s (and `ScoredItem`s for persist).

Bad input is data, not an exception: `decode_news_item` returns either an item or a
`Rejection` with a machine-readable reason, and `decode` turns those into `Reject`s
that the driver routes to the DLQ.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas.news import NewsItem, ScoredItem
from worker.stages.aggregates import as_utc
from worker.stages.records import Accepted, Record, Reject, StageResult

MAX_JSON_DEPTH = 32
# Event times outside this range are a producer's bug (or an attack): PostgreSQL and the window
# arithmetic cannot hold every date Python can parse, so such items are refused at ingest.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a repeated key are ambiguous (which value wins?), so refuse them."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def normalise_text(text: str) -> str:
    """NFC, control characters dropped, whitespace runs collapsed: one text, one cache key."""
    text = unicodedata.normalize("NFC", text)
    if not text.isprintable():  # a printable text has no category-C character: skip the per-character pass
        text = "".join(ch if unicodedata.category(ch)[0] != "C" or ch in "\t\n\r" else " " for ch in text)
    return " ".join(text.split())


def clean_field(value: str) -> str:
    """A name or key as it will be stored and grouped by: NFKC, every control and format character
    dropped (NUL, zero-width, bidi overrides), whitespace collapsed. So `TSLA\u200b` is `TSLA`."""
    value = unicodedata.normalize("NFKC", value)
    if not value.isprintable():
        value = "".join(ch for ch in value if unicodedata.category(ch)[0] != "C")
    return " ".join(value.split())


def _cleaned_fields(item: NewsItem) -> dict[str, Any]:
    """Every string field but the text cleaned (the text is normalised on its own); empty ones dropped."""
    return {
        "id": clean_field(item.id) or None if item.id is not None else None,
        "source": clean_field(item.source) or "unknown",
        "lang": clean_field(item.lang) or None if item.lang is not None else None,
        "author": clean_field(item.author) or None if item.author is not None else None,
        "url": clean_field(item.url) or None if item.url is not None else None,
        "tickers": [t for t in (clean_field(t) for t in item.tickers) if t],
    }


def _event_time_refused(published_at: datetime | None) -> str | None:
    if published_at is None:
        return None
    try:
        if EARLIEST <= published_at < LATEST:
            return None
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 has no UTC time
        pass
    return f"published_at {published_at.isoformat()} is outside {EARLIEST:%Y-%m-%d} .. {LATEST:%Y-%m-%d}"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def derive_id(source: str, text: str) -> str:
    """A producer's retry of the same item maps to the same id, so it is not a new document."""
    return hashlib.sha256(f"{source}\x00{text}".encode("utf-8")).hexdigest()[:32]


def _describe(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "item"
    if first["type"] == "missing" and field == "text":
        return "missing_text", "field 'text' is required"
    details = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'item'}: {e['msg']}" for e in error.errors()[:5]
    )
    return "invalid_field", details


def decode_news_item(raw: bytes | None, *, max_text_chars: int) -> NewsItem | Rejection:
    """Turn one message value into a normalised `NewsItem` with an id, or say why not."""
    if raw is None or raw == b"":
        return Rejection("empty_message", "message value is empty")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("invalid_utf8", f"not UTF-8 at byte {exc.start}: {exc.reason}")
    try:
        payload = json.loads(decoded, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        return Rejection("duplicate_key", f"key {str(exc)[:64]!r} appears more than once")
    except (ValueError, RecursionError) as exc:
        return Rejection("invalid_json", str(exc)[:200])
    if not isinstance(payload, dict):
        return Rejection("not_an_object", f"expected a JSON object, got {type(payload).__name__}")
    # Each level of nesting opens a bracket (32 nested containers put a value at depth 33), so a message with
    # fewer brackets cannot be too deep.
    if raw.count(b"[") + raw.count(b"{") >= MAX_JSON_DEPTH and _depth(payload, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        return Rejection("too_deep", f"nesting deeper than {MAX_JSON_DEPTH}")
    try:
        item = NewsItem.model_validate(payload)
    except ValidationError as exc:
        return Rejection(*_describe(exc))
    try:
        # Lone surrogates ("\ud800") survive json.loads but cannot be stored or re-sent. Valid UTF-8 holds
        # none, so only a \u escape can make one.
        if b"\\u" in raw:
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return Rejection("invalid_text", "contains lone UTF-16 surrogates")
    if len(item.text) > max_text_chars:
        return Rejection("text_too_long", f"text has {len(item.text)} characters, limit is {max_text_chars}")
    text = normalise_text(item.text)
    if not text:
        return Rejection("empty_text", "text is empty after normalisation")
    published_at = as_utc(item.published_at) if item.published_at is not None else None
    refused = _event_time_refused(published_at)
    if refused:
        return Rejection("invalid_field", refused)
    fields = _cleaned_fields(item)
    return item.model_copy(
        update={**fields, "text": text, "id": fields["id"] or derive_id(fields["source"], text), "published_at": published_at}
    )


def decode(records: Sequence[Record], *, max_text_chars: int) -> StageResult[NewsItem]:
    """Every record as a `NewsItem`, or a reject (stage `ingest`) saying why not."""
    result: StageResult[NewsItem] = StageResult()
    for record in records:
        decoded = decode_news_item(record.value, max_text_chars=max_text_chars)
        if isinstance(decoded, Rejection):
            result.rejected.append(Reject(record, decoded.reason, decoded.detail, stage="ingest"))
        else:
            result.accepted.append(Accepted(record, decoded))
    return result


def decode_scored(records: Sequence[Record]) -> StageResult[ScoredItem]:
    """The persist stage's input from the scored topic; what does not parse is rejected (stage `persist`)."""
    result: StageResult[ScoredItem] = StageResult()
    for record in records:
        try:
            result.accepted.append(Accepted(record, ScoredItem.model_validate_json(record.value or b"")))
        except ValidationError as exc:
            result.rejected.append(Reject(record, "invalid_scored_item", str(exc)[:500], stage="persist"))
    return result
