"""Give each schedule an optional IANA time zone (NULL: the server's local time zone).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("_smithers_cron", sa.Column("timezone", sa.Text(), nullable=True))
