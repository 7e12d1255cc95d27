"""Inference engines that score financial posts for sentiment and topic with one shared encoder."""

from engines.base import SENTIMENT_LABELS, Engine, HeadPrediction, Scores
from engines.loader import load_engine

__all__ = ["Engine", "HeadPrediction", "SENTIMENT_LABELS", "Scores", "load_engine"]
