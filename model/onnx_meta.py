"""The metadata that travels inside the ONNX file (metadata_props), and the weight fingerprint (no torch)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from model.config import ModelConfig
from model.tokenizer import CharTokenizer

INPUT_NAMES = ("input_ids", "h0", "c0")
OUTPUT_NAMES = ("logits", "hn", "cn")
REQUIRED_KEYS = ("name", "version", "vocab", "config", "fingerprint")
# Optional keys: "corpus" (one line naming the text), "corpus_description" (JSON: files, split, vocabulary),
# "val_loss" (nats per character on the held-out text, through ONNX Runtime).
OPTIONAL_KEYS = ("corpus", "corpus_description", "val_loss")


class ModelMetadataError(ValueError):
    """The ONNX file lacks the metadata lstm-serve needs to serve it."""


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: str
    config: ModelConfig
    tokenizer: CharTokenizer
    fingerprint: str
    val_loss: float | None
    corpus: str
    corpus_description: str = ""  # JSON, "" when unknown
    quantization: str = ""  # "int8" for a quantized artifact (model/quantize.py), "" for fp32

    def to_props(self) -> dict[str, str]:
        props = {
            "name": self.name,
            "version": self.version,
            "vocab": self.tokenizer.to_json(),
            "config": self.config.to_json(),
            "fingerprint": self.fingerprint,
            "corpus": self.corpus,
        }
        if self.corpus_description:
            props["corpus_description"] = self.corpus_description
        if self.val_loss is not None:
            props["val_loss"] = f"{self.val_loss:.6f}"
        if self.quantization:
            props["quantization"] = self.quantization
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise ModelMetadataError(f"ONNX metadata_props lack {missing}; export the model with `lstm-serve export`")
        try:
            config = ModelConfig.from_json(props["config"])
            tokenizer = CharTokenizer.from_json(props["vocab"])
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise ModelMetadataError(f"ONNX metadata is malformed: {exc}") from exc
        if tokenizer.vocab_size != config.vocab_size:
            raise ModelMetadataError(
                f"vocabulary has {tokenizer.vocab_size} characters but config says {config.vocab_size}"
            )
        val = props.get("val_loss")
        try:
            val_loss = float(val) if val else None
        except ValueError:
            raise ModelMetadataError(f"ONNX metadata val_loss {val!r} is not a number") from None
        return cls(
            name=props["name"],
            version=props["version"],
            config=config,
            tokenizer=tokenizer,
            fingerprint=props["fingerprint"],
            val_loss=val_loss,
            corpus=props.get("corpus", ""),
            corpus_description=props.get("corpus_description", ""),
            quantization=props.get("quantization", ""),
        )


def fingerprint(weights: Iterable[tuple[str, bytes]]) -> str:
    """SHA-256 over (name, raw little-endian bytes) of every weight, in name order: 'sha256:<hex>'."""
    digest = hashlib.sha256()
    for name, raw in sorted(weights):
        digest.update(name.encode())
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return "sha256:" + digest.hexdigest()
