"""POST /v1/predict: stateless prediction."""

from __future__ import annotations

from tests.service.conftest import AppClient


async def test_predict_text(client: AppClient) -> None:
    r = await client.post("/v1/predict", json={"text": "To be, or not to ", "top_k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["position"] == 17
    nxt = body["next"]
    assert len(nxt) == 5 and set(nxt[0]) == {"token", "id", "prob"}
    assert [t["prob"] for t in nxt] == sorted((t["prob"] for t in nxt), reverse=True)
    vocab = client.engine.model.metadata.tokenizer.chars
    assert all(vocab[t["id"]] == t["token"] and 0 < t["prob"] <= 1 for t in nxt)


async def test_full_distribution_sums_to_one_and_tokens_match_text(client: AppClient) -> None:
    tok = client.engine.model.metadata.tokenizer
    by_text = (await client.post("/v1/predict", json={"text": "ROMEO:", "top_k": 1024})).json()
    ids = [int(i) for i in tok.encode("ROMEO:")]
    by_ids = (await client.post("/v1/predict", json={"tokens": ids, "top_k": 1024})).json()
    assert by_text == by_ids
    assert len(by_text["next"]) == tok.vocab_size
    assert abs(sum(t["prob"] for t in by_text["next"]) - 1) < 1e-6


async def test_default_top_k_is_five(client: AppClient) -> None:
    r = await client.post("/v1/predict", json={"text": "a"})
    assert len(r.json()["next"]) == 5 and r.json()["position"] == 1
