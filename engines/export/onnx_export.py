"""Export a checkpoint to ONNX, checked against PyTorch before it is put in place.

Every artefact is written into the checkpoint directory by default, so one directory holds
the torch weights, model.onnx, model.int8.onnx (engines.export.int8) and the tokenizer, and
any backend can load it; TensorRT plans are built from model.onnx by
engines.serving.backends.tensorrt_plan.

Versions. model.onnx computes the same function as model.safetensors (checked here to
EXPORT_ATOL), so it carries the same model_version and shares the score cache and SQL rows
with torch. A variant whose scores move beyond float noise gets a suffix instead, because
the worker keys cached scores and stored rows by model_version and must not mix the two:
int8 -> "<version>-int8" (static: "-int8-static"), TensorRT fp16 -> "<version>-fp16".
The version is recorded in each ONNX file's metadata together with the weights' sha256, so a
backend can tell an export that no longer matches model.safetensors.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from engines.modeling import BertForSentimentAndTopic
from engines.serving.backends.onnx_files import (
    HEADS_KEY,
    HIDDEN_KEY,
    INPUT_NAMES,
    ONNX_NAME,
    OUTPUT_NAMES,
    VERSION_KEY,
    WEIGHTS_SHA_KEY,
    onnx_feeds,
    set_metadata,
)
from engines.serving.backends.onnxruntime_engine import create_session
from engines.serving.backends.torch_engine import TorchEngine
from engines.serving.checkpoint import temp_beside

log = logging.getLogger(__name__)

# Largest |ONNX Runtime logit - PyTorch logit| accepted on the verification texts. fp32 kernels
# that only reorder sums differ by ~1e-5 on mBERT-sized logits; a wrong export (lost mask,
# frozen shape) differs by whole units.
EXPORT_ATOL = 1e-4

# One sentence per script/language plus edge cases; the long one reaches the truncation limit.
VERIFY_TEXTS = (
    "Apple reported record quarterly revenue, beating analyst estimates.",
    "腾讯第三季度营收同比增长10%，超出市场预期。",
    "Las acciones de Inditex subieron un 4% tras presentar sus resultados.",
    "Die Europäische Zentralbank hat den Leitzins erneut angehoben.",
    "Le CAC 40 a terminé la séance en légère baisse.",
    "日経平均株価は前日比500円安で取引を終えた。",
    "ارتفعت أسعار النفط بعد قرار أوبك.",
    "",
    "🚀📉💸",
    "Shares of Tesla fell 7% after the company missed delivery targets. " * 40,
)


def export_onnx(
    model_dir: str | Path, out_path: str | Path | None = None, *, opset: int = 17, atol: float = EXPORT_ATOL
) -> Path:
    """Export model_dir's BertForSentimentAndTopic to ONNX (default model_dir/model.onnx) and verify it.

    Inputs input_ids, attention_mask, token_type_ids (int64, dynamic batch and sequence);
    outputs sentiment_logits, topic_logits. The graph holds standard ONNX ops only, so TensorRT
    and other runtimes can read it. It is traced from the model's eager attention with the
    TorchScript exporter because ONNX Runtime's transformer optimiser can fuse that graph into
    its BERT kernels (engines.export.int8.quantize_int8 does); the dynamo exporter's SDPA graph does not fuse, and
    left ONNX Runtime little faster than PyTorch. The file is only put in place after
    ONNX Runtime reproduces PyTorch's logits within atol on multilingual texts, padded and
    unpadded, so a broken export never reaches a directory that load_engine("auto") picks from.
    """
    model_dir = Path(model_dir)
    out_path = Path(out_path) if out_path else model_dir / ONNX_NAME
    reference = TorchEngine(model_dir)
    expected_fn = _LogitsOnly(reference.model).eval()
    eager = BertForSentimentAndTopic.from_pretrained(model_dir, attn_implementation="eager").eval()
    module = _LogitsOnly(eager).eval()
    encoded = reference.batcher.encode(VERIFY_TEXTS)
    sample = onnx_feeds(*reference.batcher.pad([encoded[0], encoded[1]]))
    raw = temp_beside(out_path.with_name(out_path.name + ".raw"))
    tmp = temp_beside(out_path)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
            torch.onnx.export(
                module,
                tuple(torch.from_numpy(a) for a in sample.values()),
                raw,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES},
                opset_version=opset,
                dynamo=False,
            )
        import onnx

        exported = onnx.load(raw)
        set_metadata(
            exported,
            {
                VERSION_KEY: reference.model_version,
                WEIGHTS_SHA_KEY: reference.weights_sha256,
                # What the BERT fusion in int8.quantize_int8 needs and cannot always read off a small graph.
                HEADS_KEY: str(eager.config.num_attention_heads),
                HIDDEN_KEY: str(eager.config.hidden_size),
            },
        )
        onnx.save(exported, tmp)
        session = create_session(tmp)
        with torch.inference_mode():
            batches = [reference.batcher.pad(encoded)] + [reference.batcher.pad([row]) for row in encoded]
            worst = 0.0
            for input_ids, attention_mask in batches:
                feeds = onnx_feeds(input_ids, attention_mask)
                expected = expected_fn(*(torch.from_numpy(a) for a in feeds.values()))
                got = session.run(list(OUTPUT_NAMES), feeds)
                worst = max(worst, *(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected)))
        if worst > atol:
            raise RuntimeError(f"ONNX export of {model_dir} differs from PyTorch by {worst:.3g} > {atol:g} in logits")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
        raw.unlink(missing_ok=True)
    log.info("exported %s (%s), max |logit diff| %.2g", out_path, reference.model_version, worst)
    return out_path


class _LogitsOnly(torch.nn.Module):
    """The model as a function of three tensors to two, the signature the ONNX graph gets."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.sentiment_logits, out.topic_logits
