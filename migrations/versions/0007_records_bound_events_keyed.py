"""Audit events bind governed records, carry the acting token and are authenticated (HMAC); anchors
name the certificate that signed them.

New columns, all nullable, so every event written before keeps its hash (the hashed body includes a
field only when it is not null):

- ``audit_events.token_id``: the API token the actor used;
- ``audit_events.records``: the governed records the event binds, ``[kind, id, row digest or null]``
  (``governance.bindings``);
- ``audit_events.key_id`` and ``mac``: the audit key and HMAC-SHA256 of the event's hash;
- ``audit_anchors.signer_id``: SHA-256 fingerprint of the checkpoint's signing certificate.

Rows created before this revision are bound by nothing until an admin runs ``atelier audit baseline``
(``governance.ledger.baseline_records``): a migration cannot authenticate events, it holds no key.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("records", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("key_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("mac", sa.String(length=64), nullable=True))
    with op.batch_alter_table("audit_anchors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signer_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_anchors", schema=None) as batch_op:
        batch_op.drop_column("signer_id")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("mac")
        batch_op.drop_column("key_id")
        batch_op.drop_column("records")
        batch_op.drop_column("token_id")
