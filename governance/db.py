"""Database engine, sessions and schema migrations (Alembic, from the `migrations` package)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

from governance.audit import AUDIT_KEYS, TOKEN_ID
from governance.errors import SchemaNotReady

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry

    from governance.audit import AuditKeyRing

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str) -> Engine:
    # JSON is stored in canonical form (sorted keys, no spaces), so the audit chain can hash a
    # payload's stored text without parsing it (governance.audit.verify_chain).
    from governance.audit import canonical_json
    from governance.bindings import sqlite_float_hex, sqlite_sha256

    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, json_serializer=canonical_json)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()
            # the record digests (governance.bindings) need SHA-256, which SQLite lacks
            dbapi_conn.create_function("atelier_sha256", 1, sqlite_sha256, deterministic=True)
            dbapi_conn.create_function("atelier_float_hex", 1, sqlite_float_hex, deterministic=True)

        return engine
    return create_engine(url, pool_pre_ping=True, json_serializer=canonical_json)


def make_sessionmaker(
    engine: Engine,
    *,
    audit_keys: AuditKeyRing | Callable[[], AuditKeyRing] | None = None,
    token_id: str | None = None,
    webhooks: bool = False,
) -> sessionmaker[Session]:
    """Sessions on `engine` whose audit events are authenticated with `audit_keys` (a key ring, or a
    zero-argument callable that loads one when the first event is written) and name `token_id`, the
    API token the acting user authenticated with. Without a key ring, writing an event is an error;
    reading is not."""
    info: dict[str, Any] = {}
    if audit_keys is not None:
        info[AUDIT_KEYS] = audit_keys
    if token_id is not None:
        info[TOKEN_ID] = token_id
    if webhooks:  # a webhook URL is configured: changes write their deliveries (governance.webhooks)
        from governance.webhooks import ENABLED

        info[ENABLED] = True
    return sessionmaker(engine, expire_on_commit=False, info=info)


def _alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Apply every pending migration; returns (revision before, revision after)."""
    from alembic import command

    before = current_revision(engine)
    command.upgrade(_alembic_config(engine), "head")
    return before, current_revision(engine) or ""


def ensure_schema(engine: Engine, auto_upgrade: bool) -> None:
    """Apply the migrations (embedded database) or refuse clearly when the schema is behind."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    if auto_upgrade:
        upgrade(engine)
        return
    state = "is empty" if current is None and not inspect(engine).get_table_names() else f"is at {current}"
    raise SchemaNotReady(f"the database schema {state}, Atelier needs {head}: run `atelier db upgrade` first")
