"""A Python client for the lstm-serve HTTP API, synchronous (`Client`) and asynchronous (`AsyncClient`).

    from lstm_serve_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        print(client.predict(text="To be, or not to ").next[0].token)
        with client.create_session(text="ROMEO:\\n") as session:  # deleted again on leaving the block
            stream = session.stream(max_tokens=200, temperature=0.8, seed=1)
            for event in stream:
                print(event.token, end="", flush=True)
            print(stream.result)  # Generation(text=..., tokens=[...], finish_reason="length", position=...)

`AsyncClient` mirrors it: `async with AsyncClient(url) as client:`, `async with client.create_session() as s:`
(or `s = await client.create_session()`), `await s.generate(...)`, `async for event in s.stream(...)`.

Every non-2xx answer raises `LstmServeError` carrying the server's error code; so does an error event in the
middle of a stream. Network failures surface as httpx's own exceptions (httpx.TransportError).

The modules: `errors` (LstmServeError), `results` (what calls return), `sse` (the event-stream decoder),
`sync_client` and `async_client` (the I/O of each client); the requests and the reading of responses live once,
in `_requests`, shared by both clients.
"""

from ._requests import DEFAULT_TIMEOUT
from .async_client import AsyncClient, AsyncSession, AsyncTokenStream, PendingSession
from .errors import LstmServeError, error_from_body, error_from_response
from .results import Generation, NextToken, Prediction, SessionInfo, TokenEvent
from .sse import ServerSentEvent, SSEDecoder
from .sync_client import Client, Session, TokenStream

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "AsyncSession",
    "AsyncTokenStream",
    "Client",
    "Generation",
    "LstmServeError",
    "NextToken",
    "PendingSession",
    "Prediction",
    "SSEDecoder",
    "ServerSentEvent",
    "Session",
    "SessionInfo",
    "TokenEvent",
    "TokenStream",
    "error_from_body",
    "error_from_response",
]
