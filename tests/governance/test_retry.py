"""governance.retry: which failures a worker waits out, and for how long."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from governance.retry import Backoff, describe, is_transient


def _client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


def test_outages_are_transient_and_mistakes_are_not() -> None:
    assert is_transient(OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly")))
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    assert is_transient(ReadTimeoutError(endpoint_url="http://127.0.0.1:9"))
    assert is_transient(_client_error(500, "InternalError"))
    assert is_transient(_client_error(503, "SlowDown"))
    assert not is_transient(_client_error(403, "AccessDenied"))  # a wrong policy stays wrong
    assert not is_transient(_client_error(404, "NoSuchBucket"))
    assert not is_transient(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(ValueError("bad setting"))


def test_a_real_refused_connection_is_transient_and_described_without_the_password() -> None:
    engine = create_engine("postgresql+psycopg://atelier:s3cret@127.0.0.1:9/x", connect_args={"connect_timeout": 2})
    with pytest.raises(OperationalError) as err:
        engine.connect().execute(text("SELECT 1"))
    assert is_transient(err.value)
    assert "s3cret" not in describe(err.value) and describe(err.value).startswith("OperationalError")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_backoff_retries_until_the_outage_ends_with_growing_capped_delays() -> None:
    clock = Clock()
    calls = {"n": 0}

    def step() -> str:
        calls["n"] += 1
        if clock.now < 30:  # a 30-second outage
            raise _client_error(500, "InternalError")
        return "published"

    backoff = Backoff(tolerance_s=300, base_s=0.5, cap_s=8, sleep=clock.sleep, clock=lambda: clock.now)
    assert backoff.run(step, "publish") == "published"
    assert calls["n"] == len(clock.sleeps) + 1
    assert max(clock.sleeps) <= 8  # capped
    assert clock.sleeps[3] > clock.sleeps[0]  # growing (0.25..0.5 then 2..4)


def test_backoff_gives_up_after_the_tolerance_and_never_retries_a_mistake() -> None:
    clock = Clock()
    backoff = Backoff(tolerance_s=10, sleep=clock.sleep, clock=lambda: clock.now)

    def down() -> None:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    with pytest.raises(EndpointConnectionError):
        backoff.run(down, "publish")
    assert 10 <= clock.now <= 10.01  # waited out exactly the tolerance, then surfaced the error

    calls = {"n": 0}

    def denied() -> None:
        calls["n"] += 1
        raise _client_error(403, "AccessDenied")

    with pytest.raises(ClientError):
        backoff.run(denied, "publish")
    assert calls["n"] == 1
