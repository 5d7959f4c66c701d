"""The worker loop's logic without Prefect, a database or a GPU: scripted claims, instant steps.

What it must do is what a batch shared by several workers needs: stop when the batch is done, wait
only for chunks leased to *others*, never for its own, finish what is in flight, and hand every
unfinished chunk back the moment something fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from flows.worker import ChunkWorker, Claimed, Done, Wait


@dataclass
class Script:
    """Steps whose claims come from a list; everything else is recorded."""

    claims: list
    fail_generate_on: str | None = None
    calls: list = field(default_factory=list)

    def claim(self, finished, in_flight):
        self.calls.append(("claim", list(finished), list(in_flight)))
        return self.claims.pop(0)

    def generate(self, chunk):
        if self.fail_generate_on in {p.image_id for p in chunk}:
            raise RuntimeError("CUDA out of memory")
        items = [
            SimpleNamespace(planned=p, safety=SimpleNamespace(verdict="passed"), marked=None, chunk_id="")
            for p in chunk
        ]
        return items, 0.5, 0.1

    def submit_marks(self, items):
        self.calls.append(("mark", [i.planned.image_id for i in items]))

    def publish_ready(self, queue, wait: bool):
        # the after-decode pool is slow here: nothing is ready unless we wait for it
        assert isinstance(queue, tuple), "the step gets a snapshot of the queue, never the worker's own"
        done = [item.chunk_id for item in queue] if wait else []
        self.calls.append(("publish", wait, len(done)))
        return done, 0.0

    def complete(self, finished, in_flight):
        self.calls.append(("complete", list(finished), list(in_flight)))

    def release(self, chunk_ids):
        self.calls.append(("release", list(chunk_ids)))


def images(*ids):
    return [SimpleNamespace(image_id=i) for i in ids]


def test_a_lone_worker_never_waits_on_its_own_lease():
    # the last claim sees only our own chunk leased: we finish it and claim again, no sleep
    slept = []
    steps = Script([Claimed("c1", images("a", "b")), Claimed("c2", images("c")), Wait(120.0), Done()])
    timing = ChunkWorker(steps, sleep=slept.append).run()
    assert slept == [] and timing.idle_s == 0
    assert [c[1] for c in steps.calls if c[0] == "mark"] == [["a", "b"], ["c"]]  # each chunk to the pool once
    assert timing.generate_s == 1.0 and timing.safety_s == pytest.approx(0.2)
    # every chunk is completed: those finished by the time of a claim ride in it, the rest explicitly
    completed = [c for call in steps.calls if call[0] in ("claim", "complete") for c in call[1]]
    assert sorted(completed) == ["c1", "c2"]


def test_it_waits_for_other_workers_leases_and_then_takes_their_chunks():
    slept = []
    steps = Script([Claimed("c1", images("a")), Wait(0.05), Wait(30.0), Claimed("c9", images("z")), Done()])
    timing = ChunkWorker(steps, sleep=slept.append, max_pause_s=5.0).run()
    # the first Wait came while c1 was in flight: finish c1 and claim again; then wait, capped at 5 s
    assert slept == [5.0] and timing.idle_s == 5.0
    assert ("release", []) not in steps.calls


def test_an_empty_chunk_is_completed_without_generating():
    steps = Script([Claimed("c1", []), Done()])
    timing = ChunkWorker(steps).run()
    assert timing.generate_s == 0
    assert ("claim", ["c1"], []) in steps.calls  # completed with the next claim


def test_a_failure_hands_every_unfinished_chunk_back_at_once():
    steps = Script([Claimed("c1", images("a")), Claimed("c2", images("boom"))], fail_generate_on="boom")
    worker = ChunkWorker(steps)
    with pytest.raises(RuntimeError, match="out of memory"):
        worker.run()
    released = [call[1] for call in steps.calls if call[0] == "release"]
    # neither chunk's images were recorded (c1's still sat in the after-decode queue): both go back at
    # once for another worker, instead of waiting out the lease
    assert released == [["c1", "c2"]]
    assert worker.timing.wall_s > 0
