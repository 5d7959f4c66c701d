"""The audit chain: every change is recorded, and any edit, deletion or reordering is caught."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from governance.audit import record_event, verify_chain
from governance.records import AuditEvent


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
        seq, prev = e.seq, e.prev_hash
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
