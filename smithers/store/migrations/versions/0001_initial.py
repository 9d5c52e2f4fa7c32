"""Initial schema: runs, nodes, attempts, outputs, frames, snapshots, events, approvals, signals,
loops, cache, cron, branches, time-travel audit and gateway tokens.

Frozen on purpose: later schema changes are new numbered migrations, never edits here.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "_smithers_approvals",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("requested_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("decided_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.Text(), nullable=True),
        sa.Column("request_json", sa.Text(), nullable=True),
        sa.Column("decision_json", sa.Text(), nullable=True),
        sa.Column("auto_approved", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "node_id", "iteration"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "_smithers_attempts",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("started_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("finished_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("heartbeat_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("heartbeat_data_json", sa.Text(), nullable=True),
        sa.Column("error_json", sa.Text(), nullable=True),
        sa.Column("jj_pointer", sa.Text(), nullable=True),
        sa.Column("jj_cwd", sa.Text(), nullable=True),
        sa.Column("response_text", sa.Text(), nullable=True),
        sa.Column("cached", sa.Integer(), nullable=False),
        sa.Column("meta_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "node_id", "iteration", "attempt"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "_smithers_branches",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("parent_run_id", sa.Text(), nullable=False),
        sa.Column("parent_frame_no", sa.Integer(), nullable=False),
        sa.Column("branch_label", sa.Text(), nullable=True),
        sa.Column("fork_description", sa.Text(), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_table(
        "_smithers_cache",
        sa.Column("cache_key", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("workflow_name", sa.Text(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("output_table", sa.Text(), nullable=False),
        sa.Column("schema_sig", sa.Text(), nullable=False),
        sa.Column("agent_sig", sa.Text(), nullable=True),
        sa.Column("tools_sig", sa.Text(), nullable=True),
        sa.Column("jj_pointer", sa.Text(), nullable=True),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("cache_key"),
    )
    op.create_table(
        "_smithers_cron",
        sa.Column("cron_id", sa.Text(), nullable=False),
        sa.Column("pattern", sa.Text(), nullable=False),
        sa.Column("workflow_path", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Integer(), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_run_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("next_run_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("error_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("cron_id"),
    )
    op.create_table(
        "_smithers_events",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "_smithers_frames",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("frame_no", sa.Integer(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("xml_json", sa.Text(), nullable=False),
        sa.Column("xml_hash", sa.Text(), nullable=False),
        sa.Column("encoding", sa.Text(), nullable=False),
        sa.Column("mounted_task_ids_json", sa.Text(), nullable=True),
        sa.Column("task_index_json", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "frame_no"),
    )
    op.create_table(
        "_smithers_input",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "_smithers_nodes",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("last_attempt", sa.Integer(), nullable=True),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("output_table", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "node_id", "iteration"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "_smithers_outputs",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("output_table", sa.Text(), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "node_id", "iteration"),
    )
    op.create_table(
        "_smithers_ralph",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("ralph_id", sa.Text(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "ralph_id"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "_smithers_runs",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("parent_run_id", sa.Text(), nullable=True),
        sa.Column("workflow_name", sa.Text(), nullable=False),
        sa.Column("workflow_path", sa.Text(), nullable=True),
        sa.Column("workflow_hash", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("started_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("finished_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("heartbeat_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("runtime_owner_id", sa.Text(), nullable=True),
        sa.Column("cancel_requested_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("hijack_requested_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("hijack_target", sa.Text(), nullable=True),
        sa.Column("vcs_type", sa.Text(), nullable=True),
        sa.Column("vcs_root", sa.Text(), nullable=True),
        sa.Column("vcs_revision", sa.Text(), nullable=True),
        sa.Column("error_json", sa.Text(), nullable=True),
        sa.Column("config_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("_smithers_runs_created_idx", "_smithers_runs", ["created_at_ms"], unique=False)
    op.create_index("_smithers_runs_parent_idx", "_smithers_runs", ["parent_run_id"], unique=False)
    op.create_index(
        "_smithers_runs_status_heartbeat_idx", "_smithers_runs", ["status", "heartbeat_at_ms"], unique=False
    )
    op.create_table(
        "_smithers_signals",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("signal_name", sa.Text(), nullable=False),
        sa.Column("correlation_id", sa.Text(), nullable=True),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("received_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "seq"),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "_smithers_signals_lookup_idx",
        "_smithers_signals",
        ["run_id", "signal_name", "correlation_id", "received_at_ms"],
        unique=False,
    )
    op.create_table(
        "_smithers_snapshots",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("frame_no", sa.Integer(), nullable=False),
        sa.Column("nodes_json", sa.Text(), nullable=False),
        sa.Column("outputs_json", sa.Text(), nullable=False),
        sa.Column("ralph_json", sa.Text(), nullable=False),
        sa.Column("input_json", sa.Text(), nullable=False),
        sa.Column("vcs_pointer", sa.Text(), nullable=True),
        sa.Column("workflow_hash", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "frame_no"),
    )
    op.create_table(
        "_smithers_time_travel_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("from_frame_no", sa.Integer(), nullable=False),
        sa.Column("to_frame_no", sa.Integer(), nullable=False),
        sa.Column("caller", sa.Text(), nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "_smithers_time_travel_audit_lookup_idx",
        "_smithers_time_travel_audit",
        ["run_id", "caller", "timestamp_ms"],
        unique=False,
    )
    op.create_table(
        "_smithers_tokens",
        sa.Column("token_id", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("scopes_json", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("revoked_at_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("token_id"),
        sa.UniqueConstraint("token_hash"),
    )
