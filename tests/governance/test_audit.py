"""The audit chain: every change is recorded, authenticated and bound to the records it changed, and any
edit, deletion or reordering is caught. (What a database writer can do to records and events without the
keys, and how `audit verify` names it: test_tamper.py.)"""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from governance.audit import event_hash, record_event, verify_chain
from governance.records import AuditEvent
from tests.conftest import TEST_AUDIT_KEYS


def _as_attacker(s: Session) -> None:
    """On PostgreSQL the audit tables refuse UPDATE/DELETE; a superuser can switch triggers off
    for the session. The tamper tests play that attacker: verify must still catch them."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SET LOCAL session_replication_role = replica"))


def _fill(sessions: sessionmaker[Session], n: int = 6) -> None:
    for i in range(n):
        with sessions.begin() as s:
            record_event(s, "maria", "test.event", "thing", f"t{i}", {"i": i, "note": "ünïcode ✓"})


def test_intact_chain_verifies(sessions: sessionmaker[Session]) -> None:
    _fill(sessions)
    with sessions() as s:
        report = verify_chain(s)
        head = s.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
    assert report.ok and report.problem == ""
    assert report.head_seq == head.seq and report.head_hash == head.hash
    assert report.events == head.seq  # the user fixture's events plus the six above


def test_edited_event_is_named(sessions: sessionmaker[Session]) -> None:
    _fill(sessions)
    with sessions.begin() as s:
        _as_attacker(s)
        target = s.scalar(select(AuditEvent).where(AuditEvent.subject_id == "t2"))
        seq = target.seq
        s.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = :s"), {"s": seq})
    with sessions() as s:
        report = verify_chain(s)
    assert not report.ok and report.first_bad_seq == seq
    assert "altered" in report.problem


def test_edited_payload_is_named(sessions: sessionmaker[Session]) -> None:
    _fill(sessions)
    with sessions.begin() as s:
        _as_attacker(s)
        target = s.scalar(select(AuditEvent).where(AuditEvent.subject_id == "t4"))
        seq = target.seq
        target.payload = {"i": 99, "note": "rewritten"}
    with sessions() as s:
        report = verify_chain(s)
    assert not report.ok and report.first_bad_seq == seq


def test_deleted_event_is_named(sessions: sessionmaker[Session]) -> None:
    _fill(sessions)
    with sessions.begin() as s:
        _as_attacker(s)
        seq = s.scalar(select(AuditEvent.seq).where(AuditEvent.subject_id == "t3"))
        s.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": seq})
    with sessions() as s:
        report = verify_chain(s)
    assert not report.ok and report.first_bad_seq == seq
    assert "missing" in report.problem


def test_deleted_last_event_changes_the_head(sessions: sessionmaker[Session]) -> None:
    """Truncating the tail keeps a valid-looking chain; the head moves, which anchoring (issue 5) catches."""
    _fill(sessions)
    with sessions() as s:
        before = verify_chain(s)
    with sessions.begin() as s:
        _as_attacker(s)
        s.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": before.head_seq})
    with sessions() as s:
        after = verify_chain(s)
    assert after.head_seq == before.head_seq - 1 and after.head_hash != before.head_hash


def test_reordered_events_are_named(sessions: sessionmaker[Session]) -> None:
    _fill(sessions)
    with sessions.begin() as s:
        _as_attacker(s)
        a = s.scalar(select(AuditEvent.seq).where(AuditEvent.subject_id == "t1"))
        b = a + 1
        # swap the two rows' positions in the chain
        s.execute(text("UPDATE audit_events SET seq = -1 WHERE seq = :a"), {"a": a})
        s.execute(text("UPDATE audit_events SET seq = :a WHERE seq = :b"), {"a": a, "b": b})
        s.execute(text("UPDATE audit_events SET seq = :b WHERE seq = -1"), {"b": b})
    with sessions() as s:
        report = verify_chain(s)
    assert not report.ok and report.first_bad_seq == a


def test_state_change_and_event_roll_back_together(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        before = verify_chain(s).events
    try:
        with sessions.begin() as s:
            record_event(s, "maria", "test.event", "thing", "x")
            raise RuntimeError("crash inside the transaction")
    except RuntimeError:
        pass
    with sessions() as s:
        assert verify_chain(s).events == before


def test_two_writers_from_the_same_head_cannot_fork_the_chain(sessions: sessionmaker[Session]) -> None:
    """seq is head+1 and the primary key: a second event on the same head is refused, not chained twice."""
    import pytest
    from sqlalchemy.exc import IntegrityError

    with sessions.begin() as s:
        e = record_event(s, "maria", "test.event", "thing", "a")
        assert e.seq is None  # an event gets its place in the chain when its transaction commits
    seq, prev = e.seq, e.prev_hash
    assert seq is not None and prev is not None
    with pytest.raises(IntegrityError), sessions.begin() as s:
        s.add(
            AuditEvent(
                seq=seq,
                at="x",
                actor="x",
                action="x",
                subject_type="x",
                subject_id="x",
                payload={},
                prev_hash=prev,
                hash="f" * 64,
            )
        )
        s.flush()
    with sessions() as s:
        assert verify_chain(s).ok


def test_postgresql_refuses_update_and_delete_on_the_audit_table(sessions: sessionmaker[Session]) -> None:
    import pytest
    from sqlalchemy.exc import DBAPIError

    with sessions() as s:
        if s.get_bind().dialect.name != "postgresql":
            pytest.skip("append-only enforcement by the database is PostgreSQL's (SQLite is the embedded default)")
    _fill(sessions, 2)
    for statement in ("UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events", "TRUNCATE audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), sessions.begin() as s:
            s.execute(text(statement))
    with sessions() as s:
        assert verify_chain(s).ok


def test_every_event_is_authenticated_and_binds_what_its_transaction_changed(sessions: sessionmaker[Session]) -> None:
    from governance.bindings import kind_named, row_digests
    from governance.users import add_user

    with sessions.begin() as s:
        add_user(s, "admin", "lee", ["auditor"])
        record_event(s, "admin", "test.note", "thing", "x")  # a second event: the user's binding stays on its own
    with sessions() as s:
        created, note = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(2)).all()[::-1]
        user_id = s.scalar(text("SELECT id FROM users WHERE name = 'lee'"))
        digest = row_digests(s, kind_named("user"), [str(user_id)])[str(user_id)][0]
    assert created.action == "user.created" and created.records == [["user", str(user_id), digest]]
    assert note.records is None
    for e in (created, note):
        assert e.key_id == TEST_AUDIT_KEYS.current.key_id and e.mac == TEST_AUDIT_KEYS.current.mac(e.hash)
    with sessions() as s:
        report = verify_chain(s)
    assert report.ok and report.authenticated == report.events and report.legacy == 0


def test_events_written_before_macs_verify_only_as_far_as_they_are_vouched_for(sessions: sessionmaker[Session]) -> None:
    """A legacy (pre-0007) event has no MAC: accepted only up to `legacy_until` and only before the first
    authenticated event (legacy events all came before MACs); an attacker's keyless event after
    authenticated ones is refused even where a forged `legacy_until` would cover it."""
    with sessions() as s:
        head = s.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
    body = {
        "seq": head.seq + 1,
        "at": head.at,
        "actor": "x",
        "action": "old.event",
        "subject_type": "t",
        "subject_id": "1",
        "payload": {},
    }
    with sessions.begin() as s:
        _as_attacker(s)
        s.execute(
            text(
                "INSERT INTO audit_events (seq, at, actor, action, subject_type, subject_id, payload, prev_hash, hash) "
                "VALUES (:seq, :at, 'x', 'old.event', 't', '1', '{}', :prev, :hash)"
            ),
            {"seq": body["seq"], "at": body["at"], "prev": head.hash, "hash": event_hash(head.hash, body)},
        )
    with sessions() as s:
        refused = verify_chain(s)
        covered = verify_chain(s, legacy_until=head.seq + 1)
    assert not refused.ok and "is not authenticated" in refused.problem and refused.first_bad_seq == head.seq + 1
    assert not covered.ok and "is not authenticated" in covered.problem and covered.first_bad_seq == head.seq + 1


def test_a_partial_verification_starts_from_a_trusted_point(sessions: sessionmaker[Session]) -> None:
    from governance.audit import ChainStart

    with sessions() as s:
        mid = s.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
    _fill(sessions, 3)
    with sessions() as s:
        tail = verify_chain(s, start=ChainStart(mid.seq, mid.hash))
        wrong = verify_chain(s, start=ChainStart(mid.seq, "f" * 64))
        ranged = verify_chain(s, start=ChainStart(mid.seq, mid.hash), until=mid.seq + 2)
    assert tail.ok and tail.events == 3 and tail.head_seq == mid.seq + 3
    assert not wrong.ok and wrong.first_bad_seq == mid.seq + 1
    assert ranged.ok and ranged.events == 2


def test_development_audit_key_ring_is_made_marked_and_rotated(tmp_path) -> None:
    import pytest

    from governance.audit import DEV_KEY_HEADER, ensure_development_audit_key, load_audit_key_ring
    from governance.errors import GovernanceCheckFailed

    path = tmp_path / "keys" / "audit-key.txt"
    with pytest.raises(GovernanceCheckFailed, match="atelier keys init"):
        load_audit_key_ring(path)
    ring = ensure_development_audit_key(path)
    assert DEV_KEY_HEADER in path.read_text() and "NOT FOR PRODUCTION" in DEV_KEY_HEADER
    assert path.stat().st_mode & 0o777 == 0o600 and ring.current.development
    assert ensure_development_audit_key(path) == ring  # made once
    rotated = ensure_development_audit_key(path, rotate=True)
    assert rotated.current != ring.current and rotated.keys[1:] == ring.keys  # the old key still verifies
    assert ring.current.secret.hex() not in repr(ring.current) and ring.current.key_id in repr(ring.current)
    path.write_text(rotated.current.secret.hex() + "\n")  # an organisation's ring is never rotated here
    with pytest.raises(GovernanceCheckFailed, match="not a development key ring"):
        ensure_development_audit_key(path, rotate=True)
