"""The catalogue: product feeds (imports, product versions, current products), versioned prompt
templates, standing approvals of a template for a scope, and the items that tie a SKU version to a
batch row. Approvals gain `standing_approval_id` (nullable: rows written before keep their digests).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "catalogue_imports",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("source_name", sa.String(length=500), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("imported_by_id", sa.Integer(), nullable=False),
        sa.Column("imported_at", TZ, nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["imported_by_id"], ["users.id"], name=op.f("fk_catalogue_imports_imported_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalogue_imports")),
    )
    op.create_index(op.f("ix_catalogue_imports_content_sha256"), "catalogue_imports", ["content_sha256"])
    op.create_table(
        "product_versions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("import_id", sa.String(length=36), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=True),
        sa.Column("fields_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"], ["catalogue_imports.id"], name=op.f("fk_product_versions_import_id_catalogue_imports")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_product_versions")),
    )
    op.create_index(op.f("ix_product_versions_sku"), "product_versions", ["sku"])
    op.create_index(op.f("ix_product_versions_import_id"), "product_versions", ["import_id"])
    op.create_table(
        "products",
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("version_id", sa.String(length=36), nullable=False),
        sa.Column("fields_sha256", sa.String(length=64), nullable=False),
        sa.Column("removed", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["product_versions.id"], name=op.f("fk_products_version_id_product_versions")
        ),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_products")),
    )
    op.create_table(
        "prompt_templates",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("negative", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("match", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(["author_id"], ["users.id"], name=op.f("fk_prompt_templates_author_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_templates")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_prompt_templates_name_version")),
    )
    op.create_table(
        "standing_approvals",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("template_id", sa.String(length=100), nullable=False),
        sa.Column("template_sha256", sa.String(length=64), nullable=False),
        sa.Column("approver_id", sa.Integer(), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("max_images", sa.Integer(), nullable=False),
        sa.Column("valid_from", TZ, nullable=False),
        sa.Column("valid_until", TZ, nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["approver_id"], ["users.id"], name=op.f("fk_standing_approvals_approver_id_users")),
        sa.ForeignKeyConstraint(
            ["template_id"], ["prompt_templates.id"], name=op.f("fk_standing_approvals_template_id_prompt_templates")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_standing_approvals")),
    )
    op.create_index(op.f("ix_standing_approvals_template_id"), "standing_approvals", ["template_id"])
    op.create_table(
        "catalogue_items",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("row_id", sa.String(length=200), nullable=False),
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("product_version_id", sa.String(length=36), nullable=False),
        sa.Column("template_id", sa.String(length=100), nullable=False),
        sa.Column("standing_approval_id", sa.String(length=36), nullable=True),
        sa.Column("render_sha256", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("superseded_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'waiting', 'current', 'superseded', 'removed', 'failed')",
            name=op.f("ck_catalogue_items_state_known"),
        ),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_catalogue_items_batch_id_batches")),
        sa.ForeignKeyConstraint(
            ["product_version_id"],
            ["product_versions.id"],
            name=op.f("fk_catalogue_items_product_version_id_product_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["standing_approval_id"],
            ["standing_approvals.id"],
            name=op.f("fk_catalogue_items_standing_approval_id_standing_approvals"),
        ),
        sa.ForeignKeyConstraint(
            ["template_id"], ["prompt_templates.id"], name=op.f("fk_catalogue_items_template_id_prompt_templates")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalogue_items")),
        sa.UniqueConstraint("batch_id", "row_id", name=op.f("uq_catalogue_items_batch_id_row_id")),
    )
    op.create_index(op.f("ix_catalogue_items_batch_id"), "catalogue_items", ["batch_id"])
    op.create_index(op.f("ix_catalogue_items_sku"), "catalogue_items", ["sku"])
    op.create_index(op.f("ix_catalogue_items_state"), "catalogue_items", ["state"])
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("standing_approval_id", sa.String(length=36), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_approvals_standing_approval_id_standing_approvals"),
            "standing_approvals",
            ["standing_approval_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_approvals_standing_approval_id_standing_approvals"), type_="foreignkey")
        batch_op.drop_column("standing_approval_id")
    for table in ("catalogue_items", "standing_approvals", "prompt_templates", "products", "product_versions"):
        op.drop_table(table)
    op.drop_table("catalogue_imports")
