"""The Python client on its own: `pip install ./clients/python` into an empty virtualenv installs the client and
httpx's dependency tree, nothing of the server, and the READMEs' client examples run with that interpreter against
a real server process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.e2e.process import ROOT, ServerProcess

pytestmark = pytest.mark.e2e

CLIENT = ROOT / "clients" / "python"
SERVER_ONLY = {"lstm-serve", "fastapi", "starlette", "uvicorn", "onnxruntime", "onnx", "numpy", "pydantic", "redis"}
EXAMPLE_URL = "http://127.0.0.1:8000"

LIST_DISTRIBUTIONS = """
import importlib.metadata as m, json
print(json.dumps([{"name": d.metadata["Name"], "requires": d.requires or []} for d in m.distributions()]))
"""


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty virtualenv (no pip, no setuptools) with only `pip install ./clients/python` in it."""
    env_dir = tmp_path_factory.mktemp("client-venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    proc = subprocess.run(
        [*pip, "install", "-q", "./clients/python"],  # the README's command, from the repository root
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return python


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tiny_model_path, tmp_path_factory.mktemp("server"), "client-dist").start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def distributions(python: Path) -> dict[str, list[str]]:
    # -I: the working directory (a checkout holding an egg-info of the server) is not on sys.path
    out = subprocess.run([str(python), "-I", "-c", LIST_DISTRIBUTIONS], capture_output=True, text=True, check=True)
    return {canonicalize_name(d["name"]): d["requires"] for d in json.loads(out.stdout)}


def closure(installed: dict[str, list[str]], root: str) -> set[str]:
    """`root` and everything its requirements pull in, markers evaluated (no extras)."""
    seen: set[str] = set()
    todo = [canonicalize_name(root)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in installed.get(name, []):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.M | re.S)


def readme_examples() -> list[tuple[str, str]]:
    """(where, code): every Python block of the client's README, and the main README's "Python client" one."""
    own = python_blocks((CLIENT / "README.md").read_text())
    examples = [(f"clients/python/README.md #{i}", code) for i, code in enumerate(own)]
    main = (ROOT / "README.md").read_text()
    section = re.split(r"^##+ ", main.split("### Python client", 1)[1], flags=re.M)[0]
    examples += [(f"README.md Python client #{i}", b) for i, b in enumerate(python_blocks(section))]
    return examples


def test_installs_only_the_client_and_httpx(client_python: Path) -> None:
    installed = distributions(client_python)
    assert "lstm-serve-client" in installed and "httpx" in installed
    assert set(installed) == closure(installed, "lstm-serve-client"), "something beyond the client's requirements"
    assert not set(installed) & SERVER_ONLY
    assert [canonicalize_name(Requirement(r).name) for r in installed["lstm-serve-client"]] == ["httpx"]


def test_readme_examples_run_against_a_real_server(client_python: Path, server: ServerProcess, tmp_path: Path) -> None:
    examples = readme_examples()
    assert len(examples) >= 3  # the client README's sync and async examples, and the main README's
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    for where, code in examples:
        assert "from lstm_serve_client import" in code, where
        assert EXAMPLE_URL in code, where
        script = tmp_path / "example.py"
        script.write_text(code.replace(EXAMPLE_URL, server.base_url))
        # run outside the repository, so only the virtualenv's packages can be imported
        proc = subprocess.run(
            [str(client_python), str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"{where}:\n{code}\n{proc.stdout}\n{proc.stderr}"
        assert proc.stdout.strip(), where
    assert server.alive
