"""A durable request to pause a run (a rewind holds the run still while it rewrites its history).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("_smithers_runs", sa.Column("pause_requested_at_ms", sa.BigInteger(), nullable=True))
