"""The CPU image, built from the real Dockerfile and run: `IMAGE_BUILDER=buildah deploy/image/build.sh` (what
`make image` runs without a Docker engine), then the image's own command in a container as UID 10001.

The server becomes ready, a session predicts exactly what the in-process engine predicts for the same text,
/metrics answers, and SIGTERM stops it with exit status 0. The image holds no torch and no compiler, nothing from
the build-time mounts, and stays under a size budget. Figures go to build/image-build.json.

The GPU image (`--target gpu`) is not built here: its CUDA base image cannot be fetched on these machines; it is
only linted (tests/deploy/test_dockerfile.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy import image as im

# The image's unpacked size (every file of its filesystem): 427 MB at the first build (Debian bookworm + python3
# from debootstrap 156 MB, the virtualenv 281 MB, of which onnxruntime 78 MB, numpy 73 MB, onnx 31 MB). torch
# would add several hundred MB.
SIZE_BUDGET_BYTES = 500_000_000
COMPILERS = ("cc", "gcc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc")
# Two pieces of text, fed to a new session and then to the same session.
FIRST, SECOND = "To be, or not to ", "be: that is the question"
REPORT = im.REPO_ROOT / "build" / "image-build.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _record(**figures: Any) -> None:
    REPORT.parent.mkdir(exist_ok=True)
    current = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    REPORT.write_text(json.dumps({**current, **figures}, indent=2) + "\n")


def test_make_image_is_docker_build_where_a_docker_engine_answers(tmp_path: Path) -> None:
    """On a machine with Docker, the script is a plain `docker build` of the default target, tagged by version."""
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$PWD $*" >> {calls}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("IMAGE_BUILDER", None)
    env.pop("IMAGE_TAG", None)
    subprocess.run(["bash", str(im.BUILD_SCRIPT)], env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    assert calls.read_text().splitlines() == [
        f"{im.REPO_ROOT} info",
        f"{im.REPO_ROOT} build -t lstm-serve:{im.version()} .",
    ]


# The first of the tests below to run builds the image: minutes on a machine that has never built it.
@pytest.fixture(scope="module")
def image() -> Iterator[im.Build]:
    missing = im.missing_prerequisite()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must build the image: {missing}")
        pytest.skip(missing)
    im.remove_stale_containers()
    built = im.build()
    _record(image=built.ref, build_seconds=round(built.seconds, 1))
    yield built


@pytest.fixture(scope="module")
def config(image: im.Build) -> dict[str, Any]:
    return im.inspect(image.ref)


@pytest.mark.e2e
@pytest.mark.timeout(2400)
def test_image_is_the_cpu_image_as_declared(config: dict[str, Any]) -> None:
    assert im.command(config) == ["python", "-m", "service"]
    assert config["User"] == f"{im.IMAGE_UID}:{im.IMAGE_UID}"
    env = im.image_env(config)
    assert env["LSTM_SERVE_PROVIDER"] == "cpu" and env["PATH"].startswith("/opt/venv/bin:")
    # The build-time arguments (the CA bundle, the wheelhouse) stay out of the image's configuration.
    assert not any(key.startswith("PIP_") and key != "PIP_DISABLE_PIP_VERSION_CHECK" for key in env), env
    assert config.get("Healthcheck", {}).get("Test", [None])[0] == "CMD"


@pytest.mark.e2e
@pytest.mark.timeout(2400)
def test_image_holds_no_torch_no_compiler_and_fits_its_budget(image: im.Build) -> None:
    with im.working_container(image.ref) as container:
        probe = im.run_in(
            container,
            "python",
            "-c",
            "import importlib.util as u, json, os, shutil, sys; print(json.dumps({'torch': bool(u.find_spec('torch')),"
            f" 'compilers': [c for c in {COMPILERS!r} if shutil.which(c)], 'uid': os.getuid(),"
            " 'prefix': sys.prefix}))",
        )
        found = json.loads(probe.stdout.strip().splitlines()[-1])
        assert found == {"torch": False, "compilers": [], "uid": im.IMAGE_UID, "prefix": "/opt/venv"}, found
        with im.mounted(container) as root:
            # Nothing of the machine that built it: the build mounts its CA bundle and wheelhouse on /mnt.
            assert list((root / "mnt").iterdir()) == []
            assert not (root / "src").exists(), "the builder's source tree came into the image"
            leftovers = [p.name for p in root.iterdir() if p.name not in _DEBIAN_ROOT]
            assert leftovers == [], f"unexpected top-level entries: {leftovers}"
            for name in COMPILERS:
                for bin_dir in ("usr/bin", "usr/local/bin", "opt/venv/bin"):
                    assert not (root / bin_dir / name).exists(), f"/{bin_dir}/{name} is in the image"
            size = im.tree_bytes(root)
    _record(image_bytes=size, image_megabytes=round(size / 1e6, 1), size_budget_bytes=SIZE_BUDGET_BYTES)
    assert size < SIZE_BUDGET_BYTES, (
        f"the image is {size / 1e6:.0f} MB, over its {SIZE_BUDGET_BYTES / 1e6:.0f} MB budget"
    )


_DEBIAN_ROOT = {
    *("bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "media", "mnt", "opt", "proc"),
    *("root", "run", "sbin", "srv", "sys", "tmp", "usr", "var", "app", ".dockerenv"),
}


@asynccontextmanager
async def in_process_client(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    """The app in this process, configured by the image's LSTM_SERVE_* environment (same model, same provider)."""
    for key in [k for k in os.environ if k.startswith("LSTM_SERVE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("LSTM_SERVE_"):
            monkeypatch.setenv(key, value)
    from service.app import create_app
    from service.config import Settings

    app = create_app(Settings())  # type: ignore[call-arg]  # from the environment
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as client:
            yield client


async def _predictions(client: httpx.AsyncClient) -> list[Any]:
    created = await client.post("/v1/sessions", json={"text": FIRST, "top_k": 5})
    assert created.status_code == 201, created.text
    session = created.json()
    after = await client.post(f"/v1/sessions/{session['session_id']}/predict", json={"text": SECOND, "top_k": 5})
    assert after.status_code == 200, after.text
    stateless = await client.post("/v1/predict", json={"text": FIRST + SECOND, "top_k": 5})
    assert stateless.status_code == 200, stateless.text
    return [
        (session["position"], session["next"]),
        (after.json()["position"], after.json()["next"]),
        stateless.json()["next"],
    ]


@pytest.mark.e2e
@pytest.mark.timeout(2400)
async def test_container_serves_what_the_engine_predicts_and_stops_on_sigterm(
    image: im.Build, config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    argv = im.command(config)
    # As `docker run -e`: a free port on the loopback interface of the host network; the rest is the image's.
    overrides = {"LSTM_SERVE_PORT": str(port), "LSTM_SERVE_HOST": "127.0.0.1"}
    with im.working_container(image.ref) as name:
        started = time.monotonic()
        container = im.Container(name, argv, overrides, tmp_path / "container.log")
        try:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, timeout=10) as remote:
                deadline = started + 120
                while True:
                    assert container.proc.poll() is None, f"the server exited:\n{container.log()}"
                    try:
                        if (await remote.get("/readyz", timeout=1)).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, f"not ready within 120 s:\n{container.log()}"
                    await asyncio.sleep(0.1)
                ready_seconds = time.monotonic() - started
                _record(start_to_ready_seconds=round(ready_seconds, 2))

                server = container.server()
                assert server.uids().real == im.IMAGE_UID and server.gids().real == im.IMAGE_UID
                assert server.cmdline()[-2:] == argv[1:]
                assert server.cwd().endswith("/app")

                from_image = await _predictions(remote)
                metrics = await remote.get("/metrics")
                assert metrics.status_code == 200, metrics.text
                assert 'lstm_serve_requests_total{method="POST",route="/v1/sessions",status="201"} 1.0' in metrics.text

            async with in_process_client(im.image_env(config), monkeypatch) as local:
                in_process = await _predictions(local)
            assert from_image == in_process

            status = container.terminate()
            assert status == 0, f"exit status {status} after SIGTERM:\n{container.log()}"
            assert "Application shutdown complete" in container.log()
        finally:
            container.close()
