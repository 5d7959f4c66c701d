"""Work claiming with leases: one worker per chunk, expired leases return, a chunk finishes once."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from governance.approvals import approve_batch
from governance.batches import submit_batch
from governance.claims import (
    chunk_progress,
    claim_chunk,
    complete_chunk,
    plan_chunks,
    release_chunks,
    seconds_until_claimable,
)
from governance.db import make_engine, make_sessionmaker
from governance.records import AuditEvent, WorkChunk
from tests.conftest import TEST_AUDIT_KEYS
from tests.governance.conftest import good_rows, write_csv


@pytest.fixture
def batch_id(sessions: sessionmaker[Session], tmp_path: Path) -> str:
    rows = good_rows(10)
    rows[0]["num_images"] = 3  # 12 images
    with sessions.begin() as s:
        b = submit_batch(s, "maria", write_csv(tmp_path / "b.csv", rows), "catalogue")
        approve_batch(s, "omar", b.id, b.content_sha256)
        return b.id


def test_plan_is_fixed_and_idempotent(sessions, batch_id) -> None:
    with sessions.begin() as s:
        assert plan_chunks(s, batch_id, 5) == 3
        assert plan_chunks(s, batch_id, 2) == 3  # the first plan stands
    with sessions() as s:
        chunks = list(s.scalars(select(WorkChunk).order_by(WorkChunk.position)))
    assert [len(c.image_ids) for c in chunks] == [5, 5, 2]
    assert len({i for c in chunks for i in c.image_ids}) == 12


def test_workers_get_distinct_chunks_then_none(sessions, batch_id) -> None:
    with sessions.begin() as s:
        plan_chunks(s, batch_id, 4)
    got = []
    for worker in ["w1", "w2", "w1", "w2"]:
        with sessions.begin() as s:
            c = claim_chunk(s, batch_id, worker, lease_seconds=60)
            got.append(c.id if c else None)
    assert len(set(got[:3])) == 3 and got[3] is None
    with sessions() as s:
        assert chunk_progress(s, batch_id) == {"claimed": 3}


def test_a_worker_with_nothing_to_claim_learns_when_a_dead_workers_chunk_comes_back(sessions, batch_id) -> None:
    with sessions.begin() as s:
        plan_chunks(s, batch_id, 6)
        held = claim_chunk(s, batch_id, "dead-worker", lease_seconds=30).id
        other = claim_chunk(s, batch_id, "w2", lease_seconds=300).id
    with sessions() as s:
        wait = seconds_until_claimable(s, batch_id)
    assert 25 < wait <= 30  # the earliest lease runs out in about 30 s
    with sessions.begin() as s:
        release_chunks(s, [held], "dead-worker")
    with sessions() as s:
        assert seconds_until_claimable(s, batch_id) == 0.0  # pending again: claim now
    with sessions.begin() as s:
        complete_chunk(s, claim_chunk(s, batch_id, "w2", lease_seconds=60).id, "w2")
        complete_chunk(s, other, "w2")
    with sessions() as s:
        assert seconds_until_claimable(s, batch_id) is None  # every chunk done: stop


def test_expired_lease_returns_the_chunk_and_it_finishes_once(sessions, batch_id) -> None:
    with sessions.begin() as s:
        plan_chunks(s, batch_id, 12)
        first = claim_chunk(s, batch_id, "dead-worker", lease_seconds=0.2).id
    with sessions.begin() as s:
        assert claim_chunk(s, batch_id, "w2", lease_seconds=60) is None  # still leased
    time.sleep(0.4)
    with sessions.begin() as s:
        again = claim_chunk(s, batch_id, "w2", lease_seconds=60)
        assert again.id == first and again.attempts == 2 and again.claimed_by == "w2"
    with sessions.begin() as s:
        assert complete_chunk(s, first, "w2")
    with sessions.begin() as s:
        assert not complete_chunk(s, first, "dead-worker")  # the slow original cannot finish it again
    with sessions() as s:
        assert chunk_progress(s, batch_id) == {"done": 1}
        actions = list(s.scalars(select(AuditEvent.action).where(AuditEvent.subject_id == first)))
    assert actions == ["chunk.claimed", "chunk.claimed", "chunk.completed"]


def _drain(url: str, batch_id: str, worker: str) -> None:
    sessions = make_sessionmaker(make_engine(url), audit_keys=TEST_AUDIT_KEYS)
    while True:
        with sessions.begin() as s:
            chunk = claim_chunk(s, batch_id, worker, lease_seconds=300)
            if chunk is None:
                return
            chunk_id = chunk.id
        time.sleep(0.02)  # "generate"
        with sessions.begin() as s:
            complete_chunk(s, chunk_id, worker)


def test_concurrent_workers_claim_every_chunk_exactly_once(sessions, batch_id, database_url) -> None:
    with sessions.begin() as s:
        plan_chunks(s, batch_id, 1)  # 12 chunks
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_drain, args=(database_url, batch_id, f"w{i}")) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with sessions() as s:
        claims = list(s.scalars(select(AuditEvent.subject_id).where(AuditEvent.action == "chunk.claimed")))
        assert chunk_progress(s, batch_id) == {"done": 12}
    assert len(claims) == 12 == len(set(claims))


def test_release_hands_back_only_what_the_worker_still_holds(sessions, batch_id) -> None:

    with sessions.begin() as s:
        plan_chunks(s, batch_id, 6)
        mine = claim_chunk(s, batch_id, "w1", lease_seconds=60).id
        theirs = claim_chunk(s, batch_id, "w2", lease_seconds=60).id
    with sessions.begin() as s:
        assert release_chunks(s, [mine, theirs], "w1") == 1
    with sessions() as s:
        assert chunk_progress(s, batch_id) == {"pending": 1, "claimed": 1}
        released = list(s.scalars(select(AuditEvent.subject_id).where(AuditEvent.action == "chunk.released")))
    assert released == [mine]
