"""Provenance fields, batch use category, audit anchors; PostgreSQL: append-only audit, trigram search.

On PostgreSQL the database itself refuses UPDATE and DELETE on audit_events and audit_anchors
(a trigger), and prompts get a pg_trgm index for substring search. SQLite gets neither: it is
the embedded single-user default; `atelier audit verify` still detects any change there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 20:17:57.234617
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_anchors",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("at", sa.String(length=32), nullable=False),
        sa.Column("store_url", sa.String(length=1000), nullable=False),
        sa.Column("key", sa.String(length=1000), nullable=False),
        sa.Column("version_id", sa.String(length=200), nullable=True),
        sa.Column("retain_until", sa.String(length=32), nullable=True),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_anchors")),
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("use_category", sa.String(length=60), server_default="general", nullable=False))
        batch_op.create_index(batch_op.f("ix_batches_use_category"), ["use_category"], unique=False)

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("watermark_scheme", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("phash", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("pixels_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("c2pa_manifest", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("licence_obligations", sa.JSON(), server_default="[]", nullable=False))
        batch_op.create_index(batch_op.f("ix_images_phash"), ["phash"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE OR REPLACE FUNCTION atelier_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION 'atelier: % is append-only; % refused', TG_TABLE_NAME, TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        for table in ("audit_events", "audit_anchors"):
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION atelier_append_only()"
            )
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute("CREATE INDEX ix_prompts_prompt_trgm ON prompts USING gin (prompt gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_prompts_prompt_trgm")
        for table in ("audit_events", "audit_anchors"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute("DROP FUNCTION IF EXISTS atelier_append_only()")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_phash"))
        batch_op.drop_column("licence_obligations")
        batch_op.drop_column("c2pa_manifest")
        batch_op.drop_column("pixels_sha256")
        batch_op.drop_column("phash")
        batch_op.drop_column("watermark_scheme")

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batches_use_category"))
        batch_op.drop_column("use_category")

    op.drop_table("audit_anchors")
