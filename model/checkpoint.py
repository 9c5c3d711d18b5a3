"""Checkpoints that carry their own config and vocabulary, so the model can be rebuilt exactly."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from model.config import ModelConfig
from model.lstm import CharLSTM
from model.tokenizer import CharTokenizer


def save_checkpoint(path: Path, model: CharLSTM, tokenizer: CharTokenizer, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": asdict(model.config),
        "vocab": "".join(tokenizer.chars),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a truncated checkpoint


def load_checkpoint(path: Path) -> tuple[CharLSTM, CharTokenizer, dict[str, Any]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = CharLSTM(ModelConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, CharTokenizer(list(payload["vocab"])), dict(payload["meta"])
