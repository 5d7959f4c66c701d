"""Threat T2 (docs/security.md), the subtler attacks: database write access, no audit key, no checkpoint
signing key, and changes aimed at how `audit verify` reads rather than at the rows themselves (child
lists, look-alike times, column types, views, forged baselines). Each test makes the attack and
asserts that `audit verify` names it.

Uses the world, the attacker and the verifier of tests/governance/test_tamper.py (SQLite and PostgreSQL).
"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from governance import bindings
from governance.audit import GENESIS_HASH, canonical_json, event_hash
from governance.batches import get_batch
from governance.holds import active_holds
from governance.records import Image, Run
from tests.governance import test_tamper
from tests.governance.test_tamper import _head, anchor, assert_named, attack, verify

world = test_tamper.world  # the fixture: one record of every governed kind, anchored
# attacks that only one database engine allows (its storage classes, its types and views)
ONLY_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
ONLY_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _dialect(sessions: sessionmaker[Session]) -> str:
    return str(sessions.kw["bind"].dialect.name)


def _digest(sessions: sessionmaker[Session], kind: str, rid: str) -> str:
    """What the attacker computes with the public code and read access: a row's digest now."""
    with sessions() as s:
        found = bindings.row_digests(s, bindings.kind_named(kind), [rid])
    return found[rid][0]


def _append_unauthenticated(sessions: sessionmaker[Session], records: list[list[object]]) -> int:
    """An event with a correct chain hash and no key_id/MAC (as events were written before 0007)."""
    head = _head(sessions)
    body = {
        "seq": head.seq + 1,
        "at": head.at,
        "actor": "ops",
        "action": "image.published",
        "subject_type": "image",
        "subject_id": str(records[0][1]),
        "payload": {},
        "records": records,
    }
    attack(
        sessions,
        "INSERT INTO audit_events (seq, at, actor, action, subject_type, subject_id, payload, prev_hash, hash, "
        "records) VALUES (:seq, :at, :actor, :action, :st, :sid, :payload, :prev, :hash, :records)",
        params={
            "seq": body["seq"],
            "at": body["at"],
            "actor": body["actor"],
            "action": body["action"],
            "st": body["subject_type"],
            "sid": body["subject_id"],
            "payload": "{}",
            "prev": head.hash,
            "hash": event_hash(head.hash, body),
            "records": canonical_json(records),
        },
    )
    return int(body["seq"])  # type: ignore[call-overload]


def _drop_hash_uniqueness(sessions: sessionmaker[Session]) -> list[str]:
    """Statements that drop audit_events' UNIQUE (hash): a table definition, which T2 may change."""
    if _dialect(sessions) == "postgresql":
        return ["ALTER TABLE audit_events DROP CONSTRAINT uq_audit_events_hash"]
    db = sqlite3.connect(sessions.kw["bind"].url.database)
    try:
        (ddl,) = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'audit_events'").fetchone()
    finally:
        db.close()
    without = ddl.replace(", \n\tCONSTRAINT uq_audit_events_hash UNIQUE (hash)", "")
    assert without != ddl
    return [
        "ALTER TABLE audit_events RENAME TO audit_events_old",
        without,
        "INSERT INTO audit_events SELECT * FROM audit_events_old",
        "DROP TABLE audit_events_old",
    ]


# ---------------------------------------------------------------- legacy_until from an unverified row


def test_a_baseline_event_hidden_below_seq_1_cannot_vouch_for_forged_events(sessions, world) -> None:
    """The chain check reads seq >= 1. A `records.baseline` row at seq 0 that reuses a real event's
    (hash, key_id, mac), with payload {"legacy_until": huge}, must not vouch for anything: otherwise
    the attacker changes any record and appends a keyless event binding the new digest."""
    victim = world.quarantined
    donor = _head(sessions)  # any authenticated event: its hash and MAC are stored in clear
    attack(sessions, *_drop_hash_uniqueness(sessions))
    attack(
        sessions,
        "INSERT INTO audit_events (seq, at, actor, action, subject_type, subject_id, payload, prev_hash, hash, "
        "key_id, mac) VALUES (0, :at, 'admin', 'records.baseline', 'audit', 'records', :payload, :prev, :hash, "
        ":key_id, :mac)",
        params={
            "at": donor.at,
            "payload": '{"kind":null,"legacy_until":1000000000,"records":0}',
            "prev": GENESIS_HASH,
            "hash": donor.hash,
            "key_id": donor.key_id,
            "mac": donor.mac,
        },
    )
    attack(
        sessions,
        f"UPDATE images SET safety_verdict = 'passed', safety_reasons = '[]' WHERE id = '{victim}'",
    )
    forged = _append_unauthenticated(sessions, [["image", victim, _digest(sessions, "image", victim)]])
    report = verify(sessions, world)
    assert not report.ok, (report.chain, report.warnings)
    assert_named(report, f"event {forged}")


def test_an_old_event_edited_into_a_baseline_cannot_vouch_for_forged_events_incrementally(sessions, world) -> None:
    """Incremental verification does not re-hash events before its anchor: event 1 edited in place into
    a `records.baseline` with a huge `legacy_until` (hash and MAC untouched) must not make keyless
    events after the anchor acceptable (a baseline's content is re-hashed before it counts)."""
    since = anchor(sessions, world)
    victim = world.quarantined
    attack(
        sessions,
        "UPDATE audit_events SET action = 'records.baseline', "
        'payload = \'{"kind":null,"legacy_until":1000000000,"records":0}\' WHERE seq = 1',
        f"UPDATE images SET safety_verdict = 'passed', safety_reasons = '[]' WHERE id = '{victim}'",
    )
    forged = _append_unauthenticated(sessions, [["image", victim, _digest(sessions, "image", victim)]])
    report = verify(sessions, world, since_anchor=since)
    assert not report.ok, (report.chain, report.warnings)
    assert_named(report, f"event {forged}")


# ---------------------------------------------------------------- child rows (roles, a run's model versions)


def test_child_rows_merged_across_the_separator_are_caught(sessions, world) -> None:
    """A record's child values are comma-joined in its digest: with the commas unescaped, the rows (A, B)
    and the one row 'A,B' would give the same text, and the run would lose its model versions (its
    provenance) unseen."""
    merged = ",".join(sorted(world.models))
    statements = []
    if _dialect(sessions) == "postgresql":  # varchar(36) is a table definition: the DBA widens it
        statements.append("ALTER TABLE run_model_versions ALTER COLUMN model_version_id TYPE varchar(100)")
    statements += [
        f"DELETE FROM run_model_versions WHERE run_id = '{world.run}'",
        f"INSERT INTO run_model_versions (run_id, model_version_id) VALUES ('{world.run}', '{merged}')",
    ]
    attack(sessions, *statements)
    with sessions() as s:  # what Atelier now reads: a run made with no model
        run = s.get(Run, world.run)
        assert run is not None and run.model_versions == []
    assert_named(verify(sessions, world), f"run {world.run} (runs): its row differs")


@ONLY_SQLITE
def test_a_child_value_stored_as_a_blob_is_caught(sessions, world) -> None:
    """SQLite: a model version id stored as a BLOB has the same text, but no longer joins its model
    version; the child list names a value's storage class when it is not text."""
    first, last = sorted(world.models)  # the last in order: a BLOB sorts after every text, the order holds
    attack(
        sessions,
        "UPDATE run_model_versions SET model_version_id = CAST(model_version_id AS BLOB) "
        f"WHERE run_id = '{world.run}' AND model_version_id = '{last}'",
    )
    with sessions() as s:
        run = s.get(Run, world.run)
        assert run is not None and [m.id for m in run.model_versions] == [first]
    assert_named(verify(sessions, world), f"run {world.run} (runs): its row differs")


# ---------------------------------------------------------------- PostgreSQL time values


@ONLY_POSTGRESQL
def test_a_hold_released_with_an_infinite_timestamp_is_caught(sessions, world) -> None:
    """PostgreSQL: `to_char('infinity')` is NULL, and NULL parts are left out of the digest, so a NULL
    `released_at` and 'infinity' would digest the same while the hold stops being active (retention
    and withdrawal may delete the held files); infinite times are digested by name."""
    attack(sessions, f"UPDATE legal_holds SET released_at = 'infinity' WHERE id = '{world.hold}'")
    with sessions() as s:
        image = s.get(Image, world.published)
        assert active_holds(s, [image]) == {}  # the image is no longer held
    assert_named(verify(sessions, world), f"legal_hold {world.hold} (legal_holds): its row differs")


@ONLY_POSTGRESQL
def test_a_timestamp_moved_to_bc_is_caught(sessions, world) -> None:
    """PostgreSQL: `to_char(..., 'YYYY-...')` prints no era, so 2026 and 2026 BC would digest the same
    while the token's expiry moves back 4051 years (any governed time alike); BC years carry their era."""
    attack(
        sessions,
        "UPDATE api_tokens SET expires_at = CAST(CAST(expires_at AT TIME ZONE 'UTC' AS TEXT) || ' BC' AS TIMESTAMP) "
        f"AT TIME ZONE 'UTC' WHERE id = '{world.token}'",
    )
    with sessions() as s:
        assert s.execute(
            text("SELECT expires_at < now() FROM api_tokens WHERE id = :id"), {"id": world.token}
        ).scalar_one()
    assert_named(verify(sessions, world), f"token {world.token} (api_tokens): its row differs")


# ---------------------------------------------------------------- PostgreSQL column types


@ONLY_POSTGRESQL
def test_a_boolean_column_turned_into_text_is_caught(sessions, world) -> None:
    """PostgreSQL: the digest renders a boolean as CAST(x AS TEXT), so false and the text 'false' digest
    the same; after `ALTER ... TYPE text` Atelier reads the string 'false', which is truthy (the batch
    now requires output review): the column's type is checked."""
    with sessions() as s:
        assert get_batch(s, world.batch).review_required is False
    attack(sessions, "ALTER TABLE batches ALTER COLUMN review_required TYPE text")
    with sessions() as s:
        assert bool(get_batch(s, world.batch).review_required) is True
    assert_named(verify(sessions, world), "schema: batches.review_required is of type pg_catalog.text, not bool")


@ONLY_POSTGRESQL
def test_a_table_replaced_by_a_view_that_hides_rows_from_the_app_is_caught(sessions, world) -> None:
    """PostgreSQL: a governed table renamed and replaced by a view whose rows depend on the reader's
    transaction isolation (`verify_ledger` reads REPEATABLE READ, the services READ COMMITTED): the
    verifier sees the hold, Atelier does not."""
    attack(
        sessions,
        "ALTER TABLE legal_holds RENAME TO legal_holds_data",
        "CREATE VIEW legal_holds AS SELECT * FROM legal_holds_data "
        "WHERE current_setting('transaction_isolation') = 'repeatable read' OR id <> '" + world.hold + "'",
    )
    with sessions() as s:
        image = s.get(Image, world.published)
        assert active_holds(s, [image]) == {}
    report = verify(sessions, world)
    assert not report.ok, report.problems
    assert any("legal_holds" in p for p in report.problems), report.problems
