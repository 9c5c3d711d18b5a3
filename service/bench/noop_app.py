"""The HTTP floor: a FastAPI app whose predict route does nothing, served by uvicorn exactly as the product is.

It answers the product's session paths with a body and a response of the same shape, so the load process
drives it with the very requests it sends the product; whatever the product's p50 adds on top of this one's is
the engine's own cost (locks, batching, ONNX Runtime, top-k, logging).

Its generate route is the SSE floor: `"stream": true` gets `max_tokens` token events of the product's shape,
written through the product's own SSE response class (sse-starlette) as fast as the event loop can (one
loop turn per token, so concurrent streams share it as the product's do), then the final event and `[DONE]`;
no model, no engine, no sampling.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence

import orjson
import uvicorn
from fastapi import FastAPI, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

ANSWER = {
    "session_id": "noop",
    "position": 1,
    "expires_at": "2030-01-01T00:00:00Z",
    "next": [{"token": "e", "id": 7, "prob": 0.5}],
}


class Body(BaseModel):
    text: str | None = None
    top_k: int = 5


class GenerateBody(BaseModel):
    max_tokens: int = 100
    temperature: float = 1.0
    seed: int | None = None
    stream: bool = False


async def _tokens(n: int) -> AsyncIterator[ServerSentEvent]:
    for i in range(n):
        await asyncio.sleep(0)  # one event-loop turn per token, as a real stream takes: streams share the loop
        yield ServerSentEvent(data=orjson.dumps({"token": "e", "id": 7, "position": i + 1}).decode())
    final = {"text": "e" * n, "tokens": [7] * n, "finish_reason": "length", "position": n}
    yield ServerSentEvent(data=orjson.dumps(final).decode())
    yield ServerSentEvent(data="[DONE]")


def create_app() -> FastAPI:
    app = FastAPI(title="lstm-serve bench no-op")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/sessions", status_code=201)
    async def create(body: Body | None = None) -> dict[str, object]:
        return ANSWER

    @app.post("/v1/sessions/{id}/predict")
    async def predict(id: str, body: Body) -> dict[str, object]:
        return ANSWER

    @app.post("/v1/sessions/{id}/generate", response_model=None)
    async def generate(id: str, body: GenerateBody) -> EventSourceResponse | dict[str, object]:
        if body.stream:
            return EventSourceResponse(_tokens(body.max_tokens))
        return {"text": "e" * body.max_tokens, "finish_reason": "length", "position": body.max_tokens}

    @app.delete("/v1/sessions/{id}", status_code=204)
    async def delete(id: str) -> Response:
        return Response(status_code=204)

    return app


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    # The product's uvicorn options (service/shutdown.py): uvloop and httptools when installed, no access log.
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        loop="auto",
        http="auto",
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
