"""A sync asked for from the admin console: when, by whom, and whether a full reconciliation.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 21:09:11.595107
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("source", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sync_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("sync_requested_by", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("sync_requested_full", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("source", schema=None) as batch_op:
        batch_op.drop_column("sync_requested_full")
        batch_op.drop_column("sync_requested_by")
        batch_op.drop_column("sync_requested_at")
