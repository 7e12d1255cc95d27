"""Language of a text: the producer's `lang` when given, else detected with lingua.

lingua is accurate on short texts and mixed scripts, and answers "don't know" rather
than guessing: a text too short or too ambiguous to tell gets "und" (undetermined).

What it costs decides how it is used (measured on 2 cores of an AMD EPYC, docs/performance.md):
- Loading holds the GIL the whole time: all 75 languages take ~8 s and ~1 GB, the 13 of
  `FINPULSE_LANGUAGES=en,de,es,fr,it,pt,ar,hi,ja,zh,ko,ru,nl` 1.4 s and ~220 MB. So the
  models load on the first item without `lang`, never when producers tag every item, and
  `FINPULSE_LANGUAGES` restricts them to the languages a deployment expects.
- One batch call (`detect_languages_in_parallel_of`) is ~4× faster than a loop of single
  calls, so a micro-batch's texts are detected together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from typing import Any

log = logging.getLogger(__name__)
UNKNOWN = "und"
MIN_LETTERS = 3


class LanguageDetector:
    def __init__(self, languages: Sequence[str] | None = None, min_relative_distance: float = 0.1) -> None:
        """languages: ISO 639-1 codes to choose among (None = every language lingua knows)."""
        self._languages = tuple(sorted(code.lower() for code in languages)) if languages else None
        self._min_relative_distance = min_relative_distance
        if self._languages:
            if len(self._languages) < 2:
                raise ValueError("FINPULSE_LANGUAGES needs at least two languages to choose among (or none: all)")
            _iso_codes(self._languages)  # an unknown code fails here, at start-up, not on the first batch

    def detect_many(self, texts: Sequence[str]) -> list[str]:
        """ISO 639-1 code (lower case) per text, or "und" when lingua cannot tell or the text has too few letters."""
        found = [UNKNOWN] * len(texts)
        wanted = [i for i, text in enumerate(texts) if sum(ch.isalpha() for ch in text) >= MIN_LETTERS]
        if wanted:
            detector = _shared_detector(self._languages, self._min_relative_distance)
            for i, language in zip(wanted, detector.detect_languages_in_parallel_of([texts[i] for i in wanted])):
                if language is not None:
                    found[i] = language.iso_code_639_1.name.lower()
        return found


def normalise_lang(lang: str | None) -> str | None:
    """Producer tags such as "EN", "en-US" or "zh_Hans" to the ISO 639-1 part, lower case."""
    if not lang:
        return None
    return lang.replace("_", "-").split("-", 1)[0].lower() or None


def _iso_codes(languages: Sequence[str]) -> list[Any]:
    from lingua import IsoCode639_1

    unknown = [code for code in languages if not hasattr(IsoCode639_1, code.upper())]
    if unknown:
        raise ValueError(f"FINPULSE_LANGUAGES: lingua knows no language {', '.join(unknown)} (ISO 639-1 codes, e.g. en,de,ja)")
    return [getattr(IsoCode639_1, code.upper()) for code in languages]


@cache
def _shared_detector(languages: tuple[str, ...] | None, min_relative_distance: float) -> Any:
    """One detector per process and setting, loaded on first use (see the module's docstring)."""
    from lingua import LanguageDetectorBuilder

    log.warning("loading the language detector (%s); the worker pauses while it loads",
                f"{len(languages)} languages" if languages else "every language")
    builder = (
        LanguageDetectorBuilder.from_iso_codes_639_1(*_iso_codes(languages))
        if languages
        else LanguageDetectorBuilder.from_all_languages()
    )
    return builder.with_minimum_relative_distance(min_relative_distance).build()
