"""A model repository served by one process: two models of other sizes and vocabularies, a session on each, a
rollout while a session of version 1 streams, an unload that drains, a forced one, a version that fails to load,
the repository API behind admin keys, and versions kept apart by snapshots and by Redis."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from model.config import ModelConfig
from model.export import export_model
from model.lstm import CharLSTM
from model.repository import version_path
from model.tokenizer import CharTokenizer
from service.app import create_app
from service.config import Settings
from service.registry import ModelRegistry
from tests.factories import make_tiny_lstm
from tests.redis_server import RedisServer

SMALL_VOCAB = "\n abcdefghijklmnopqrstuvwxyz.,"


def export_version(repo: Path, name: str, version: int, *, seed: int = 0, small: bool = False) -> Path:
    """A tiny model as REPO/name/version/model.onnx: the tests' vocabulary (hidden 16, 2 layers), or with
    `small` another vocabulary and size (hidden 12, 1 layer)."""
    path = version_path(repo, name, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    if small:
        import torch

        torch.manual_seed(seed)
        tokenizer = CharTokenizer(sorted(SMALL_VOCAB))
        cfg = ModelConfig(vocab_size=tokenizer.vocab_size, embed_size=6, hidden_size=12, num_layers=1)
        model = CharLSTM(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
    else:
        model, tokenizer = make_tiny_lstm(seed=seed)
    export_model(model, tokenizer, path, name=name, version=str(version), corpus="random weights")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    export_version(root, "plays", 1, seed=1)
    export_version(root, "small", 1, seed=2, small=True)
    return root


class Client(httpx.AsyncClient):
    registry: ModelRegistry


RunApp = Callable[..., AbstractAsyncContextManager[Client]]


@pytest.fixture
def run_app(repo: Path) -> RunApp:
    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Client]:
        values: dict[str, Any] = {
            "model_repository": repo,
            "default_model": "plays",
            "provider": "cpu",
            "max_batch_delay_ms": 1.0,
        }
        values.update(overrides)
        app = create_app(Settings(**values))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with Client(transport=transport, base_url="http://testserver") as client:
                client.registry = app.state.registry
                yield client

    return run


async def _predict(client: httpx.AsyncClient, sid: str, text: str) -> list[dict[str, Any]]:
    r = await client.post(f"/v1/sessions/{sid}/predict", json={"text": text, "top_k": 3})
    assert r.status_code == 200, r.text
    return list(r.json()["next"])


async def _stateless(client: httpx.AsyncClient, text: str, **model: Any) -> list[dict[str, Any]]:
    r = await client.post("/v1/predict", json={"text": text, "top_k": 3, **model})
    assert r.status_code == 200, r.text
    return list(r.json()["next"])


async def test_two_models_one_process_a_session_on_each(run_app: RunApp) -> None:
    async with run_app() as client:
        assert (await client.get("/readyz")).status_code == 200
        a = (await client.post("/v1/sessions", json={"text": "ROMEO:"})).json()
        b = (await client.post("/v1/sessions", json={"model": "small", "text": "hello"})).json()
        assert (a["model"], a["version"]) == ("plays", "1") and (b["model"], b["version"]) == ("small", "1")
        info = (await client.get(f"/v1/sessions/{b['session_id']}")).json()
        assert (info["model"], info["version"], info["position"]) == ("small", "1", 5)
        # Each session predicts what its own model predicts for its whole text.
        assert await _predict(client, a["session_id"], " hi") == await _stateless(client, "ROMEO: hi")
        small_next = await _predict(client, b["session_id"], " world")
        assert small_next == await _stateless(client, "hello world", model="small")
        assert {t["token"] for t in small_next} <= set(SMALL_VOCAB)
        # The other vocabulary is the other model's: "R" is not in it.
        r = await client.post("/v1/predict", json={"model": "small", "text": "ROMEO"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_token"
        # Unknown model or version: 404 naming what exists.
        for body in ({"model": "nope"}, {"model": "plays", "version": 7}):
            r = await client.post("/v1/sessions", json=body)
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            assert "plays (versions 1)" in r.json()["error"]["message"] and "small" in r.json()["error"]["message"]
        models = (await client.get("/v1/models")).json()["data"]
        assert [(m["id"], [v["version"] for v in m["versions"]]) for m in models] == [
            ("plays", ["1"]),
            ("small", ["1"]),
        ]
        # OpenAI and V2 name the model too.
        r = await client.post("/v1/completions", json={"model": "small", "prompt": "he", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == "small"
        r = await client.get("/v2/models/small/versions/1")
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [-1, len(SMALL_VOCAB)]
        r = await client.get("/v2/models/small/versions/9")
        assert r.status_code == 404 and isinstance(r.json()["error"], str)
        # Forks, exports and restores stay on the version.
        fork = (await client.post(f"/v1/sessions/{b['session_id']}/fork")).json()
        assert fork["model"] == "small" and "~small-1." in fork["session_id"]
        state = (await client.get(f"/v1/sessions/{b['session_id']}/state")).json()
        r = await client.post("/v1/sessions", json={"state": state})  # the default model: another fingerprint
        assert r.status_code == 422 and r.json()["error"]["code"] == "state_mismatch"
        r = await client.post("/v1/sessions", json={"state": state, "model": "small"})
        assert r.status_code == 201 and r.json()["position"] == 11
        metrics = (await client.get("/metrics")).text
        assert 'lstm_serve_model_sessions{model="small",version="1"} 3.0' in metrics
        assert "lstm_serve_active_sessions 4.0" in metrics
        # Requests are counted per version they worked on, by route and status (never by client input).
        m = 'lstm_serve_model_requests_total{model="%s",route="%s",status="%s",version="1"}'
        assert m % ("small", "/v1/sessions/{id}/predict", "200") + " 1.0" in metrics
        assert m % ("plays", "/v1/sessions/{id}/predict", "200") + " 1.0" in metrics
        assert m % ("small", "/v1/predict", "422") + " 1.0" in metrics  # the invalid_token answer
        assert 'model="nope"' not in metrics


async def _stream_tokens(client: httpx.AsyncClient, sid: str, started: asyncio.Event) -> dict[str, Any]:
    final: dict[str, Any] = {}
    body = {"max_tokens": 40, "stream": True, "seed": 3}
    async with client.stream("POST", f"/v1/sessions/{sid}/generate", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                started.set()
                await asyncio.sleep(0.01)  # a slow reader: the rollout happens mid-stream
                if "finish_reason" in event:
                    final = event
    return final


async def test_rollout_while_a_version_1_session_streams(run_app: RunApp, repo: Path) -> None:
    async with run_app() as client:
        old = (await client.post("/v1/sessions", json={"text": "To be"})).json()["session_id"]
        started = asyncio.Event()
        stream = asyncio.create_task(_stream_tokens(client, old, started))
        await started.wait()
        export_version(repo, "plays", 2, seed=9)
        r = await client.post("/v2/repository/models/plays/load")
        assert r.status_code == 200 and r.json()["versions"] == ["1", "2"]
        assert not stream.done()
        final = await stream
        assert final["finish_reason"] == "length" and len(final["tokens"]) == 40
        # New sessions get version 2; the old one is still on version 1, and predicts exactly what version 1 does.
        new = (await client.post("/v1/sessions", json={"text": "To be"})).json()
        assert new["version"] == "2"
        info = (await client.get(f"/v1/sessions/{old}")).json()
        assert info["version"] == "1" and info["position"] == 5 + 40
        history = "To be" + final["text"]
        v1 = await _stateless(client, history + "!", model="plays", version=1)
        assert await _predict(client, old, "!") == v1
        assert await _stateless(client, history + "!", model="plays") != v1  # version 2 differs
        rows = (await client.post("/v2/repository/index")).json()
        assert [(r["name"], r["version"], r["state"]) for r in rows] == [
            ("plays", "1", "READY"),
            ("plays", "2", "READY"),
            ("small", "1", "READY"),
        ]


async def test_polling_picks_up_versions_and_a_removed_folder_drains(run_app: RunApp, repo: Path) -> None:
    async with run_app(model_repository_poll_s=0.1) as client:
        old = (await client.post("/v1/sessions", json={})).json()["session_id"]
        export_version(repo, "plays", 2, seed=9)
        for _ in range(100):
            if len((await client.get("/v1/models")).json()["data"][0]["versions"]) == 2:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("version 2 was not picked up")
        assert (await client.post("/v1/sessions", json={})).json()["version"] == "2"
        shutil.rmtree(repo / "plays" / "1")
        await asyncio.sleep(0.5)
        # Version 1 is unloading: no new sessions on it, its session still served.
        r = await client.post("/v1/sessions", json={"version": 1})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert len(await _predict(client, old, "a")) == 3
        models = (await client.get("/v1/models")).json()["data"]
        assert [(v["version"], v["state"], v["sessions"]) for v in models[0]["versions"]] == [
            ("1", "UNLOADING", 1),
            ("2", "READY", 1),
        ]
        assert (await client.delete(f"/v1/sessions/{old}")).status_code == 204
        for _ in range(50):
            if "1" not in [v["version"] for v in (await client.get("/v1/models")).json()["data"][0]["versions"]]:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("version 1 was not freed once its last session ended")
        assert 'model_ready{model="plays",version="1"}' not in (await client.get("/metrics")).text


async def test_unload_drains_and_force_ends_sessions(run_app: RunApp) -> None:
    async with run_app() as client:
        small = (await client.post("/v1/sessions", json={"model": "small", "text": "ab"})).json()["session_id"]
        r = await client.post("/v2/repository/models/small/unload")
        assert r.status_code == 200 and r.json()["versions"] == ["1"]
        r = await client.post("/v1/sessions", json={"model": "small"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert (await client.post(f"/v1/sessions/{small}/fork")).status_code == 404  # no new sessions on it
        assert len(await _predict(client, small, "c")) == 3  # draining: its session still works
        metrics = (await client.get("/metrics")).text
        assert 'lstm_serve_model_draining{model="small",version="1"} 1.0' in metrics
        r = await client.post("/v2/repository/models/small/unload", json={"parameters": {"force": True}})
        assert r.status_code == 200 and r.json()["force"] is True
        r = await client.post(f"/v1/sessions/{small}/predict", json={"text": "d"})
        assert r.status_code == 410 and r.json()["error"]["code"] == "model_unloaded"
        rows = {(r["name"], r["version"]): r for r in (await client.post("/v2/repository/index")).json()}
        assert rows[("small", "1")]["state"] == "UNAVAILABLE" and rows[("plays", "1")]["state"] == "READY"
        # Loaded again through the API: new sessions on it work.
        assert (await client.post("/v2/repository/models/small/load")).status_code == 200
        assert (await client.post("/v1/sessions", json={"model": "small"})).status_code == 201
        assert (await client.get("/readyz")).status_code == 200


async def test_a_version_that_fails_to_load_is_reported_not_fatal(run_app: RunApp, repo: Path) -> None:
    broken = version_path(repo, "small", 2)
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an onnx file")
    async with run_app() as client:
        assert (await client.get("/readyz")).status_code == 200
        rows = {(r["name"], r["version"]): r for r in (await client.post("/v2/repository/index")).json()}
        assert rows[("small", "2")]["state"] == "UNAVAILABLE" and rows[("small", "2")]["reason"]
        assert (await client.post("/v1/sessions", json={"model": "small"})).json()["version"] == "1"
        metrics = (await client.get("/metrics")).text
        assert 'lstm_serve_model_load_failures_total{model="small",version="2"} 1.0' in metrics
        r = await client.post("/v2/repository/models/nothing/load")
        assert r.status_code == 404 and "plays" in r.json()["error"]


async def test_the_repository_api_needs_an_admin_key_when_keys_are_on(run_app: RunApp) -> None:
    async with run_app(api_keys="user-key", admin_api_keys="admin-key") as client:
        user, admin = ({"authorization": f"Bearer {k}"} for k in ("user-key", "admin-key"))
        assert (await client.post("/v2/repository/index")).status_code == 401
        assert (await client.post("/v2/repository/index", headers=user)).status_code == 403
        assert (await client.post("/v2/repository/models/small/unload", headers=user)).status_code == 403
        assert (await client.post("/v2/repository/index", headers=admin)).status_code == 200
        # A session of a key on a repository model: the key's, the model's.
        sid = (await client.post("/v1/sessions", json={"model": "small"}, headers=user)).json()["session_id"]
        assert (await client.get(f"/v1/sessions/{sid}", headers=user)).json()["model"] == "small"
        assert (await client.get(f"/v1/sessions/{sid}", headers=admin)).status_code == 404


def _names(folder: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(prefix))


async def test_snapshots_keep_versions_apart(run_app: RunApp, tmp_path: Path, repo: Path) -> None:
    snapshot = tmp_path / "sessions.snap"
    export_version(repo, "plays", 2, seed=9)
    ids: dict[tuple[str, str], str] = {}
    want: dict[tuple[str, str], list[dict[str, Any]]] = {}
    async with run_app(snapshot_path=snapshot) as client:
        for body in ({"version": 1}, {"version": 2}, {"model": "small"}):
            r = (await client.post("/v1/sessions", json={**body, "text": "to be"})).json()
            key = (r["model"], r["version"])
            ids[key] = r["session_id"]
            want[key] = await _stateless(client, "to be or", model=key[0], version=int(key[1]))
    assert _names(tmp_path, "sessions.snap") == [
        "sessions.snap.plays.1",
        "sessions.snap.plays.2",
        "sessions.snap.small.1",
    ]
    async with run_app(snapshot_path=snapshot) as client:
        for key, sid in ids.items():
            info = (await client.get(f"/v1/sessions/{sid}")).json()
            assert (info["model"], info["version"], info["position"]) == (*key, 5)
            # The same next step as before the restart: each state came back to its own version.
            assert await _predict(client, sid, " or") == want[key]


async def test_redis_keeps_versions_apart(run_app: RunApp, repo: Path, redis_server: RedisServer) -> None:
    export_version(repo, "plays", 2, seed=9)
    async with run_app(state_backend="redis", redis_url=redis_server.url) as client:
        one = (await client.post("/v1/sessions", json={"version": 1, "text": "to be"})).json()["session_id"]
        two = (await client.post("/v1/sessions", json={"version": 2, "text": "to be"})).json()["session_id"]
        want_one = await _stateless(client, "to be or", model="plays", version=1)
        want_two = await _stateless(client, "to be or", model="plays", version=2)
        assert want_one != want_two
    async with run_app(state_backend="redis", redis_url=redis_server.url) as client:  # another process, one Redis
        assert await _predict(client, one, " or") == want_one
        assert await _predict(client, two, " or") == want_two
        units = {u.version: u for u in client.registry.units() if u.name == "plays"}
        prefixes = {getattr(u.serving.store, "prefix", "") for u in units.values()}
        assert len(prefixes) == 2


async def test_a_model_trained_by_the_cli_served_beside_another(tmp_path: Path) -> None:
    """`lstm-serve train --text` on a file the test writes, exported into a repository beside a model of another
    size and vocabulary; one process serves both, a session on each."""
    from service.cli import main

    text = tmp_path / "notes.txt"
    text.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60)))
    ckpt, root = tmp_path / "notes.pt", tmp_path / "repo"
    tiny = ["--steps", "8", "--eval-every", "4", "--batch-size", "4", "--seq-len", "16", "--hidden-size", "16"]
    tiny += ["--embed-size", "8", "--layers", "1", "--threads", "1"]
    assert await asyncio.to_thread(main, ["train", "--text", str(text), "--out", str(ckpt), *tiny]) == 0
    args = ["export", "--checkpoint", str(ckpt), "--repository", str(root), "--name", "notes"]
    assert await asyncio.to_thread(main, args) == 0
    export_version(root, "small", 1, seed=2, small=True)
    app = create_app(Settings(model_repository=root, default_model="notes", provider="cpu"))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        a = (await client.post("/v1/sessions", json={"text": "line 1: the"})).json()
        b = (await client.post("/v1/sessions", json={"model": "small", "text": "the"})).json()
        assert (a["model"], b["model"]) == ("notes", "small")
        assert await _predict(client, a["session_id"], " quick") == await _stateless(client, "line 1: the quick")
        assert await _predict(client, b["session_id"], " fox") == await _stateless(client, "the fox", model="small")
