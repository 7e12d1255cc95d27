"""Language detection (worker/stages/language.py) and how the score stage uses it."""

from __future__ import annotations

import pytest

from schemas.news import NewsItem
from worker.stages import language
from worker.stages.entities import Watchlist
from worker.stages.language import LanguageDetector
from worker.stages.score import ScoreStage

TEXTS = {
    "en": "The company reported record quarterly profits and raised its outlook.",
    "de": "Das Unternehmen meldete einen Rekordgewinn und hob die Prognose an.",
    "ja": "同社は四半期で過去最高の利益を計上し、見通しを引き上げた。",
}


def test_detects_a_batch_among_the_configured_languages() -> None:
    detector = LanguageDetector(["EN", "de", "ja", "fr"])
    assert detector.detect_many([*TEXTS.values(), "ok", "12 34"]) == [*TEXTS, "und", "und"]


@pytest.mark.parametrize("codes, message", [(["en", "xx"], "no language xx"), (["en"], "at least two")])
def test_bad_language_settings_fail_at_start(codes: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LanguageDetector(codes)


def test_tagged_items_never_load_the_detector() -> None:
    language._shared_detector.cache_clear()
    stage = ScoreStage(None, None, Watchlist.load(None), LanguageDetector(["en", "de"]))  # type: ignore[arg-type]
    try:
        tagged = [NewsItem(text=TEXTS["de"], lang="DE-at"), NewsItem(text=TEXTS["en"], lang="en")]
        assert [lang for lang, _ in stage._enrich(tagged)] == ["de", "en"]
        assert language._shared_detector.cache_info().currsize == 0  # nothing loaded
        mixed = [NewsItem(text=TEXTS["de"]), NewsItem(text="x", lang=None), NewsItem(text=TEXTS["en"], lang="en")]
        assert [lang for lang, _ in stage._enrich(mixed)] == ["de", "und", "en"]
        assert language._shared_detector.cache_info().currsize == 1
    finally:
        stage._enricher.shutdown()
