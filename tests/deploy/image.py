"""The CPU image, built from the real Dockerfile by deploy/image/build.sh and run with buildah.

No Docker engine runs on the project's machines, so the image is built with buildah (chroot isolation, a local
Debian base, no registry) and run with `buildah run --isolation chroot`: the image's own entrypoint and command,
in the image's filesystem, as UID 10001, on the host network. A `buildah run` does not pass SIGTERM on to the
command (it kills it), so `Container.terminate()` signals the server process itself, as a container runtime
signals a container's main process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "deploy" / "image" / "build.sh"
CONTAINER_PREFIX = "lstm-serve-test-"
IMAGE_UID = 10001


def version() -> str:
    import tomllib

    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def image_ref() -> str:
    return f"localhost/lstm-serve:{version()}"


def missing_prerequisite() -> str | None:
    """Why the image cannot be built and run here, or None."""
    if shutil.which("buildah") is None:
        return "buildah is not installed (apt-get install buildah debootstrap; `make system-deps` does it)"
    if os.geteuid() != 0:
        sudo = subprocess.run(["sudo", "-n", "true"], capture_output=True, stdin=subprocess.DEVNULL, check=False)
        if sudo.returncode != 0:
            return "buildah needs root here: run the tests as root or with passwordless sudo"
    return None


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def buildah(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_sudo(), "buildah", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        stdin=subprocess.DEVNULL,
    )


@dataclass(frozen=True)
class Build:
    ref: str
    seconds: float
    output: str


def build(timeout: float = 1800) -> Build:
    """`IMAGE_BUILDER=buildah deploy/image/build.sh`, what `make image` runs on a machine without Docker."""
    env = {**os.environ, "IMAGE_BUILDER": "buildah"}
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"the image build failed ({proc.returncode}):\n{output[-6000:]}")
    return Build(image_ref(), seconds, output)


def inspect(ref: str) -> dict[str, Any]:
    """The image's Docker-format configuration (Entrypoint, Cmd, Env, User, WorkingDir, Healthcheck, ...)."""
    data = json.loads(buildah("inspect", "--type", "image", ref).stdout)
    return dict(data["Docker"]["config"])


def command(config: dict[str, Any]) -> list[str]:
    """What a container of the image runs: its entrypoint followed by its command."""
    return [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]


def image_env(config: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in config.get("Env") or [])


def remove_stale_containers() -> None:
    """Containers that earlier test runs left behind (killed before their cleanup): their pytest is gone."""
    listing = buildah("containers", "--format", "{{.ContainerName}}", check=False).stdout.split()
    for name in listing:
        if not name.startswith(CONTAINER_PREFIX):
            continue
        owner = name.removeprefix(CONTAINER_PREFIX).split("-")[0]
        if owner.isdigit() and not psutil.pid_exists(int(owner)):
            buildah("rm", name, check=False)


@contextmanager
def working_container(ref: str) -> Iterator[str]:
    """A buildah working container of the image, removed afterwards."""
    name = f"{CONTAINER_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    buildah("from", "--pull=never", "--quiet", "--name", name, ref)
    try:
        yield name
    finally:
        buildah("rm", name, check=False)


@contextmanager
def mounted(container: str) -> Iterator[Path]:
    """The container's root filesystem, mounted on the host."""
    root = Path(buildah("mount", container).stdout.strip())
    try:
        yield root
    finally:
        buildah("umount", container, check=False)


def tree_bytes(root: Path) -> int:
    """Bytes of every regular file under root (hard links once): the image's unpacked size."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(directory, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def run_in(container: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A one-off command in the container as the image's user."""
    return buildah(
        "run", "--isolation", "chroot", "--network", "host", "--user", str(IMAGE_UID), container, "--", *argv,
        timeout=timeout,
    )  # fmt: skip


class Container:
    """`buildah run` of the image's own command in a working container, as UID 10001, on the host network."""

    def __init__(self, container: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.container = container
        self.argv = argv
        self.log_path = log
        options = [f"--env={key}={value}" for key, value in env.items()]
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [*_sudo(), "buildah", "run", "--isolation", "chroot", "--network", "host", "--user", str(IMAGE_UID),
             *options, container, "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def server(self, timeout: float = 30) -> psutil.Process:
        """The image's command, running inside the container: the process of UID 10001 under `buildah run`
        that is not buildah's own chroot wrapper (`buildah-chroot-exec`, also UID 10001, which runs it)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"buildah run exited ({self.proc.returncode}):\n{self.log()}"
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                try:
                    cmdline = child.cmdline()
                    wrapper = "buildah" in child.name() or (bool(cmdline) and "buildah" in cmdline[0])
                    if (
                        child.uids().real == IMAGE_UID
                        and not wrapper
                        and cmdline[-len(self.argv) + 1 :] == self.argv[1:]
                    ):
                        return child
                except psutil.NoSuchProcess:
                    continue
            assert time.monotonic() < deadline, f"no server process under buildah run:\n{self.log()}"
            time.sleep(0.1)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the server; the exit status `buildah run` passes on."""
        _signal(self.server().pid, signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Kill whatever is left: `buildah run` and everything under it."""
        if self.proc.poll() is None:
            try:
                leftovers = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                leftovers = []
            for pid in [p.pid for p in leftovers] + [self.proc.pid]:
                _signal(pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log.close()


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        if os.geteuid() == 0:
            os.kill(pid, sig)
        else:
            subprocess.run(["sudo", "-n", "kill", f"-{sig.name}", str(pid)], check=False, stdin=subprocess.DEVNULL)
    except ProcessLookupError:
        pass
