"""The model repository layout (`REPO/<name>/<version>/model.onnx`): listing, numbering, atomic publishing."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.repository import (
    CARD_FILE,
    MODEL_FILE,
    RepositoryError,
    check_name,
    latest_version,
    list_models,
    list_versions,
    next_version,
    parse_version,
    publish_version,
    scan,
    version_path,
)


def _version(repo: Path, name: str, folder: str, model: bool = True) -> None:
    path = repo / name / folder
    path.mkdir(parents=True)
    if model:
        (path / MODEL_FILE).write_bytes(b"onnx")


def test_versions_are_positive_integer_folders_holding_a_model(tmp_path: Path) -> None:
    for folder in ("1", "2", "10"):
        _version(tmp_path, "chat", folder)
    for folder in ("0", "01", "-3", "latest", ".incoming-11-x", "3.5"):
        _version(tmp_path, "chat", folder)
    _version(tmp_path, "chat", "11", model=False)  # a folder being filled by hand: not a version yet
    (tmp_path / "chat" / "12").write_text("a file, not a folder")
    assert list_versions(tmp_path, "chat") == [1, 2, 10]
    assert latest_version(tmp_path, "chat") == 10
    assert next_version(tmp_path, "chat") == 12  # 11 is taken even without its model: numbers are never reused
    assert version_path(tmp_path, "chat", 2) == tmp_path / "chat" / "2" / MODEL_FILE
    assert [parse_version(v) for v in ("1", "42", "0", "007", "+1", "x")] == [1, 42, None, None, None, None]


def test_models_are_the_named_folders_with_versions(tmp_path: Path) -> None:
    _version(tmp_path, "b-model", "1")
    _version(tmp_path, "a.model_2", "3")
    _version(tmp_path, "empty", "latest")
    _version(tmp_path, ".hidden", "1")
    (tmp_path / "README").write_text("not a model")
    assert list_models(tmp_path) == ["a.model_2", "b-model"]
    assert [(v.name, v.version, v.card) for v in scan(tmp_path)] == [("a.model_2", 3, None), ("b-model", 1, None)]
    assert list_models(tmp_path / "absent") == [] and next_version(tmp_path, "new") == 1


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "spaced name", "x" * 129])
def test_bad_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError):
        check_name(name)
    with pytest.raises(RepositoryError):
        next_version(tmp_path, name)


def test_publish_writes_the_next_version_atomically(tmp_path: Path) -> None:
    seen: list[tuple[int, list[int]]] = []

    def write(folder: Path, version: int) -> str:
        (folder / MODEL_FILE).write_bytes(b"model %d" % version)
        (folder / CARD_FILE).write_text(f"v{version}")
        seen.append((version, list_versions(tmp_path, "m")))  # while writing, the new version is not visible
        return "done"

    assert publish_version(tmp_path, "m", write) == (1, tmp_path / "m" / "1" / MODEL_FILE, "done")
    version, path, _ = publish_version(tmp_path, "m", write)
    assert (version, path.read_bytes()) == (2, b"model 2")
    assert seen == [(1, []), (2, [1])]
    assert scan(tmp_path)[1].card == tmp_path / "m" / "2" / CARD_FILE
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]  # no temporary left behind


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def write(folder: Path, version: int) -> None:
        (folder / MODEL_FILE).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_version(tmp_path, "m", write)
    with pytest.raises(RepositoryError, match="missing"):
        publish_version(tmp_path, "m", lambda folder, version: None)
    assert list((tmp_path / "m").iterdir()) == [] and next_version(tmp_path, "m") == 1


def test_a_number_taken_meanwhile_is_skipped(tmp_path: Path) -> None:
    def write(folder: Path, version: int) -> int:
        if version == 1:
            _version(tmp_path, "m", "1")  # another writer publishes version 1 while this one writes
        (folder / MODEL_FILE).write_bytes(b"mine as %d" % version)
        return version

    version, path, written_as = publish_version(tmp_path, "m", write)
    assert version == written_as == 2 and path.read_bytes() == b"mine as 2"
    assert list_versions(tmp_path, "m") == [1, 2]
