"""The HTTP floor: a FastAPI app whose predict route does nothing, served by uvicorn exactly as the product is.

It answers the product's session paths with a body and a response of the same shape, so the load process
drives it with the very requests it sends the product; whatever the product's p50 adds on top of this one's is
the engine's own cost (locks, batching, ONNX Runtime, top-k, logging).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn
from fastapi import FastAPI, Response
from pydantic import BaseModel

ANSWER = {
    "session_id": "noop",
    "position": 1,
    "expires_at": "2030-01-01T00:00:00Z",
    "next": [{"token": "e", "id": 7, "prob": 0.5}],
}


class Body(BaseModel):
    text: str | None = None
    top_k: int = 5


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
