"""The after-decode pool: bounded, overlapping, and honest about how long the producer waited."""

from __future__ import annotations

import threading
import time

import pytest

from flows.pool import BoundedPool


def test_submit_blocks_only_when_max_pending_are_in_flight() -> None:
    release = threading.Event()
    with BoundedPool(workers=1, max_pending=2) as pool:
        futures = [pool.submit(release.wait, 5), pool.submit(release.wait, 5)]
        assert pool.wait_seconds < 0.05  # two in flight: no waiting yet
        threading.Timer(0.3, release.set).start()
        futures.append(pool.submit(lambda: "third"))  # must wait for a slot
        assert pool.wait_seconds >= 0.25
        assert [f.result() for f in futures] == [True, True, "third"]


def test_work_overlaps_with_the_producer() -> None:
    with BoundedPool(workers=2, max_pending=4) as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(time.sleep, 0.2) for _ in range(4)]
        submitted_after = time.perf_counter() - t0
        for f in futures:
            f.result()
    assert submitted_after < 0.1  # the producer went on at once
    assert pool.wait_seconds < 0.1 and pool.submitted == 4


def test_errors_reach_the_caller() -> None:
    with BoundedPool(workers=1) as pool:
        future = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            future.result()
        assert pool.submit(lambda: 2).result() == 2  # the slot was given back


def test_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedPool(workers=0)
