"""Cache of node diffs (what an attempt changed in its working directory), keyed by the base it
was compared with.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "_smithers_node_diffs",
        sa.Column("run_id", sa.Text(), primary_key=True),
        sa.Column("node_id", sa.Text(), primary_key=True),
        sa.Column("iteration", sa.Integer(), primary_key=True),
        sa.Column("base_ref", sa.Text(), primary_key=True),
        sa.Column("diff_json", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sqlite_with_rowid=False,
    )
