"""What a training run writes: the best epoch's load_engine-ready directory with eval.json, and
checkpoint-last/ (Accelerate's model, optimizer, scheduler and RNG state plus the loop state)
to resume from. Saves go through a staging directory so a crash mid-save keeps the last one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger
from torch import nn
from transformers import PreTrainedTokenizerBase

CHECKPOINT_DIR = "checkpoint-last"
STATE_FILE = "trainer_state.json"
EVAL_FILE = "eval.json"

log = get_logger(__name__)  # Accelerate's adapter: logs once, on the main process


@dataclass
class TrainerState:
    """Loop state saved beside Accelerate's tensors, so that a resumed run picks up where it stopped."""

    topic_labels: list[str]
    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer updates done
    best_score: float = -1.0  # best dev macro-F1 (mean over heads) so far
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since best_score last improved
    step_log: list[dict[str, Any]] = field(default_factory=list)
    epoch_log: list[dict[str, Any]] = field(default_factory=list)


def save_model(
    accelerator: Accelerator, model: nn.Module, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
    report: Mapping[str, Any],
) -> None:
    """Write the load_engine-ready directory and its eval.json (called for each new best epoch)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        (out_dir / EVAL_FILE).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator: Accelerator, directory: Path, state: TrainerState) -> None:
    """Save into a sibling temp dir, then swap it in: a crash mid-save keeps the previous checkpoint."""
    staging = directory.with_name(directory.name + ".tmp")
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    accelerator.wait_for_everyone()


def restore(accelerator: Accelerator, directory: Path, fresh: TrainerState) -> TrainerState:
    """Load checkpoint-last into the prepared objects; start fresh if there is none."""
    state_file = directory / STATE_FILE
    if not state_file.is_file():
        log.warning("resume: no %s; starting from epoch 1", state_file)
        return fresh
    state = TrainerState(**json.loads(state_file.read_text(encoding="utf-8")))
    if state.topic_labels != fresh.topic_labels:
        raise ValueError(f"{directory} was trained with topics {state.topic_labels}, "
                         f"these rows give {fresh.topic_labels}")
    accelerator.load_state(str(directory))
    log.info("resuming after epoch %d (step %d, best dev macro-F1 %.4f at epoch %d)",
             state.epoch, state.global_step, state.best_score, state.best_epoch)
    return state
