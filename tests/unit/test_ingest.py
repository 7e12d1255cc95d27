"""Decode, validate and normalise: every kind of bad input has its own reason."""

from __future__ import annotations

import json

import pytest

from schemas.news import NewsItem
from worker.stages.decode import Rejection, decode_news_item, derive_id, normalise_text


def decode(raw: bytes, limit: int = 1000) -> NewsItem | Rejection:
    return decode_news_item(raw, max_text_chars=limit)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty_message"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b'{"text": "caf\xc3"}', "invalid_utf8"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"just a string"', "not_an_object"),
        (b'{"source": "x"}', "missing_text"),
        (b'{"text": 123}', "invalid_field"),
        (b'{"text": null}', "invalid_field"),
        (b'{"text": "ok", "tickers": "AAPL"}', "invalid_field"),
        (b'{"text": "ok", "published_at": "yesterday"}', "invalid_field"),
        (b'{"text": "   \\n\\t  "}', "empty_text"),
        (b'{"text": "\\u0000\\u0007"}', "empty_text"),
        (b'{"text": "a", "text": "b"}', "duplicate_key"),
        (b'{"text": "bad \\ud800 surrogate"}', "invalid_text"),
        (json.dumps({"text": "x" * 1001}).encode(), "text_too_long"),
        (b'{"text": "x", "meta": ' + b"[" * 40 + b"]" * 40 + b"}", "too_deep"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(raw: bytes, reason: str) -> None:
    result = decode(raw)
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    assert result.detail


def test_nesting_limit_is_exact() -> None:
    """32 nested containers are allowed while empty; a value inside the 32nd is at depth 33 and refused."""
    allowed = decode(b'{"text": "x", "meta": ' + b"[" * 31 + b"]" * 31 + b"}")
    refused = decode(b'{"text": "x", "meta": ' + b"[" * 31 + b"1" + b"]" * 31 + b"}")
    assert isinstance(allowed, NewsItem), allowed
    assert isinstance(refused, Rejection) and refused.reason == "too_deep"


def test_surrogate_escape_is_refused_in_any_field_and_case() -> None:
    for raw in (b'{"text": "bad \\uD83D"}', b'{"text": "ok", "unknown_field": ["\\udc00"]}'):
        result = decode(raw)
        assert isinstance(result, Rejection) and result.reason == "invalid_text", raw


def test_valid_item_is_normalised_and_gets_a_stable_id() -> None:
    raw = json.dumps({"source": "twitter", "text": "  Cafe\u0301   up\n\n5%  ", "lang": "fr"}).encode()
    first, second = decode(raw), decode(raw)
    assert isinstance(first, NewsItem) and isinstance(second, NewsItem)
    assert first.text == "Caf\u00e9 up 5%"
    assert first.id == second.id == derive_id("twitter", "Caf\u00e9 up 5%")
    assert first.lang == "fr"


def test_producer_id_and_optional_fields_are_kept() -> None:
    raw = json.dumps(
        {
            "id": "n-1",
            "source": "reuters",
            "text": "净利润增长",
            "published_at": "2026-11-28T10:00:00Z",
            "tickers": ["0700.HK"],
            "unknown_field": {"ignored": True},
        }
    ).encode()
    item = decode(raw)
    assert isinstance(item, NewsItem)
    assert item.id == "n-1"
    assert item.published_at is not None and item.published_at.year == 2026
    assert item.tickers == ["0700.HK"]


def test_same_text_from_another_source_is_another_document() -> None:
    assert derive_id("a", "same") != derive_id("b", "same")


def test_normalise_text_keeps_every_script() -> None:
    text = "Apple 苹果 アップル أبل Яблоко 🍎"
    assert normalise_text(f"  {text}  ") == text


def test_every_string_field_is_cleaned_so_look_alike_keys_group_together() -> None:
    raw = json.dumps({
        "id": "doc\u00001", "source": "reu\u200bters", "text": "Tesla rallies", "lang": "en\u200b",
        "author": "\u202eeve", "url": "https://example.com/\u0000a", "tickers": ["TSLA\u200b", "\u200b", "ＡＡＰＬ"],
    }).encode()
    item = decode(raw)
    assert isinstance(item, NewsItem)
    assert (item.id, item.source, item.lang, item.author, item.url) == ("doc1", "reuters", "en", "eve", "https://example.com/a")
    assert item.tickers == ["TSLA", "AAPL"]  # the empty one dropped, the full-width one folded


@pytest.mark.parametrize(
    "published_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:30Z", "1969-12-31T23:59:59Z", "2100-01-01T00:00:00Z"]
)
def test_event_times_outside_a_sane_range_are_refused(published_at: str) -> None:
    rejection = decode(json.dumps({"text": "ok", "published_at": published_at}).encode())
    assert isinstance(rejection, Rejection) and rejection.reason == "invalid_field"
    assert "outside 1970-01-01 .. 2100-01-01" in rejection.detail


def test_a_time_without_an_offset_is_utc() -> None:
    item = decode(b'{"text": "ok", "published_at": "2026-11-28T09:30:00"}')
    assert isinstance(item, NewsItem) and item.published_at is not None
    assert item.published_at.utcoffset() is not None and item.published_at.isoformat() == "2026-11-28T09:30:00+00:00"


def test_a_dead_letter_fits_under_the_brokers_limit_whatever_the_record() -> None:
    import base64
    import hashlib

    from worker.stages.records import DEAD_LETTER_VALUE_BYTES, Record, Reject

    value = b'{"text": "' + b"x" * 3_000_000 + b'"}'
    letter = Reject(Record(value=value, key=b"k" * 2_000_000, topic="t", partition=0, offset=7), "text_too_long",
                    "d" * 100_000, "ingest").dead_letter()
    encoded = letter.model_dump_json().encode()
    assert len(encoded) < 800_000  # Kafka's default limit is 1 MiB
    assert letter.value_truncated and letter.value_size == len(value)
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    assert base64.b64decode(letter.value_b64) == value[:DEAD_LETTER_VALUE_BYTES]
