"""The models and the migrations tell the same story: after `upgrade`, Alembic finds nothing to change."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from governance.db import make_engine, upgrade
from governance.records import Base

# Declared by a migration only, on purpose: 0003's pg_trgm GIN index on an expression for prompt
# search, which SQLAlchemy's metadata cannot describe portably (PostgreSQL only).
MIGRATION_ONLY = {"ix_prompts_prompt_trgm"}


def test_upgraded_schema_matches_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)

    def include(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
        return name not in MIGRATION_ONLY

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": include})
        diffs = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diffs == [], "models and migrations disagree; write a migration:\n" + "\n".join(map(str, diffs))


def test_migrations_do_not_import_the_flows_layer() -> None:
    from tests.conftest import REPO

    env = (REPO / "migrations" / "env.py").read_text()
    assert "flows" not in env.replace("workflows", "")


def test_each_vocabulary_is_the_databases_check_constraint(tmp_path) -> None:
    # the StrEnums in governance.records feed the CHECK constraints: a value outside one is refused
    # by the database itself, whatever code wrote it
    import sqlite3

    import pytest

    from governance.records import BatchStatus, ChunkStatus, Decision, ImageStatus, Purpose, Role, RunStatus, one_of

    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(engine)
    engine.dispose()
    with sqlite3.connect(tmp_path / "a.db") as db:
        schema = "\n".join(sql for (sql,) in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
        for column, vocabulary in [
            ("role", Role),
            ("purpose", Purpose),
            ("status", BatchStatus),
            ("decision", Decision),
            ("status", RunStatus),
            ("status", ImageStatus),
            ("status", ChunkStatus),
        ]:
            assert one_of(column, vocabulary) in schema, vocabulary
        db.execute("INSERT INTO users (id, name, created_at) VALUES (1, 'x', '2026-01-01')")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            db.execute("INSERT INTO user_roles (user_id, role) VALUES (1, 'superuser')")
