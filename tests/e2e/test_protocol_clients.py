"""Real clients against a real server process over TCP: tritonclient.http (sequences, binary tensors, its
defaults), the official openai client (streamed completions), service.client (sessions and SSE), a WebSocket, and
an SSE client that disconnects midway."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from websockets.sync.client import connect

from service.client import Client, SSEDecoder

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-test-lstm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m service` on a free loopback port; yields host:port."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "--model-path",
                str(tiny_model_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--provider",
                "cpu",
                "--max-batch-size",
                "64",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready:\n" + log_path.read_text()
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits.astype(np.float64) - logits.max())
    probs: np.ndarray = z / z.sum()
    return probs


def test_tritonclient_sequence_equals_session_predict(server: str) -> None:
    text = "ROMEO:\nBut soft, what light"
    pieces = [text[:7], text[7:16], text[16:]]
    with Client(f"http://{server}") as lstm:
        vocab = lstm.model()["vocabulary"]
        ids = [vocab.index(ch) for ch in text]
        client = triton.InferenceServerClient(url=server)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        metadata = client.get_model_metadata(MODEL)
        assert metadata["inputs"][0]["name"] == "input_ids" and metadata["outputs"][0]["shape"] == [-1, 76]
        with lstm.create_session() as session:
            start = 0
            for n, piece in enumerate(pieces):
                tensor = triton.InferInput("input_ids", [1, len(piece)], "INT64")
                tensor.set_data_from_numpy(np.array([ids[start : start + len(piece)]], dtype=np.int64))
                start += len(piece)
                # tritonclient's defaults: binary input tensors, binary outputs (none named).
                result = client.infer(
                    MODEL, [tensor], sequence_id=1234, sequence_start=n == 0, sequence_end=n == len(pieces) - 1
                )
                logits = result.as_numpy("logits")
                assert logits.shape == (1, 76) and logits.dtype == np.float32
                predicted = session.predict(piece, top_k=76)
                probs = np.zeros(76)
                for t in predicted.next:
                    probs[t.id] = t.prob
                np.testing.assert_allclose(softmax(logits[0]), probs, atol=1e-6)
        # The sequence has ended: continuing it is refused with a clear message.
        tensor = triton.InferInput("input_ids", [1, 1], "INT64")
        tensor.set_data_from_numpy(np.array([[1]], dtype=np.int64))
        with pytest.raises(triton.InferenceServerException, match="sequence_start"):
            client.infer(MODEL, [tensor], sequence_id=1234)
        # Stateless rows, JSON tensors this time.
        rows = triton.InferInput("input_ids", [2, 3], "INT64")
        rows.set_data_from_numpy(np.array([ids[:3], ids[3:6]], dtype=np.int64), binary_data=False)
        out = client.infer(MODEL, [rows], outputs=[triton.InferRequestedOutput("logits", binary_data=False)])
        assert out.as_numpy("logits").shape == (2, 76)
        client.close()


def test_openai_client_streams_a_completion(server: str) -> None:
    client = openai.OpenAI(base_url=f"http://{server}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == [MODEL]
    whole = client.completions.create(model=MODEL, prompt="ROMEO:\n", max_tokens=30, temperature=0.8, seed=11)
    stream = client.completions.create(
        model=MODEL, prompt="ROMEO:\n", max_tokens=30, temperature=0.8, seed=11, stream=True
    )
    chunks = list(stream)
    assert len(chunks) > 1 and chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert whole.usage is not None and whole.usage.completion_tokens == 30
    # session_id continues a session instead of starting fresh.
    with Client(f"http://{server}") as lstm, lstm.create_session(text="ROMEO:") as session:
        continued = client.completions.create(
            model=MODEL,
            prompt="\n",
            max_tokens=30,
            temperature=0.8,
            seed=11,
            stream=True,
            extra_body={"session_id": session.id},
        )
        assert "".join(c.choices[0].text for c in continued) == whole.choices[0].text
        assert session.info().position == len("ROMEO:\n") + 30
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="a", max_tokens=1)
    client.close()


def test_python_client_over_tcp(server: str) -> None:
    with Client(f"http://{server}") as lstm, lstm.create_session(text="To be, or not") as session:
        stream = session.stream(max_tokens=20, temperature=0.9, seed=5)
        events = list(stream)
        assert stream.result is not None and stream.result.text == "".join(e.token for e in events)
        assert session.position == 13 + 20
        with session.fork() as fork:
            assert fork.generate(max_tokens=8, temperature=0) == session.generate(max_tokens=8, temperature=0)


def test_sse_client_that_disconnects_stops_the_generation(server: str) -> None:
    with Client(f"http://{server}") as lstm, lstm.create_session(text="ROMEO:\n") as session:
        received: list[dict[str, object]] = []
        with httpx.stream(
            "POST",
            f"http://{server}/v1/sessions/{session.id}/generate",
            json={"max_tokens": 1000, "temperature": 0, "stream": True},
        ) as response:
            decoder = SSEDecoder()
            for chunk in response.iter_raw():
                received += [json.loads(e.data) for e in decoder.feed(chunk)]
                if len(received) >= 3:
                    break
        # The server stops at once: it may have sent a few more events than were read, never the whole 1000.
        position, previous = session.info().position, -1
        while position != previous:  # settled: the generation has ended
            time.sleep(0.05)
            position, previous = session.info().position, position
        assert 7 + 3 <= position < 7 + 1000
        # What the session kept is a prefix of the generation, and its state is exactly that prefix's.
        kept = httpx.post(
            f"http://{server}/v1/generate", json={"text": "ROMEO:\n", "max_tokens": position - 7, "temperature": 0}
        ).json()["text"]
        assert kept.startswith("".join(str(e["token"]) for e in received[:3]))
        after = session.predict("a", top_k=5)
        whole = lstm.predict("ROMEO:\n" + kept + "a", top_k=5)
        assert [t.id for t in after.next] == [t.id for t in whole.next]


def test_websocket_stream(server: str) -> None:
    with Client(f"http://{server}") as lstm, lstm.create_session(text="ROMEO:\n") as session:
        with connect(f"ws://{server}/v1/sessions/{session.id}/stream") as ws:
            ws.send(json.dumps({"text": "But"}))
            assert json.loads(ws.recv())["position"] == 10
            ws.send("{broken")
            assert json.loads(ws.recv())["error"]["code"] == "invalid_request"
            ws.send(json.dumps({"generate": {"max_tokens": 5, "temperature": 0}}))
            frames = [json.loads(ws.recv()) for _ in range(6)]
        assert frames[-1]["position"] == 15 and frames[-1]["text"] == "".join(f["token"] for f in frames[:5])
        assert session.info().position == 15
