"""Alembic environment: the metadata comes from governance.records.

The engine comes from the caller (`governance.db.upgrade` passes it in `config.attributes`);
run standalone (`alembic -c ...`), the URL comes from ATELIER_DATABASE_URL (as Atelier's settings
read it) or the ini file's `sqlalchemy.url`. Nothing here imports the layers above `governance`.
"""

from __future__ import annotations

import os

from alembic import context

from governance.records import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = os.environ.get("ATELIER_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set ATELIER_DATABASE_URL (or sqlalchemy.url in the ini file) to run Alembic standalone")
    return url


def _engine():  # type: ignore[no-untyped-def]
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    from governance.db import make_engine

    return make_engine(_url())


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
