"""Offline tooling that produces and judges checkpoints.

train (fine-tuning; `python -m engines.training.train`), checkpoints (what a run saves and
resumes from), data (reading labelled rows), evaluate (per-head, per-language metrics),
quality (the model-quality report; `python -m engines.training.quality`) and tiny (a small
random checkpoint for tests and demos). Serving never imports this package.
"""
