"""A minimal HTTP/1.1 keep-alive client over asyncio streams, for the load process.

httpx costs about as much CPU per request as the server's own route on this 2-core machine (measured in the
bench's `client` figure), and the load process shares those cores with the server under test, so the load
uses this lean client: one connection per simulated user, Content-Length and chunked bodies, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson


class HttpError(RuntimeError):
    """A response the load did not expect (non-2xx where success was needed, or a broken message)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class Connection:
    """One keep-alive connection; requests on it run one after another, as one user's would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host
        self._port = port

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        return cls(reader, writer, host, port)

    async def _start(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[bytes, bytes]]:
        """Send a request and read its head. A keep-alive connection the server closed while it sat idle (uvicorn
        closes them after 5 s, e.g. while hundreds of other users are still being set up) is reopened and the
        request sent again, as HTTP clients do, but only when not a byte of the answer had arrived."""
        for attempt in (0, 1):
            try:
                self._send(method, path, body)
                return await self._head()
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                if attempt or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                    raise
                await self.close()
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port, limit=1 << 22)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    def _send(self, method: str, path: str, body: bytes | None) -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + (body or b""))

    async def _head(self) -> tuple[int, dict[bytes, bytes]]:
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw[:-4].split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _chunks(self, headers: dict[bytes, bytes]) -> AsyncIterator[bytes]:
        """The body as it arrives: one piece per HTTP chunk, or the whole Content-Length body."""
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                size = int((await self._reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await self._reader.readuntil(b"\r\n")  # no trailers are sent by uvicorn
                    return
                data = await self._reader.readexactly(size + 2)
                yield data[:-2]
        else:
            length = int(headers.get(b"content-length", b"0"))
            if length:
                yield await self._reader.readexactly(length)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        status, headers = await self._start(method, path, body)
        return status, b"".join([piece async for piece in self._chunks(headers)])

    async def json(self, method: str, path: str, payload: Any = None) -> Any:
        """Send JSON, expect 2xx, return the decoded body (None for an empty one)."""
        status, body = await self.request(method, path, None if payload is None else orjson.dumps(payload))
        if not 200 <= status < 300:
            raise HttpError(status, body)
        return orjson.loads(body) if body else None

    async def stream(self, path: str, payload: Any) -> tuple[int, AsyncIterator[bytes]]:
        """POST and return the status with the body's pieces as they arrive (read them all before the next call)."""
        status, headers = await self._start("POST", path, orjson.dumps(payload))
        return status, self._chunks(headers)


class HttpxConnection:
    """The same calls through httpx.AsyncClient, to measure what the lean client saves (the `client` figure)."""

    def __init__(self, host: str, port: int) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            base_url=f"http://{host}:{port}", timeout=60.0, limits=httpx.Limits(max_connections=1)
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else None
        response = await self._client.request(method, path, content=body, headers=headers)
        return response.status_code, response.content

    async def json(self, method: str, path: str, payload: Any = None) -> Any:
        status, body = await self.request(method, path, None if payload is None else orjson.dumps(payload))
        if not 200 <= status < 300:
            raise HttpError(status, body)
        return orjson.loads(body) if body else None


async def open_connection(host: str, port: int, client: str = "raw") -> Connection | HttpxConnection:
    """A connection of the lean client ("raw") or of httpx ("httpx")."""
    if client == "httpx":
        return HttpxConnection(host, port)
    return await Connection.open(host, port)
