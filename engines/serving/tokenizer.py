"""The tokenizer of the ONNX Runtime and TensorRT backends: Hugging Face `tokenizers` on the checkpoint's tokenizer.json.

transformers' tokenizer classes import torch: loading the starter model's tokenizer through
`AutoTokenizer` took 7.6 s, against 0.8 s for `tokenizers.Tokenizer.from_file` on the same
file (docs/performance.md), and those backends never need torch otherwise. `ServingTokenizer`
offers the slice of the transformers fast-tokenizer call the Batcher uses, so the torch
backend and the trainer keep passing a transformers tokenizer; the backend contract tests
hold both to the same token ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"


class ServingTokenizer:
    def __init__(self, tokenizer: Tokenizer, *, pad_token_id: int) -> None:
        tokenizer.no_truncation()  # truncation is per call (max_length), never a file's leftover setting
        tokenizer.no_padding()  # the Batcher pads its own batches
        self._tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        # The special tokens around one sequence ([CLS] … [SEP], <s> … </s>), from an empty text's encoding.
        self._opening, *self._closing = tokenizer.encode("").ids

    @classmethod
    def from_dir(cls, model_dir: Path) -> ServingTokenizer | None:
        """The checkpoint's tokenizer.json with the pad token its tokenizer_config.json names; None without them."""
        path, config = model_dir / TOKENIZER_FILE, model_dir / "tokenizer_config.json"
        if not path.is_file() or not config.is_file():
            return None
        tokenizer = Tokenizer.from_file(str(path))
        pad_token = json.loads(config.read_text(encoding="utf-8")).get("pad_token")
        pad_token = pad_token.get("content") if isinstance(pad_token, dict) else pad_token
        pad_token_id = tokenizer.token_to_id(pad_token) if pad_token else None
        return cls(tokenizer, pad_token_id=pad_token_id) if pad_token_id is not None else None

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        truncation: bool = False,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
        return_attention_mask: bool = False,
        return_token_type_ids: bool = False,
        verbose: bool = True,
    ) -> dict[str, Any]:
        """{"input_ids": …} (and "offset_mapping"), like a transformers fast tokenizer's call; truncation keeps
        the first tokens of the text and then adds the special tokens, as transformers does for one sequence."""
        single = isinstance(texts, str)
        encodings = self._tokenizer.encode_batch([texts] if single else list(texts), add_special_tokens=False)
        room = None
        if truncation and max_length is not None:
            room = max(0, max_length - (1 + len(self._closing) if add_special_tokens else 0))
        ids = [self._wrap(encoding.ids[:room], add_special_tokens, self._opening, self._closing) for encoding in encodings]
        found: dict[str, Any] = {"input_ids": ids[0] if single else ids}
        if return_offsets_mapping:  # built only when asked: the per-batch call needs the ids alone
            none = (0, 0)
            offsets = [
                self._wrap(encoding.offsets[:room], add_special_tokens, none, [none] * len(self._closing))
                for encoding in encodings
            ]
            found["offset_mapping"] = offsets[0] if single else offsets
        return found

    @staticmethod
    def _wrap(row: list[Any], add_special_tokens: bool, opening: Any, closing: list[Any]) -> list[Any]:
        return [opening, *row, *closing] if add_special_tokens else list(row)
