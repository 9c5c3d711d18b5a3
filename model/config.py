"""The model's hyperparameters: saved inside every checkpoint and in the ONNX metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the stacked character LSTM (everything needed to rebuild it)."""

    vocab_size: int
    embed_size: int = 64
    hidden_size: int = 512
    num_layers: int = 2
    peephole: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def state_shape(self) -> tuple[int, int]:
        """Per-session shape of h (and of C): (layers, hidden)."""
        return (self.num_layers, self.hidden_size)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))
