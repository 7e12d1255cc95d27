"""Synthetic multilingual news items for the demo, tests and benchmarks.

Templates in seven languages, filled with companies, moves and figures, so any number
of distinct, realistic-looking items can be made without shipping a data set.
"""

from __future__ import annotations

import random
from typing import Any

COMPANIES = ["Apple", "Tesla", "Toyota", "Siemens", "Tencent", "Aramco", "Santander", "LVMH", "Sony", "BYD"]

TEMPLATES: dict[str, list[str]] = {
    "en": [
        "{co} shares jump {n}% after quarterly earnings beat estimates",
        "{co} cuts full-year guidance, stock drops {n}% in early trading",
        "Analysts keep a neutral rating on {co} ahead of results, target {n} USD",
    ],
    "zh": [
        "{co}季度利润超出预期，股价上涨{n}%",
        "{co}下调全年业绩指引，股价下跌{n}%",
        "分析师维持对{co}的中性评级，目标价{n}美元",
    ],
    "es": [
        "Las acciones de {co} suben un {n}% tras superar las previsiones",
        "{co} recorta sus previsiones anuales y cae un {n}% en bolsa",
        "Los analistas mantienen una recomendación neutral sobre {co}, precio objetivo {n} euros",
    ],
    "de": [
        "{co}-Aktie steigt um {n} Prozent nach starken Quartalszahlen",
        "{co} senkt die Jahresprognose, Aktie fällt um {n} Prozent",
        "Analysten bewerten {co} weiter neutral, Kursziel {n} Euro",
    ],
    "fr": [
        "L'action {co} grimpe de {n} % après des résultats meilleurs que prévu",
        "{co} abaisse ses prévisions annuelles, le titre recule de {n} %",
        "Les analystes restent neutres sur {co}, objectif de cours {n} euros",
    ],
    "ja": [
        "{co}の株価が決算好調を受けて{n}%上昇",
        "{co}が通期見通しを下方修正、株価は{n}%下落",
        "アナリストは{co}の中立評価を維持、目標株価は{n}ドル",
    ],
    "ar": [
        "ارتفعت أسهم {co} بنسبة {n}% بعد أرباح فاقت التوقعات",
        "خفضت {co} توقعاتها السنوية وتراجع السهم بنسبة {n}%",
        "المحللون يبقون على تقييم محايد لسهم {co} بسعر مستهدف {n} دولار",
    ],
}

SOURCES = ["twitter", "reuters", "weibo", "bloomberg", "news"]


def sample_items(count: int, *, seed: int = 0, prefix: str = "doc") -> list[dict[str, Any]]:
    """`count` distinct NewsItem dicts, languages in round-robin, ids `<prefix>-<n>`."""
    rng = random.Random(seed)
    languages = sorted(TEMPLATES)
    items = []
    for n in range(count):
        lang = languages[n % len(languages)]
        template = rng.choice(TEMPLATES[lang])
        # The running number makes every text distinct, so none is served from the cache by accident.
        figure = f"{rng.randint(1, 30)}.{n}"
        text = template.format(co=rng.choice(COMPANIES), n=figure)
        items.append({"id": f"{prefix}-{n}", "source": rng.choice(SOURCES), "lang": lang, "text": text})
    return items
