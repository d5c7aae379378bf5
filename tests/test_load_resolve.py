"""The Locust users' pools resolve the target once, not once per new connection."""

from __future__ import annotations

from geventhttpclient import HTTPClient

from llmsim.load import resolve


def test_an_ip_literal_needs_no_resolver_and_gives_the_same_address():
    client = HTTPClient("127.0.0.1", 8080)
    pool = client._connection_pool
    expected = pool._resolve()
    calls = []
    pool._resolve = lambda: calls.append(1) or expected
    assert resolve.install(client)
    got = pool._resolve()
    assert calls == []  # the original (gevent's thread-pool resolver) is never asked
    assert [i[-1] for i in got] == [i[-1] for i in expected] == [("127.0.0.1", 8080)]


def test_a_name_is_resolved_once_per_ttl(monkeypatch):
    client = HTTPClient("localhost", 8080)
    pool = client._connection_pool
    real = pool._resolve
    calls = []
    pool._resolve = lambda: calls.append(1) or real()
    resolve._cache.clear()
    assert resolve.install(client)
    first = pool._resolve()
    assert pool._resolve() == first and len(calls) == 1
    now = resolve.time.monotonic()
    monkeypatch.setattr(resolve.time, "monotonic", lambda: now + resolve.RESOLVE_TTL_S + 1)
    pool._resolve()
    assert len(calls) == 2  # after the TTL the name is looked up again (the target may move)


def test_a_client_without_the_pool_internals_is_left_alone():
    assert resolve.install(object()) is False
