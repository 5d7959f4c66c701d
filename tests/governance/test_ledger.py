"""The audit ledger: anchors on Object Lock storage, and everything `audit verify` must catch."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from governance.audit import GENESIS_HASH, canonical_json, event_hash, record_event, verify_chain
from governance.credentials import init_test_ca
from governance.db import make_engine, make_sessionmaker
from governance.ledger import CheckpointSigner, anchor_chain, verify_ledger
from governance.records import AuditAnchor, AuditEvent
from governance.store import open_store
from tests.conftest import TEST_AUDIT_KEYS


@pytest.fixture
def signer(tmp_path: Path) -> tuple[CheckpointSigner, bytes]:
    keys = init_test_ca(tmp_path / "keys")
    return CheckpointSigner(keys.chain.read_bytes(), keys.key.read_bytes()), keys.chain.read_bytes()


@pytest.fixture
def worm(s3_server: str, s3_env: str):
    return open_store(f"s3://{s3_env}/ledger", s3_server)


def _as_attacker(s: Session) -> None:
    if s.get_bind().dialect.name == "postgresql":  # a superuser switching the append-only triggers off
        s.execute(text("SET LOCAL session_replication_role = replica"))


def _events(sessions: sessionmaker[Session], n: int) -> None:
    for i in range(n):
        with sessions.begin() as s:
            record_event(s, "ops", "test.event", "thing", f"e{i}", {"i": i})


def _anchor(sessions, worm, signer) -> AuditAnchor:
    with sessions.begin() as s:
        return anchor_chain(s, "ops", worm, signer[0], retention_days=1)


def test_anchor_is_signed_retained_and_verifies(sessions, worm, signer, s3_server, s3_env) -> None:
    _events(sessions, 3)
    anchor = _anchor(sessions, worm, signer)
    assert anchor.retain_until is not None and anchor.version_id
    with sessions.begin() as s:  # idempotent: the same head is not anchored twice
        assert anchor_chain(s, "ops", worm, signer[0], 1).seq == anchor.seq
    with sessions() as s:
        report = verify_ledger(s, worm, worm, signer[1])
    assert report.ok and report.anchors_checked == 1 and report.warnings == []
    client = boto3.client("s3", endpoint_url=s3_server)
    with pytest.raises(ClientError, match="AccessDenied"):
        client.delete_object(Bucket=s3_env, Key=f"ledger/{anchor.key}", VersionId=anchor.version_id)
    client.put_object(Bucket=s3_env, Key=f"ledger/{anchor.key}", Body=b'{"checkpoint": {}}')  # a new version only
    with sessions() as s:
        assert verify_ledger(s, worm, worm, signer[1]).ok  # the retained version still says what it said


def test_rewritten_history_with_a_consistent_chain_is_caught_by_the_anchor(sessions, worm, signer) -> None:
    """An attacker who edits an event and recomputes every later hash leaves a valid chain; the anchor disagrees."""
    _events(sessions, 4)
    anchor = _anchor(sessions, worm, signer)
    with sessions.begin() as s:
        _as_attacker(s)
        prev = GENESIS_HASH
        for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq)):
            if e.subject_id == "e1":
                e.actor = "mallory"
            # without the audit key the MACs cannot be recomputed: drop them and what they cover, so the
            # chain looks like one written before events were authenticated
            e.key_id = e.mac = e.records = e.token_id = None
            e.prev_hash = prev
            e.hash = event_hash(
                prev,
                {
                    "seq": e.seq,
                    "at": e.at,
                    "actor": e.actor,
                    "action": e.action,
                    "subject_type": e.subject_type,
                    "subject_id": e.subject_id,
                    "payload": e.payload,
                },
            )
            prev = e.hash
    with sessions() as s:
        # a consistent chain, but its events lost their MACs: the attacker holds no audit key
        chain = verify_chain(s)
        report = verify_ledger(s, worm, worm, signer[1])
    assert not chain.ok and "not authenticated" in chain.problem
    assert not report.ok
    assert (
        f"anchor {anchor.seq}: event {anchor.seq} no longer has the anchored hash: history was rewritten"
        in report.problems
    )


def test_deleted_anchor_row_and_truncated_chain_are_caught(sessions, worm, signer) -> None:
    _events(sessions, 2)
    anchor = _anchor(sessions, worm, signer)
    with sessions.begin() as s:
        _as_attacker(s)
        s.execute(text("DELETE FROM audit_anchors"))
        s.execute(text("DELETE FROM audit_events WHERE seq >= :n"), {"n": anchor.seq})
    with sessions() as s:
        report = verify_ledger(s, worm, worm, signer[1])
    assert not report.ok
    # the rows are gone, the retained objects are not: the store's own list names the truncation
    assert any(
        f"the newest anchor in the store is at event {anchor.seq}" in p and "(truncation)" in p for p in report.problems
    )


def test_forged_anchor_signature_is_caught(sessions, worm, signer, tmp_path) -> None:
    _events(sessions, 2)
    other = init_test_ca(tmp_path / "mallory")
    forger = (CheckpointSigner(other.chain.read_bytes(), other.key.read_bytes()), other.chain.read_bytes())
    _anchor(sessions, worm, forger)
    with sessions() as s:
        report = verify_ledger(s, worm, worm, signer[1])  # checked against the organisation's certificates
    assert not report.ok
    assert report.problems[0].startswith("anchor ") and "not in the certificate ring" in report.problems[0]


def test_anchor_on_a_bucket_without_object_lock_is_an_error(sessions, signer, s3_server, s3_env) -> None:
    from governance.errors import GovernanceCheckFailed

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=f"{s3_env}-nolock")
    store = open_store(f"s3://{s3_env}-nolock/x", s3_server)
    _events(sessions, 1)
    with pytest.raises(GovernanceCheckFailed, match="Object Lock"), sessions.begin() as s:
        anchor_chain(s, "ops", store, signer[0], 1)


def _append(url: str, n: int, worker: int) -> None:
    sessions = make_sessionmaker(make_engine(url), audit_keys=TEST_AUDIT_KEYS)
    for i in range(n):
        with sessions.begin() as s:
            record_event(s, f"worker-{worker}", "test.concurrent", "thing", f"w{worker}-{i}", {"i": i})


def test_concurrent_appends_from_several_processes_keep_one_chain(pg_url: str) -> None:
    from governance.db import upgrade

    upgrade(make_engine(pg_url))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append, args=(pg_url, 25, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with make_sessionmaker(make_engine(pg_url), audit_keys=TEST_AUDIT_KEYS)() as s:
        report = verify_chain(s)
        actors = set(s.scalars(select(AuditEvent.actor)))
    assert report.ok and report.events == 100 and actors == {f"worker-{w}" for w in range(4)}
    assert canonical_json({"b": 1, "a": 2}) == '{"a":2,"b":1}'


def test_an_anchor_object_without_its_row_is_a_warning_when_it_agrees_with_the_chain(sessions, worm, signer) -> None:
    """A worker killed after writing the object but before its transaction committed leaves an object
    with no row; it still agrees with the chain. Only one that disagrees is a finding."""
    _events(sessions, 2)
    with pytest.raises(RuntimeError), sessions.begin() as s:
        orphan = anchor_chain(s, "ops", worm, signer[0], retention_days=1)
        raise RuntimeError("killed before the commit")
    with sessions() as s:
        report = verify_ledger(s, worm, worm, signer[1])
    assert report.ok, report.problems
    assert report.newest_anchor_seq == orphan.seq
    assert any(orphan.key in w and "agrees with the chain" in w for w in report.warnings)


def test_parallel_chain_verification_agrees_with_one_process_and_finds_the_same_break(pg_url: str) -> None:
    from governance.db import upgrade
    from governance.ledger import verify_chain_parallel

    upgrade(make_engine(pg_url))
    sessions = make_sessionmaker(make_engine(pg_url), audit_keys=TEST_AUDIT_KEYS)
    _events(sessions, 40)
    with sessions() as s:
        one = verify_chain(s)
    both = verify_chain_parallel(pg_url, TEST_AUDIT_KEYS, processes=2, min_range=10)
    assert (
        one.ok and both.ok and (both.events, both.head_seq, both.head_hash) == (one.events, one.head_seq, one.head_hash)
    )
    with sessions.begin() as s:
        _as_attacker(s)
        s.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 33"))
    broken = verify_chain_parallel(pg_url, TEST_AUDIT_KEYS, processes=2, min_range=10)
    assert not broken.ok and broken.first_bad_seq == 33 and "altered" in broken.problem
