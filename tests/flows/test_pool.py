"""The after-decode pool: bounded, overlapping, and honest about how long the producer waited."""

from __future__ import annotations

import threading

import pytest

from flows.pool import BoundedPool


def test_submit_blocks_only_when_max_pending_are_in_flight() -> None:
    release = threading.Event()
    with BoundedPool(workers=1, max_pending=2) as pool:
        futures = [pool.submit(release.wait, 30), pool.submit(release.wait, 30)]  # both slots taken
        third: list = []
        producer = threading.Thread(target=lambda: third.append(pool.submit(lambda: "third")))
        producer.start()
        producer.join(0.5)
        assert producer.is_alive() and not third  # the producer is held back: memory stays bounded
        release.set()
        producer.join(30)
        assert third[0].result(30) == "third"
        assert [f.result(30) for f in futures] == [True, True]
        assert pool.wait_seconds > 0  # and the time it was held is reported


def test_the_producer_goes_on_while_the_pool_works() -> None:
    release = threading.Event()
    with BoundedPool(workers=2, max_pending=4) as pool:
        futures = [pool.submit(release.wait, 30) for _ in range(4)]
        assert pool.submitted == 4 and not any(f.done() for f in futures)  # all handed over, none finished
        release.set()
        assert all(f.result(30) for f in futures)


def test_errors_reach_the_caller() -> None:
    with BoundedPool(workers=1) as pool:
        future = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            future.result()
        assert pool.submit(lambda: 2).result() == 2  # the slot was given back


def test_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedPool(workers=0)
