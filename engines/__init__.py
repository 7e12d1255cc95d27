"""Inference engines that score financial posts for sentiment and topic with one shared encoder.

This package's names are the serving API the worker uses (engines.serving). Offline tooling
lives beside it: engines.training (fine-tuning, data, evaluation, the tiny test checkpoint)
and engines.export (ONNX export, int8 quantisation, backend benchmarks); engines.modeling is
the two-head model both sides load.
"""

from engines.serving.loader import load_engine
from engines.serving.types import SENTIMENT_LABELS, Engine, HeadPrediction, Scores

__all__ = ["Engine", "HeadPrediction", "SENTIMENT_LABELS", "Scores", "load_engine"]
