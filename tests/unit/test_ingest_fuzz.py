"""Fuzz decode + validate with generated bad input: every case ends as a valid item or a reason.

Over 10,000 generated messages in all (the sum of max_examples below): raw bytes, invalid
UTF-8, lone surrogates, control characters, huge fields, deep nesting, wrong types, missing
fields and duplicate keys. None may raise.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.news import NewsItem
from worker.stages.decode import Rejection, decode_news_item

LIMIT = 500
REASONS = {
    "empty_message", "invalid_utf8", "invalid_json", "duplicate_key", "not_an_object", "too_deep",
    "missing_text", "invalid_field", "invalid_text", "text_too_long", "empty_text",
}
def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
    )

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
any_text = st.text(alphabet=st.characters(codec=None), max_size=LIMIT + 50)  # includes surrogates and controls


def check(raw: bytes) -> None:
    result = decode_news_item(raw, max_text_chars=LIMIT)
    if isinstance(result, Rejection):
        assert result.reason in REASONS and result.detail
    else:
        assert isinstance(result, NewsItem) and result.id and result.text
        assert len(result.text) <= LIMIT
        result.model_dump_json().encode("utf-8")  # what the worker sends on must encode


@fuzz(3000)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@fuzz(4000)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "id": json_values, "source": json_values, "text": any_text | json_values, "lang": json_values,
            "published_at": json_values, "tickers": json_values, "url": json_values, "extra": json_values,
        },
    )
)
def test_objects_with_wrong_and_missing_fields(payload: dict) -> None:
    check(json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@fuzz(3000)
@given(any_text, st.integers(0, 80), st.sampled_from(["", '"text": "dup", ']))
def test_texts_nesting_and_duplicate_keys(text: str, depth: int, duplicate: str) -> None:
    nested = "[" * depth + "]" * depth
    raw = "{" + duplicate + f'"text": {json.dumps(text)}, "x": {nested or 0}' + "}"
    check(raw.encode("utf-8", "surrogatepass"))


def test_a_huge_field_is_rejected_not_processed() -> None:
    raw = json.dumps({"text": "x", "source": "s" * 5_000_000}).encode()
    result = decode_news_item(raw, max_text_chars=LIMIT)
    assert isinstance(result, Rejection) and result.reason == "invalid_field"
