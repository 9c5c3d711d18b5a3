"""The playground with API keys on: the page itself is open, asks for a key, shows a refused key inline, works
with the right one, keeps it in sessionStorage only and never in a URL or the server's log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser.conftest import by_testid, idle, js, start_server, wait_for
from tests.e2e.process import ServerProcess

pytestmark = pytest.mark.e2e

KEY = "playground-key-3141592653"
WRONG = "not-the-key-2718281828"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("playground-keys"), "keys", LSTM_SERVE_API_KEYS=KEY)
    yield server
    server.stop()


def test_wrong_key_is_an_inline_error_and_the_right_key_works(browser: Any, server: ServerProcess) -> None:
    for path in ("/", "/playground/static/playground.js", "/playground/summary"):
        assert httpx.get(server.base_url + path).status_code == 200, path  # the page's own routes stay open
    assert httpx.get(server.base_url + "/v1/model").status_code == 401
    browser.get(server.base_url + "/")
    key = by_testid(browser, "api-key")
    wait_for(browser, lambda b: key.is_displayed(), what="the key box")
    error = by_testid(browser, "key-error")
    assert "needs an API key" in error.text

    key.send_keys(WRONG + "\n")
    wait_for(browser, lambda b: "refused" in error.text, what="the refusal")
    assert "401" in error.text and WRONG not in error.text
    assert js(browser, "return sessionStorage.length") == 0
    assert js(browser, "return window.playground.sessionId") is None

    key.clear()
    key.send_keys(KEY + "\n")
    wait_for(browser, lambda b: js(b, "return window.playground.sessionId"), what="a session with the key")
    assert error.text == ""
    assert "shakespeare-lstm" in by_testid(browser, "facts").text
    by_testid(browser, "prompt").send_keys("JULIET:")
    wait_for(browser, lambda b: idle(b) and js(b, "return window.playground.branch.position") == 7, what="predicts")
    assert len(browser.find_elements("css selector", '[data-testid="next-item"]')) == 8
    wait_for(browser, lambda b: js(b, "return window.playground.inspected") == "JULIET:", what="the gates")

    # The key lives in this tab's sessionStorage only, and never in a URL or the server's log.
    assert js(browser, "return Object.values(sessionStorage)") == [KEY]
    assert js(browser, "return localStorage.length") == 0
    urls = [*js(browser, "return performance.getEntriesByType('resource').map(e => e.name)"), browser.current_url]
    assert not [u for u in urls if KEY in u or WRONG in u]
    log = server.log_text()
    assert KEY not in log and WRONG not in log
    # A reload in the same tab keeps working with the stored key.
    browser.refresh()
    wait_for(browser, lambda b: js(b, "return window.playground.sessionId"), what="a session after reload")
    assert not by_testid(browser, "api-key").is_displayed()
