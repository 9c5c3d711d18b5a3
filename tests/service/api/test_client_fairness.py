"""Fairness without API keys: sessions counted per client (peer address, or the X-Forwarded-For hop behind a
trusted proxy), 429 too_many_sessions with details.per_client, and capacity eviction that takes the sessions of the
client over its share first. The victim scenario: a client holding 3 idle sessions while another floods."""

from __future__ import annotations

from typing import Any

import pytest

from service.security.clients import client_address, client_tag, is_client_tag, parse_networks
from service.session_ids import owner_of
from tests.service.conftest import AppClient, AppFactory

PROXY = {"trusted_proxies": "127.0.0.1"}  # the in-process client's peer address plays the proxy
VICTIM = {"X-Forwarded-For": "203.0.113.7"}
FLOODER = {"X-Forwarded-For": "198.51.100.9"}
OTHER = {"X-Forwarded-For": "192.0.2.44, 198.51.100.200"}  # a client behind a second (untrusted) proxy


async def create(client: AppClient, headers: dict[str, str]) -> Any:
    return await client.post("/v1/sessions", json={"text": "ab"}, headers=headers)


async def victim_sessions(client: AppClient) -> list[str]:
    sessions = []
    for _ in range(3):
        r = await create(client, VICTIM)
        assert r.status_code == 201, r.text
        sessions.append(r.json()["session_id"])
    return sessions


async def test_a_flooding_client_gets_429_per_client_and_the_victim_keeps_its_sessions(
    app_factory: AppFactory,
) -> None:
    async with app_factory(max_sessions=40, evict_idle_after_s=0, **PROXY) as client:  # 4 per client by default
        victim = await victim_sessions(client)
        statuses = [(await create(client, FLOODER)).status_code for _ in range(30)]
        assert statuses[:4] == [201] * 4 and set(statuses[4:]) == {429}, statuses
        refused = await create(client, FLOODER)
        err = refused.json()["error"]
        assert err["code"] == "too_many_sessions" and refused.headers["retry-after"]
        assert err["details"]["per_client"] is True and err["details"]["per_key"] is False
        assert err["details"]["max_sessions"] == 4 and "this client holds" in err["message"], err
        for sid in victim:  # untouched: same position, still predicting
            assert (await client.get(f"/v1/sessions/{sid}")).json()["position"] == 2
        assert (await create(client, OTHER)).status_code == 201  # everyone else still gets sessions
        forks = [(await client.post(f"/v1/sessions/{victim[0]}/fork", headers=VICTIM)).status_code for _ in range(3)]
        assert forks == [201, 429, 429]  # a fork counts against the session's own client


async def test_eviction_takes_the_sessions_of_the_client_over_its_share_first(app_factory: AppFactory) -> None:
    # No per-client limit: the store (20 sessions) fills, and capacity eviction must pick the flooder's own.
    async with app_factory(max_sessions=20, evict_idle_after_s=0, max_sessions_per_client=0, **PROXY) as client:
        victim = await victim_sessions(client)
        flooded = [await create(client, FLOODER) for _ in range(100)]
        assert all(r.status_code == 201 for r in flooded)
        for sid in victim:
            r = await client.post(f"/v1/sessions/{sid}/predict", json={"text": "c"}, headers=VICTIM)
            assert r.status_code == 200 and r.json()["position"] == 3, r.text
        first = flooded[0].json()["session_id"]
        assert (await client.get(f"/v1/sessions/{first}")).json()["error"]["code"] == "session_expired"
        assert (await client.get("/v1/model")).json()["sessions"]["active"] == 20


async def test_anonymous_sessions_stay_reachable_from_any_address(app_factory: AppFactory) -> None:
    # The client tag counts; it does not fence: clients behind NAT or a changing proxy keep their sessions.
    async with app_factory(**PROXY) as client:
        sid = (await create(client, VICTIM)).json()["session_id"]
        assert is_client_tag(owner_of(sid))
        r = await client.post(f"/v1/sessions/{sid}/predict", json={"text": "c"}, headers=FLOODER)
        assert r.status_code == 200 and r.json()["position"] == 3
        assert (await client.post(f"/v1/sessions/{sid}/predict", json={"text": "d"})).status_code == 200
        # Loopback clients (and a loopback hop) are not counted: their sessions carry no tag.
        local = (await client.post("/v1/sessions", json={})).json()["session_id"]
        assert owner_of(local) == ""


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(app_factory: AppFactory) -> None:
    async with app_factory(max_sessions=40) as client:  # no trusted proxies: the peer (loopback) is the client
        for _ in range(6):
            r = await create(client, FLOODER)
            assert r.status_code == 201 and owner_of(r.json()["session_id"]) == ""


def test_client_address_reads_forwarded_for_from_the_right() -> None:
    trusted = parse_networks("10.0.0.0/8, 192.168.1.7")
    assert client_address("203.0.113.1", ["1.2.3.4"], trusted) == "203.0.113.1"  # untrusted peer: XFF ignored
    assert client_address("10.1.2.3", ["1.2.3.4"], trusted) == "1.2.3.4"
    assert client_address("10.1.2.3", ["6.6.6.6, 1.2.3.4, 192.168.1.7"], trusted) == "1.2.3.4"  # spoofed left hop
    assert client_address("10.1.2.3", ["6.6.6.6", "1.2.3.4"], trusted) == "1.2.3.4"  # repeated headers
    assert client_address("10.1.2.3", ["10.0.0.9, 10.0.0.8"], trusted) == "10.0.0.9"  # all trusted: the first
    assert client_address("10.1.2.3", [], trusted) == "10.1.2.3"
    assert client_address("::ffff:10.1.2.3", ["1.2.3.4"], trusted) == "1.2.3.4"
    assert client_address(None, ["1.2.3.4"], trusted) is None
    assert client_tag("1.2.3.4") == client_tag("1.2.3.4") != client_tag("1.2.3.5")
    assert is_client_tag(client_tag("2001:db8::1")) and client_tag("127.0.0.1") == client_tag("::1") == ""


def test_a_bad_trusted_proxy_entry_stops_the_start(make_settings: Any) -> None:
    with pytest.raises(ValueError, match="not-an-ip"):
        make_settings(trusted_proxies="10.0.0.0/8,not-an-ip")
