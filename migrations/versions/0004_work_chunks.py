"""Work chunks: slices of a batch that workers claim with leases.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 20:53:39.065992
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "work_chunks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("image_ids", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'claimed', 'done')", name=op.f("ck_work_chunks_status_known")),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_work_chunks_batch_id_batches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_chunks")),
        sa.UniqueConstraint("batch_id", "position", name=op.f("uq_work_chunks_batch_id_position")),
    )
    with op.batch_alter_table("work_chunks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_work_chunks_batch_id"), ["batch_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("work_chunks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_work_chunks_batch_id"))

    op.drop_table("work_chunks")
