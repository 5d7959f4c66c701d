"""A bounded worker pool that overlaps after-decode CPU work with generation.

The generation loop submits each image's CPU work (watermark, encode, verify, hash) and goes on
generating; the pool runs it on other cores. `submit` blocks only when `max_pending` images are
already in flight, which keeps memory bounded; the time spent blocked is `wait_seconds`, the
figure that shows whether the GPU ever waits for the CPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class BoundedPool:
    def __init__(self, workers: int, max_pending: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.max_pending = max_pending or 2 * workers
        self._slots = threading.BoundedSemaphore(self.max_pending)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="after-decode")
        self.wait_seconds = 0.0
        self.submitted = 0

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        t0 = time.perf_counter()
        self._slots.acquire()
        self.wait_seconds += time.perf_counter() - t0
        self.submitted += 1
        future = self._executor.submit(fn, *args)
        future.add_done_callback(lambda _f: self._slots.release())
        return future

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BoundedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
