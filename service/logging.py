"""Structured logging: one JSON object per line on stderr, with whatever `extra` fields a call passes."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into the JSON.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}  # uvicorn: ANSI copy


def _default(value: object) -> str:
    return str(value)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1  # the second `_prefix` was formatted for: a line per request makes many per second
        self._prefix = ""

    def _ts(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:  # formatting runs under the handler's lock: one thread at a time
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return self.line(record.created, record.msecs, record.levelname, record.name, record.getMessage(), fields)

    def line(self, created: float, msecs: float, level: str, name: str, msg: str, fields: dict[str, Any]) -> str:
        """The JSON object of one line: ts, level, logger and msg first, then the fields in their order."""
        entry: dict[str, Any] = {"ts": self._ts(created, msecs), "level": level.lower(), "logger": name, "msg": msg}
        entry.update(fields)
        return orjson.dumps(entry, default=_default).decode()


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The server's handler: JSON lines on a stream, with uvicorn's records made safe (ServerLogFilter).

    `write` puts a line straight from its fields, without a LogRecord, and `write_many` several in one write, for
    the one line every request logs (service/api/access_log.py): making the record and passing it through the logger
    tree and the handler's filter cost the event loop about as much as formatting and writing it. `sole_handler`
    says when that is the same as logging it.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.json = JsonFormatter()
        self.setFormatter(self.json)
        self.addFilter(ServerLogFilter())  # it passes every record not from uvicorn: `write` is never for those

    def write(self, level: int, name: str, msg: str, fields: dict[str, Any]) -> None:
        """One line, as `format` would write a record of `name` at `level` whose extra fields are `fields`."""
        self.write_many(level, name, msg, [(time.time(), fields)])

    def write_many(self, level: int, name: str, msg: str, lines: list[tuple[float, dict[str, Any]]]) -> None:
        """`write` for several lines at once, each made at its own time (time.time()), in one write to the stream."""
        level_name = logging.getLevelName(level)
        parts: list[str] = []
        for created, fields in lines:
            msecs = int((created - int(created)) * 1000)  # as LogRecord computes it
            parts.append(self.json.line(created, msecs, level_name, name, msg, fields) + self.terminator)
        with self.lock:  # type: ignore[union-attr]
            self.stream.write("".join(parts))
            self.flush()


def sole_handler(logger: logging.Logger, level: int) -> JsonLinesHandler | None:
    """The JsonLinesHandler that alone would write a record of `logger` at `level`, with no filter but its own;
    None when the record would not be written, or would also go elsewhere (a test's capture, a second handler)."""
    if not logger.isEnabledFor(level) or logger.disabled or logger.filters:
        return None
    found: JsonLinesHandler | None = None
    node: logging.Logger | None = logger
    while node is not None:  # the loggers whose handlers see the record (Logger.callHandlers)
        for handler in node.handlers:
            if found is not None or not isinstance(handler, JsonLinesHandler):
                return None
            found = handler
        node = node.parent if node.propagate else None
    if found is None or level < found.level or len(found.filters) != 1:
        return None
    return found


class PlainFormatter(logging.Formatter):
    """For humans at a terminal: the message, then the extra fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_"))
        return f"{base} {extras}" if extras else base


# uvicorn logs every WebSocket handshake as '<client> - "WebSocket <path>?<query>" <status>' at INFO.
_HANDSHAKE = '"WebSocket %s"'
# uvicorn's websockets-sansio and wsproto protocols log this at ERROR whenever the app answers a handshake with an
# HTTP response (the ASGI websocket.http.response extension), which is how refused handshakes are answered 401.
_REFUSED_HANDSHAKE = "ASGI callable returned without completing handshake."


def without_query(target: object) -> object:
    """A URL or path with its query string cut off: queries may carry keys or tokens (`?token=...`)."""
    if isinstance(target, str) and "?" in target:
        return target.split("?", 1)[0] + "?[redacted]"
    return target


class ServerLogFilter(logging.Filter):
    """What the HTTP server logs, made safe: WebSocket URLs without their query strings, and no ERROR line for a
    handshake the app refused on purpose (AccessControl logs those itself, at INFO and rate-limited)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("uvicorn"):
            return True
        if record.msg == _REFUSED_HANDSHAKE:
            return False
        if isinstance(record.msg, str) and _HANDSHAKE in record.msg and isinstance(record.args, tuple):
            record.args = tuple(without_query(a) for a in record.args)
        return True


class EveryInterval:
    """At most one log line per `interval_s`, telling how many were held back: for events any anonymous client can
    cause at will (refused WebSocket handshakes), so they cannot flood the log."""

    def __init__(self, interval_s: float = 10.0, clock: Any = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._next = 0.0
        self._held = 0

    def due(self) -> int | None:
        """None while within the interval (the event is counted); else how many were held back since the last."""
        now = self._clock()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.interval_s
        return held


def setup_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Route our loggers and uvicorn's through one stderr handler with the chosen format."""
    handler: logging.Handler
    if json_lines:
        handler = JsonLinesHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(ServerLogFilter())
        handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # No line shows the thread or process a record came from: skip looking them up for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # One line per request comes from our middleware; uvicorn's own access log would be a second one.
    logging.getLogger("uvicorn.access").disabled = True
