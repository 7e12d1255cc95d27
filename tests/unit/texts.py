"""Shared by the engine tests: a text per language, inputs that must never crash a backend, and the
check that a result is a well-formed pair of probability distributions."""

import math

from engines import SENTIMENT_LABELS, Scores
from engines.training.tiny import DEFAULT_TOPICS

MULTILINGUAL = {
    "en": "Apple beat revenue estimates and raised its dividend.",
    "zh": "腾讯第三季度净利润同比增长，股价上涨。",
    "es": "Las acciones de Telefónica cayeron un 3% tras los resultados.",
    "de": "Die Europäische Zentralbank senkt den Leitzins.",
    "fr": "Le CAC 40 termine en forte baisse après l'annonce de la BCE.",
    "ja": "日経平均株価は大幅に反発した。",
    "ar": "ارتفعت أسعار النفط بعد قرار أوبك خفض الإنتاج.",
}
EDGE_CASES = {
    "empty": "",
    "whitespace": "  \n\t  ",
    "emoji_only": "🚀📉💸🔥",
    "control_chars": "\x00\x01\x1b[31m\u200b\ufeff\x7f",
    "mixed_scripts": "Tesla 腾讯 Сбербанк ارتفعت 株価 📈 삼성 +12%",
    "lone_surrogate": "stock \ud83d up",  # legal in a Python str (json.loads), not in UTF-8
    "one_megabyte": "Apple revenue rises 🚀 " * 50_000,
}


def assert_valid(scores: Scores) -> None:
    for head, labels in ((scores.sentiment, SENTIMENT_LABELS), (scores.topic, DEFAULT_TOPICS)):
        assert list(head.probs) == list(labels)
        assert head.label == max(head.probs, key=head.probs.get)
        assert math.isclose(sum(head.probs.values()), 1.0, abs_tol=1e-5)
        assert all(0.0 <= p <= 1.0 for p in head.probs.values())
