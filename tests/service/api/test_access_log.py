"""The access line of every request, written in groups: the same lines as one at a time, each with its request's
time, in order with records that go through logging at once, and none lost on shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime

import pytest

from service.api import access_log
from service.api.access_log import AccessLog
from tests.service.conftest import AppFactory
from tests.service.test_logging import FIELDS, server_logging

ROUTE = "/v1/sessions/{id}/predict"


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def access_lines(text: str) -> list[dict[str, object]]:
    return [line for line in lines(text) if line["logger"] == "service.access"]


async def test_lines_wait_then_go_in_one_write_each_with_its_own_time() -> None:
    with server_logging() as (handler, out):
        log = AccessLog(flush_s=60)
        writes: list[str] = []
        write = out.write

        def counted(text: str) -> int:
            writes.append(text)
            return write(text)

        out.write = counted  # type: ignore[method-assign]
        log.request("POST", ROUTE, 200, 0.0005, "s")
        await asyncio.sleep(0.02)
        log.request("GET", "/v1/sessions/{id}", 404, 0.25, "t")
        assert out.getvalue() == ""  # nothing written yet
        log.flush()
        log.flush()  # nothing left: nothing more
        handler.write(logging.INFO, "service.access", "request", FIELDS)
    first, second, direct = lines(out.getvalue())
    assert len(writes) == 2  # the two waiting lines in one write, then the direct line
    assert list(first) == list(direct) == ["ts", "level", "logger", "msg", *FIELDS]  # the shape of a direct line
    assert {k: v for k, v in first.items() if k != "ts"} == {k: v for k, v in direct.items() if k != "ts"}
    assert second["route"] == "/v1/sessions/{id}" and second["status"] == 404 and second["latency_ms"] == 250.0
    when = [datetime.fromisoformat(str(line["ts"])) for line in (first, second)]
    assert (when[1] - when[0]).total_seconds() >= 0.015  # each line keeps the time its request ended


async def test_the_timer_writes_them() -> None:
    with server_logging() as (_, out):
        log = AccessLog(flush_s=0.01)
        log.request("POST", ROUTE, 200, 0.001, "s")
        assert out.getvalue() == ""
        for _ in range(200):
            await asyncio.sleep(0.01)
            if out.getvalue():
                break
    assert [line["session_id"] for line in lines(out.getvalue())] == ["s"]


async def test_a_full_group_is_written_at_once() -> None:
    with server_logging() as (_, out):
        log = AccessLog(flush_s=60, max_pending=3)
        for i in range(2):
            log.request("POST", ROUTE, 200, 0.001, f"s{i}")
        assert out.getvalue() == ""
        log.request("POST", ROUTE, 200, 0.001, "s2")
        assert [line["session_id"] for line in lines(out.getvalue())] == ["s0", "s1", "s2"]


def test_without_an_event_loop_a_line_is_written_at_once() -> None:
    with server_logging() as (_, out):
        AccessLog(flush_s=60).request("POST", ROUTE, 200, 0.001, "s")
        assert [line["session_id"] for line in lines(out.getvalue())] == ["s"]


async def test_a_capture_gets_records_at_once_after_what_waits(caplog: pytest.LogCaptureFixture) -> None:
    log = AccessLog(flush_s=60)
    with server_logging() as (_, out):
        log.request("POST", ROUTE, 200, 0.001, "waiting")
        logging.getLogger().addHandler(caplog.handler)  # a second destination: lines go through logging now
        try:
            log.request("POST", ROUTE, 201, 0.002, "captured")
        finally:
            logging.getLogger().removeHandler(caplog.handler)
    assert [r.session_id for r in caplog.records] == ["waiting", "captured"]  # type: ignore[attr-defined]
    assert [line["session_id"] for line in lines(out.getvalue())] == ["waiting", "captured"]
    record = caplog.records[1]
    assert record.name == "service.access" and record.getMessage() == "request"
    assert {k: getattr(record, k) for k in FIELDS} == {
        "method": "POST",
        "route": ROUTE,
        "status": 201,
        "latency_ms": 2.0,
        "session_id": "captured",
    }


async def test_lines_that_waited_through_a_change_of_set_up_go_where_logging_sends_them_now(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = AccessLog(flush_s=60)
    with server_logging() as (_, out):
        log.request("POST", ROUTE, 200, 0.001, "s")
    with caplog.at_level(logging.INFO, logger="service.access"):
        log.flush()
    assert out.getvalue() == ""
    assert [r.session_id for r in caplog.records] == ["s"]  # type: ignore[attr-defined]


async def test_nothing_below_the_level() -> None:
    with server_logging() as (_, out):
        logging.getLogger().setLevel(logging.WARNING)
        log = AccessLog(flush_s=60)
        log.request("POST", ROUTE, 200, 0.001, "s")
        log.flush()
    assert out.getvalue() == ""


async def test_the_app_writes_what_waits_on_shutdown(app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_log, "FLUSH_S", 3600.0)  # only the shutdown can write it
    with server_logging() as (_, out):
        async with app_factory() as client:
            sid = (await client.post("/v1/sessions", json={})).json()["session_id"]
            assert (await client.post(f"/v1/sessions/{sid}/predict", json={"text": "hi"})).status_code == 200
            assert access_lines(out.getvalue()) == []
        written = access_lines(out.getvalue())
    assert [(line["route"], line["status"], line["session_id"]) for line in written] == [
        ("/v1/sessions", 201, sid),
        (ROUTE, 200, sid),
    ]
