"""What a checkpoint directory holds and how its files are identified.

One directory serves every backend: config.json (with both label maps), model.safetensors,
the tokenizer, and beside them the exports (engines.export). The model_version that keys the
worker's score cache and stored rows derives from the weights file's sha256.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

WEIGHTS_NAME = "model.safetensors"
INPUT_PREFIX_KEY = "finpulse_input_prefix"
_HASH_CHUNK = 1 << 20


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer; only fast ones, whose batch encoding keeps the worker responsive."""
    from transformers import AutoTokenizer  # deferred: the loader imports this module before choosing a backend

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_dir}: a fast (tokenizers-backed) tokenizer is required")
    return tokenizer


def input_prefix(config: Mapping[str, Any] | PretrainedConfig) -> str:
    """Text every backend and the trainer put before each input (e5 expects "query: "); "" if none.

    config is a loaded config or config.json's dict (backends that never load torch read the file).
    """
    values = config if isinstance(config, Mapping) else vars(config)
    return values.get(INPUT_PREFIX_KEY) or ""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks so that a 700 MB checkpoint does not sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weights_version(name: str, weights_sha256: str) -> str:
    """model_version of a checkpoint: "<name>-<first 12 hex of sha256(model.safetensors)>"."""
    return f"{name}-{weights_sha256[:12]}"


def temp_beside(path: Path) -> Path:
    """A private name in path's directory, so that os.replace onto path is atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")
