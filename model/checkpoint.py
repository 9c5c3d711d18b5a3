"""Checkpoints that carry their own config and vocabulary, so the model can be rebuilt exactly."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from model.config import ModelConfig
from model.lstm import CharLSTM
from model.tokenizer import CharTokenizer


def save_checkpoint(
    path: Path,
    model: CharLSTM,
    tokenizer: CharTokenizer,
    meta: dict[str, Any],
    validation_text: str | None = None,
) -> None:
    """`meta` holds the training record and, under "corpus", the description of the text (files, split,
    vocabulary); `validation_text` is the held-out text itself, so that export can score the model anywhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "config": asdict(model.config),
        "vocab": "".join(tokenizer.chars),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    if validation_text is not None:
        payload["validation_text"] = validation_text
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a truncated checkpoint


def load_checkpoint(path: Path) -> tuple[CharLSTM, CharTokenizer, dict[str, Any]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = CharLSTM(ModelConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, CharTokenizer(list(payload["vocab"])), dict(payload["meta"])


def load_validation_text(path: Path) -> str | None:
    """The held-out text saved with the checkpoint; None for checkpoints saved before it was kept."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    text = payload.get("validation_text")
    return None if text is None else str(text)
