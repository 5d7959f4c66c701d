"""Legal holds (an image or a batch kept from deletion while a legal matter is open) and retention
(images never published whose files a retention rule deleted: status `expired`, with the record of it).
`images.expiry` is nullable: rows written before keep their record digests.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

STATUS_BEFORE = "status IN ('quarantined', 'published', 'review', 'rejected', 'withdrawn')"
STATUS_AFTER = "status IN ('quarantined', 'published', 'review', 'rejected', 'withdrawn', 'expired')"


def upgrade() -> None:
    op.create_table(
        "legal_holds",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("scope", sa.String(length=10), nullable=False),
        sa.Column("target_id", sa.String(length=36), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("placed_by_id", sa.Integer(), nullable=False),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_by_id", sa.Integer(), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("release_reason", sa.Text(), nullable=True),
        sa.CheckConstraint("scope IN ('image', 'batch')", name=op.f("ck_legal_holds_scope_known")),
        sa.ForeignKeyConstraint(["placed_by_id"], ["users.id"], name=op.f("fk_legal_holds_placed_by_id_users")),
        sa.ForeignKeyConstraint(["released_by_id"], ["users.id"], name=op.f("fk_legal_holds_released_by_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legal_holds")),
    )
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_legal_holds_target_id"), ["target_id"], unique=False)
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_images_status_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_images_status_known"), sa.text(STATUS_AFTER))
        batch_op.add_column(sa.Column("expiry", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("expiry")
        batch_op.drop_constraint(op.f("ck_images_status_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_images_status_known"), sa.text(STATUS_BEFORE))
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_legal_holds_target_id"))
    op.drop_table("legal_holds")
