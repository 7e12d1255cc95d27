"""The ONNX file contract between engines.export (which writes the files) and the backends that read them.

The ONNX files live in the checkpoint directory beside model.safetensors and the tokenizer,
so one directory serves every backend. Each file carries in its metadata the model_version
of the weights it was exported from and their sha256, which lets a backend refuse an export
left behind by retraining instead of caching its scores under the new version.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.serving.checkpoint import WEIGHTS_NAME, sha256_file

if TYPE_CHECKING:
    import onnx

ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("sentiment_logits", "topic_logits")
# Metadata keys. The first two are read by the backends; the rest describe how a file was made.
VERSION_KEY = "finpulse.model_version"
WEIGHTS_SHA_KEY = "finpulse.weights_sha256"
INT8_MODE_KEY = "finpulse.int8_mode"  # "dynamic" or "static"
REDUCE_RANGE_KEY = "finpulse.int8_reduce_range"  # "true": 7-bit weights
INT8_EMBEDDINGS_KEY = "finpulse.int8_embeddings"  # "true": the embedding tables are uint8 too
HEADS_KEY = "finpulse.num_attention_heads"  # what the int8 BERT fusion needs to know
HIDDEN_KEY = "finpulse.hidden_size"
EXPORT_HINT = "engines.export.onnx_export.export_onnx"


def onnx_feeds(input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's inputs by name; token type 0 throughout, as for single-segment texts."""
    return dict(zip(INPUT_NAMES, (input_ids, attention_mask, np.zeros_like(input_ids))))


def checked_version(metadata: dict[str, str], onnx_path: Path, model_dir: Path) -> str:
    """The model_version recorded at export, after checking that model.safetensors still holds those weights."""
    if VERSION_KEY not in metadata or WEIGHTS_SHA_KEY not in metadata:
        raise ValueError(f"{onnx_path}: no finpulse version metadata; export it with {EXPORT_HINT}")
    weights = model_dir / WEIGHTS_NAME
    if weights.is_file() and sha256_file(weights) != metadata[WEIGHTS_SHA_KEY]:
        raise ValueError(
            f"{onnx_path} was exported from other weights than {weights} (retrained since?); re-run {EXPORT_HINT}"
        )
    return metadata[VERSION_KEY]


def read_metadata(onnx_path: str | Path) -> dict[str, str]:
    """An ONNX file's metadata_props, without loading external weight files."""
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace a model's metadata_props (engines.export writes them, the backends above read them)."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
