"""`lstm-serve train --text`: the user's own text, split by whole files or the tail of one file, every mistake a
clear error; a tiny model trained by the CLI, exported into a repository twice, passes check-model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime as ort
import pytest

from model.checkpoint import load_checkpoint, load_validation_text
from model.corpus import CorpusError, TextFile, choose_validation_files, load_text_corpus, read_text_files
from model.onnx_meta import ModelMetadata
from model.repository import CARD_FILE, list_versions, version_path
from service.cli import main

TINY = ["--steps", "12", "--eval-every", "6", "--batch-size", "4", "--seq-len", "16"]
TINY += ["--hidden-size", "16", "--embed-size", "8", "--layers", "1", "--threads", "1"]
LOG_LINES = [
    "GET /index.html 200 12ms\n",
    "POST /api/login 401 3ms\n",
    "GET /static/app.js 304 1ms\n",
    "DELETE /api/item/7 204 9ms\n",
]


def _write_logs(folder: Path, files: int = 5, lines: int = 30) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        text = "".join(LOG_LINES[(f + i) % len(LOG_LINES)] for i in range(lines))
        (folder / f"day{f}.log").write_text(text + ("é\n" if f == 3 else ""), encoding="utf-8")
    return folder


def test_tiny_model_trained_exported_twice_and_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = _write_logs(tmp_path / "logs")
    ckpt, repo = tmp_path / "tiny.pt", tmp_path / "repo"
    started = time.perf_counter()
    assert main(["train", "--text", str(logs), "--out", str(ckpt), *TINY]) == 0
    seconds = time.perf_counter() - started
    out = capsys.readouterr().out
    assert "best val loss" in out
    assert seconds < 60  # a few seconds on two cores

    _, tokenizer, meta = load_checkpoint(ckpt)
    corpus = meta["corpus"]
    assert "é" in tokenizer.chars  # the vocabulary is built from the text, validation included
    assert corpus["source"] == "text" and len(corpus["files"]) == 5
    held = corpus["split"]["validation_files"]
    assert len(held) == 1 and held[0].endswith(".log")
    val_text = load_validation_text(ckpt)
    assert val_text is not None and len(val_text) == corpus["split"]["validation_characters"]

    for version in (1, 2):
        assert main(["export", "--checkpoint", str(ckpt), "--repository", str(repo), "--name", "logs"]) == 0
        assert f"exported logs version {version}: " in capsys.readouterr().out
    assert list_versions(repo, "logs") == [1, 2]
    path = version_path(repo, "logs", 2)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = sess.get_modelmeta().custom_metadata_map
    onnx_meta = ModelMetadata.from_props(props)
    assert onnx_meta.name == "logs" and onnx_meta.version == "2" and onnx_meta.tokenizer.chars == tokenizer.chars
    assert onnx_meta.corpus == corpus["name"] and json.loads(props["corpus_description"]) == corpus
    assert onnx_meta.val_loss is not None

    card = (path.parent / CARD_FILE).read_text()
    assert "# Model card: logs v2" in card and held[0] in card and "day0.log" in card
    assert f"Vocabulary: {tokenizer.vocab_size} characters" in card and "ROMEO" not in card
    assert "--text" in card and "on the held-out text" in card

    assert main(["check-model", str(path)]) == 0
    assert "OK, lstm-serve will serve it as logs v2" in capsys.readouterr().out


def test_export_to_a_file_and_the_repository_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "one.txt"
    text.write_text("".join(LOG_LINES) * 20)
    ckpt = tmp_path / "one.pt"
    assert main(["train", "--text", str(text), "--out", str(ckpt), *TINY]) == 0
    _, _, meta = load_checkpoint(ckpt)
    assert meta["corpus"]["split"]["method"] == "the last 10% of the characters of the single file"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "one.onnx"), "--name", "one"]) == 0
    assert main(["check-model", str(tmp_path / "one.onnx")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "one.onnx"), "--text", str(text)]) == 0
    assert "validation loss" in capsys.readouterr().out
    (tmp_path / "other.txt").write_text("#!")
    assert main(["evaluate", "--model", str(tmp_path / "one.onnx"), "--text", str(tmp_path / "other.txt")]) == 2
    assert "character '#' (U+0023) at position 0 is not in the vocabulary" in capsys.readouterr().err
    repo = str(tmp_path / "repo")
    assert main(["export", "--checkpoint", str(ckpt), "--repository", repo]) == 2
    assert "--name is needed" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--repository", repo, "--name", "x", "--version", "3"]) == 2
    assert "--version cannot be given" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--repository", repo, "--name", "../up"]) == 2
    assert "model name '../up'" in capsys.readouterr().err
    assert not Path(repo).exists()


def _errors(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (train arguments, words the error must contain)."""
    (tmp_path / "empty.txt").write_text("")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"caf" + "é au lait".encode("latin-1"))
    good = tmp_path / "good.txt"
    good.write_text("".join(LOG_LINES) * 20)
    other = tmp_path / "other.txt"
    other.write_text("".join(LOG_LINES) * 5)
    (tmp_path / "two.txt").write_text("ab")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / ".hidden").write_text("skipped")
    t = str(tmp_path)
    return {
        "empty corpus": (["--text", f"{t}/empty.txt"], "the corpus is empty"),
        "not utf-8": (["--text", str(good), str(latin1)], f"{t}/latin1.txt: not UTF-8 text: byte 3 (0xe9)"),
        "nothing to train on": (
            ["--text", str(good), str(other), "--val-files", str(good), str(other)],
            "nothing to train on",
        ),
        "nothing to validate": (["--text", f"{t}/two.txt"], "nothing to validate"),
        "validation file empty": (
            ["--text", str(good), f"{t}/empty.txt", "--val-files", f"{t}/empty.txt"],
            "nothing to validate",
        ),
        "val file not given": (["--text", str(good), "--val-files", str(other)], "not one of the files given"),
        "missing path": (["--text", f"{t}/absent.txt"], "absent.txt: no such file or directory"),
        "no files in a directory": (["--text", f"{t}/nothing"], "holds no files"),
        "bad fraction": (["--text", str(good), "--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
        "split without text": (["--val-files", str(good)], "give --text too"),
        "too short to train": (["--text", str(other), "--batch-size", "64", "--seq-len", "128"], "too few"),
    }


ERROR_CASES = [
    "empty corpus",
    "not utf-8",
    "nothing to train on",
    "nothing to validate",
    "validation file empty",
    "val file not given",
    "missing path",
    "no files in a directory",
    "bad fraction",
    "split without text",
    "too short to train",
]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_train_errors_are_clear(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args, words = _errors(tmp_path)[case]
    assert main(["train", *args, "--out", str(tmp_path / "never.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lstm-serve train: ") and words in err, err
    assert not (tmp_path / "never.pt").exists()


def test_the_command_exits_2_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok so far \xff\xfe")
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "train", "--text", str(bad), "--out", str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "bad.txt: not UTF-8 text: byte 10 (0xff)" in run.stderr


def test_directories_are_read_recursively_in_path_order(tmp_path: Path) -> None:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "b" / "deep" / "z.txt").write_text("zz")
    (tmp_path / "a.txt").write_bytes("\ufeffbom first".encode())
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / "b" / ".swp").write_text("x")
    files = read_text_files([tmp_path, tmp_path / "a.txt"])  # a file named twice is read once
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in files] == ["a.txt", "b/deep/z.txt"]
    assert files[0].text == "bom first" and files[0].size == len("\ufeffbom first".encode())


def test_the_automatic_hold_out_is_deterministic_whole_files_about_a_tenth() -> None:
    files = [TextFile(f"docs/{i:02d}.txt", "x" * (100 + i), 100 + i) for i in range(40)]
    chosen = choose_validation_files(files)
    share = sum(f.characters for f in chosen) / sum(f.characters for f in files)
    assert 0.08 <= share <= 0.1 and chosen == choose_validation_files(list(reversed(files)))
    big = [TextFile("big.txt", "x" * 1000, 1000), TextFile("small.txt", "y" * 300, 300)]
    assert [f.path for f in choose_validation_files(big)] == ["small.txt"]  # none fits: the smallest


def test_single_file_tail_and_vocabulary_from_all_the_text(tmp_path: Path) -> None:
    path = tmp_path / "song.txt"
    path.write_text("la " * 30 + "LA!")
    corpus = load_text_corpus([path], val_fraction=0.1)
    assert corpus.train + corpus.validation == path.read_text()
    assert len(corpus.validation) == 9 and corpus.validation.endswith("LA!")
    assert (
        corpus.description["vocabulary"]["characters"] == " !ALal"
    )  # "A", "L" and "!" occur only in the held-out tail
    with pytest.raises(CorpusError, match="nothing to validate"):
        load_text_corpus([path], val_fraction=0.01)


def test_the_checkpoint_inside_the_text_folder_is_not_read_as_text(tmp_path: Path) -> None:
    _write_logs(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"\x80\x02 a pickle")
    corpus = load_text_corpus([tmp_path], exclude=[tmp_path / "model.pt"])
    assert len(corpus.description["files"]) == 5
    with pytest.raises(CorpusError, match=r"model\.pt: not UTF-8"):
        load_text_corpus([tmp_path])


def test_val_files_may_name_a_folder(tmp_path: Path) -> None:
    for part in ("train", "held"):
        (tmp_path / part).mkdir()
        for i in range(2):
            (tmp_path / part / f"{i}.txt").write_text(f"{part} {i}\n" * 10)
    corpus = load_text_corpus([tmp_path], val_files=[tmp_path / "held"])
    assert [Path(p).parent.name for p in corpus.description["split"]["validation_files"]] == ["held", "held"]
    assert "train" not in corpus.validation and "held" not in corpus.train
