"""Alembic environment: the metadata comes from governance.records.

The engine comes from the caller (`governance.db.upgrade` passes it in `config.attributes`);
run standalone (`alembic -c ...`), the URL comes from Atelier's settings.
"""

from __future__ import annotations

from alembic import context

from governance.records import Base

config = context.config
target_metadata = Base.metadata


def _engine():  # type: ignore[no-untyped-def]
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    from flows.settings import get_settings
    from governance.db import make_engine

    return make_engine(get_settings().database_url_resolved)


def run_migrations_offline() -> None:
    from flows.settings import get_settings

    context.configure(
        url=get_settings().database_url_resolved,
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
