"""GET /v1/model?model=&version=: the facts of any served model version (the playground's model picker shows them),
the default model's latest version without them, and 404 model_not_found for one not served."""

from __future__ import annotations

from pathlib import Path

import httpx

from service.app import create_app
from service.config import Settings
from tests.service.conftest import AppClient
from tests.service.test_registry import SMALL_VOCAB, export_version


async def test_model_facts_of_each_repository_model(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_version(repo, "plays", 1, seed=1)
    export_version(repo, "small", 1, seed=2, small=True)
    export_version(repo, "small", 2, seed=3, small=True)
    settings = Settings(model_repository=repo, default_model="plays", provider="cpu", max_batch_delay_ms=1.0)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        default = (await client.get("/v1/model")).json()
        assert (default["name"], default["layers"], default["hidden_size"]) == ("plays", 2, 16)

        latest = (await client.get("/v1/model", params={"model": "small"})).json()
        assert (latest["name"], latest["version"]) == ("small", "2")
        assert (latest["layers"], latest["hidden_size"]) == (1, 12)
        assert latest["vocabulary"] == "".join(sorted(SMALL_VOCAB))
        assert latest["fingerprint"] != default["fingerprint"]

        first = (await client.get("/v1/model", params={"model": "small", "version": "1"})).json()
        assert first["version"] == "1" and first["fingerprint"] != latest["fingerprint"]
        # A session on a version is counted in that version's facts only.
        await client.post("/v1/sessions", json={"model": "small", "version": 1})
        first = (await client.get("/v1/model", params={"model": "small", "version": "1"})).json()
        latest = (await client.get("/v1/model", params={"model": "small"})).json()
        assert (first["sessions"]["active"], latest["sessions"]["active"]) == (1, 0)

        for params in ({"model": "nope"}, {"model": "small", "version": "9"}):
            r = await client.get("/v1/model", params=params)
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            assert "small (versions 1, 2)" in r.json()["error"]["message"]
        r = await client.get("/v1/model", params={"model": "x" * 300})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


async def test_single_model_answers_to_its_own_name_only(client: AppClient) -> None:
    info = (await client.get("/v1/model")).json()
    named = await client.get("/v1/model", params={"model": info["name"], "version": info["version"]})
    assert named.status_code == 200 and named.json()["fingerprint"] == info["fingerprint"]
    r = await client.get("/v1/model", params={"model": "other"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
