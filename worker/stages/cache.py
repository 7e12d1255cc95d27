"""Redis score cache keyed by (model version, text hash). A cache: losing it slows, never breaks.

Every call is one round trip (MGET, or a pipeline of SET EX). When Redis fails the
cache steps aside for a jittered `FINPULSE_CACHE_RETRY_S` (worker/backoff.py), the worker
scores without it, and it comes back by itself once Redis answers again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from engines import HeadPrediction, Scores
from worker import metrics
from worker.backoff import Backoff
from worker.settings import CacheSettings

log = logging.getLogger(__name__)


def _encode(scores: Scores) -> str:
    return json.dumps(
        {
            "sentiment": [scores.sentiment.label, scores.sentiment.probs],
            "topic": [scores.topic.label, scores.topic.probs],
        },
        separators=(",", ":"),
    )


def _decode(raw: bytes) -> Scores | None:
    """The cached scores, or None for a value finpulse did not write (a miss, overwritten on put)."""
    try:
        data = json.loads(raw)
        return Scores(sentiment=HeadPrediction(*data["sentiment"]), topic=HeadPrediction(*data["topic"]))
    except (ValueError, TypeError, KeyError):
        return None


class ScoreCache:
    def __init__(self, settings: CacheSettings, *, prefix: str) -> None:
        self._client = (
            aioredis.Redis.from_url(
                settings.url,
                socket_timeout=settings.timeout_s,
                socket_connect_timeout=settings.timeout_s,
                # After a Redis restart the pooled connections are dead; one retry on a fresh
                # connection hides that instead of bypassing the cache for another retry_s.
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError],
            )
            if settings.url
            else None
        )
        self._prefix = prefix
        self._ttl_s = settings.ttl_s
        self._backoff = Backoff(settings.retry_s, settings.retry_s)
        self._down_until = 0.0
        self._down = False
        metrics.CACHE_UP.set(1 if self._client else 0)

    def _key(self, model_version: str, text_hash: str) -> str:
        return f"{self._prefix}score:{model_version}:{text_hash}"

    @property
    def available(self) -> bool:
        return self._client is not None and time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        metrics.CACHE_ERRORS.inc()
        metrics.CACHE_UP.set(0)
        wait = self._backoff.delay(0)
        self._down_until = time.monotonic() + wait
        if not self._down:
            log.warning("Redis cache unavailable (%s); scoring without it, retrying in %.1fs", exc, wait)
        self._down = True

    def _succeeded(self) -> None:
        if self._down:
            log.warning("Redis cache is back")
        self._down = False
        metrics.CACHE_UP.set(1)

    async def get_many(self, model_version: str, hashes: Iterable[str]) -> dict[str, Scores]:
        """Cached scores for those hashes that have one; {} when the cache is down."""
        hashes = list(hashes)
        if not hashes or not self.available:
            return {}
        assert self._client is not None
        try:
            values = await self._client.mget([self._key(model_version, h) for h in hashes])
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return {}
        self._succeeded()
        decoded = {h: _decode(v) for h, v in zip(hashes, values) if v is not None}
        found = {h: scores for h, scores in decoded.items() if scores is not None}
        metrics.CACHE_HITS.inc(len(found))
        metrics.CACHE_MISSES.inc(len(hashes) - len(found))
        return found

    async def put_many(self, model_version: str, scores: Mapping[str, Scores]) -> None:
        if not scores or not self.available:
            return
        assert self._client is not None
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for h, s in scores.items():
                    pipe.set(self._key(model_version, h), _encode(s), ex=self._ttl_s)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return
        self._succeeded()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
