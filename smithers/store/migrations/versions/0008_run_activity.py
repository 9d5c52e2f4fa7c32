"""Each run's latest event, so every process can follow the runs others execute (several gateways
on one database: docs/protocol.md#several-gateways-on-one-database).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "_smithers_run_activity",
        sa.Column("run_id", sa.Text(), primary_key=True),
        sa.Column("last_event_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_event_at_ms", sa.BigInteger(), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("_smithers_run_activity_at_idx", "_smithers_run_activity", ["last_event_at_ms"])
