"""Index pending approvals by status, so listing them (every connect) does not scan decided ones.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("_smithers_approvals_status_idx", "_smithers_approvals", ["status", "requested_at_ms"])
