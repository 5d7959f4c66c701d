"""Indexes for the compliance queries at a million images (bench/compliance.py).

- images (created_at, id): date ranges, newest-first search and oldest-first export read the index
  in order and stop at the limit instead of sorting every matching row;
- images (prompt_id, created_at, id), replacing images (prompt_id): a prompt-text search that
  starts from the trigram index finds each matching prompt's images, newest first, from the
  index alone;
- images.provenance_key: `atelier trace` by key also matches the provenance object's key;
- prompts.ref: search by external reference (SKU, campaign);
- run_model_versions.model_version_id: impact and search by model version or licence start from
  the model version (the primary key starts with run_id);
- PostgreSQL: a 1000-entry statistics sample of prompts.prompt, so the planner estimates how many
  prompts a substring matches (with the default sample it guessed 50 rows for a word in 16,000
  prompts and chose the slow plan); common words then read images newest first and stop early.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 20:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index("ix_images_created_at_id", ["created_at", "id"], unique=False)
        batch_op.drop_index(batch_op.f("ix_images_prompt_id"))
        batch_op.create_index("ix_images_prompt_id_created_at", ["prompt_id", "created_at", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_images_provenance_key"), ["provenance_key"], unique=False)
    with op.batch_alter_table("prompts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prompts_ref"), ["ref"], unique=False)
    with op.batch_alter_table("run_model_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_model_versions_model_version_id"), ["model_version_id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE prompts ALTER COLUMN prompt SET STATISTICS 1000")
        op.execute("ANALYZE prompts")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE prompts ALTER COLUMN prompt SET STATISTICS -1")
    with op.batch_alter_table("run_model_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_model_versions_model_version_id"))
    with op.batch_alter_table("prompts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prompts_ref"))
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_provenance_key"))
        batch_op.drop_index("ix_images_prompt_id_created_at")
        batch_op.create_index(batch_op.f("ix_images_prompt_id"), ["prompt_id"], unique=False)
        batch_op.drop_index("ix_images_created_at_id")
