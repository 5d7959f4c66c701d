"""Pipeline configurations (issue 16): the configuration(s) a prompt row names, the definitions a batch
pinned at submission, the configuration and measured engine time of each image, and blind preference
judgements between configurations. Every new column is nullable: rows written before keep their record
digests (NULL is the default base + refiner).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pipelines", sa.JSON(), nullable=True))
    with op.batch_alter_table("prompts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pipeline", sa.String(length=200), nullable=True))
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pipelines_sha256", sa.String(length=64), nullable=True))
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pipeline", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("engine_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("engine_device", sa.String(length=40), nullable=True))
    op.create_table(
        "preferences",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("prompt_id", sa.String(length=36), nullable=False),
        sa.Column("left_image_id", sa.String(length=36), nullable=False),
        sa.Column("right_image_id", sa.String(length=36), nullable=False),
        sa.Column("shown_to_id", sa.Integer(), nullable=False),
        sa.Column("shown_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("choice", sa.String(length=10), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("choice IN ('left', 'right', 'none')", name=op.f("ck_preferences_choice_known")),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_preferences_batch_id_batches")),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], name=op.f("fk_preferences_prompt_id_prompts")),
        sa.ForeignKeyConstraint(["left_image_id"], ["images.id"], name=op.f("fk_preferences_left_image_id_images")),
        sa.ForeignKeyConstraint(["right_image_id"], ["images.id"], name=op.f("fk_preferences_right_image_id_images")),
        sa.ForeignKeyConstraint(["shown_to_id"], ["users.id"], name=op.f("fk_preferences_shown_to_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preferences")),
    )
    with op.batch_alter_table("preferences", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_preferences_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_preferences_shown_to_id"), ["shown_to_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("preferences", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_preferences_shown_to_id"))
        batch_op.drop_index(batch_op.f("ix_preferences_batch_id"))
    op.drop_table("preferences")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("engine_device")
        batch_op.drop_column("engine_seconds")
        batch_op.drop_column("pipeline")
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_column("pipelines_sha256")
    with op.batch_alter_table("prompts", schema=None) as batch_op:
        batch_op.drop_column("pipeline")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("pipelines")
