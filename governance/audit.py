"""The audit ledger: append-only, hash-chained, authenticated, and binding the governed records.

Each event stores `hash = sha256(prev_hash + canonical_json(body))`. The body covers seq, at, actor,
action, subject and payload, and, when not null (so events written before they existed keep their
hashes): the API token the actor used (`token_id`), the governed records the event binds (`records`,
see governance.bindings) and the id of the audit key (`key_id`). `mac` = HMAC-SHA256(audit key, hash)
authenticates the event: someone who can write to the database but does not hold the key can
neither append an event nor rewrite one (and recompute the hashes after it) unnoticed.

Writing: a service function calls `record_event(session, ...)` inside the caller's transaction
(invariant 3). The event is completed when the transaction commits (a `before_commit` hook): the
governed rows the transaction created, changed or deleted (collected by an `after_flush` hook, so no
call site lists them) are digested by the database, bound to the event whose subject they are (else
to the transaction's last event), and the events get their seq (head + 1, the primary key, so two
writers that read the same head collide instead of forking the chain; on PostgreSQL a transaction-
scoped advisory lock also serialises appenders), hash and MAC. A transaction that changes a governed
record but records no event is refused (GovernanceCheckFailed), and so is a bulk UPDATE/DELETE/INSERT
statement on a governed table (it would bypass the binding).

The key ring and the acting token come from the session's `info` (`governance.db.make_sessionmaker`,
`flows.runtime.Runtime`): nothing is configured at import time. No key ring, no event: an error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, UOWTransaction

from governance import bindings
from governance.errors import GovernanceCheckFailed, InvalidInput
from governance.keyring import read_ring, write_development_ring
from governance.records import AuditEvent

GENESIS_HASH = "0" * 64
_PG_LOCK_KEY = 0x41544C52  # "ATLR"

# session.info keys (set by governance.db.make_sessionmaker)
AUDIT_KEYS = "atelier.audit_keys"  # an AuditKeyRing, or a zero-argument callable returning one
TOKEN_ID = "atelier.token_id"  # the API token the acting user authenticated with (None: none)
_STATE = "atelier.audit_transaction"  # this transaction's pending events and touched records

KEY_FILE = "audit-key.txt"
DEV_KEY_HEADER = "# Atelier DEVELOPMENT audit key - NOT FOR PRODUCTION (made by `atelier keys init`)"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class AuditKey:
    """A secret that authenticates events (HMAC-SHA256). `key_id` (a hash) is recorded, never the secret."""

    secret: bytes
    development: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < 16:
            raise InvalidInput("an audit key must be at least 16 bytes (32 hex digits)")

    @property
    def key_id(self) -> str:
        return "ak-" + hashlib.sha256(b"atelier audit key id\0" + self.secret).hexdigest()[:16]

    def mac(self, event_hash_hex: str) -> str:
        return hmac.digest(self.secret, event_hash_hex.encode(), "sha256").hex()

    def __repr__(self) -> str:  # never print the secret
        return f"AuditKey({self.key_id}{', development' if self.development else ''})"


@dataclass(frozen=True)
class AuditKeyRing:
    """The current key (authenticates new events) first; earlier keys verify the events they made."""

    keys: tuple[AuditKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise GovernanceCheckFailed("the audit key ring is empty")

    @property
    def current(self) -> AuditKey:
        return self.keys[0]

    def get(self, key_id: str) -> AuditKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    def secrets_by_id(self) -> dict[str, bytes]:
        return {k.key_id: k.secret for k in self.keys}


def load_audit_key_ring(path: Path) -> AuditKeyRing:
    """The audit key ring at `path` (governance.keyring: the current key first, earlier keys after it)."""
    keys, development = read_ring(
        path, "audit key", "ATELIER_AUDIT_KEY_FILE / ATELIER_AUDIT_KEY_CALLBACK", DEV_KEY_HEADER
    )
    return AuditKeyRing(tuple(AuditKey(k, development=development) for k in keys))


def ensure_development_audit_key(path: Path, rotate: bool = False) -> AuditKeyRing:
    """The development audit key ring at `path`, made (mode 0600, marked NOT FOR PRODUCTION) when missing.

    `rotate` puts a new current key first and keeps the earlier ones after it, so events they
    authenticated keep verifying. A ring that is not a development ring is never touched."""
    earlier: list[bytes] = []
    if path.exists():
        ring = load_audit_key_ring(path)
        if not rotate:
            return ring
        if not ring.current.development:
            raise GovernanceCheckFailed(f"{path} is not a development key ring: rotate production keys in your KMS")
        earlier = [k.secret for k in ring.keys]
    comment = "the current key first; earlier keys after it verify the events they authenticated"
    write_development_ring(path, DEV_KEY_HEADER, comment, earlier)
    return load_audit_key_ring(path)


def audit_key_from_callback(spec: str) -> AuditKey:
    """``package.module:function`` returning the current audit key's bytes (a KMS or HSM derives it)."""
    from governance.credentials import load_callback

    fn = load_callback(spec, "audit key callback")
    try:
        secret = fn()
    except Exception as exc:  # noqa: BLE001 - whatever the hook raises, no key means no event
        raise GovernanceCheckFailed(f"audit key callback {spec!r} failed: {exc}") from None
    if not isinstance(secret, bytes):
        raise GovernanceCheckFailed(f"audit key callback {spec!r} must return bytes, got {type(secret).__name__}")
    return AuditKey(secret)


def key_ring_of(session: Session) -> AuditKeyRing:
    """The audit key ring this session was made with (governance.db.make_sessionmaker), or an error."""
    found = session.info.get(AUDIT_KEYS)
    if callable(found):
        found = found()
    if not isinstance(found, AuditKeyRing):
        raise GovernanceCheckFailed(
            "no audit key: audit events cannot be authenticated. Run `atelier keys init` for a development key, "
            "or set ATELIER_AUDIT_KEY_FILE / ATELIER_AUDIT_KEY_CALLBACK (sessions come from "
            "governance.db.make_sessionmaker(engine, audit_keys=...))"
        )
    return found


# ---------------------------------------------------------------- writing


def event_body(event: AuditEvent) -> dict[str, Any]:
    body = {
        "seq": event.seq,
        "at": event.at,
        "actor": event.actor,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "payload": event.payload,
    }
    for name in ("token_id", "records", "key_id"):  # only when set: older events keep their hashes
        value = getattr(event, name)
        if value is not None:
            body[name] = value
    return body


@dataclass
class _Pending:
    """One transaction's events (each with the records it binds explicitly) and the governed records
    its flushes touched: (kind, id) -> whether the record existed before this transaction."""

    events: list[tuple[AuditEvent, list[bindings.RecordKey]]] = field(default_factory=list)
    touched: dict[bindings.RecordKey, bool] = field(default_factory=dict)


def _pending(session: Session) -> _Pending:
    state = session.info.get(_STATE)
    if not isinstance(state, _Pending):
        state = session.info[_STATE] = _Pending()
    return state


def record_event(
    session: Session,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    payload: dict[str, Any] | None = None,
    *,
    records: Iterable[bindings.RecordKey] = (),
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction.

    The event is written when the transaction commits, with the records the transaction changed
    bound to it; `records` binds these (kind, id) as they stand then, changed or not (a baseline).
    Its seq and hash are set from then on."""
    key_ring_of(session)  # no key, no event: fail before the caller does anything irreversible
    event = AuditEvent(
        actor=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        # Round-trip through JSON so what is hashed is exactly what the database returns later.
        payload=json.loads(canonical_json(payload or {})),
    )
    _pending(session).events.append((event, list(records)))
    return event


def _after_flush(session: Session, _flush_context: UOWTransaction) -> None:
    """Note every governed record this flush created, changed or deleted."""
    state: _Pending | None = session.info.get(_STATE)
    for obj in session.new:
        found = bindings.record_key(obj)
        if found:
            key, child = found
            state = state or _pending(session)
            # a child row (a role) means its parent existed; a new parent was made in this transaction
            # (unless it was already noted as existing: deleted and made again)
            state.touched.setdefault(key, child)
    for obj in session.dirty:
        found = bindings.record_key(obj)
        if found and session.is_modified(obj):
            state = state or _pending(session)
            state.touched.setdefault(found[0], True)
    for obj in session.deleted:
        found = bindings.record_key(obj)
        if found:
            state = state or _pending(session)
            state.touched.setdefault(found[0], True)


def _refuse_bulk_statements(orm_execute_state: ORMExecuteState) -> None:
    if not (orm_execute_state.is_insert or orm_execute_state.is_update or orm_execute_state.is_delete):
        return
    table = getattr(orm_execute_state.statement, "table", None)
    name = getattr(table, "name", None)
    if name in bindings.governed_tables():
        raise GovernanceCheckFailed(
            f"a bulk {type(orm_execute_state.statement).__name__.upper()} on {name} would change governed records "
            "without binding them to the audit ledger: change them as ORM objects"
        )


@dataclass(frozen=True)
class _Binding:
    digest: str | None  # None: deleted
    label: str | None  # the record's name where it has one (users): how events name it as their subject


def _bindings_of(session: Session, state: _Pending) -> dict[bindings.RecordKey, _Binding]:
    """Every record to bind (those changed, and those named explicitly) with its digest now."""
    wanted: dict[bindings.RecordKey, bool] = dict(state.touched)
    for _event, explicit in state.events:
        for key in explicit:
            wanted.setdefault(key, True)
    by_kind: dict[str, list[str]] = {}
    for kind, rid in wanted:
        by_kind.setdefault(kind, []).append(rid)
    out: dict[bindings.RecordKey, _Binding] = {}
    for kind_name, ids in by_kind.items():
        found = bindings.row_digests(session, bindings.kind_named(kind_name), ids)
        for rid in ids:
            if rid in found:
                out[(kind_name, rid)] = _Binding(*found[rid])
            elif wanted[(kind_name, rid)]:
                out[(kind_name, rid)] = _Binding(None, None)
            # else: made and gone again within the transaction (a savepoint rolled back): never was
    return out


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint is released: the transaction goes on
    session.flush()  # the last changes; _after_flush notes them
    state: _Pending | None = session.info.get(_STATE)
    if state is None:
        return
    found = _bindings_of(session, state) if (state.touched or any(e[1] for e in state.events)) else {}
    if found and not state.events:
        named = ", ".join(f"{k} {i}" for k, i in sorted(found)[:5])
        raise GovernanceCheckFailed(
            f"{len(found)} governed record(s) changed ({named}) in a transaction that records no audit event: "
            "every state change writes its event in the same transaction (invariant 3)"
        )
    _complete_events(session, state, found)
    session.info.pop(_STATE, None)


def _complete_events(session: Session, state: _Pending, found: dict[bindings.RecordKey, _Binding]) -> None:
    if not state.events:
        return
    ring = key_ring_of(session)
    key = ring.current
    token_id = session.info.get(TOKEN_ID)
    # Each record goes to the event it is the subject of (by id or by name), else to the transaction's last.
    per_event: list[dict[bindings.RecordKey, str | None]] = [{} for _ in state.events]
    subjects = {(e.subject_type, e.subject_id): i for i, (e, _) in enumerate(state.events)}
    explicit = {k: i for i, (_, keys) in enumerate(state.events) for k in keys}
    last = len(state.events) - 1
    for record, binding in found.items():
        index = explicit.get(record, subjects.get(record, subjects.get((record[0], binding.label or ""), last)))
        per_event[index][record] = binding.digest
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    head = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for (ev, _), records in zip(state.events, per_event, strict=True):
        ev.seq, ev.at, ev.prev_hash = seq, at, prev
        ev.token_id = token_id
        ev.records = [[k, i, d] for (k, i), d in sorted(records.items())] or None
        ev.key_id = key.key_id
        ev.hash = event_hash(prev, event_body(ev))
        ev.mac = key.mac(ev.hash)
        session.add(ev)
        seq, prev = seq + 1, ev.hash
    session.flush()


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the whole transaction is over (committed or rolled back)
        session.info.pop(_STATE, None)


# Every session in the process: a governed change in any session is bound or refused.
event.listen(Session, "after_flush", _after_flush)
event.listen(Session, "before_commit", _before_commit)
event.listen(Session, "after_transaction_end", _after_transaction_end)
event.listen(Session, "do_orm_execute", _refuse_bulk_statements)


# ---------------------------------------------------------------- verifying


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str = ""
    authenticated: int = 0  # events whose MAC verified
    legacy: int = 0  # events written before events were authenticated (accepted up to `legacy_until`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "authenticated": self.authenticated,
            "legacy": self.legacy,
        }


def _q(value: str) -> str:
    """json.dumps(value, ensure_ascii=False), without its cost for the usual plain ASCII strings."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value, ensure_ascii=False)


def _fast_body(
    seq: int,
    at: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    payload: str,
    token_id: str | None,
    records: str | None,
    key_id: str | None,
) -> str:
    """canonical_json(body) built from the stored JSON texts, without parsing them.

    The engine stores JSON with `canonical_json` (governance.db), so the stored text of a payload
    written by `record_event` is already canonical; keys here are in sorted order. The usual event's
    strings are plain printable ASCII without quotes or backslashes: checked once for all of them,
    they are quoted as they are; otherwise each is encoded as JSON."""
    plain = at + actor + action + subject_type + subject_id + (token_id or "") + (key_id or "")
    if not (plain.isascii() and plain.isprintable() and '"' not in plain and "\\" not in plain):
        return _escaped_body(seq, at, actor, action, subject_type, subject_id, payload, token_id, records, key_id)
    head = f'{{"action":"{action}","actor":"{actor}","at":"{at}",'
    if key_id is not None:
        head += f'"key_id":"{key_id}",'
    middle = f'"payload":{payload},' if records is None else f'"payload":{payload},"records":{records},'
    tail = f'"seq":{seq},"subject_id":"{subject_id}","subject_type":"{subject_type}"'
    if token_id is not None:
        tail += f',"token_id":"{token_id}"'
    return head + middle + tail + "}"


def _escaped_body(
    seq: int,
    at: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    payload: str,
    token_id: str | None,
    records: str | None,
    key_id: str | None,
) -> str:
    return (
        f'{{"action":{_q(action)},"actor":{_q(actor)},"at":{_q(at)},'
        + (f'"key_id":{_q(key_id)},' if key_id is not None else "")
        + f'"payload":{payload},'
        + (f'"records":{records},' if records is not None else "")
        + f'"seq":{seq},"subject_id":{_q(subject_id)},"subject_type":{_q(subject_type)}'
        + (f',"token_id":{_q(token_id)}' if token_id is not None else "")
        + "}"
    )


@dataclass(frozen=True)
class ChainStart:
    """Where a partial verification starts: after event `seq`, whose hash is `hash` (a verified anchor's)."""

    seq: int
    hash: str


class _Macs:
    """HMAC-SHA256 under each key of a ring, with the keyed inner and outer states computed once per
    key (the same MAC as `hmac`, about three times faster per event than `hmac.digest`)."""

    def __init__(self, ring: AuditKeyRing):
        self._states: dict[str, tuple[Any, Any]] = {}
        for key in ring.keys:
            block = key.secret if len(key.secret) <= 64 else hashlib.sha256(key.secret).digest()
            block = block.ljust(64, b"\0")
            self._states[key.key_id] = (
                hashlib.sha256(bytes(b ^ 0x36 for b in block)),
                hashlib.sha256(bytes(b ^ 0x5C for b in block)),
            )

    def known(self, key_id: str) -> bool:
        return key_id in self._states

    def states(self) -> dict[str, tuple[Any, Any]]:
        return self._states

    def mac(self, key_id: str, event_hash_hex: str) -> str:
        inner_base, outer_base = self._states[key_id]
        inner = inner_base.copy()
        inner.update(event_hash_hex.encode())
        outer = outer_base.copy()
        outer.update(inner.digest())
        return str(outer.hexdigest())


_CHAIN_COLUMNS = (
    "seq, at, actor, action, subject_type, subject_id, CAST(payload AS TEXT), prev_hash, hash, "
    "token_id, CAST(records AS TEXT), key_id, mac"
)


def _chain_rows(session: Session, first_seq: int, until: int | None, batch_size: int) -> Iterator[tuple[Any, ...]]:
    """The events from `first_seq` (to `until`) as plain DBAPI tuples, in seq order, in the session's
    transaction; on PostgreSQL through a server-side cursor (bounded memory)."""
    dbapi = session.connection().connection.dbapi_connection
    assert dbapi is not None
    pg = session.get_bind().dialect.name == "postgresql"
    mark = "%s" if pg else "?"
    sql = f"SELECT {_CHAIN_COLUMNS} FROM audit_events WHERE seq >= {mark}"
    params: list[int] = [first_seq]
    if until is not None:
        sql += f" AND seq <= {mark}"
        params.append(until)
    sql += " ORDER BY seq"
    cursor = dbapi.cursor(name=f"atelier_chain_{secrets.token_hex(4)}") if pg else dbapi.cursor()
    try:
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(batch_size):
            yield from batch
    finally:
        cursor.close()


def json_checked_by_database(session: Session) -> bool:
    """Whether the database itself refuses an audit event whose payload or records is not one JSON value:
    PostgreSQL, while both columns are its own json or jsonb type (as the migrations make them).

    The chain check hashes the stored JSON texts side by side (`"payload":P,"records":R,`), and that text
    is the same when an attacker moves part of R into P (or the reverse): only if each column holds one
    JSON value does equal text mean equal columns. SQLite stores any text, and a DBA can turn a column into
    text first; then `verify_chain` parses each column before hashing."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    types = session.execute(
        text(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = CAST('audit_events' AS regclass) "
            "AND attname IN ('payload', 'records') AND NOT attisdropped "
            "AND atttypid IN (CAST('pg_catalog.json' AS regtype), CAST('pg_catalog.jsonb' AS regtype))"
        )
    ).scalar_one()
    return int(types) == 2


def _one_json_value(*texts: str | None) -> bool:
    try:
        for value in texts:
            if value is not None:
                json.loads(value)
    except ValueError:
        return False
    return True


def verify_chain(
    session: Session,
    batch_size: int = 20000,
    *,
    keys: AuditKeyRing | None = None,
    legacy_until: int = 0,
    start: ChainStart | None = None,
    until: int | None = None,
) -> ChainReport:
    """Recompute the chain and every event's MAC; report the first event that does not fit.

    Events without a MAC are accepted only up to `legacy_until` (written before events were
    authenticated, as vouched for by a signed anchor or a baseline event: governance.ledger); any
    later one was written by someone without the audit key. `start`: verify only the events after a
    trusted point (incremental); `until`: stop after that event (a parallel worker's range).

    Reads plain DBAPI rows (no ORM objects, no SQLAlchemy rows) and hashes each payload's stored
    text; only when that does not match (a payload stored in another JSON spelling) is it parsed and
    re-encoded. Where the database does not itself keep each JSON column one JSON value
    (`json_checked_by_database`), each is parsed first."""
    ring = keys or key_ring_of(session)
    json_checked = json_checked_by_database(session)
    macs = _Macs(ring)
    states = macs.states()
    first_seq = start.seq + 1 if start else 1
    expected_seq, prev, count, authenticated, legacy = first_seq, start.hash if start else GENESIS_HASH, 0, 0, 0
    sha256 = hashlib.sha256

    def bad(seq: int, problem: str) -> ChainReport:
        return ChainReport(False, count, seq - 1, prev, seq, problem, authenticated, legacy)

    for row in _chain_rows(session, first_seq, until, batch_size):
        seq, at, actor, action, subject_type, subject_id, payload, prev_hash, stored_hash = row[:9]
        token_id, records, key_id, mac = row[9:]
        count += 1
        if seq != expected_seq:
            return bad(
                expected_seq,
                f"event {expected_seq} is missing (next stored event is {seq}): an event was deleted or renumbered",
            )
        if prev_hash != prev:
            return bad(
                seq,
                f"event {seq} ({action}) does not link to event {seq - 1}: events were deleted, inserted or reordered",
            )
        if not json_checked and not _one_json_value(payload, records):
            return bad(
                seq,
                f"event {seq} ({action}) was altered: its payload or records column is not one JSON value "
                "(text moved between the event's columns)",
            )
        body = _fast_body(seq, at, actor, action, subject_type, subject_id, payload, token_id, records, key_id)
        if sha256((prev + body).encode()).hexdigest() != stored_hash:
            slow: dict[str, Any] = {
                "seq": seq,
                "at": at,
                "actor": actor,
                "action": action,
                "subject_type": subject_type,
                "subject_id": subject_id,
                "payload": json.loads(payload),
            }
            for name, value in (("token_id", token_id), ("records", records), ("key_id", key_id)):
                if value is not None:
                    slow[name] = json.loads(value) if name == "records" else value
            if event_hash(prev, slow) != stored_hash:
                return bad(seq, f"event {seq} ({action}) was altered: its content no longer matches its hash")
        if key_id is None:
            if seq > legacy_until or authenticated:  # once events are authenticated, every later one is
                hint = "" if authenticated else " (events from before 0007: an admin runs `atelier audit baseline`)"
                return bad(
                    seq,
                    f"event {seq} ({action}) is not authenticated (no MAC): it was written without the audit key "
                    f"(appended or rewritten with database access only){hint}",
                )
            legacy += 1
        else:
            state = states.get(key_id)
            if state is None:
                return bad(seq, f"event {seq} ({action}) names audit key {key_id}, which is not in the key ring")
            inner, outer = state[0].copy(), state[1].copy()  # HMAC-SHA256, as _Macs.mac (inlined: the hot loop)
            inner.update(stored_hash.encode())
            outer.update(inner.digest())
            if mac != outer.hexdigest():
                return bad(
                    seq,
                    f"event {seq} ({action}) fails its MAC: it was written or rewritten without the audit key",
                )
            authenticated += 1
        prev, expected_seq = stored_hash, expected_seq + 1
    return ChainReport(True, count, expected_seq - 1, prev, None, "", authenticated, legacy)


def events_for(session: Session, subject_ids: list[str]) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(AuditEvent.subject_id.in_(subject_ids)).order_by(AuditEvent.seq)
    return list(session.scalars(stmt))


def make_key_loader(load: Callable[[], AuditKeyRing]) -> Callable[[], AuditKeyRing]:
    """A zero-argument callable for `session.info[AUDIT_KEYS]` that loads the ring once, when first needed."""
    ring: list[AuditKeyRing] = []

    def loader() -> AuditKeyRing:
        if not ring:
            ring.append(load())
        return ring[0]

    return loader
