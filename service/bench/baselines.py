"""Baselines users would build instead of lstm-serve, measured in the same run.

(a) This module: a plain FastAPI app running the same model in PyTorch eager, one forward per request, the
    sessions' states in a dict. It rebuilds `CharLSTM` from the ONNX file's own weights (undoing the export's
    gate reordering), so both servers compute the same function. Not a strawman: the route is `async` and runs
    the forward inline (no thread hop per request), with one intra-op thread like the product's ONNX Runtime,
    and the plain cell uses PyTorch's fused LSTM kernel.
(b) Stateless serving that re-sends the whole text each time is not a separate app: the load process POSTs the
    growing text to the product's own /v1/predict (service/bench/load.py, job `resend`).

`python -m service.bench.baselines --model PATH --port PORT` serves (a) with the product's uvicorn options.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Response
from onnx import numpy_helper
from pydantic import BaseModel

from model.config import ModelConfig
from model.export import ONNX_GATE_ORDER, ONNX_PEEP_ORDER, reorder_blocks
from model.lstm import CharLSTM
from model.onnx_meta import ModelMetadata
from model.tokenizer import CharTokenizer

# ONNX (i, o, f, c) blocks back to ours (i, f, c, o): the inverse permutation of the export's.
TORCH_GATE_ORDER = tuple(int(i) for i in np.argsort(ONNX_GATE_ORDER))
TORCH_PEEP_ORDER = tuple(int(i) for i in np.argsort(ONNX_PEEP_ORDER))


def torch_model_from_onnx(path: Path) -> tuple[CharLSTM, CharTokenizer]:
    """The exported model as a PyTorch CharLSTM (eval mode), with its tokenizer."""
    proto = onnx.load(str(path))
    meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    cfg: ModelConfig = meta.config
    hid = cfg.hidden_size
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    sd: dict[str, np.ndarray] = {
        "embed.weight": inits["embedding"],
        "head.weight": inits["head_w"].T,
        "head.bias": inits["head_b"],
    }
    for i, node in enumerate(n for n in proto.graph.node if n.op_type == "LSTM"):
        w, r, b = (inits[node.input[k]][0] for k in (1, 2, 3))  # (4H, in), (4H, H), (8H,)
        sd[f"layers.{i}.weight_x"] = reorder_blocks(w, hid, TORCH_GATE_ORDER)
        sd[f"layers.{i}.weight_h"] = reorder_blocks(r, hid, TORCH_GATE_ORDER)
        sd[f"layers.{i}.bias"] = reorder_blocks(b[: 4 * hid] + b[4 * hid :], hid, TORCH_GATE_ORDER)
        peep = np.zeros((0, hid), dtype=np.float32)
        if cfg.peephole:
            peep = inits[node.input[7]][0].reshape(3, hid)[list(TORCH_PEEP_ORDER)]
        sd[f"layers.{i}.peep"] = peep
    model = CharLSTM(cfg)
    model.load_state_dict({k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in sd.items()})
    return model.eval(), meta.tokenizer


class Body(BaseModel):
    text: str | None = None
    top_k: int = 5


def create_app(model_path: Path) -> FastAPI:
    torch.set_num_threads(1)
    model, tokenizer = torch_model_from_onnx(model_path)
    fused = not model.config.peephole
    states: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}  # session id -> h, c (L, 1, H), position
    app = FastAPI(title="PyTorch eager baseline")

    def forward(sid: str, text: str, top_k: int) -> dict[str, Any]:
        h, c, position = states[sid]
        ids = torch.from_numpy(tokenizer.encode(text))[None]  # (1, T)
        with torch.inference_mode():
            logits, h, c = model(ids, h, c, fused=fused)
            probs = torch.softmax(logits[0, -1].double(), dim=0)
            top = torch.topk(probs, min(top_k, probs.shape[0]))
        states[sid] = (h, c, position + ids.shape[1])
        return {
            "session_id": sid,
            "position": position + ids.shape[1],
            "next": [
                {"token": tokenizer.chars[i], "id": i, "prob": p}
                for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            ],
        }

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/sessions", status_code=201)
    async def create(body: Body | None = None) -> dict[str, Any]:
        sid = secrets.token_urlsafe(16)
        h, c = model.zero_state(1)
        states[sid] = (h, c, 0)
        if body is not None and body.text:
            return forward(sid, body.text, body.top_k)
        return {"session_id": sid, "position": 0}

    @app.post("/v1/sessions/{id}/predict")
    async def predict(id: str, body: Body) -> dict[str, Any]:
        if id not in states:
            raise HTTPException(404, "session not found")
        return forward(id, body.text or "", body.top_k)

    @app.delete("/v1/sessions/{id}", status_code=204)
    async def delete(id: str) -> Response:
        states.pop(id, None)
        return Response(status_code=204)

    return app


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    uvicorn.run(
        create_app(args.model),
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
