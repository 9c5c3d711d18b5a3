"""Truncated back-propagation through time over the play text (or the user's own), with clipping, AdamW and a
cosine schedule."""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.lstm import CharLSTM
from model.machine import cpu_model
from model.tokenizer import CharTokenizer


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64  # parallel streams through the text
    seq_len: int = 128  # truncation window of BPTT
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.01
    clip_norm: float = 1.0  # the notes' exploding gradient: clip the global norm
    eval_every: int = 250
    seed: int = 1337
    threads: int = 0  # 0: PyTorch's default


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def streams(ids: np.ndarray, batch: int) -> torch.Tensor:
    """Cut the text into `batch` contiguous streams: (batch, len // batch)."""
    n = len(ids) // batch
    if n < 2:
        raise ValueError(f"text of {len(ids)} characters is too short for {batch} streams")
    return torch.from_numpy(ids[: n * batch].reshape(batch, n).copy())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate_torch(model: CharLSTM, ids: np.ndarray, batch: int, seq_len: int) -> float:
    """Mean cross-entropy in nats per character, state carried across windows."""
    model.eval()
    data = streams(ids, batch).to(model.head.weight.device)
    h, c = model.zero_state(batch)
    total, count = 0.0, 0
    for start in range(0, data.shape[1] - 1, seq_len):
        x = data[:, start : start + seq_len]
        y = data[:, start + 1 : start + seq_len + 1]
        x = x[:, : y.shape[1]]
        logits, h, c = model(x, h, c, fused=True)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count


def train(
    train_text: str,
    val_text: str,
    model_cfg: dict[str, Any],
    cfg: TrainConfig,
    out: Path,
    progress: bool = True,
    vocab_text: str | None = None,
    corpus: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a CharLSTM, save its best checkpoint to `out`, and return the run's summary.

    The vocabulary is built from `vocab_text` (default: the training text). `corpus` describes the text (files,
    split, vocabulary): it is saved in the checkpoint's meta with the validation text itself, so that export
    can evaluate and describe the model without the original files."""
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = CharTokenizer.from_text(train_text if vocab_text is None else vocab_text)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, **model_cfg)
    model = CharLSTM(config).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = streams(tokenizer.encode(train_text), cfg.batch_size).to(device)
    val_ids = tokenizer.encode(val_text)
    val_streams = max(1, min(cfg.batch_size, 32, len(val_ids) // 2))  # a short validation text: fewer streams
    h, c = model.zero_state(cfg.batch_size)
    pos, best, started = 0, float("inf"), time.time()
    history: list[dict[str, float]] = []
    running: float | None = None
    bar = tqdm(range(cfg.steps), disable=not progress, desc="train", unit="step")
    for step in bar:
        if pos + cfg.seq_len + 1 > data.shape[1]:  # next epoch: start over with fresh state
            pos = 0
            h, c = model.zero_state(cfg.batch_size)
        x = data[:, pos : pos + cfg.seq_len]
        y = data[:, pos + 1 : pos + cfg.seq_len + 1]
        pos += cfg.seq_len
        for group in optim.param_groups:
            group["lr"] = lr_at(step, cfg)
        logits, h, c = model(x, h.detach(), c.detach(), fused=True)  # truncated BPTT: cut the graph here
        loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), y.reshape(-1))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        optim.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr_at(step, cfg):.1e}", gnorm=f"{grad_norm:.2f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            val = evaluate_torch(model, val_ids, val_streams, 256)
            history.append(
                {"step": step + 1, "train_loss": running, "val_loss": val, "minutes": (time.time() - started) / 60}
            )
            bar.write(f"step {step + 1}: train {running:.4f} val {val:.4f} nats/char")
            if val < best:
                best = val
                meta = _meta(cfg, history, started, device, corpus)
                save_checkpoint(out, model, tokenizer, meta, validation_text=val_text)
    return _meta(cfg, history, started, device, corpus)


def _meta(
    cfg: TrainConfig,
    history: list[dict[str, float]],
    started: float,
    device: torch.device,
    corpus: dict[str, Any] | None = None,
) -> dict[str, Any]:
    best = min(history, key=lambda r: r["val_loss"])
    extra = {} if corpus is None else {"corpus": corpus}
    return {
        **extra,
        "train_config": asdict(cfg),
        "history": history,
        "best_step": best["step"],
        "val_loss_torch": best["val_loss"],
        "train_minutes": (time.time() - started) / 60,
        "device": str(device),
        "machine": f"{cpu_model()}, {torch.get_num_threads()} threads",
        "torch": str(torch.__version__),
    }
