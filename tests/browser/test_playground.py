"""The playground page in a real browser against a real server: it loads clean and offline, typing predicts what
the API predicts, Generate streams and Stop stops it exactly, the gates view draws the inspection, bad input is an
inline error; and the README's screenshots are taken here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import by_testid, console_errors, idle, js, screenshot, start_server, wait_for
from tests.e2e.process import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("playground"), "playground")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(browser: Any, server: ServerProcess) -> Any:
    browser.get(server.base_url + "/")
    wait_for(browser, lambda b: js(b, "return window.playground && window.playground.sessionId"), what="a session")
    return browser


def type_text(page: Any, text: str) -> None:
    prompt = by_testid(page, "prompt")
    prompt.send_keys(text)
    wait_for(
        page,
        lambda b: idle(b) and js(b, "return window.playground.branch.consumed") == prompt.get_attribute("value"),
        what="the session to catch up",
    )


def clear_prompt(page: Any) -> None:
    by_testid(page, "reset").click()
    wait_for(page, lambda b: idle(b) and js(b, "return window.playground.branch.position") == 0, what="a reset")


def bars(page: Any) -> list[tuple[str, float]]:
    items = page.find_elements("css selector", '[data-testid="next"] [data-testid="next-item"]')
    return [(i.get_attribute("data-token"), float(i.get_attribute("data-prob"))) for i in items]


def test_page_loads_offline_without_console_errors(page: Any, server: ServerProcess) -> None:
    r = httpx.get(server.base_url + "/")
    assert r.status_code == 200 and "connect-src 'self'" in r.headers["content-security-policy"]
    wait_for(page, lambda b: "layers" in by_testid(b, "facts").text, what="the model facts")
    assert "shakespeare-lstm" in by_testid(page, "facts").text
    # One model served: the picker shows it, with nothing else to choose.
    picker = by_testid(page, "model")
    options = picker.find_elements("css selector", "option")
    assert [o.text for o in options] == ["shakespeare-lstm v1 (default)"] and not picker.is_enabled()
    wait_for(page, lambda b: by_testid(b, "tokens-per-s").text != "–", what="the live counters")
    assert int(by_testid(page, "sessions").text) >= 1
    # Every resource the page fetched came from this server; nothing external was even attempted.
    urls = js(page, "return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(server.base_url) for u in urls), urls
    assert js(page, "return location.href") == server.base_url + "/"
    assert console_errors(page) == []
    # The page's own routes are open and fixed: nothing else of the package is served.
    assert httpx.get(server.base_url + "/playground/static/routes.py").status_code == 404


def test_typing_shows_the_predictions_of_the_api(page: Any, server: ServerProcess) -> None:
    clear_prompt(page)
    type_text(page, "ROMEO:")
    shown = bars(page)
    with server.client() as client:
        sid = client.post("/v1/sessions", json={}).json()["session_id"]
        expected = client.post(f"/v1/sessions/{sid}/predict", json={"text": "ROMEO:", "top_k": len(shown)}).json()
        page_session = client.get(f"/v1/sessions/{js(page, 'return window.playground.sessionId')}").json()
    assert len(shown) == 8
    assert [t for t, _ in shown] == [t["token"] for t in expected["next"]]
    assert [p for _, p in shown] == pytest.approx([t["prob"] for t in expected["next"]], abs=1e-6)
    assert page_session["position"] == 6
    # Keystrokes went out as they came, only the new characters each time: those typed while a request was in
    # flight go together in the next one (so 2 to 6 predicts here, never a replay of the whole text).
    logs = [e for e in server.logs() if e.get("route") == "/v1/sessions/{id}/predict"]
    assert 2 <= len(logs) <= 6
    assert not [e for e in server.logs() if e.get("route") == "/v1/sessions/{id}/reset"][1:]  # only clear_prompt's
    assert console_errors(page) == []


def test_gates_view_draws_the_inspection(page: Any) -> None:
    wait_for(page, lambda b: js(b, "return window.playground.inspected") == "ROMEO:", what="the inspection")
    gates = by_testid(page, "gates")
    canvases = gates.find_elements("css selector", "canvas")
    assert len(canvases) == 2  # one per layer
    # Painted: the heatmap area is not blank.
    colours = js(
        page,
        """const c = arguments[0]; const x = c.getContext('2d').getImageData(70, 30, c.width - 80, 40).data;
        const seen = new Set(); for (let i = 0; i < x.length; i += 4) seen.add(x[i] + ',' + x[i+1] + ',' + x[i+2]);
        return seen.size;""",
        canvases[1],
    )
    assert colours > 5
    spans = by_testid(page, "unit-text").find_elements("css selector", ".coloured span")
    assert "".join(s.text for s in spans) == "ROMEO:"
    options = by_testid(page, "unit").find_elements("css selector", "option")
    assert len(options) == 24  # 12 units per layer
    layer, unit = options[5].get_attribute("value").split(":")
    options[5].click()  # the picker is an ordinary <select>: keyboard and screen readers work with it
    assert f"layer {int(layer) + 1}, unit {unit}," in by_testid(page, "unit-text").text


def test_generate_streams_and_stop_keeps_exactly_what_is_shown(page: Any, server: ServerProcess) -> None:
    for testid, value in (("max-tokens", "1000"), ("temperature", "0.8"), ("seed", "11")):
        field = by_testid(page, testid)
        field.clear()
        field.send_keys(value)
    by_testid(page, "generate").click()
    output = by_testid(page, "output")
    wait_for(page, lambda b: len(output.text) >= 50, what="50 streamed characters")
    by_testid(page, "stop").click()
    wait_for(page, lambda b: idle(b) and "stopped" in by_testid(b, "generate-status").text, what="the stop")
    shown = js(page, "return document.querySelector('[data-testid=output]').textContent")
    assert 50 <= len(shown) < 1000
    time.sleep(0.3)
    assert js(page, "return document.querySelector('[data-testid=output]').textContent") == shown
    # The session holds exactly the prompt and the characters shown: same position, same next distribution.
    sid = js(page, "return window.playground.sessionId")
    with server.client() as client:
        assert client.get(f"/v1/sessions/{sid}").json()["position"] == len("ROMEO:") + len(shown)
        mine = client.post(f"/v1/sessions/{sid}/predict", json={"text": "\n", "top_k": 3}).json()["next"]
        fresh = client.post("/v1/predict", json={"text": "ROMEO:" + shown + "\n", "top_k": 3}).json()["next"]
    assert [t["token"] for t in mine] == [t["token"] for t in fresh]
    assert [t["prob"] for t in mine] == pytest.approx([t["prob"] for t in fresh], abs=1e-4)
    assert console_errors(page) == []


def test_invalid_character_is_an_inline_error_and_deleting_replays(page: Any) -> None:
    clear_prompt(page)
    type_text(page, "To be")
    by_testid(page, "prompt").send_keys("é")
    error = by_testid(page, "error")
    wait_for(page, lambda b: "invalid_token" in error.text, what="the inline error")
    assert "é" in error.text
    by_testid(page, "prompt").send_keys("\b\b")  # delete the bad character and the 'e' before it
    wait_for(page, lambda b: idle(b) and error.text == "", what="the error to clear")
    branch = js(page, "return window.playground.branch")
    assert (branch["consumed"], branch["position"]) == ("To b", 4)
    console_errors(page)  # the 422 is logged by the browser as a failed request: expected here


def test_fork_makes_a_branch(page: Any, server: ServerProcess) -> None:
    before = js(page, "return window.playground.sessionId")
    by_testid(page, "fork").click()
    wait_for(page, lambda b: js(b, "return window.playground.sessionId") != before, what="the fork")
    after = js(page, "return window.playground.sessionId")
    with server.client() as client:
        assert client.get(f"/v1/sessions/{after}").json()["position"] == 4
    assert len(by_testid(page, "branches").find_elements("css selector", "option")) == 2


def test_screenshots(page: Any, server: ServerProcess) -> None:
    """The README's pictures: typed text, a finished generation and the gates view, at 1440 and 375 px."""
    page.get(server.base_url + "/")
    wait_for(page, lambda b: js(b, "return window.playground && window.playground.sessionId"), what="a session")
    type_text(page, "ROMEO:\n")
    for testid, value in (("max-tokens", "90"), ("temperature", "0.6"), ("seed", "7")):
        field = by_testid(page, testid)
        field.clear()
        field.send_keys(value)
    by_testid(page, "generate").click()
    wait_for(page, lambda b: idle(b) and "max tokens" in by_testid(b, "generate-status").text, what="the generation")
    wait_for(
        page,
        lambda b: js(b, "return window.playground.inspected") == "ROMEO:\n" + by_testid(b, "output").text,
        what="the gates of the generated text",
    )
    big: Path = screenshot(page, "playground-1440.png", 1440)
    small: Path = screenshot(page, "playground-375.png", 375)
    assert big.stat().st_size > 20_000 and small.stat().st_size > 10_000
    assert console_errors(page) == []
