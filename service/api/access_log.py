"""The one log line per request (`service.access`), written in groups off the request's path.

Each request leaves a tuple here; the lines are formatted and written together at most FLUSH_S later (or once
MAX_PENDING wait), in one write. Formatting and writing a line as the request ended cost the event loop about
15 us of CPU per request on the 2-core benchmark machine (2.6 us in a micro-benchmark: in the server the caches are
cold after every wake-up), and it ran after the response but before the loop could read the next request: with the
lines written in groups, one session's predict p50 went from 645 to 626 us (wrk, one connection, 5 alternating 8 s
runs each).

Each line keeps the time its request ended in `ts` and is the same JSON object as before. When the line would not
go to the server's JSON handler alone (a test's log capture, a second handler; logging.sole_handler), it goes
through logging at once, as any record, after whatever waits. The app's lifespan writes what waits on shutdown; a
killed process loses at most FLUSH_S of access lines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from service.logging import JsonLinesHandler, sole_handler

log = logging.getLogger("service.access")

FLUSH_S = 0.05
MAX_PENDING = 256  # a flush of 256 lines takes the loop about 0.4 ms (in a micro-benchmark): a bounded pause

# (when the request ended, method, route template, status, latency in seconds, session id)
Line = tuple[float, str, str, int, float, str | None]


class AccessLog:
    """The lines that wait, and the timer that writes them; ServiceMiddleware calls `request` once per request."""

    def __init__(
        self, logger: logging.Logger = log, *, flush_s: float | None = None, max_pending: int | None = None
    ) -> None:
        self.logger = logger
        self.flush_s = FLUSH_S if flush_s is None else flush_s
        self.max_pending = MAX_PENDING if max_pending is None else max_pending
        self._pending: list[Line] = []
        self._timer: asyncio.TimerHandle | None = None

    def request(self, method: str, route: str, status: int, elapsed: float, session_id: str | None) -> None:
        """A request ended (called on the event loop)."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        line = (time.time(), method, route, status, elapsed, session_id)
        if sole_handler(self.logger, logging.INFO) is None:  # a capture or a second handler: a record, now
            self.flush()
            self._emit([line])
            return
        self._pending.append(line)
        if len(self._pending) >= self.max_pending:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.flush_s, self.flush)
            except RuntimeError:  # no event loop: nothing would write it later
                self.flush()

    def flush(self) -> None:
        """Write every line that waits."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        handler = sole_handler(self.logger, logging.INFO)
        if handler is None:  # the logging set-up changed since: the records go where logging sends them now
            self._emit(lines)
        else:
            _write(handler, self.logger.name, lines)

    def _emit(self, lines: list[Line]) -> None:
        for line in lines:
            record = self.logger.makeRecord(
                self.logger.name, logging.INFO, __file__, _LINE, "request", (), None, "request", _fields(line)
            )
            record.created, record.msecs = line[0], int((line[0] - int(line[0])) * 1000)
            self.logger.handle(record)


def _fields(line: Line) -> dict[str, Any]:
    _, method, route, status, elapsed, session_id = line
    return {
        "method": method,
        "route": route,
        "status": status,
        "latency_ms": round(elapsed * 1000, 3),
        "session_id": session_id,
    }


def _write(handler: JsonLinesHandler, name: str, lines: list[Line]) -> None:
    handler.write_many(logging.INFO, name, "request", [(line[0], _fields(line)) for line in lines])


# The records are made directly: Logger.info would walk the stack to find its caller (findCaller) for the record's
# file and line, about half of what a line costs; the caller is known, AccessLog.request.
_LINE = AccessLog.request.__code__.co_firstlineno
