"""The image's Python environment, rebuilt without Docker: a fresh virtualenv, exactly the Dockerfile's install
command, no torch, and the bundled model served from the installed package (not from this source tree)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.dockerfile import REPO_ROOT, serving_install_argv

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The Dockerfile's command, run where its builder stage runs it: in the project root.
    subprocess.run(
        [str(python), "-m", *serving_install_argv()], cwd=REPO_ROOT, check=True, capture_output=True, timeout=600
    )
    return python


def test_image_environment_has_no_torch(image_venv: Path) -> None:
    out = subprocess.run(
        [str(image_venv), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "None"


def test_image_environment_serves_the_bundled_model(image_venv: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    env.pop("PYTHONPATH", None)
    # Started outside the checkout so `service` and `model` come from the installed package.
    proc = subprocess.Popen(
        [str(image_venv), "-m", "service", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "server exited"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready within 60 s"
            time.sleep(0.2)
        info = httpx.get(f"{url}/v1/model").json()
        assert info["name"] == "shakespeare-lstm" and "site-packages" not in str(info)
        created = httpx.post(f"{url}/v1/sessions", json={"text": "To be, or not to "}).json()
        assert created["position"] == 17 and len(created["next"]) >= 1
        where = subprocess.run(
            [str(image_venv), "-c", "import model.paths as p; print(p.BUNDLED_MODEL)"],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        ).stdout
        assert "site-packages" in where
    finally:
        proc.terminate()
        proc.wait(timeout=30)
