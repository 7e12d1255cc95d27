"""Stage 2, score: language, entities, the Redis cache in one round trip, the model on the misses only.

The model runs in a single worker thread, behind a queue that merges the windows waiting for
it (worker/stages/engine_queue.py), so the event loop keeps consuming while it works; identical
texts in a window are scored once. A text the model fails on is rejected alone (`engine_error`),
never the window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from engines import Engine, Scores
from schemas.news import NewsItem, Prediction, ScoredItem
from worker import metrics
from worker.settings import CacheSettings, PipelineSettings
from worker.stages.cache import ScoreCache
from worker.stages.decode import text_hash
from worker.stages.engine_queue import EngineQueue
from worker.stages.entities import Watchlist, find_entities
from worker.stages.language import UNKNOWN, LanguageDetector, normalise_lang
from worker.stages.records import Accepted, Reject, StageResult

log = logging.getLogger(__name__)


class EngineFailed(RuntimeError):
    """The model raised on a text; the item goes to the DLQ instead of stopping the stream."""


class ScoreStage:
    def __init__(
        self, engine: Engine, cache: ScoreCache, watchlist: Watchlist, languages: LanguageDetector | None,
        *, max_engine_texts: int = 512,
    ) -> None:
        """engine: the model windows are scored with unless a call names another (a promoted model);
        max_engine_texts: most texts of waiting windows merged into one engine call."""
        self.engine = engine
        self.cache = cache
        self.watchlist = watchlist
        self.languages = languages
        self.queue = EngineQueue(max_engine_texts)
        # Language and entities do not feed the model, so they run beside it, in a thread of their own.
        self._enricher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enrich")

    def _enrich(self, items: Sequence[NewsItem]) -> list[tuple[str, list[str]]]:
        """(language, entities) per item; the texts without `lang` are detected in one call."""
        langs = [normalise_lang(item.lang) for item in items]
        untagged = [i for i, lang in enumerate(langs) if lang is None]
        if untagged:
            detected = self.languages.detect_many([items[i].text for i in untagged]) if self.languages else None
            for n, i in enumerate(untagged):
                langs[i] = detected[n] if detected else UNKNOWN
        return [(lang or UNKNOWN, find_entities(item.text, self.watchlist, item.tickers)) for lang, item in zip(langs, items)]

    async def _predict_isolating_failures(
        self, engine: Engine, texts: list[str], *, alone: bool = False
    ) -> dict[str, Scores | EngineFailed]:
        """Scores per text. A failed call is retried on this window's texts alone (another window merged into
        it may hold the bad text), then text by text, so one bad text fails alone."""
        try:
            scores = await (self.queue.predict_alone if alone else self.queue.predict)(engine, texts)
            return dict(zip(texts, scores))
        except Exception as exc:  # noqa: BLE001
            if not alone:
                return await self._predict_isolating_failures(engine, texts, alone=True)
            if len(texts) == 1:
                log.exception("model failed on one text")
                return {texts[0]: EngineFailed(f"{type(exc).__name__}: {exc}")}
        results: dict[str, Scores | EngineFailed] = {}
        for text in texts:
            results |= await self._predict_isolating_failures(engine, [text], alone=True)
        return results

    async def __call__(self, batch: Sequence[Accepted[NewsItem]], engine: Engine | None = None) -> StageResult[ScoredItem]:
        """A `ScoredItem` per item, in order, or an `engine_error` reject (stage `score`)."""
        result: StageResult[ScoredItem] = StageResult()
        if not batch:
            return result
        items = [accepted.value for accepted in batch]
        scored = await self.score(items, [accepted.record.arrived_at() for accepted in batch], engine=engine)
        for accepted, outcome in zip(batch, scored):
            if isinstance(outcome, EngineFailed):
                result.rejected.append(Reject(accepted.record, "engine_error", str(outcome), stage="score"))
            else:
                result.accepted.append(Accepted(accepted.record, outcome))
        return result

    async def score(
        self, items: Sequence[NewsItem], arrived: Sequence[datetime] | None = None, *, engine: Engine | None = None
    ) -> list[ScoredItem | EngineFailed]:
        """One result per item, in order; `arrived` (Kafka timestamps) is the event time without published_at.
        engine: the model to score with (default self.engine), fixed for the whole window."""
        started = time.perf_counter()
        engine = engine or self.engine
        arrived = arrived or [datetime.now(UTC)] * len(items)
        version = engine.model_version
        hashes = [text_hash(item.text) for item in items]
        # Language and entities are computed in their own thread while Redis answers and the model runs.
        enriching = asyncio.get_running_loop().run_in_executor(self._enricher, self._enrich, items)
        cached = await self.cache.get_many(version, dict.fromkeys(hashes))
        to_score = {h: item.text for h, item in zip(hashes, items) if h not in cached}
        fresh: dict[str, Scores | EngineFailed] = {}
        if to_score:
            by_text = await self._predict_isolating_failures(engine, list(to_score.values()))
            fresh = {h: by_text[text] for h, text in to_score.items()}
            await self.cache.put_many(version, {h: s for h, s in fresh.items() if isinstance(s, Scores)})
        enriched = await enriching
        now = datetime.now(UTC)
        latency_ms = (time.perf_counter() - started) * 1000
        results: list[ScoredItem | EngineFailed] = []
        seen: set[str] = set()
        for item, h, at, (lang, entities) in zip(items, hashes, arrived, enriched):
            scores = cached.get(h) or fresh[h]
            if isinstance(scores, EngineFailed):
                results.append(scores)
                continue
            from_engine = h in fresh and h not in seen
            seen.add(h)
            metrics.SCORED.labels("engine" if from_engine else "cache").inc()
            results.append(
                ScoredItem(
                    id=item.id or h[:32],
                    source=item.source,
                    text=item.text,
                    text_hash=h,
                    lang=lang,
                    published_at=item.published_at,
                    url=item.url,
                    author=item.author,
                    tickers=list(item.tickers),
                    entities=entities,
                    sentiment=Prediction(label=scores.sentiment.label, probs=scores.sentiment.probs),
                    topic=Prediction(label=scores.topic.label, probs=scores.topic.probs),
                    sentiment_score=scores.sentiment_score,
                    event_time=item.published_at or at,
                    model_version=version,
                    received_at=at,
                    scored_at=now,
                    latency_ms=round(latency_ms, 3),
                    cached=not from_engine,
                )
            )
        return results

    async def close(self) -> None:
        await self.queue.close()
        self._enricher.shutdown(wait=False, cancel_futures=True)
        await self.cache.close()


def build_score_stage(
    engine: Engine, pipeline: PipelineSettings, cache: CacheSettings, *, cache_prefix: str, max_engine_texts: int = 512
) -> ScoreStage:
    """The stage as every driver configures it: Redis cache (none when its URL is empty), watchlist, language detection."""
    languages = LanguageDetector(pipeline.languages) if pipeline.detect_language else None
    return ScoreStage(
        engine, ScoreCache(cache, prefix=cache_prefix), Watchlist.load(pipeline.watchlist), languages,
        max_engine_texts=max_engine_texts,
    )
