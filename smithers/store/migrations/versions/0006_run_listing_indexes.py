"""Indexes for paging through runs by status or by workflow, newest first (the console's runs list).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("_smithers_runs_status_created_idx", "_smithers_runs", ["status", "created_at_ms"])
    op.create_index("_smithers_runs_workflow_created_idx", "_smithers_runs", ["workflow_name", "created_at_ms"])
