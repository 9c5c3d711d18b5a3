import math
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.train import TrainConfig, lr_at, train

TEXT = "to be or not to be, that is the question.\n" * 60


def test_loss_falls_on_a_tiny_corpus(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=60, batch_size=4, seq_len=32, lr=1e-2, warmup_steps=5, eval_every=30, seed=0)
    summary = train(
        TEXT, TEXT[:400], {"hidden_size": 32, "embed_size": 8, "num_layers": 1}, cfg, tmp_path / "c.pt", progress=False
    )
    first, last = summary["history"][0], summary["history"][-1]
    assert first["val_loss"] < math.log(16)  # below a uniform guess over the 16 characters
    assert last["val_loss"] < 0.75 * first["val_loss"]


def test_checkpoint_rebuilds_the_model_exactly(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=4, batch_size=2, seq_len=16, eval_every=4, seed=1)
    train(
        TEXT,
        TEXT[:200],
        {"hidden_size": 8, "embed_size": 4, "num_layers": 2, "peephole": True},
        cfg,
        tmp_path / "c.pt",
        progress=False,
    )
    model, tok, meta = load_checkpoint(tmp_path / "c.pt")
    assert model.config.peephole and model.config.num_layers == 2 and tok.decode(tok.encode("to be")) == "to be"
    assert meta["train_config"]["steps"] == 4 and meta["history"]
    ids = torch.from_numpy(tok.encode("not to be")[None])
    h, c = model.zero_state(1)
    again, _, _ = load_checkpoint(tmp_path / "c.pt")
    with torch.no_grad():
        np.testing.assert_array_equal(model(ids, h, c)[0].numpy(), again(ids, h, c)[0].numpy())


def test_training_is_reproducible_with_a_seed(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=3, batch_size=2, seq_len=16, eval_every=3, seed=5)
    args = {"hidden_size": 8, "embed_size": 4, "num_layers": 1}
    a = train(TEXT, TEXT[:200], args, cfg, tmp_path / "a.pt", progress=False)
    b = train(TEXT, TEXT[:200], args, cfg, tmp_path / "b.pt", progress=False)
    assert a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"]


def test_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == 0.1 and lr_at(9, cfg) == 1.0
    assert lr_at(10, cfg) == 1.0 and abs(lr_at(99, cfg) - 0.1) < 1e-3
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))
