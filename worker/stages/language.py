"""Language of a text: the producer's `lang` when given, else detected with lingua.

lingua is accurate on short texts and mixed scripts, and answers "don't know" rather
than guessing: a text too short or too ambiguous to tell gets "und" (undetermined).
Its models load on first use (~9 s and ~1 GB for all languages) and, once, for the
whole process. Loading holds the GIL, even in a thread, so the worker warms it up
before its event loop starts (`finpulse worker`, `replay`, `score`): inside the loop it stalls
heartbeats and `/metrics` for those seconds. Only the score stage's engine thread calls it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

UNKNOWN = "und"
MIN_LETTERS = 3


class LanguageDetector:
    def __init__(self, min_relative_distance: float = 0.1) -> None:
        self._min_relative_distance = min_relative_distance

    @property
    def _detector(self) -> Any:
        return _shared_detector(self._min_relative_distance)

    def warm_up(self) -> None:
        self.detect("Warm-up text so that every language model is loaded before the first batch.")

    def detect(self, text: str) -> str:
        """ISO 639-1 code (lower case), or "und" when lingua cannot tell."""
        if sum(ch.isalpha() for ch in text) < MIN_LETTERS:
            return UNKNOWN
        language = self._detector.detect_language_of(text)
        return language.iso_code_639_1.name.lower() if language is not None else UNKNOWN


def normalise_lang(lang: str | None) -> str | None:
    """Producer tags such as "EN", "en-US" or "zh_Hans" to the ISO 639-1 part, lower case."""
    if not lang:
        return None
    return lang.replace("_", "-").split("-", 1)[0].lower() or None


@cache
def _shared_detector(min_relative_distance: float) -> Any:
    """One detector per process and setting: every stage built later reuses its loaded models."""
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().with_minimum_relative_distance(min_relative_distance).build()
