"""One worker's loop over a batch: claim a chunk, generate it, hand its images to the after-decode pool,
record what is ready, claim the next; finish what is in flight; hand chunks back on failure.

A plain class over a small set of steps (:class:`WorkerSteps`), so that its logic (when to wait,
when to stop, what to hand back) is tested without Prefect (``tests/flows/test_worker.py``);
``flows.produce.produce_batch`` passes Prefect tasks as the steps.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from flows.produce import Checked
    from governance.runs import PlannedImage

log = logging.getLogger(__name__)


# --- what a claim can say ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A chunk is ours (leased): these of its images still lack a record."""

    chunk_id: str
    images: list[PlannedImage]


@dataclass(frozen=True)
class Wait:
    """Nothing to claim now, but chunks are leased to others: their lease ends in `seconds`."""

    seconds: float


@dataclass(frozen=True)
class Done:
    """Every chunk of the batch is done."""


Claim = Claimed | Wait | Done


class WorkerSteps(Protocol):
    """The I/O the loop needs; each step is idempotent and retried by its implementation."""

    def claim(self, finished: list[str], in_flight: list[str]) -> Claim: ...
    def generate(self, chunk: list[PlannedImage]) -> tuple[list[Checked], float, float]: ...
    def submit_marks(self, items: list[Checked]) -> None: ...
    def publish_ready(self, queue: Sequence[Checked], wait: bool) -> tuple[list[str], float]: ...
    def complete(self, finished: list[str], in_flight: list[str]) -> None: ...
    def release(self, chunk_ids: list[str]) -> None: ...


@dataclass
class Timing:
    """Where the worker's time went (the run summary; bench/pool.py reads it): generate_s in the engine,
    safety_s in the safety check, after_decode_wait_s blocked on the after-decode pool, publish_s
    uploading and recording, claim_s claiming and completing chunks, idle_s waiting for chunks leased
    to other workers at the end of a batch, wall_s the whole loop."""

    generate_s: float = 0.0
    safety_s: float = 0.0
    after_decode_wait_s: float = 0.0
    publish_s: float = 0.0
    claim_s: float = 0.0
    idle_s: float = 0.0
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class ChunkWorker:
    steps: WorkerSteps
    pool_wait_seconds: Callable[[], float] = lambda: 0.0
    sleep: Callable[[float], None] = time.sleep
    max_pause_s: float = 5.0
    timing: Timing = field(default_factory=Timing)
    queue: deque[Checked] = field(default_factory=deque)
    outstanding: dict[str, int] = field(default_factory=dict)  # chunk id -> its images not yet recorded
    finished: list[str] = field(default_factory=list)  # chunks all recorded, completed with the next claim
    _drained: float = 0.0

    def run(self) -> Timing:
        """Work until the batch is done; on any failure hand every unfinished chunk back and re-raise."""
        started = time.perf_counter()
        try:
            while (claimed := self._claim_next()) is not None:
                self._work_on(claimed)
                self._publish(wait=False)
                log.info(
                    "chunk %s: %d generated, %d waiting for after-decode work",
                    claimed.chunk_id[:8],
                    len(claimed.images),
                    len(self.queue),
                )
            self._publish(wait=True)
        except Exception:
            self._measure(started)
            self.steps.release(list(self.outstanding))  # hand unfinished chunks back at once, not after the lease
            if self.finished:
                self.steps.complete(self.finished, [])
            raise
        self._measure(started)
        return self.timing

    def _work_on(self, claimed: Claimed) -> None:
        self.outstanding[claimed.chunk_id] = len(claimed.images)
        if not claimed.images:
            return
        checked, engine_s, safety_s = self.steps.generate(claimed.images)
        self.timing.generate_s += engine_s
        self.timing.safety_s += safety_s
        for item in checked:
            item.chunk_id = claimed.chunk_id
        self.steps.submit_marks(checked)  # to the after-decode pool: the images that passed safety
        self.queue.extend(checked)

    def _claim_next(self) -> Claimed | None:
        while True:
            t0 = time.perf_counter()
            claim = self.steps.claim(list(self.finished), list(self.outstanding))
            self.finished.clear()
            self.timing.claim_s += time.perf_counter() - t0
            if isinstance(claim, Claimed):
                return claim
            if isinstance(claim, Done):
                return None
            own = bool(self.outstanding)
            self._publish(wait=True)  # finish our own chunks first: only others' leases are left
            if own:  # what blocked the claim may have been our own lease: claim again before waiting
                continue
            log.info("waiting %.1f s for chunks leased to other workers", claim.seconds)
            pause = min(max(claim.seconds, 0.2), self.max_pause_s)
            self.sleep(pause)
            self.timing.idle_s += pause

    def _publish(self, wait: bool) -> None:
        """Record what is ready; with `wait`, everything, and complete the finished chunks now."""
        t0 = time.perf_counter()
        recorded, waited = self.steps.publish_ready(tuple(self.queue), wait)
        for _ in recorded:  # recorded in queue order, from the front
            self.queue.popleft()
        self._drained += waited
        t1 = time.perf_counter()
        self.timing.publish_s += t1 - t0 - waited
        for chunk_id in recorded:
            self.outstanding[chunk_id] -= 1
        for chunk_id in [c for c, n in self.outstanding.items() if n == 0]:
            del self.outstanding[chunk_id]
            self.finished.append(chunk_id)
        if wait:
            self.steps.complete(self.finished, list(self.outstanding))
            self.finished.clear()
            self.timing.claim_s += time.perf_counter() - t1

    def _measure(self, started: float) -> None:
        self.timing.after_decode_wait_s = self.pool_wait_seconds() + self._drained
        self.timing.wall_s = time.perf_counter() - started
