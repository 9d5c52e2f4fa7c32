"""The `_smithers_*` tables: the one place their names and columns are written down.

Small tables addressed by their primary key are ``WITHOUT ROWID`` on SQLite, so a write touches
one B-tree instead of two. Timestamps are epoch milliseconds (BigInteger). Structured values are JSON text in ``*_json``
columns on both SQLite and PostgreSQL, so rows read back identically on either.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, Table, Text

metadata = MetaData()

runs = Table(
    "_smithers_runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("parent_run_id", Text),
    Column("workflow_name", Text, nullable=False),
    Column("workflow_path", Text),
    Column("workflow_hash", Text),
    Column("status", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("started_at_ms", BigInteger),
    Column("finished_at_ms", BigInteger),
    Column("heartbeat_at_ms", BigInteger),
    Column("runtime_owner_id", Text),
    Column("cancel_requested_at_ms", BigInteger),
    Column("pause_requested_at_ms", BigInteger),
    Column("hijack_requested_at_ms", BigInteger),
    Column("hijack_target", Text),
    Column("vcs_type", Text),
    Column("vcs_root", Text),
    Column("vcs_revision", Text),
    Column("error_json", Text),
    Column("config_json", Text),
    Index("_smithers_runs_status_heartbeat_idx", "status", "heartbeat_at_ms"),
    Index("_smithers_runs_parent_idx", "parent_run_id"),
    Index("_smithers_runs_created_idx", "created_at_ms"),
    Index("_smithers_runs_status_created_idx", "status", "created_at_ms"),
    Index("_smithers_runs_workflow_created_idx", "workflow_name", "created_at_ms"),
)

run_input = Table(
    "_smithers_input",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("payload_json", Text, nullable=False),
    sqlite_with_rowid=False,
)

nodes = Table(
    "_smithers_nodes",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("node_id", Text, primary_key=True),
    Column("iteration", Integer, primary_key=True, default=0),
    Column("state", Text, nullable=False),
    Column("last_attempt", Integer),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("output_table", Text, nullable=False),
    Column("label", Text),
    sqlite_with_rowid=False,
)

attempts = Table(
    "_smithers_attempts",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("node_id", Text, primary_key=True),
    Column("iteration", Integer, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("state", Text, nullable=False),
    Column("started_at_ms", BigInteger, nullable=False),
    Column("finished_at_ms", BigInteger),
    Column("heartbeat_at_ms", BigInteger),
    Column("heartbeat_data_json", Text),
    Column("error_json", Text),
    Column("jj_pointer", Text),
    Column("jj_cwd", Text),
    Column("response_text", Text),
    Column("cached", Integer, nullable=False, default=0),
    Column("meta_json", Text),
    sqlite_with_rowid=False,
)

outputs = Table(
    "_smithers_outputs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("node_id", Text, primary_key=True),
    Column("iteration", Integer, primary_key=True),
    Column("output_table", Text, nullable=False),
    Column("payload_json", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

frames = Table(
    "_smithers_frames",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("frame_no", Integer, primary_key=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("xml_json", Text, nullable=False),
    Column("xml_hash", Text, nullable=False),
    Column("encoding", Text, nullable=False, default="full"),
    Column("mounted_task_ids_json", Text),
    Column("task_index_json", Text),
    Column("note", Text),
)

snapshots = Table(
    "_smithers_snapshots",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("frame_no", Integer, primary_key=True),
    Column("nodes_json", Text, nullable=False),
    Column("outputs_json", Text, nullable=False),
    Column("ralph_json", Text, nullable=False),
    Column("input_json", Text, nullable=False),
    Column("vcs_pointer", Text),
    Column("workflow_hash", Text),
    Column("content_hash", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

events = Table(
    "_smithers_events",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("timestamp_ms", BigInteger, nullable=False),
    Column("type", Text, nullable=False),
    Column("payload_json", Text, nullable=False),
    sqlite_with_rowid=False,
)

approvals = Table(
    "_smithers_approvals",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("node_id", Text, primary_key=True),
    Column("iteration", Integer, primary_key=True),
    Column("status", Text, nullable=False),
    Column("requested_at_ms", BigInteger),
    Column("decided_at_ms", BigInteger),
    Column("note", Text),
    Column("decided_by", Text),
    Column("request_json", Text),
    Column("decision_json", Text),
    Column("auto_approved", Integer, nullable=False, default=0),
    Index("_smithers_approvals_status_idx", "status", "requested_at_ms"),
    sqlite_with_rowid=False,
)

signals = Table(
    "_smithers_signals",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("signal_name", Text, nullable=False),
    Column("correlation_id", Text),
    Column("payload_json", Text, nullable=False),
    Column("received_at_ms", BigInteger, nullable=False),
    Column("received_by", Text),
    Index("_smithers_signals_lookup_idx", "run_id", "signal_name", "correlation_id", "received_at_ms"),
    sqlite_with_rowid=False,
)

ralph = Table(
    "_smithers_ralph",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("ralph_id", Text, primary_key=True),
    Column("iteration", Integer, nullable=False, default=0),
    Column("done", Integer, nullable=False, default=0),
    Column("updated_at_ms", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

cache = Table(
    "_smithers_cache",
    metadata,
    Column("cache_key", Text, primary_key=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("workflow_name", Text, nullable=False),
    Column("node_id", Text, nullable=False),
    Column("output_table", Text, nullable=False),
    Column("schema_sig", Text, nullable=False),
    Column("agent_sig", Text),
    Column("tools_sig", Text),
    Column("jj_pointer", Text),
    Column("payload_json", Text, nullable=False),
)

cron = Table(
    "_smithers_cron",
    metadata,
    Column("cron_id", Text, primary_key=True),
    Column("pattern", Text, nullable=False),
    Column("workflow_path", Text, nullable=False),
    Column("enabled", Integer, default=1),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("last_run_at_ms", BigInteger),
    Column("next_run_at_ms", BigInteger),
    Column("error_json", Text),
    Column("timezone", Text),
)

branches = Table(
    "_smithers_branches",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("parent_run_id", Text, nullable=False),
    Column("parent_frame_no", Integer, nullable=False),
    Column("branch_label", Text),
    Column("fork_description", Text),
    Column("created_at_ms", BigInteger, nullable=False),
)

node_diffs = Table(
    "_smithers_node_diffs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("node_id", Text, primary_key=True),
    Column("iteration", Integer, primary_key=True),
    Column("base_ref", Text, primary_key=True),
    Column("diff_json", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

run_activity = Table(
    "_smithers_run_activity",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("last_event_seq", BigInteger, nullable=False),
    Column("last_event_at_ms", BigInteger, nullable=False),
    Index("_smithers_run_activity_at_idx", "last_event_at_ms"),
    sqlite_with_rowid=False,
)
"""Each run's latest event, written with it: how other processes learn a run has new events."""

tool_calls = Table(
    "_smithers_tool_calls",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("node_id", Text, primary_key=True),
    Column("iteration", Integer, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("tool_name", Text, nullable=False),
    Column("input_json", Text),
    Column("output_json", Text),
    Column("started_at_ms", BigInteger, nullable=False),
    Column("finished_at_ms", BigInteger),
    Column("status", Text),
    Column("error_json", Text),
    sqlite_with_rowid=False,
)

time_travel_audit = Table(
    "_smithers_time_travel_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Text, nullable=False),
    Column("from_frame_no", Integer, nullable=False),
    Column("to_frame_no", Integer, nullable=False),
    Column("caller", Text, nullable=False),
    Column("timestamp_ms", BigInteger, nullable=False),
    Column("result", Text, nullable=False),
    Column("duration_ms", BigInteger),
    Index("_smithers_time_travel_audit_lookup_idx", "run_id", "caller", "timestamp_ms"),
)

tokens = Table(
    "_smithers_tokens",
    metadata,
    Column("token_id", Text, primary_key=True),
    Column("token_hash", Text, nullable=False, unique=True),
    Column("role", Text, nullable=False),
    Column("scopes_json", Text, nullable=False),
    Column("user_id", Text),
    Column("label", Text),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger),
    Column("revoked_at_ms", BigInteger),
)
