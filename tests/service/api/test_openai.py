"""POST /v1/completions and GET /v1/models in OpenAI's shapes (the real openai client runs in tests/e2e):
whole and streamed completions, stop strings trimmed and held back, session continuation, refusals by name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.api.openai import CompletionChunks, _held_back
from service.client import SSEDecoder
from service.engine.generation import Finished, Token
from tests.service.conftest import AppClient

MODEL = "tiny-test-lstm"


def chunks(body: str) -> list[Any]:
    return [e.data if e.data == "[DONE]" else json.loads(e.data) for e in SSEDecoder().feed(body.encode())]


async def complete(client: AppClient, **fields: Any) -> Any:
    r = await client.post("/v1/completions", json={"model": MODEL, **fields})
    assert r.status_code == 200, r.text
    return r.json() if not fields.get("stream") else chunks(r.text)


async def test_models_list(client: AppClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [MODEL]
    assert body["data"][0]["object"] == "model" and isinstance(body["data"][0]["created"], int)


async def test_completion_shape(client: AppClient) -> None:
    body = await complete(client, prompt="ROMEO:\n", max_tokens=7, temperature=0.5, seed=3)
    assert body["object"] == "text_completion" and body["model"] == MODEL and body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int) and body["system_fingerprint"].startswith("sha256:")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "length"
    assert len(choice["text"]) == 7
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 7, "total_tokens": 14}
    native = (
        await client.post("/v1/generate", json={"text": "ROMEO:\n", "max_tokens": 7, "temperature": 0.5, "seed": 3})
    ).json()
    assert choice["text"] == native["text"]


async def test_streamed_chunks_add_up_to_the_completion(client: AppClient) -> None:
    whole = await complete(client, prompt="To be", max_tokens=20, seed=9)
    streamed = await complete(
        client, prompt="To be", max_tokens=20, seed=9, stream=True, stream_options={"include_usage": True}
    )
    assert streamed[-1] == "[DONE]"
    usage, parts = streamed[-2], streamed[:-2]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert all(p["object"] == "text_completion" and p["id"] == parts[0]["id"] for p in parts)
    assert [p["choices"][0]["finish_reason"] for p in parts] == [None] * (len(parts) - 1) + ["length"]
    assert "".join(p["choices"][0]["text"] for p in parts) == whole["choices"][0]["text"]


async def test_stop_strings_are_trimmed_as_openai_does(client: AppClient) -> None:
    free = (await complete(client, prompt="ROMEO:\n", max_tokens=30, temperature=0))["choices"][0]["text"]
    stop = free[4:6]
    cut = free[: free.index(stop)]
    body = await complete(client, prompt="ROMEO:\n", max_tokens=30, temperature=0, stop=stop)
    assert body["choices"][0] == {"text": cut, "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert body["usage"]["completion_tokens"] == len(cut) + 2  # the stop string was generated all the same
    streamed = await complete(client, prompt="ROMEO:\n", max_tokens=30, temperature=0, stop=[stop], stream=True)
    assert "".join(p["choices"][0]["text"] for p in streamed[:-1]) == cut
    assert all(stop not in p["choices"][0]["text"] for p in streamed[:-1])


def test_text_that_may_start_a_stop_string_is_held_back() -> None:
    assert _held_back("abc\n", ["\n\n"]) == 1 and _held_back("abc", ["\n\n"]) == 0
    assert _held_back("xEN", ["END", "ENOUGH"]) == 2 and _held_back("x", []) == 0
    assert _held_back("xEND", ["END"]) == 3  # a whole stop string is never sent
    render = CompletionChunks(model=MODEL, fingerprint="sha256:x", stops=["END"], include_usage=False)
    sent = [c["choices"][0]["text"] for ch in "aEbENxE" for c in render.token(Token(ch, 0, 0))]
    assert sent == ["a", "Eb", "ENx"]  # "E" waited until it could not be the start of "END"
    assert [c["choices"][0] for ch in "ND" for c in render.token(Token(ch, 0, 0))] == []
    final = Finished(text="aEbENxEND", tokens=(0,) * 9, finish_reason="stop", position=9, prompt_tokens=0, stop="END")
    assert [c["choices"][0]["text"] for c in render.finished(final)] == [""]


async def test_session_continuation(client: AppClient) -> None:
    sid = (await client.post("/v1/sessions", json={"text": "ROMEO:"})).json()["session_id"]
    body = await complete(client, prompt="\n", max_tokens=5, seed=1, session_id=sid)
    assert (await client.get(f"/v1/sessions/{sid}")).json()["position"] == 6 + 1 + 5
    stateless = await complete(client, prompt="ROMEO:\n", max_tokens=5, seed=1)
    assert body["choices"][0]["text"] == stateless["choices"][0]["text"]
    # An empty prompt continues from the session's state.
    more = await complete(client, prompt="", max_tokens=3, seed=2, session_id=sid)
    assert more["usage"]["prompt_tokens"] == 0
    assert (await client.get(f"/v1/sessions/{sid}")).json()["position"] == 15


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"model": "gpt-4", "prompt": "a"}, 404, "model_not_found"),
        ({"prompt": "a", "n": 2}, 422, "invalid_request"),
        ({"prompt": "a", "echo": True}, 422, "invalid_request"),
        ({"prompt": "a", "logprobs": 5}, 422, "invalid_request"),
        ({"prompt": ["a", "b"]}, 422, "invalid_request"),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 422, "invalid_request"),
        ({"prompt": "a", "max_tokens": 5000}, 422, "too_many_tokens"),
        ({"prompt": "a", "session_id": "nope"}, 404, "session_not_found"),
        ({"prompt": "é"}, 422, "invalid_token"),
    ],
)
async def test_refusals(client: AppClient, fields: dict[str, Any], status: int, code: str) -> None:
    r = await client.post("/v1/completions", json={"model": MODEL, **fields})
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
