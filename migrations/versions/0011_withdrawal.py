"""Withdrawal: images taken down after publishing (status `withdrawn`) and the record of it (who, when,
why, the evidence copy and the object versions removed). Nullable: rows written before keep their
record digests.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

STATUS_BEFORE = "status IN ('quarantined', 'published', 'review', 'rejected')"
STATUS_AFTER = "status IN ('quarantined', 'published', 'review', 'rejected', 'withdrawn')"


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_images_status_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_images_status_known"), sa.text(STATUS_AFTER))
        batch_op.add_column(sa.Column("withdrawal", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("withdrawal")
        batch_op.drop_constraint(op.f("ck_images_status_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_images_status_known"), sa.text(STATUS_BEFORE))
