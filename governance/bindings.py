"""Governed records: which rows the audit ledger binds, the digest that binds each, and the check.

A governed record is one row of a governed table; a user's roles and a run's model versions are
folded into the user's and the run's record (so "omar became an approver" is a change of user omar).
Every audit event lists the records its transaction created, changed or deleted, as
``[kind, id, digest]`` (``digest`` null for a deletion), and that list is part of the event's hashed
and authenticated body (``governance.audit``). ``audit verify`` then checks every current row of every
governed table against the latest digest the ledger holds for it (:func:`check_records`).

Governed: users (+ user_roles), API tokens, licences, model versions, batches, prompts, approvals,
runs (+ run_model_versions), images, legal holds, preference judgements, the catalogue (imports, product versions,
products, templates, standing approvals, items). Operational, never bound: work_chunks (leases
change on every claim and renewal; what a chunk did is audited as chunk.* events), audit_events and
audit_anchors (the ledger itself), webhook_deliveries (an outbox; the change it reports is bound by its
own event), console_sessions (sign-ins and logouts are events), alembic_version.

The digest is SHA-256 of a canonical text of ALL the row's columns (SQLAlchemy's metadata for the
table), in column-name order, NULLs left out (so a nullable column added later keeps older digests
valid), each as ``name=<length in UTF-8 bytes>:<text>;`` (a length prefix, so no value can imitate a boundary). The
database computes it, in one set-based statement whatever the number of rows: PostgreSQL with its
``sha256()``; SQLite with a function registered on each connection (``governance.db``). The text of a
value is the database's own, in a form that no session setting changes: PostgreSQL renders times with
``to_char`` in UTC, floats as the hex of their 8 bytes (``float8send``), JSON as stored; SQLite prefixes
each value with its storage class (``typeof``). Digests are therefore comparable within one database,
not across dialects (a move between databases is a new baseline).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    String,
    Table,
    TypeDecorator,
    bindparam,
    text,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session

from governance.records import Base

# Messages list this many records per kind, then say how many more there are.
MAX_NAMED_PER_KIND = 20


@dataclass(frozen=True)
class Child:
    """Rows of another table folded into a parent's record: `fk` names the parent, `column` is listed."""

    table: str
    fk: str
    column: str


@dataclass(frozen=True)
class Kind:
    name: str  # as in audit events' subject_type: "user", "image"
    table: str
    children: tuple[Child, ...] = ()
    label: str | None = None  # a column that names the record better than its id (users: name)


KINDS: tuple[Kind, ...] = (
    Kind("user", "users", (Child("user_roles", "user_id", "role"),), label="name"),
    Kind("token", "api_tokens"),
    Kind("licence", "licences"),
    Kind("model_version", "model_versions"),
    Kind("batch", "batches"),
    Kind("prompt", "prompts"),
    Kind("approval", "approvals"),
    Kind("run", "runs", (Child("run_model_versions", "run_id", "model_version_id"),)),
    Kind("image", "images"),
    Kind("legal_hold", "legal_holds"),
    Kind("preference", "preferences"),
    Kind("catalogue_import", "catalogue_imports"),
    Kind("product_version", "product_versions"),
    Kind("product", "products"),
    Kind("template", "prompt_templates"),
    Kind("standing_approval", "standing_approvals"),
    Kind("catalogue_item", "catalogue_items"),
)
OPERATIONAL_TABLES = (
    "work_chunks",
    "audit_events",
    "audit_anchors",
    "alembic_version",
    "webhook_deliveries",
    "console_sessions",
)

RecordKey = tuple[str, str]  # (kind, id)


@cache
def kinds() -> tuple[Kind, ...]:
    """The governed kinds whose table the models declare."""
    return tuple(k for k in KINDS if k.table in Base.metadata.tables)


@cache
def _by_table() -> dict[str, tuple[Kind, Child | None]]:
    out: dict[str, tuple[Kind, Child | None]] = {}
    for k in kinds():
        out[k.table] = (k, None)
        for c in k.children:
            out[c.table] = (k, c)
    return out


def kind_named(name: str) -> Kind:
    for k in kinds():
        if k.name == name:
            return k
    raise KeyError(name)


def governed_tables() -> frozenset[str]:
    """Every table whose rows are bound (parents and the children folded into them)."""
    return frozenset(_by_table())


def _table(kind: Kind) -> Table:
    return Base.metadata.tables[kind.table]


def _pk(kind: Kind) -> Column[Any]:
    (pk,) = _table(kind).primary_key.columns  # every governed table has a one-column key
    return pk


def record_key(obj: Any) -> tuple[RecordKey, bool] | None:
    """(kind, id) of the governed record an ORM object is (or belongs to), and whether the object is
    a child row (a role, a run's model version); None for anything not governed."""
    table = getattr(type(obj), "__table__", None)
    if table is None:
        return None
    found = _by_table().get(table.name)
    if found is None:
        return None
    kind, child = found
    from sqlalchemy import inspect as sa_inspect

    mapper = sa_inspect(type(obj))
    column = table.c[child.fk] if child else _pk(kind)
    value = getattr(obj, mapper.get_property_by_column(column).key)
    if value is None:
        return None
    return (kind.name, str(value)), child is not None


# ---------------------------------------------------------------- the digest, as SQL


def _q(dialect: Dialect, name: str) -> str:
    return dialect.identifier_preparer.quote(name)


def _base_type(column: Column[Any]) -> Any:
    """The column's SQL type under any TypeDecorator (what the database stores)."""
    typ = column.type
    while isinstance(typ, TypeDecorator):
        typ = typ.impl  # type: ignore[assignment]
    return typ


def _value_text(dialect: Dialect, column: Column[Any], ref: str) -> str:
    """SQL for a column's canonical text (NULL stays NULL)."""
    typ = _base_type(column)
    pg = dialect.name == "postgresql"
    if isinstance(typ, JSON):
        value = f"CAST({ref} AS TEXT)"
    elif isinstance(typ, DateTime):
        if pg:  # a BC year gets its era ('YYYY' has none); infinity, which to_char renders as NULL, its name
            utc = f"({ref} AT TIME ZONE 'UTC')"
            era = f"CASE WHEN {utc} < TIMESTAMP '0001-01-01 00:00:00' THEN ' BC' ELSE '' END"
            value = f"COALESCE(to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || {era}, CAST({ref} AS TEXT))"
        else:
            value = f"CAST({ref} AS TEXT)"
    elif isinstance(typ, Float):
        value = f"encode(float8send(CAST({ref} AS DOUBLE PRECISION)), 'hex')" if pg else f"atelier_float_hex({ref})"
    elif isinstance(typ, (Integer, Boolean)):
        value = f"CAST({ref} AS TEXT)"
    else:  # String, Text
        value = ref if pg else f"CAST({ref} AS TEXT)"
    if not pg:  # SQLite stores any value in any column: its storage class is part of the value
        value = f"typeof({ref}) || ':' || {value}"
    return value


def _part(dialect: Dialect, name: str, value: str) -> str:
    """`name=<bytes>:<text>;`, or NULL for NULL (left out); the length in UTF-8 bytes (PostgreSQL reads
    it from the value's header, where a count of characters would scan it)."""
    size = f"octet_length({value})" if dialect.name == "postgresql" else f"length(CAST({value} AS BLOB))"
    return f"'{name}=' || {size} || ':' || {value} || ';'"


def _child_value(dialect: Dialect, ref: str) -> str:
    """SQL for one child value's text in the comma-joined list: a value with a comma or a backslash has
    them escaped (so rows "a", "b" and one row "a,b" differ), an empty one is `\\e`, NULL is `\\N`, and on
    SQLite a value stored as anything but text is prefixed with its storage class (`\\blob=`). A plain
    value (a role, a model version's id) is its text, as before these escapes."""
    as_text = f"CAST({ref} AS TEXT)"
    escaped = f"replace(replace({as_text}, '\\', '\\\\'), ',', '\\,')"
    cases = f"WHEN {as_text} = '' THEN '\\e' ELSE {escaped}"
    if dialect.name != "postgresql":
        cases = f"WHEN typeof({ref}) <> 'text' THEN '\\' || typeof({ref}) || '=' || {escaped} " + cases
    return f"COALESCE(CASE {cases} END, '\\N')"


def _child_text(dialect: Dialect, kind: Kind, child: Child, alias: str) -> str:
    pk = f"{alias}.{_q(dialect, _pk(kind).name)}"
    col, fk, table = _q(dialect, child.column), _q(dialect, child.fk), _q(dialect, child.table)
    value = _child_value(dialect, f"c.{col}")
    if dialect.name == "postgresql":
        agg = f"(SELECT string_agg({value}, ',' ORDER BY c.{col}) FROM {table} c WHERE c.{fk} = {pk})"
    else:
        agg = (
            f"(SELECT group_concat(x, ',') FROM (SELECT {value} AS x FROM {table} c "
            f"WHERE c.{fk} = {pk} ORDER BY c.{col}))"
        )
    return _part(dialect, child.table, f"COALESCE({agg}, '')")


def digest_sql(dialect: Dialect, kind: Kind, alias: str = "t") -> str:
    """SQL for the digest of each row of `kind`'s table (aliased `alias`), as 64 hex digits."""
    table = _table(kind)
    parts = [f"'{kind.name};'"]
    for column in sorted(table.columns, key=lambda c: c.name):
        parts.append(_part(dialect, column.name, _value_text(dialect, column, f"{alias}.{_q(dialect, column.name)}")))
    for child in kind.children:
        parts.append(_child_text(dialect, kind, child, alias))
    if dialect.name == "postgresql":
        # concat() leaves NULL parts out and copies once; a chain of || would copy the growing text per part
        return f"encode(sha256(convert_to(concat({', '.join(parts)}), 'UTF8')), 'hex')"
    return f"atelier_sha256({' || '.join(f'COALESCE({part}, {chr(39)}{chr(39)})' for part in parts)})"


def id_sql(dialect: Dialect, kind: Kind, alias: str = "t") -> str:
    return f"CAST({alias}.{_q(dialect, _pk(kind).name)} AS TEXT)"


def label_sql(dialect: Dialect, kind: Kind, alias: str = "t") -> str:
    return f"{alias}.{_q(dialect, kind.label)}" if kind.label else "NULL"


# SQLite has no SHA-256: governance.db registers these on every connection.


def sqlite_sha256(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


def sqlite_float_hex(value: float | int | None) -> str | None:
    return None if value is None else struct.pack(">d", float(value)).hex()


def _connection(session_or_conn: Session | Connection) -> Connection:
    return session_or_conn.connection() if isinstance(session_or_conn, Session) else session_or_conn


def _chunks(items: list[str], size: int = 1000) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def row_digests(
    session_or_conn: Session | Connection, kind: Kind, ids: Iterable[str]
) -> dict[str, tuple[str, str | None]]:
    """(digest, label) of each of these records that exists (missing ids: deleted or never made)."""
    conn = _connection(session_or_conn)
    dialect = conn.dialect
    pk = _pk(kind)
    convert = int if isinstance(pk.type, Integer) else str
    stmt = text(
        f"SELECT {id_sql(dialect, kind)} AS rid, {digest_sql(dialect, kind)} AS digest, "
        f"{label_sql(dialect, kind)} AS label "
        f"FROM {_q(dialect, kind.table)} t WHERE t.{_q(dialect, pk.name)} IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    out: dict[str, tuple[str, str | None]] = {}
    for chunk in _chunks(sorted(set(ids))):
        for rid, digest, label in conn.execute(stmt, {"ids": [convert(i) for i in chunk]}):
            out[rid] = (digest, label)
    return out


def all_record_ids(session_or_conn: Session | Connection, kind: Kind) -> list[str]:
    conn = _connection(session_or_conn)
    sql = f"SELECT {id_sql(conn.dialect, kind)} FROM {_q(conn.dialect, kind.table)} t"
    return [r for (r,) in conn.execute(text(sql))]


# ---------------------------------------------------------------- the tables themselves

# PostgreSQL's own types (pg_catalog) each model type may have in the database: the digest renders a
# value by the model's type, so a column turned into another type (a boolean into text: 'false' then
# reads as true) could keep its digests while Atelier reads something else.
_PG_TYPES: tuple[tuple[type[Any], tuple[str, ...]], ...] = (
    (Boolean, ("bool",)),
    (Integer, ("int2", "int4", "int8")),  # BigInteger is an Integer
    (Float, ("float4", "float8")),
    (DateTime, ("timestamptz", "timestamp")),
    (JSON, ("json", "jsonb")),
    (String, ("varchar", "text", "bpchar")),  # Text is a String
)


def _pg_types_of(column: Column[Any]) -> tuple[str, ...]:
    typ = _base_type(column)
    for base, names in _PG_TYPES:
        if isinstance(typ, base):
            return names
    raise TypeError(f"{column.table.name}.{column.name}: no PostgreSQL type known for {type(typ).__name__}")


def schema_problems(session_or_conn: Session | Connection) -> list[str]:
    """What is wrong with the governed tables themselves, as `audit verify` sees them: each must be a
    plain table (not a view, whose rows may depend on who reads and how), without row-level security
    or rewrite rules, and each column of PostgreSQL's own type for its model type."""
    conn = _connection(session_or_conn)
    tables = sorted(governed_tables())
    problems: list[str] = []
    if conn.dialect.name != "postgresql":
        found: dict[str, str] = dict(
            conn.execute(
                text("SELECT name, type FROM sqlite_master WHERE name IN :names").bindparams(
                    bindparam("names", expanding=True)
                ),
                {"names": tables},
            ).all()
        )
        for table in tables:
            if found.get(table) != "table":
                problems.append(f"schema: {table} is a {found.get(table, 'missing table')}, not a table")
        return problems
    rows = conn.execute(
        text(
            "SELECT t.name, c.relkind, c.relrowsecurity OR c.relforcerowsecurity, "
            "EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid) "
            "FROM unnest(CAST(:names AS TEXT[])) AS t(name) LEFT JOIN pg_class c ON c.oid = to_regclass(t.name)"
        ),
        {"names": tables},
    ).all()
    for table, relkind, secured, rules in rows:
        if relkind is None:
            problems.append(f"schema: table {table} is missing")
        elif relkind != "r":
            problems.append(
                f"schema: {table} is not a plain table (relkind {relkind}): its rows may depend on the reader"
            )
        if secured:
            problems.append(f"schema: {table} has row-level security: readers may see different rows")
        if rules:
            problems.append(f"schema: {table} has rewrite rules")
    types = conn.execute(
        text(
            "SELECT c.relname, a.attname, t.typname, n.nspname FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid "
            "JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE a.attrelid IN (SELECT to_regclass(x) FROM unnest(CAST(:names AS TEXT[])) AS x) "
            "AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        {"names": tables},
    ).all()
    actual = {(table, column): (typname, schema) for table, column, typname, schema in types}
    for table in tables:
        for column in Base.metadata.tables[table].columns:
            found_type = actual.get((table, column.name))
            if found_type is None:
                continue  # a missing column fails the digest itself
            wanted = _pg_types_of(column)
            if found_type[1] != "pg_catalog" or found_type[0] not in wanted:
                problems.append(
                    f"schema: {table}.{column.name} is of type {found_type[1]}.{found_type[0]}, not "
                    f"{' or '.join(wanted)}: Atelier would read its values as something else than was bound"
                )
    return problems


# ---------------------------------------------------------------- the check


_BINDINGS = "atelier_latest_bindings"


def _latest_bindings_sql(dialect: Dialect) -> str:
    """The newest binding of every record named by events in (since, head]: kind, rid, seq, digest."""
    if dialect.name == "postgresql":
        elements = (
            "SELECT v.x->>0 AS kind, v.x->>1 AS rid, e.seq AS seq, v.x->>2 AS digest "
            "FROM audit_events e CROSS JOIN LATERAL jsonb_array_elements(CAST(e.records AS JSONB)) AS v(x) "
            "WHERE e.records IS NOT NULL AND e.seq > :since AND e.seq <= :head"
        )
        return f"SELECT DISTINCT ON (kind, rid) kind, rid, seq, digest FROM ({elements}) b ORDER BY kind, rid, seq DESC"
    elements = (
        "SELECT json_extract(v.value, '$[0]') AS kind, json_extract(v.value, '$[1]') AS rid, e.seq AS seq, "
        "json_extract(v.value, '$[2]') AS digest, "
        "row_number() OVER (PARTITION BY json_extract(v.value, '$[0]'), json_extract(v.value, '$[1]') "
        "ORDER BY e.seq DESC) AS rn "
        "FROM audit_events e, json_each(e.records) AS v "
        "WHERE e.records IS NOT NULL AND e.seq > :since AND e.seq <= :head"
    )
    return f"SELECT kind, rid, seq, digest FROM ({elements}) b WHERE rn = 1"


@dataclass
class RecordCheck:
    """What `check_records` found: rows checked per kind, and every problem named (within limits)."""

    checked: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unbound: int = 0  # rows no event binds
    differing: int = 0  # rows that differ from their latest binding (deleted ones included)

    @property
    def rows(self) -> int:
        return sum(self.checked.values())


def _create_latest_bindings(conn: Connection, since_seq: int, head_seq: int) -> None:
    """A temporary table of the newest binding of every record bound by events in (since, head]."""
    pg = conn.dialect.name == "postgresql"
    conn.execute(text(f"DROP TABLE IF EXISTS {_BINDINGS}"))
    if pg:
        conn.execute(text("SET LOCAL work_mem = '256MB'"))
        conn.execute(text("SET LOCAL jit = off"))  # compiling these wide expressions costs more than it saves
    on_commit = " ON COMMIT DROP" if pg else ""
    conn.execute(
        text(f"CREATE TEMP TABLE {_BINDINGS}{on_commit} AS {_latest_bindings_sql(conn.dialect)}"),
        {"since": since_seq, "head": head_seq},
    )
    if pg:
        # rows come in kind order: a BRIN index (built in milliseconds) lets each kind read only its own
        conn.execute(text(f"CREATE INDEX ON {_BINDINGS} USING brin (kind)"))
        conn.execute(text(f"ANALYZE {_BINDINGS}"))
    else:
        conn.execute(text(f"CREATE INDEX {_BINDINGS}_kind ON {_BINDINGS} (kind, rid)"))


def check_records(session: Session, head_seq: int, since_seq: int = 0) -> RecordCheck:
    """Compare every governed row with the latest digest the ledger (events up to `head_seq`) holds for it.

    With `since_seq` (incremental), only the records bound by events after it are compared: a record
    bound earlier and changed since, or never bound, is found by a full check only."""
    conn = session.connection()
    result = RecordCheck()
    _create_latest_bindings(conn, since_seq, head_seq)
    try:
        for kind in kinds():
            _check_kind(conn, kind, since_seq, result)
    finally:
        conn.execute(text(f"DROP TABLE IF EXISTS {_BINDINGS}"))
    return result


def _check_kind(conn: Connection, kind: Kind, since_seq: int, result: RecordCheck) -> None:
    dialect = conn.dialect
    table = _q(dialect, kind.table)
    if since_seq:  # incremental: digest only the rows bound since
        sql = (
            f"SELECT b.rid, {label_sql(dialect, kind)}, b.seq, b.digest IS NULL FROM {_BINDINGS} b "
            f"JOIN {table} t ON {id_sql(dialect, kind)} = b.rid WHERE b.kind = :kind "
            f"AND (b.digest IS NULL OR b.digest <> {digest_sql(dialect, kind)}) ORDER BY b.rid"
        )
    else:
        barrier = " OFFSET 0" if dialect.name == "postgresql" else ""
        sql = (
            f"SELECT r.rid, r.label, b.seq, b.digest IS NULL FROM ("
            f"SELECT {id_sql(dialect, kind)} AS rid, {label_sql(dialect, kind)} AS label, "
            # OFFSET 0: digest every row in one (parallel) scan, then join the narrow result; without
            # it PostgreSQL hashes the whole wide rows to join them first
            f"{digest_sql(dialect, kind)} AS actual FROM {table} t{barrier}) r "
            f"LEFT JOIN {_BINDINGS} b ON b.kind = :kind AND b.rid = r.rid "
            f"WHERE b.digest IS NULL OR b.digest <> r.actual ORDER BY r.rid"
        )
    rows = conn.execute(text(sql), {"kind": kind.name})
    named = 0
    for rid, label, seq, deletion in rows:
        who = f"{kind.name} {label or rid}" + (f" (id {rid}, {kind.table})" if label else f" ({kind.table})")
        if seq is None:
            result.unbound += 1
            problem = f"{who}: no event binds it (written outside Atelier, or made before records were bound)"
        else:
            result.differing += 1
            problem = (
                f"{who}: the row exists, but event {seq} recorded its deletion"
                if deletion
                else f"{who}: its row differs from what event {seq} recorded"
            )
        named += 1
        if named <= MAX_NAMED_PER_KIND:
            result.problems.append(problem)
    deleted = conn.execute(
        text(
            f"SELECT b.rid, b.seq, e.action, e.subject_id FROM {_BINDINGS} b JOIN audit_events e ON e.seq = b.seq "
            f"WHERE b.kind = :kind AND b.digest IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM {table} t WHERE {id_sql(dialect, kind)} = b.rid) ORDER BY b.rid"
        ),
        {"kind": kind.name},
    ).all()
    for rid, seq, action, subject in deleted:
        result.differing += 1
        named += 1
        if named <= MAX_NAMED_PER_KIND:
            result.problems.append(
                f"{kind.name} {rid} ({kind.table}): deleted, but event {seq} ({action} {subject}) recorded it"
            )
    if named > MAX_NAMED_PER_KIND:
        result.problems.append(f"{kind.name}: {named - MAX_NAMED_PER_KIND:,} more records like these")
    if since_seq:
        count_sql = f"SELECT count(*) FROM {_BINDINGS} WHERE kind = :kind"
    else:
        count_sql = f"SELECT count(*) FROM {table}"
    result.checked[kind.name] = int(conn.execute(text(count_sql), {"kind": kind.name}).scalar_one())


def unbound_records(session: Session, head_seq: int) -> dict[str, list[str]]:
    """Ids of the rows no event up to `head_seq` binds, per kind (what a baseline binds)."""
    conn = session.connection()
    dialect = conn.dialect
    out: dict[str, list[str]] = {}
    _create_latest_bindings(conn, 0, head_seq)
    try:
        for kind in kinds():
            found = list(
                conn.execute(
                    text(
                        f"SELECT r.rid FROM (SELECT {id_sql(dialect, kind)} AS rid FROM {_q(dialect, kind.table)} t) r "
                        f"LEFT JOIN {_BINDINGS} b ON b.kind = :kind AND b.rid = r.rid "
                        "WHERE b.rid IS NULL ORDER BY r.rid"
                    ),
                    {"kind": kind.name},
                ).scalars()
            )
            if found:
                out[kind.name] = found
    finally:
        conn.execute(text(f"DROP TABLE IF EXISTS {_BINDINGS}"))
    return out
