"""Fuzz the three generating endpoints with bodies drawn from OpenAI's spec (hypothesis).

Bounded to a few seconds per endpoint here; `benchmarks/fuzz_api.py` runs the same for longer.
Every answer must be a 2xx or a 4xx in OpenAI's error shape: never a 500, a traceback, a
hang or a dead server.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from conftest import start_server
from fuzz_support import OPERATIONS, bodies

ALLOWED = {200, 400, 404, 413, 422}


@pytest.fixture(scope="module")
def server():
    s = start_server("--profile", "instant")
    yield s
    s.stop()


def check_answer(client: httpx.Client, url: str, body: dict) -> None:
    """POST body and assert the answer is a success or the API's own error."""
    with client.stream("POST", url, json=body) as r:
        data = r.read()  # a stream is read to its end
    assert r.status_code in ALLOWED, (r.status_code, body, data[:300])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and isinstance(err["message"], str)
        assert "Traceback" not in err["message"]


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_fuzzed_bodies_get_a_success_or_the_apis_400(server, operation):
    path, _ = OPERATIONS[operation]
    url = server.url + path
    with httpx.Client(timeout=30) as client:

        @settings(
            max_examples=80,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(body=bodies(operation))
        def run(body):
            check_answer(client, url, body)

        run()
        assert client.get(server.url + "/health").status_code == 200
