"""The playground's model picker against a real server on a model repository of two tiny models with different
vocabularies: picking the second model moves the page to a session on it (the box's text replayed), the bars are
that model's predictions, the facts name it, and the gates view inspects it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import by_testid, console_errors, idle, js, wait_for
from tests.e2e.process import ServerProcess
from tests.service.test_registry import export_version

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("playground-models")
    repo = workdir / "repo"
    export_version(repo, "plays", 1, seed=1)  # the bundled model's alphabet: 2 layers of 16 units
    export_version(repo, "small", 1, seed=2, small=True)  # lower case only: 1 layer of 12 units
    env = {"LSTM_SERVE_MODEL_REPOSITORY": str(repo), "LSTM_SERVE_DEFAULT_MODEL": "plays"}
    server = ServerProcess(None, workdir, "models", env=env).start()  # the model repository, no --model-path
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def bars(page: Any) -> list[tuple[str, float]]:
    items = page.find_elements("css selector", '[data-testid="next"] [data-testid="next-item"]')
    return [(i.get_attribute("data-token"), float(i.get_attribute("data-prob"))) for i in items]


def test_picking_a_model_moves_the_page_to_it(browser: Any, server: ServerProcess) -> None:
    from selenium.webdriver.support.ui import Select

    browser.get("about:blank")
    console_errors(browser)  # empty the log of what an earlier module's page left there (its server is gone)
    browser.get(server.base_url + "/")
    wait_for(browser, lambda b: js(b, "return window.playground && window.playground.sessionId"), what="a session")
    facts = by_testid(browser, "facts")
    wait_for(browser, lambda b: "plays v1" in facts.text and "2 layers" in facts.text, what="the default's facts")
    picker = Select(by_testid(browser, "model"))
    wait_for(browser, lambda b: len(picker.options) == 2, what="the picker's entries")
    assert [o.text for o in picker.options] == ["plays v1 (default)", "small v1"]
    assert picker.first_selected_option.text == "plays v1 (default)"
    assert js(browser, "return window.playground.model") == {"name": "plays", "version": "1"}

    prompt = by_testid(browser, "prompt")
    prompt.send_keys("hello")
    wait_for(browser, lambda b: idle(b) and js(b, "return window.playground.branch.position") == 5, what="predicts")
    first_session = js(browser, "return window.playground.sessionId")

    # Pick the second model: a new session on it replays the box's text, then typing goes on there.
    picker.select_by_visible_text("small v1")
    wait_for(
        browser,
        lambda b: idle(b) and js(b, "return window.playground.model") == {"name": "small", "version": "1"},
        what="a session on the small model",
    )
    wait_for(browser, lambda b: js(b, "return window.playground.branch.position") == 5, what="the replay")
    prompt.send_keys(" wor")
    wait_for(
        browser,
        lambda b: idle(b) and js(b, "return window.playground.branch.consumed") == "hello wor",
        what="the session to catch up",
    )
    sid = js(browser, "return window.playground.sessionId")
    assert sid != first_session
    shown = bars(browser)
    with server.client() as client:
        info = client.get(f"/v1/sessions/{sid}").json()
        assert (info["model"], info["version"], info["position"]) == ("small", "1", 9)
        fresh = client.post("/v1/sessions", json={"model": "small"}).json()["session_id"]
        expected = client.post(f"/v1/sessions/{fresh}/predict", json={"text": "hello wor", "top_k": len(shown)})
        small_vocab = client.get("/v1/model", params={"model": "small"}).json()["vocabulary"]
    assert len(shown) == 8
    assert [t for t, _ in shown] == [t["token"] for t in expected.json()["next"]]
    assert [p for _, p in shown] == pytest.approx([t["prob"] for t in expected.json()["next"]], abs=1e-6)
    assert {t for t, _ in shown} <= set(small_vocab)

    # The facts panel names the chosen model and shows its shape; the gates view inspects it (one layer).
    wait_for(browser, lambda b: "small v1" in facts.text, what="the small model's facts")
    assert "1 layer × 12 units" in facts.text and f"{len(small_vocab)} characters" in facts.text
    wait_for(browser, lambda b: js(b, "return window.playground.inspected") == "hello wor", what="the gates")
    assert len(by_testid(browser, "gates").find_elements("css selector", "canvas")) == 1
    # The first branch stays, on its own model, and the branch selector says which is which.
    branches = [o.text for o in Select(by_testid(browser, "branches")).options]
    assert branches == ["main (plays v1)", "small v1"]
    assert console_errors(browser) == []
