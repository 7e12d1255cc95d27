"""Calibration texts for int8: a seeded sample of training-side texts, so an export can be repeated exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path


def sample_texts(path: Path, size: int, *, seed: int = 0) -> list[str]:
    """Up to `size` `text` fields drawn from a JSONL file with a fixed seed; rows without a text are skipped."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [row["text"] for row in rows if isinstance(row, dict) and isinstance(row.get("text"), str)]
    return random.Random(seed).sample(texts, min(size, len(texts)))
