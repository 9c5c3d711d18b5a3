"""Connection limits the HTTP server itself lacks: a header-read timeout, a cap on open connections, and the
open-files limit raised at start.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a connection that has sent part of a
request line or of its headers (or nothing at all) is kept forever: thousands of them exhaust the process's file
descriptors. `guarded_protocol` wraps uvicorn's HTTP protocol class (httptools, or h11 without it) so that:

- a connection that has not completed a request's headers `header_timeout_s` after it opened, or after the first
  byte of its next request on a kept-alive connection, is closed;
- a connection beyond `max_connections` open ones (HTTP and WebSocket together) is answered at once with
  503 `too_many_connections` in the service's error shape and closed, before a byte of it is read;
- a request the HTTP parser refuses is answered 400 `invalid_request` in the service's error shape (uvicorn's own
  answer is plain text), then closed.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import orjson

log = logging.getLogger(__name__)

FALLBACK_FILES = 1 << 20  # the soft limit asked for when the hard limit is unlimited


def refusal_bytes(max_connections: int) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "code": "too_many_connections",
                "message": f"the server holds its maximum of {max_connections} open connections; retry shortly",
                "details": {"max_connections": max_connections},
            }
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def malformed_bytes(message: str) -> bytes:
    body = orjson.dumps({"error": {"code": "invalid_request", "message": f"malformed HTTP request: {message}"}})
    head = (
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def guarded_protocol(base: type[asyncio.Protocol], header_timeout_s: float, max_connections: int) -> type[Any]:
    """A subclass of uvicorn's HTTP protocol class `base` with the header timeout and the connection cap."""
    refusal = refusal_bytes(max_connections)

    class GuardedHTTPProtocol(base):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None
        _awaiting: object = None  # the request cycle current when the timer was armed

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if max_connections and len(self.connections) > max_connections:
                transport.write(refusal)  # type: ignore[attr-defined]
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            starting = self._header_timer is None and (cycle is None or cycle.response_complete)
            if starting:  # the first bytes of the next request on a kept-alive connection
                self._awaiting = cycle
            super().data_received(data)
            if self._headers_done():
                self._disarm()
            elif starting and not self.transport.is_closing():  # armed only when the headers did not all come
                self._arm()  # with these bytes: the usual request costs no timer to make and cancel

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            # What the HTTP parser refuses (a bad Content-Length, Content-Length with Transfer-Encoding, a NUL in a
            # header, not HTTP at all) never reaches the app: answer it in the service's error shape all the same.
            self.transport.write(malformed_bytes(msg))
            self.transport.close()

        def _headers_done(self) -> bool:
            # A new request cycle starts when its headers are complete; an upgrade hands the transport over to
            # the WebSocket protocol.
            return self.cycle is not self._awaiting or self.transport.get_protocol() is not self

        def _arm(self) -> None:
            self._disarm()
            self._awaiting = self.cycle
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and not self._headers_done():
                self.transport.close()

    GuardedHTTPProtocol.__name__ = GuardedHTTPProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedHTTPProtocol


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where the OS allows; -> the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FALLBACK_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit", extra={"soft": soft, "hard": hard, "error": str(exc)})
    return soft
