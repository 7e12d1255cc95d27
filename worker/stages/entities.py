"""Find the companies a text talks about: cashtags and watchlist names, script-aware.

Latin-like scripts separate words with spaces, so their names match only at word
boundaries ("Apple" is not in "Pineapple"). Chinese, Japanese, Korean (whose particles
attach to the noun) and Thai do not, so their names match anywhere, and a Latin name
written straight against them ("Tesla季度利润") still counts. Case follows each alias.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_WATCHLIST = Path(__file__).with_name("data") / "watchlist.yaml"

# $AAPL, $BRK.B, $0700.HK, $600519.SS — but not amounts such as $5 or $3.50.
CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z][A-Za-z0-9]{0,9}(?:\.[A-Za-z]{1,4})?|\d{1,6}\.[A-Za-z]{1,4})(?!\w)(?!\.\w)")


# Letters of scripts written without spaces between words (CJK, kana, Hangul, Thai).
_UNSPACED = "\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"
# A word character that would glue onto a spaced-script name: any \w except those scripts.
_GLUE = f"[^\\W{_UNSPACED}]"


_UNSPACED_LETTER = re.compile(f"[{_UNSPACED}]")


def _is_unspaced_script(ch: str) -> bool:
    return _UNSPACED_LETTER.fullmatch(ch) is not None


@dataclass(frozen=True)
class Alias:
    ticker: str
    text: str
    case_sensitive: bool

    @property
    def unspaced(self) -> bool:
        return any(_is_unspaced_script(ch) for ch in self.text)


def _alternation(aliases: list[Alias]) -> str:
    # Longest first, so "Apple Inc." wins over "Apple".
    return "|".join(re.escape(a.text) for a in sorted(aliases, key=lambda a: -len(a.text)))


class Watchlist:
    def __init__(self, companies: dict[str, dict[str, Any]]) -> None:
        self.names = {ticker.upper(): str(info.get("name", ticker)) for ticker, info in companies.items()}
        aliases = [
            Alias(ticker.upper(), *_parse_alias(raw)) for ticker, info in companies.items() for raw in info.get("aliases", [])
        ]
        self._owner: dict[tuple[str, bool], str] = {}
        for alias in aliases:
            key = (alias.text if alias.case_sensitive else alias.text.casefold(), alias.case_sensitive)
            self._owner[key] = alias.ticker
        # (pattern, case-sensitive, its aliases need a letter of an unspaced script)
        self._patterns: list[tuple[re.Pattern[str], bool, bool]] = []
        for case_sensitive in (True, False):
            flags = 0 if case_sensitive else re.IGNORECASE
            spaced = [a for a in aliases if a.case_sensitive == case_sensitive and not a.unspaced]
            unspaced = [a for a in aliases if a.case_sensitive == case_sensitive and a.unspaced]
            if spaced:
                pattern = f"(?<!{_GLUE})(?:{_alternation(spaced)})(?!{_GLUE})"
                self._patterns.append((re.compile(pattern, flags), case_sensitive, False))
            if unspaced:
                self._patterns.append((re.compile(_alternation(unspaced), flags), case_sensitive, True))

    @classmethod
    def load(cls, path: str | Path | None = None) -> Watchlist:
        with open(path or DEFAULT_WATCHLIST, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a watchlist maps tickers to {{name, aliases}}")
        return cls({str(ticker): info or {} for ticker, info in data.items()})

    def match(self, text: str) -> set[str]:
        """Tickers of the watchlist names found in `text`."""
        found: set[str] = set()
        # Most texts hold no CJK, kana, Hangul or Thai letter, and so none of the names written in them:
        # one scan for such a letter spares the long alternation of those names (half of the matching time).
        unspaced_text = _UNSPACED_LETTER.search(text) is not None
        for pattern, case_sensitive, needs_unspaced in self._patterns:
            if needs_unspaced and not unspaced_text:
                continue
            for m in pattern.finditer(text):
                key = m.group(0) if case_sensitive else m.group(0).casefold()
                found.add(self._owner[(key, case_sensitive)])
        return found


def _parse_alias(raw: str | dict[str, Any]) -> tuple[str, bool]:
    if isinstance(raw, str):
        return unicodedata.normalize("NFC", raw), False
    return unicodedata.normalize("NFC", str(raw["text"])), raw.get("case", "insensitive") == "sensitive"


def cashtags(text: str) -> set[str]:
    return {m.group(1).upper() for m in CASHTAG.finditer(text)}


def find_entities(text: str, watchlist: Watchlist, tickers: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Sorted tickers: the producer's, the cashtags and the watchlist names in the text."""
    return sorted({t.upper().lstrip("$") for t in tickers} | cashtags(text) | watchlist.match(text))
