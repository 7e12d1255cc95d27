"""Language of a text: the producer's `lang` when given, else detected with lingua.

lingua is accurate on short texts and mixed scripts, and answers "don't know" rather
than guessing: a text too short or too ambiguous to tell gets "und" (undetermined).
Its models load on first use (about a second and ~1 GB for all languages), so the
worker warms it in the engine thread at start-up.
"""

from __future__ import annotations

import threading
from functools import cached_property

UNKNOWN = "und"
MIN_LETTERS = 3


class LanguageDetector:
    def __init__(self, min_relative_distance: float = 0.1) -> None:
        self._min_relative_distance = min_relative_distance
        self._lock = threading.Lock()

    @cached_property
    def _detector(self):  # type: ignore[no-untyped-def]
        from lingua import LanguageDetectorBuilder

        with self._lock:
            return (
                LanguageDetectorBuilder.from_all_languages()
                .with_minimum_relative_distance(self._min_relative_distance)
                .build()
            )

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
