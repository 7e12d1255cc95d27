"""Hostile input in shared batches with valid documents, on a real worker and PostgreSQL.

Every record ends somewhere: stored once (cleaned) or dead-lettered once with its reason,
size and hash; the other records of its batch are unaffected and the worker stays up.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter

import pytest

from worker.samples import sample_items

from .conftest import Pipeline

pytestmark = pytest.mark.integration

HOSTILE: list[tuple[bytes, str]] = [
    # A dead letter carries the original bytes: these two would make one over Kafka's 1 MiB limit.
    (b'{"text": "' + b"x" * 900_000, "invalid_json"),
    (json.dumps({"text": "big lang", "lang": "e" * 999_000}).encode(), "invalid_field"),
    (json.dumps({"text": "ancient", "published_at": "0001-01-01T00:00:00+01:00"}).encode(), "invalid_field"),
    (json.dumps({"text": "far future", "published_at": "9999-12-31T23:59:30Z"}).encode(), "invalid_field"),
]
# Stored after cleaning: PostgreSQL refuses NUL in text columns, look-alike keys would split aggregates.
CLEANED = [
    ({"id": "nul\u0000id", "source": "wire\u0000", "author": "a\u0000b", "text": "Siemens hebt die Prognose an"}, "nulid"),
    ({"id": "lookalike", "source": "news", "lang": "en\u200b", "tickers": ["TSLA\u200b"], "text": "Tesla rallies"},
     "lookalike"),
]


def test_hostile_records_end_in_the_dlq_once_and_their_batch_mates_are_stored(pipeline: Pipeline) -> None:
    before = sample_items(40, seed=11, prefix="h-before")
    after = sample_items(40, seed=12, prefix="h-after")
    values = [json.dumps(i, ensure_ascii=False).encode() for i in before]
    values += [raw for raw, _ in HOSTILE] + [json.dumps(doc).encode() for doc, _ in CLEANED]
    values += [json.dumps(i, ensure_ascii=False).encode() for i in after]
    pipeline.send(values)  # at once: the hostile records share micro-batches with valid ones

    expected_ids = {i["id"] for i in before + after} | {stored_id for _, stored_id in CLEANED}
    pipeline.wait_stored(len(expected_ids), timeout=90)
    rows = pipeline.db.fetch("SELECT doc_id, source, lang, entities, author FROM documents")
    assert Counter(r["doc_id"] for r in rows) == Counter(expected_ids)  # each once, nothing else
    by_id = {r["doc_id"]: r for r in rows}
    assert (by_id["nulid"]["source"], by_id["nulid"]["author"]) == ("wire", "ab")
    assert (by_id["lookalike"]["lang"], json.loads(by_id["lookalike"]["entities"])) == ("en", ["TSLA"])

    letters = pipeline.read("dlq", expected=len(HOSTILE), timeout=30)
    assert sorted(letter["reason"] for letter in letters) == sorted(reason for _, reason in HOSTILE)
    sizes = {letter["value_size"]: letter for letter in letters}
    for raw, _ in HOSTILE:
        letter = sizes[len(raw)]
        assert letter["value_sha256"] == hashlib.sha256(raw).hexdigest()
        kept = base64.b64decode(letter["value_b64"])
        assert raw.startswith(kept) and letter["value_truncated"] == (len(kept) < len(raw))
    assert pipeline.worker.running
    assert pipeline.worker.metric("finpulse_send_failures_total") == 0
