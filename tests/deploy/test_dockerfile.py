"""The Dockerfile and .dockerignore: hadolint-clean, multi-stage, non-root, signals reach the server."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.deploy import dockerfile as df
from tests.deploy.support import REPO_ROOT, assert_known_settings, require_tool

FINAL_STAGES = ("runtime", "gpu")
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


@pytest.fixture(scope="module")
def stages() -> dict[str, df.Stage]:
    return {s.name or str(s.index): s for s in df.stages()}


def test_hadolint_is_clean() -> None:
    hadolint = require_tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", str(df.DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_hadolint_ignore_says_why() -> None:
    lines = df.DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"line {number + 1}: explain the ignored rule in a comment just above it"
            )


def test_stages(stages: dict[str, df.Stage]) -> None:
    assert {"builder", "runtime", "gpu-builder", "gpu"} <= set(stages)
    ordered = df.stages()
    # `docker build .` builds the last stage: the CPU image.
    assert ordered[-1].name == "runtime"
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stages["builder"].resolved_base)
    assert stages["runtime"].resolved_base == stages["builder"].resolved_base
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", stages["gpu-base"].resolved_base)
    assert stages["gpu"].base == "gpu-base" and stages["gpu-builder"].base == "gpu-base"


def test_serving_install_line() -> None:
    argv = df.serving_install_argv()
    assert argv[:2] == ["pip", "install"]
    assert "--no-cache-dir" in argv
    packages = [a for a in argv[2:] if not a.startswith("-")]
    assert packages == ["."], f"the image installs the project itself, without extras: {argv}"
    command = df.serving_install_command()
    assert "torch" not in command and "[" not in command, command
    # The builder runs it from a copy of the repository root.
    builder = df.stage("builder")
    workdir = builder.last("WORKDIR")
    assert workdir is not None and workdir.line < df.serving_install_instruction().line


def test_builders_copy_only_what_the_package_needs(stages: dict[str, df.Stage]) -> None:
    for name in ("builder", "gpu-builder"):
        sources = []
        for copy in stages[name].all("COPY"):
            tokens = [t for t in shlex.split(copy.value) if not t.startswith("--")]
            sources += tokens[:-1]
        assert sorted(sources) == ["README.md", "model", "pyproject.toml", "service"], (name, sources)
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"{name} copies {source}, which the repository lacks"
            assert not dockerignored(source), f"{source} is copied but excluded by .dockerignore"


def test_gpu_stage_swaps_onnxruntime(stages: dict[str, df.Stage]) -> None:
    runs = " ".join(r.value for r in stages["gpu-builder"].all("RUN"))
    assert "pip install --no-cache-dir ." in runs
    assert re.search(r"pip uninstall -y onnxruntime(\s|$)", runs)
    assert re.search(r"onnxruntime-gpu==", runs)
    assert "torch" not in runs
    assert stages["gpu"].env()["LSTM_SERVE_PROVIDER"] == "auto"


@pytest.mark.parametrize("name", FINAL_STAGES)
def test_final_stage(stages: dict[str, df.Stage], name: str) -> None:
    stage = stages[name]
    env = stage.env()
    # Only the virtualenv comes from the builder; the source tree does not.
    builder = {"runtime": "builder", "gpu": "gpu-builder"}[name]
    assert [c.value for c in stage.all("COPY")] == [f"--from={builder} /opt/venv /opt/venv"]
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["LSTM_SERVE_HOST"] == "0.0.0.0"
    assert env["LSTM_SERVE_PORT"] == "8000"

    # Non-root, by numeric UID (so that Kubernetes' runAsNonRoot can verify it), as the last USER.
    user = stage.last("USER")
    assert user is not None
    uid = user.value.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user.value
    assert all(i.keyword not in {"RUN", "COPY", "ADD"} for i in stage.instructions if i.line > user.line), (
        "nothing should run as root after USER"
    )

    # Exec form: the server is PID 1 and receives SIGTERM itself.
    entrypoint = stage.last("ENTRYPOINT")
    assert entrypoint is not None and entrypoint.exec_form() == ["python", "-m", "service"]
    cmd = stage.last("CMD")
    assert cmd is None or cmd.exec_form() is not None
    stopsignal = stage.last("STOPSIGNAL")
    assert stopsignal is None or stopsignal.value == "SIGTERM"

    expose = stage.last("EXPOSE")
    assert expose is not None and "8000" in expose.value.replace("/tcp", "").split()

    healthcheck = stage.last("HEALTHCHECK")
    assert healthcheck is not None
    options, _, command = healthcheck.value.partition(" CMD ")
    probe = df._json_array(command)
    assert probe is not None and probe[:2] == ["python", "-c"], "slim has no curl: probe with python"
    assert "urllib" in probe[2] and "/healthz" in probe[2]
    assert "--start-period=" in options


def test_image_settings_are_known_to_the_service(stages: dict[str, df.Stage]) -> None:
    for name in FINAL_STAGES:
        assert_known_settings(stages[name].env(), f"Dockerfile stage {name}")


# --- .dockerignore -------------------------------------------------------------------------------------------------


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex += line[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append((negate, re.compile(regex)))
    return patterns


def dockerignored(path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: a pattern matches it or one of its parents."""
    parts = Path(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, pattern in _ignore_patterns():
        if any(pattern.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/deploy/test_k8s.py",
        "build/shakespeare-lstm.pt",
        "docs/index.md",
        "service/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/x",
        ".mypy_cache/x",
        ".ruff_cache/x",
        ".hypothesis/examples/x",
        "lstm_serve.egg-info/PKG-INFO",
        "dist/x.whl",
        "deploy/k8s/base/deployment.yaml",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert dockerignored(path), path


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "service/__main__.py",
        "model/paths.py",
        "model/artifacts/shakespeare-lstm.onnx",
        "model/artifacts/MODEL_CARD.md",
    ],
)
def test_dockerignore_keeps(path: str) -> None:
    assert not dockerignored(path), path


def test_bundled_model_is_package_data() -> None:
    # The image gets the model only through `pip install .`: it must be declared package data.
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert re.search(r'^model = \[[^\]]*"artifacts/\*\.onnx"', pyproject, re.MULTILINE), (
        "model/artifacts/*.onnx must be package data of `model` for the image to bundle it"
    )


def test_dockerfile_reader_handles_continuations(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim\nFROM ${BASE} AS builder\n"
        "# lstm-serve:install\nRUN pip install \\\n    # a comment inside\n    --no-cache-dir .\n"
        'FROM builder\nENV A=1 B="two words"\nENTRYPOINT ["python", "-m", "service"]\n'
    )
    assert df.serving_install_command(path) == "pip install --no-cache-dir ."
    parsed = df.stages(path)
    assert parsed[0].resolved_base == "python:3.11-slim" and parsed[1].base == "builder"
    assert parsed[1].env() == {"A": "1", "B": "two words"}
    assert parsed[1].last("ENTRYPOINT").exec_form() == ["python", "-m", "service"]  # type: ignore[union-attr]
    path.write_text("FROM python:3.11-slim AS builder\n# lstm-serve:install\nRUN pip install . && pip list\n")
    with pytest.raises(ValueError, match="single command"):
        df.serving_install_command(path)
