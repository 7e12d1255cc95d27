"""Entity matching on tricky cases: substrings, scripts, cashtag suffixes, case."""

from __future__ import annotations

import pytest

from worker.stages.entities import Watchlist, cashtags, find_entities


@pytest.fixture(scope="module")
def watchlist() -> Watchlist:
    return Watchlist.load()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Apple beats estimates", {"AAPL"}),
        ("Pineapple prices soar in Hawaii", set()),
        ("apple pie sales are up", set()),  # "Apple" is case-sensitive: the fruit is not the company
        ("APPLE INC. files 10-K", {"AAPL"}),  # "Apple Inc." is case-insensitive
        ("苹果公司发布财报", {"AAPL"}),
        ("苹果股价大涨", {"AAPL"}),
        ("アップルの株価が上昇", {"AAPL"}),
        ("أرباح أبل تفوق التوقعات", {"AAPL"}),
        ("Эппл и Тесла растут", {"AAPL", "TSLA"}),
        ("Teslas are everywhere", set()),  # no match inside a longer word
        ("Tesla季度利润超出预期", {"TSLA"}),  # a Latin name written against Chinese
        ("Appleの株価が上昇", {"AAPL"}),
        ("삼성전자가 실적을 발표했다", {"005930.KS"}),  # Korean particle attached to the name
        ("ToyotaMotor is one token", set()),
        ("tesla recalls cars", {"TSLA"}),
        ("特斯拉和比亚迪在中国竞争", {"TSLA", "1211.HK"}),
        ("腾讯控股公布业绩", {"0700.HK"}),
        ("Samsung Electronics and 삼성전자 both", {"005930.KS"}),
        ("The visa application was denied", set()),
        ("Visa and Mastercard settle", {"V", "MA"}),
        ("Shell shares and a shell company", {"SHEL"}),
        ("Nestle and Nestlé are the same", {"NESN.SW"}),
        ("Volkswagen-Aktie fällt, VW senkt Prognose", {"VOW3.DE"}),
        ("Microsoft's cloud grows", {"MSFT"}),
        ("Saudi Aramco raises dividend; أرامكو السعودية", {"2222.SR"}),
    ],
)
def test_watchlist_names(watchlist: Watchlist, text: str, expected: set[str]) -> None:
    assert watchlist.match(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Buying $AAPL and $tsla", {"AAPL", "TSLA"}),
        ("$BRK.B hits a record", {"BRK.B"}),
        ("$0700.HK and $600519.SS rally", {"0700.HK", "600519.SS"}),
        ("It costs $5 or $3.50 or $1,000", set()),
        ("US$AAPL is not a cashtag, nor $$AAPL", set()),
        ("Long $NVDA.", {"NVDA"}),
        ("($AMD)", {"AMD"}),
    ],
)
def test_cashtags(text: str, expected: set[str]) -> None:
    assert cashtags(text) == expected


def test_entities_merge_producer_tickers_cashtags_and_names(watchlist: Watchlist) -> None:
    assert find_entities("Toyota and $SONY up; トヨタ", watchlist, ["$bmw.de"]) == ["7203.T", "BMW.DE", "SONY"]


def test_own_watchlist_file(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("ACME:\n  name: Acme Corp\n  aliases: [Acme, {text: ACME, case: sensitive}, 阿克米]\n", encoding="utf-8")
    mine = Watchlist.load(path)
    assert mine.match("acme and 阿克米公司") == {"ACME"}
    assert mine.names == {"ACME": "Acme Corp"}
