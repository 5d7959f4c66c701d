"""The HTTP API fuzzed with schemathesis against its own OpenAPI schema, as an admin (every route is
reachable) on a server of its own: whatever the input, never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.server.conftest import Console, set_up, start_server


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    data = tmp_path_factory.mktemp("fuzz") / "d"
    cli, tokens, app = set_up(data)
    base, server, thread = start_server(app)
    yield Console(base, data, cli, app, tokens)
    server.should_exit = True
    thread.join(10)


def test_no_input_makes_the_api_fail_with_a_server_error(fuzzed: Console) -> None:
    """Every operation of /openapi.json, 12 generated cases each (derandomized: the same cases every
    run), as the admin. Any 5xx is collected with its request, then reported together."""
    from hypothesis import given

    schema = schemathesis.openapi.from_url(f"{fuzzed.base}/openapi.json")
    headers = {"Authorization": f"Bearer {fuzzed.tokens['admin']}"}
    failures: list[str] = []
    calls: list[int] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
        )
        def fuzz(case: Any) -> None:
            response = case.call(base_url=fuzzed.base, headers=headers, timeout=60)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")
            elif response.status_code >= 400:  # a client mistake: always the JSON error shape
                body = response.json()
                assert {"code", "message"} <= set(body), f"{case.method} {case.formatted_path}: {body}"

        fuzz()
    assert operations >= 30 and len(calls) >= operations * 5, (operations, len(calls))
    assert any(200 <= c < 300 for c in calls) and any(400 <= c < 500 for c in calls)
    assert not failures, "\n".join(failures[:20])
