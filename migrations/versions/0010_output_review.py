"""Output review: the reviewer role, images waiting for review or rejected by a reviewer, whether a
batch's images need review, and each image's review decision. The new columns are nullable: rows
written before keep their record digests.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 18:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ROLES_BEFORE = "role IN ('requester', 'approver', 'operator', 'auditor', 'admin')"
ROLES_AFTER = "role IN ('requester', 'approver', 'operator', 'auditor', 'admin', 'reviewer')"
STATUS_BEFORE = "status IN ('quarantined', 'published')"
STATUS_AFTER = "status IN ('quarantined', 'published', 'review', 'rejected')"


def upgrade() -> None:
    with op.batch_alter_table("user_roles", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_user_roles_role_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_user_roles_role_known"), sa.text(ROLES_AFTER))
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_images_status_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_images_status_known"), sa.text(STATUS_AFTER))
        batch_op.add_column(sa.Column("review", sa.JSON(), nullable=True))
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("review_required", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("review_required")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("review")
        batch_op.drop_constraint(op.f("ck_images_status_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_images_status_known"), sa.text(STATUS_BEFORE))
    with op.batch_alter_table("user_roles", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_user_roles_role_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_user_roles_role_known"), sa.text(ROLES_BEFORE))
