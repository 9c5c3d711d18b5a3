"""The JSON log lines: a line written straight from its fields is the line the formatter writes for the record,
and it is written that way only when the handler is the one place the record would go."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from service.logging import JsonFormatter, JsonLinesHandler, setup_logging, sole_handler

FIELDS = {"method": "POST", "route": "/v1/sessions/{id}/predict", "status": 200, "latency_ms": 0.5, "session_id": "s"}


@contextmanager
def server_logging() -> Iterator[tuple[JsonLinesHandler, io.StringIO]]:
    """The server's logging set up as `serve` sets it up, on a StringIO instead of stderr; restored after. Entered
    in the test itself: pytest puts its capture handlers on the root logger when the test starts, and `setup_logging`
    replaces them, as it replaces whatever a server process had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging("INFO")
    try:
        (handler,) = root.handlers
        assert isinstance(handler, JsonLinesHandler)
        out = io.StringIO()
        handler.setStream(out)
        yield handler, out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_direct_line_is_the_records_line() -> None:
    with server_logging() as (handler, out):
        handler.write(logging.INFO, "service.access", "request", FIELDS)
    log = logging.getLogger("service.access")
    record = log.makeRecord(log.name, logging.INFO, __file__, 1, "request", (), None, "f", dict(FIELDS))
    direct = out.getvalue().splitlines()
    assert len(direct) == 1
    written, formatted = json.loads(direct[0]), json.loads(JsonFormatter().format(record))
    assert list(written) == list(formatted) == ["ts", "level", "logger", "msg", *FIELDS]  # the same keys, in order
    assert {k: v for k, v in written.items() if k != "ts"} == {k: v for k, v in formatted.items() if k != "ts"}
    when = [datetime.fromisoformat(line["ts"]) for line in (written, formatted)]
    assert written["ts"].endswith("Z") and abs((when[1] - when[0]).total_seconds()) < 5


def test_direct_only_where_the_handler_alone_would_write() -> None:
    log = logging.getLogger("service.access")
    assert sole_handler(log, logging.INFO) is None  # pytest's capture handlers are on the root logger
    with server_logging() as (handler, _):
        _check_sole(handler, log)


def _check_sole(handler: JsonLinesHandler, log: logging.Logger) -> None:
    assert sole_handler(log, logging.INFO) is handler
    assert sole_handler(log, logging.DEBUG) is None  # below the level: not written at all
    log.addFilter(lambda record: True)
    try:
        assert sole_handler(log, logging.INFO) is None  # a filter must see the record
    finally:
        log.filters.clear()
    handler.setLevel(logging.WARNING)
    assert sole_handler(log, logging.INFO) is None
    handler.setLevel(logging.NOTSET)
    logging.getLogger().addHandler(second := logging.NullHandler())
    try:
        assert sole_handler(log, logging.INFO) is None  # a second destination (a test's capture, say) sees it too
    finally:
        logging.getLogger().removeHandler(second)
    assert sole_handler(log, logging.INFO) is handler
