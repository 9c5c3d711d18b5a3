"""GET /v1/model: the document the API layer builds from the engine's typed model facts and the settings."""

from __future__ import annotations

from tests.factories import TEST_VOCAB
from tests.service.conftest import AppClient


async def test_model_document(client: AppClient) -> None:
    r = await client.get("/v1/model")
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["provider"] == "cpu" and info["layers"] == 2 and info["hidden_size"] == 16
    assert info["vocabulary"] == "".join(sorted(TEST_VOCAB))
    assert info["sessions"]["state_bytes"] == 2 * 2 * 16 * 4
    assert info["sessions"]["backend"] == "memory" and info["sessions"]["active"] == 0
    assert info["batching"] == {"max_batch_size": 32, "max_batch_delay_ms": 2.0}
    assert set(info["sessions"]["evicted"]) == {"ttl", "capacity", "deleted"}
