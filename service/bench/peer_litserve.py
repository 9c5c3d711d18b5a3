"""The LitServe peer: what a user would build with LitServe instead of lstm-serve, measured in the same run.

LitServe + ONNX Runtime (the same artifact the product serves, one intra-op thread, the product's session
options) + a dict of states. One route, `POST /predict` with `{"session_id", "text"}`: a session's state is
made on first use, the step runs the text from it and the answer has the product's shape (position and the
top-5 next characters). LitServe's own dynamic batching is on (up to 64 requests, 1 ms to fill a batch), so a
batch of single characters is one ONNX Runtime call; requests that feed longer texts, or a session twice in one
batch, run one by one.

`python -m service.bench.peer_litserve --model PATH --port PORT` (LitServe is in the `bench` extra).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np

MAX_BATCH = 64
BATCH_TIMEOUT_S = 0.001


class SessionLSTM(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model: Path) -> None:
        super().__init__(max_batch_size=MAX_BATCH, batch_timeout=BATCH_TIMEOUT_S)
        self.model = model

    def setup(self, device: str) -> None:
        from model.onnx_meta import ModelMetadata
        from service.engine.ort import OnnxRuntime

        self.rt = OnnxRuntime(self.model, "cpu", intra_op_threads=1, next_token=False)
        import onnx

        props = {p.key: p.value for p in onnx.load(str(self.model), load_external_data=False).metadata_props}
        self.tokenizer = ModelMetadata.from_props(props).tokenizer
        self.states: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}  # id -> h, c (L, 1, H), position

    # Unannotated on purpose: LitServe reads the annotation to build the route (a dict would become a query
    # parameter); without one it hands over the parsed JSON body.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return str(request["session_id"]), str(request.get("text") or "")

    def _state(self, sid: str) -> tuple[np.ndarray, np.ndarray, int]:
        if sid not in self.states:
            zeros = np.zeros((self.rt.layers, 1, self.rt.hidden), dtype=np.float32)
            self.states[sid] = (zeros, zeros, 0)
        return self.states[sid]

    def _answer(self, sid: str, logits: np.ndarray, position: int) -> dict[str, Any]:
        z = logits.astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        top = np.argsort(-p)[:5]
        return {
            "session_id": sid,
            "position": position,
            "next": [{"token": self.tokenizer.chars[i], "id": int(i), "prob": float(p[i])} for i in top],
        }

    def _one(self, sid: str, text: str) -> dict[str, Any]:
        h, c, pos = self._state(sid)
        ids = self.tokenizer.encode(text)[None]  # (1, T)
        logits, h, c = self.rt.run(ids, h, c)
        self.states[sid] = (h, c, pos + ids.shape[1])
        return self._answer(sid, logits[0, -1], pos + ids.shape[1])

    def predict(self, batch: list[tuple[str, str]]) -> list[dict[str, Any]]:
        sids = [sid for sid, _ in batch]
        if len(batch) == 1 or len(set(sids)) < len(sids) or any(len(text) != 1 for _, text in batch):
            return [self._one(sid, text) for sid, text in batch]
        states = [self._state(sid) for sid in sids]
        h = np.concatenate([s[0] for s in states], axis=1)  # (L, B, H)
        c = np.concatenate([s[1] for s in states], axis=1)
        ids = np.concatenate([self.tokenizer.encode(text) for _, text in batch])[:, None]  # (B, 1)
        logits, h, c = self.rt.run(ids, h, c)
        out = []
        for i, sid in enumerate(sids):
            pos = states[i][2] + 1
            self.states[sid] = (h[:, i : i + 1].copy(), c[:, i : i + 1].copy(), pos)
            out.append(self._answer(sid, logits[i, -1], pos))
        return out

    def batch(self, inputs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return inputs

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    server = ls.LitServer(SessionLSTM(args.model), accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
