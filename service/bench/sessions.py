"""Sessions for the C-level clients, made before the clock starts and deleted after the point.

The product, the no-op app and the PyTorch peer answer lstm-serve's session paths (`POST /v1/sessions`, then
`/v1/sessions/{id}/...`); the LitServe peer has one route (`POST /predict`) and keeps a state per `session_id`
field, made on first use, so its sessions are named here and primed with the same prefix by one request each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

LITSERVE = "litserve"


def style(server: str) -> str:
    """How a server's sessions are addressed: "litserve" (id in the body) or "sessions" (id in the path)."""
    return LITSERVE if server == LITSERVE else "sessions"


def create(host: str, port: int, server: str, n: int, prefix: str, tag: str = "s") -> list[str]:
    """n sessions primed with `prefix`, a few at a time (creating one runs the model over the prefix)."""
    base = f"http://{host}:{port}"

    def one(i: int) -> str:
        with httpx.Client(base_url=base, timeout=120.0) as client:
            if style(server) == LITSERVE:
                sid = f"{tag}{i}"
                client.post("/predict", json={"session_id": sid, "text": prefix}).raise_for_status()
                return sid
            r = client.post("/v1/sessions", json={"text": prefix} if prefix else {})
            r.raise_for_status()
            return str(r.json()["session_id"])

    with ThreadPoolExecutor(max_workers=min(8, max(1, n))) as pool:
        return list(pool.map(one, range(n)))


def delete(host: str, port: int, server: str, ids: Sequence[str]) -> None:
    """Free the sessions (the LitServe peer has no delete; its dict keeps them, as such a server would)."""
    if style(server) == LITSERVE:
        return
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=30.0) as client:
        for sid in set(ids):
            with contextlib.suppress(httpx.HTTPError):
                client.delete(f"/v1/sessions/{sid}")


def predict_path(server: str, sid: str) -> str:
    return "/predict" if style(server) == LITSERVE else f"/v1/sessions/{sid}/predict"
