"""docker-compose.yml and what it mounts: the structure (two replicas on a shared Redis, nginx, Prometheus,
Grafana, healthchecks and start order), `docker compose config`, nginx's consistent hash on the session id (a real
nginx in front of two stub backends) and the Redis command line (a real redis-server)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import COMPOSE_FILE, K8S, REPO_ROOT, assert_valid_settings, find_tool, load_yaml, require_tool

REPLICAS = ("lstm-serve-1", "lstm-serve-2")
NGINX_CONF = REPO_ROOT / "deploy" / "nginx" / "nginx.conf"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test[1:]) if isinstance(test, list) else str(test)


def test_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {*REPLICAS, "redis", "proxy", "prometheus", "grafana"}
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag"


@pytest.mark.parametrize("name", REPLICAS)
def test_replica(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    replica = services[name]
    assert replica["build"] == {"context": ".", "target": "runtime"}
    assert replica["image"] == services[REPLICAS[0]]["image"]
    env = replica["environment"]
    assert env["LSTM_SERVE_STATE_BACKEND"] == "redis"
    assert env["LSTM_SERVE_REDIS_URL"] == "redis://redis:6379/0"
    assert replica["depends_on"] == {"redis": {"condition": "service_healthy"}}
    # Healthy = ready: the proxy starts once the model is loaded and warm.
    assert "/readyz" in healthcheck_command(replica)
    # docker stop waits for the drain: SIGTERM, then the grace period, then SIGKILL.
    grace = float(env["LSTM_SERVE_SHUTDOWN_GRACE_S"])
    assert int(replica["stop_grace_period"].removesuffix("s")) >= grace + 5
    assert replica["read_only"] is True and "/tmp" in replica["tmpfs"]
    assert replica["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in replica["security_opt"]
    assert "ports" not in replica, "replicas are reached through the proxy"
    assert_valid_settings({k: str(v) for k, v in env.items()}, f"compose {name}", monkeypatch, tmp_path)


def test_start_order_follows_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency]
    assert set(services["proxy"]["depends_on"]) == set(REPLICAS)
    assert set(services["prometheus"]["depends_on"]) == set(REPLICAS)
    assert set(services["grafana"]["depends_on"]) == {"prometheus"}
    # No cycles: a topological order exists.
    order: list[str] = []
    pending = dict(services)
    while pending:
        ready = [n for n, s in pending.items() if set(s.get("depends_on", {})) <= set(order)]
        assert ready, f"dependency cycle among {sorted(pending)}"
        order += sorted(ready)
        for n in ready:
            del pending[n]
    assert order.index("redis") < order.index(REPLICAS[0]) < order.index("proxy")


def test_redis(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert healthcheck_command(redis) == "redis-cli ping"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


def test_proxy(services: dict[str, dict[str, Any]]) -> None:
    proxy = services["proxy"]
    assert proxy["image"].startswith("nginx:")
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert proxy["ports"] == ["8000:8080"]
    conf = NGINX_CONF.read_text()
    for replica in REPLICAS:
        assert f"server {replica}:8000" in conf
    assert "hash $lstm_session_key consistent;" in conf
    assert "proxy_buffering off;" in conf


def test_prometheus_and_grafana(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "9090:9090" in prometheus["ports"]
    grafana = services["grafana"]
    assert "3000:3000" in grafana["ports"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")


def compose_cli() -> list[str] | None:
    """`docker compose` (the v2 plugin) where it works, else the standalone docker-compose."""
    docker = find_tool("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = find_tool("docker-compose")
    return [standalone] if standalone else None


def test_compose_config_validates() -> None:
    """The compose CLI validates the file against the Compose schema; it needs no Docker engine."""
    cli = compose_cli()
    if cli is None:
        require_tool("docker-compose")  # skips, naming the package
        return
    proc = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- nginx: the real thing in front of two stub replicas -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Stub(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def nginx_front(tmp_path: Path) -> Iterator[str]:
    """deploy/nginx/nginx.conf, with the replicas and the listen port moved to loopback, in front of two stubs."""
    nginx = require_tool("nginx")
    stubs = []
    conf = NGINX_CONF.read_text()
    for replica in REPLICAS:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
        server.name = replica  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stubs.append(server)
        conf = conf.replace(f"server {replica}:8000", f"server 127.0.0.1:{server.server_address[1]}")
    port = free_port()
    assert "listen 8080;" in conf
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    for directive in ("access_log /dev/stdout;", "error_log /dev/stderr warn;"):
        assert directive in conf
        conf = conf.replace(directive, directive.replace("/dev/std", str(tmp_path / "std")))
    (tmp_path / "nginx.conf").write_text(conf)
    args = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(
        [*args, "-g", f"daemon off; master_process off; pid {tmp_path / 'nginx.pid'};"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "nginx exited"
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for server in stubs:
            server.shutdown()
            server.server_close()


def test_nginx_config_is_valid_and_hashes_on_the_session_id(nginx_front: str) -> None:
    import httpx

    with httpx.Client(base_url=nginx_front, timeout=5) as client:
        assert client.get("/nginx-health").text == "ok\n"
        # Every request about a session reaches the same replica, whatever the route.
        owners = {}
        for n in range(24):
            session = f"session-{n}"
            seen = {
                client.post(f"/v1/sessions/{session}/predict", json={"text": "a"}).text,
                client.get(f"/v1/sessions/{session}").text,
                client.post(f"/v1/sessions/{session}/predict", json={"text": "b"}).text,
                client.delete(f"/v1/sessions/{session}").text,
            }
            assert len(seen) == 1, f"{session} was served by {seen}"
            owners[session] = seen.pop()
        # ...and sessions spread over both replicas, as do requests without a session id.
        assert set(Counter(owners.values())) == set(REPLICAS)
        spread = Counter(client.post("/v1/sessions", json={}).text for _ in range(40))
        assert set(spread) == set(REPLICAS)


# --- redis-server: the command line of the compose file and of the k8s try-out Redis -------------------------------


def redis_args_in_compose(services: dict[str, dict[str, Any]]) -> list[str]:
    command = services["redis"]["command"]
    assert command[0] == "redis-server"
    return [str(a) for a in command[1:]]


def redis_args_in_k8s() -> list[str]:
    docs = list(yaml.safe_load_all((K8S / "overlays" / "redis" / "redis.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return [str(a) for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]]


@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_redis_command_line_starts_a_server(services: dict[str, dict[str, Any]], source: str, tmp_path: Path) -> None:
    redis_server = require_tool("redis-server")
    import redis

    args = redis_args_in_compose(services) if source == "compose" else redis_args_in_k8s()
    port = free_port()
    proc = subprocess.Popen(
        [redis_server, *args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--daemonize", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"redis-server rejected the {source} arguments {args}:\n{out}")
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lru"
        assert int(str(client.config_get("maxmemory")["maxmemory"])) > 0
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
