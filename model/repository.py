"""A model repository in Triton's layout: `REPO/<name>/<version>/model.onnx`, a MODEL_CARD.md beside it optional.

A version is a folder named by a positive integer (no sign, no leading zero) holding `model.onnx`; anything else in
a model's folder (a file, `latest`, `.v3-tmp...`) is not a version. Versions are published atomically: the files
are written into a hidden temporary folder inside the model's folder and that folder is renamed to its number, so
a poller sees either no version or a whole one. No torch: the server reads repositories with this module too.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

MODEL_FILE = "model.onnx"
CARD_FILE = "MODEL_CARD.md"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")
_TEMP_PREFIX = ".incoming-"

T = TypeVar("T")


class RepositoryError(ValueError):
    """A bad model name or version, or a repository that cannot be written."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path  # the version's model.onnx

    @property
    def card(self) -> Path | None:
        card = self.path.with_name(CARD_FILE)
        return card if card.is_file() else None


def check_name(name: str) -> str:
    """A model name is a folder name: letters, digits, '.', '_' and '-', starting with a letter or digit."""
    if not _NAME.match(name):
        raise RepositoryError(
            f"model name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit "
            "(at most 128 characters)"
        )
    return name


def parse_version(text: str) -> int | None:
    """The version a folder name stands for, or None when it is not a positive integer written plainly."""
    return int(text) if _VERSION.match(text) else None


def version_dir(repo: Path, name: str, version: int) -> Path:
    if version < 1:
        raise RepositoryError(f"version {version}: versions are positive integers")
    return Path(repo) / check_name(name) / str(version)


def version_path(repo: Path, name: str, version: int) -> Path:
    """Where version `version` of model `name` keeps its ONNX file."""
    return version_dir(repo, name, version) / MODEL_FILE


def _numbered(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    found = (parse_version(entry.name) for entry in model_dir.iterdir() if entry.is_dir())
    return sorted(v for v in found if v is not None)


def list_versions(repo: Path, name: str) -> list[int]:
    """The versions of `name` that hold a model file, ascending."""
    model_dir = Path(repo) / check_name(name)
    return [v for v in _numbered(model_dir) if (model_dir / str(v) / MODEL_FILE).is_file()]


def latest_version(repo: Path, name: str) -> int | None:
    versions = list_versions(repo, name)
    return versions[-1] if versions else None


def list_models(repo: Path) -> list[str]:
    """Names of the models in the repository that have at least one version, sorted."""
    repo = Path(repo)
    if not repo.is_dir():
        return []
    return sorted(
        entry.name
        for entry in repo.iterdir()
        if entry.is_dir() and _NAME.match(entry.name) and list_versions(repo, entry.name)
    )


def scan(repo: Path) -> list[ModelVersion]:
    """Every version of every model, by name then version."""
    return [
        ModelVersion(name, v, version_path(repo, name, v))
        for name in list_models(repo)
        for v in list_versions(repo, name)
    ]


def next_version(repo: Path, name: str) -> int:
    """One more than the highest numbered folder of `name` (with or without a model file: numbers are never reused)."""
    numbered = _numbered(Path(repo) / check_name(name))
    return numbered[-1] + 1 if numbered else 1


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open a directory; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_version(repo: Path, name: str, write: Callable[[Path, int], T], attempts: int = 5) -> tuple[int, Path, T]:
    """Write the next version of `name`: `write(folder, version)` fills a temporary folder (model.onnx, optionally
    MODEL_CARD.md), which is then renamed to `REPO/name/<version>`. If another writer took that number meanwhile,
    the version is written again under the next number. Returns (version, model path, what `write` returned)."""
    model_dir = Path(repo) / check_name(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        version = next_version(repo, name)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{version}-", dir=model_dir))
        try:
            result = write(tmp, version)
            if not (tmp / MODEL_FILE).is_file():
                raise RepositoryError(f"nothing written: {MODEL_FILE} is missing from the new version of {name}")
            tmp.chmod(0o755)  # mkdtemp makes the folder private; a version is read by the server's user too
            _fsync_tree(tmp)
            final = model_dir / str(version)
            if final.exists():
                continue  # taken while we wrote: try the next number
            try:
                tmp.rename(final)
            except OSError:
                if final.exists():
                    continue
                raise
            _fsync_dir(model_dir)
            return version, final / MODEL_FILE, result
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    raise RepositoryError(f"could not publish a new version of {name}: other writers took {attempts} numbers in a row")
