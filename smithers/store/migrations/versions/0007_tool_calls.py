"""Tool calls of agent attempts: one row per call an agent made, numbered per attempt.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "_smithers_tool_calls",
        sa.Column("run_id", sa.Text(), primary_key=True),
        sa.Column("node_id", sa.Text(), primary_key=True),
        sa.Column("iteration", sa.Integer(), primary_key=True),
        sa.Column("attempt", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("tool_name", sa.Text(), nullable=False),
        sa.Column("input_json", sa.Text()),
        sa.Column("output_json", sa.Text()),
        sa.Column("started_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("finished_at_ms", sa.BigInteger()),
        sa.Column("status", sa.Text()),
        sa.Column("error_json", sa.Text()),
        sqlite_with_rowid=False,
    )
