#!/usr/bin/env bash
# ensure-postgres.sh — make sure a local PostgreSQL test server is installed,
# running and reachable on 127.0.0.1, then print its SQLAlchemy URL.
#
# stdout: exactly one line, e.g.
#   postgresql+psycopg://smithers:smithers@127.0.0.1:5432/smithers_test
# stderr: all diagnostics.  Exit status non-zero (with one clear ERROR line)
# on failure.
#
# As root it will, as needed:
#   * apt-get update + apt-get install -y postgresql (only if no server is installed),
#   * create/start a Debian cluster (pg_createcluster / pg_ctlcluster); if that
#     cluster cannot be started, fall back to a private initdb cluster under
#     /tmp/smithers-postgres (owned by the postgres user, on a free port),
#   * create role smithers (password smithers, LOGIN CREATEDB) and database
#     smithers_test owned by it,
#   * tune the server for tests (fsync/synchronous_commit/full_page_writes off,
#     via ALTER SYSTEM + reload; set SMITHERS_PG_TUNE=0 to skip) and make sure
#     max_connections >= 200 (ALTER SYSTEM + restart, only when needed).
# As a non-root user it only checks that the server is reachable with those
# credentials.
#
# Optional environment: SMITHERS_PG_PORT (force the port to check/use when
# no cluster can be discovered), SMITHERS_PG_TUNE=0 (don't tune a Debian cluster).
set -Eeuo pipefail

readonly PG_ROLE=smithers
readonly PG_PASS=smithers
readonly PG_DB=smithers_test
readonly PG_HOST=127.0.0.1
readonly MIN_CONNECTIONS=200
readonly PRIV_BASE=/tmp/smithers-postgres          # private fallback cluster
readonly PRIV_DATA=$PRIV_BASE/data
readonly PRIV_SOCK=$PRIV_BASE/sock
readonly PRIV_PORT_FILE=$PRIV_BASE/port
readonly PRIV_LOG=$PRIV_BASE/server.log
TUNE=${SMITHERS_PG_TUNE:-1}

log() { printf 'ensure-postgres: %s\n' "$*" >&2; }
die() { printf 'ensure-postgres: ERROR: %s\n' "$*" >&2; exit 1; }
# Report unexpected failures once (only from the main shell, not from subshells).
trap 'rc=$?; if [[ $BASHPID == "$$" ]]; then printf "ensure-postgres: ERROR: command failed (exit %s) at line %s: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2; fi; exit "$rc"' ERR

SELF=$(readlink -f "${BASH_SOURCE[0]}")
# Server tools complain when the cwd is not readable by the postgres user.
cd /

IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1

# State describing the chosen server.
MODE=""        # debian | private
PG_VER=""      # Debian cluster version
PG_CLUSTER=""  # Debian cluster name
PORT=""
OWNER=postgres # OS user owning the cluster (also its superuser role)
DATADIR=""
SOCKDIR=""
BINDIR=""
PROBE_OUT=""
PROBE_ERR=""

url() { printf 'postgresql+psycopg://%s:%s@%s:%s/%s' "$PG_ROLE" "$PG_PASS" "$PG_HOST" "$1" "$PG_DB"; }

with_timeout() {  # with_timeout SECONDS cmd...
    local secs=$1; shift
    # 9<&- : never leak the lock fd (see main) into a server that outlives us.
    if command -v timeout >/dev/null 2>&1; then timeout "$secs" "$@" 9<&-; else "$@" 9<&-; fi
}

# ---------------------------------------------------------------- probing ---

# probe PORT: connect over TCP as the test role. On success sets PROBE_OUT to
# "max_connections|fsync|synchronous_commit|full_page_writes" (fields may be
# empty if only raw TCP reachability could be checked). On failure sets PROBE_ERR.
probe() {
    local port=$1 sql out
    sql="select current_setting('max_connections'), current_setting('fsync'),
                current_setting('synchronous_commit'), current_setting('full_page_writes')"
    PROBE_OUT="" PROBE_ERR=""
    if command -v psql >/dev/null 2>&1; then
        if out=$(PGPASSWORD=$PG_PASS PGCONNECT_TIMEOUT=3 psql -X -q -At -F'|' \
                "host=$PG_HOST port=$port user=$PG_ROLE dbname=$PG_DB connect_timeout=3" \
                -c "$sql" 2>&1); then
            PROBE_OUT=$out; return 0
        fi
        PROBE_ERR=$(printf '%s' "$out" | tr '\n\t' '  ' | sed 's/  */ /g'); return 1
    fi
    local py=${PYTHON:-python3}
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import psycopg' >/dev/null 2>&1; then
        if out=$("$py" - "$PG_HOST" "$port" "$PG_ROLE" "$PG_PASS" "$PG_DB" "$sql" 2>&1 <<'EOF'
import sys, psycopg
host, port, user, pw, db, sql = sys.argv[1:]
with psycopg.connect(host=host, port=int(port), user=user, password=pw, dbname=db, connect_timeout=3) as c:
    print("|".join(c.execute(sql).fetchone()))
EOF
        ); then
            PROBE_OUT=$out; return 0
        fi
        PROBE_ERR=$(printf '%s' "$out" | tail -n 1); return 1
    fi
    # No client library at all: only check that something listens on the port.
    if (exec 3<>"/dev/tcp/$PG_HOST/$port") 2>/dev/null; then
        log "warning: neither psql nor psycopg available; only checked that $PG_HOST:$port accepts TCP connections"
        PROBE_OUT="|||"; return 0
    fi
    PROBE_ERR="connection to $PG_HOST:$port refused"; return 1
}

# True if the last successful probe shows the settings we want.
probe_settings_ok() {
    local maxc fsync sync fpw
    IFS='|' read -r maxc fsync sync fpw <<<"$PROBE_OUT"
    [[ $maxc =~ ^[0-9]+$ ]] && (( maxc >= MIN_CONNECTIONS )) || return 1
    if [[ $MODE == private || $TUNE != 0 ]]; then
        [[ $fsync == off && $sync == off && $fpw == off ]] || return 1
    fi
}

# ------------------------------------------------------- cluster discovery ---

have_debian_tools() { command -v pg_lsclusters >/dev/null 2>&1 && command -v pg_ctlcluster >/dev/null 2>&1; }

newest_server_version() {
    local d
    for d in /usr/lib/postgresql/*/bin/postgres; do
        if [[ -x $d ]]; then basename "$(dirname "$(dirname "$d")")"; fi
    done | sort -V | tail -n 1
}

server_installed() { [[ -n $(newest_server_version) ]] || command -v postgres >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }

# Pick a Debian cluster: the newest online one, else the newest "main", else
# the newest one. Sets PG_VER PG_CLUSTER PORT OWNER DATADIR and returns 0;
# echoes its status into CL_STATUS. Returns 1 if there is none.
CL_STATUS=""
pick_debian_cluster() {
    have_debian_tools || return 1
    local line
    line=$(pg_lsclusters -h 2>/dev/null | awk '
        { score = ($4 ~ /^online/) ? 2 : (($2 == "main") ? 1 : 0)
          print score, $0 }' | sort -k1,1nr -k2,2Vr | head -n 1 | cut -d' ' -f2-) || true
    [[ -n $line ]] || return 1
    read -r PG_VER PG_CLUSTER PORT CL_STATUS OWNER DATADIR _ <<<"$line"
    MODE=debian
    return 0
}

private_port() { [[ -r $PRIV_PORT_FILE ]] && cat "$PRIV_PORT_FILE" 2>/dev/null; }

private_exists() { [[ -f $PRIV_DATA/PG_VERSION || -r $PRIV_PORT_FILE ]] && [[ -n $(private_port || true) ]]; }

# Decide which server we are talking about (no side effects).
select_target() {
    if pick_debian_cluster && [[ $CL_STATUS == online* ]]; then
        return 0
    fi
    if private_exists; then
        MODE=private PG_VER="" PG_CLUSTER="" PORT=$(private_port) OWNER=postgres DATADIR=$PRIV_DATA SOCKDIR=$PRIV_SOCK
        return 0
    fi
    if [[ $MODE == debian ]]; then
        return 0
    fi
    MODE=none PORT=${SMITHERS_PG_PORT:-5432}
}

# ------------------------------------------------------------ root actions ---

install_postgres() {
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is not available to install it"
    log "PostgreSQL server not found; installing it with apt-get (this takes a while)..."
    export DEBIAN_FRONTEND=noninteractive
    with_timeout 600 apt-get update -q >&2 || die "apt-get update failed"
    with_timeout 1200 apt-get install -y -q postgresql >&2 || die "apt-get install -y postgresql failed"
    server_installed || die "apt-get install postgresql finished but no PostgreSQL server binaries were found"
}

as_owner() { runuser -u "$OWNER" -- "$@" 9<&-; }

# Run SQL as the cluster superuser over the unix socket.
su_psql() {
    as_owner psql -X -q -v ON_ERROR_STOP=1 -At -h "$SOCKDIR" -p "$PORT" -d postgres "$@"
}

debian_sockdir() {
    local d=""
    [[ -r $DATADIR/postmaster.pid ]] && d=$(sed -n 5p "$DATADIR/postmaster.pid")
    [[ -n $d ]] || d=/var/run/postgresql
    SOCKDIR=$d
}

# Make sure the Debian cluster exists and is running. Returns non-zero on failure.
start_debian_cluster() {
    if [[ $MODE != debian ]]; then
        have_debian_tools || return 1
        PG_VER=$(newest_server_version)
        [[ -n $PG_VER ]] || return 1
        log "no PostgreSQL cluster found; creating $PG_VER/main with pg_createcluster"
        with_timeout 300 pg_createcluster "$PG_VER" main >&2 || { log "pg_createcluster $PG_VER main failed"; return 1; }
        pick_debian_cluster || return 1
    fi
    if [[ $CL_STATUS != online* ]]; then
        log "starting cluster $PG_VER/$PG_CLUSTER (port $PORT)..."
        if ! with_timeout 120 pg_ctlcluster "$PG_VER" "$PG_CLUSTER" start >&2; then
            log "pg_ctlcluster $PG_VER $PG_CLUSTER start failed; see /var/log/postgresql/postgresql-$PG_VER-$PG_CLUSTER.log"
            return 1
        fi
    fi
    debian_sockdir
    # Wait until it accepts connections on its socket.
    local i
    for i in $(seq 1 60); do
        su_psql -c 'select 1' >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    log "cluster $PG_VER/$PG_CLUSTER did not accept connections"
    return 1
}

port_free() {
    local p=$1
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then return 1; fi
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$p" 2>/dev/null || return 1
    fi
    return 0
}

private_bindir() {
    local v; v=$(newest_server_version)
    if [[ -n $v ]]; then BINDIR=/usr/lib/postgresql/$v/bin
    elif command -v pg_config >/dev/null 2>&1; then BINDIR=$(pg_config --bindir)
    else BINDIR=$(dirname "$(command -v initdb)")
    fi
    [[ -x $BINDIR/initdb && -x $BINDIR/pg_ctl ]] || die "cannot find initdb/pg_ctl for the private cluster"
}

# Create (if needed) and start the private cluster under $PRIV_BASE.
ensure_private_cluster() {
    MODE=private PG_VER="" PG_CLUSTER="" OWNER=postgres DATADIR=$PRIV_DATA SOCKDIR=$PRIV_SOCK
    getent passwd postgres >/dev/null || die "no 'postgres' OS user to own the private cluster"
    private_bindir
    if [[ -e $PRIV_BASE || -L $PRIV_BASE ]]; then
        [[ -d $PRIV_BASE && ! -L $PRIV_BASE && $(stat -c %U "$PRIV_BASE") == postgres ]] \
            || die "$PRIV_BASE exists but is not a directory owned by postgres; remove it"
    fi
    install -d -m 0755 -o postgres -g postgres "$PRIV_BASE"
    install -d -m 0700 -o postgres -g postgres "$PRIV_SOCK"
    if [[ ! -f $PRIV_DATA/smithers-initialized ]]; then
        rm -rf "$PRIV_DATA"
        log "initialising private cluster in $PRIV_DATA"
        as_owner "$BINDIR/initdb" -D "$PRIV_DATA" -U postgres -E UTF8 --locale=C \
            --auth-local=trust --auth-host=scram-sha-256 --no-sync >&2 \
            || die "initdb for the private cluster failed"
        as_owner sh -c "cat >> '$PRIV_DATA/postgresql.conf'" <<EOF

# --- smithers test server (written by scripts/ensure-postgres.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PRIV_SOCK'
max_connections = $MIN_CONNECTIONS
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        as_owner touch "$PRIV_DATA/smithers-initialized"
    fi
    PORT=$(private_port || true)
    if as_owner "$BINDIR/pg_ctl" -D "$PRIV_DATA" status >/dev/null 2>&1; then
        [[ -n $PORT ]] || die "private cluster is running but $PRIV_PORT_FILE is missing"
        return 0
    fi
    if [[ -z $PORT ]] || ! port_free "$PORT"; then
        local p
        PORT=""
        for p in $(seq 5433 5532); do
            if port_free "$p"; then PORT=$p; break; fi
        done
        [[ -n $PORT ]] || die "no free TCP port in 5433-5532 for the private cluster"
        printf '%s\n' "$PORT" | as_owner sh -c "cat > '$PRIV_PORT_FILE'"
    fi
    log "starting private cluster on port $PORT"
    as_owner "$BINDIR/pg_ctl" -D "$PRIV_DATA" -l "$PRIV_LOG" -o "-p $PORT" -w -t 60 start >&2 \
        || die "could not start the private cluster; see $PRIV_LOG"
}

restart_server() {
    if [[ $MODE == debian ]]; then
        with_timeout 120 pg_ctlcluster "$PG_VER" "$PG_CLUSTER" restart >&2 || die "pg_ctlcluster $PG_VER $PG_CLUSTER restart failed"
        debian_sockdir
    else
        as_owner "$BINDIR/pg_ctl" -D "$PRIV_DATA" -l "$PRIV_LOG" -w -t 60 restart >&2 || die "private cluster restart failed; see $PRIV_LOG"
    fi
}

ensure_role_db_settings() {
    local exists owner
    exists=$(su_psql -c "select count(*) from pg_roles where rolname = '$PG_ROLE'")
    if [[ $exists == 0 ]]; then
        log "creating role $PG_ROLE"
        su_psql -c "create role $PG_ROLE with login createdb password '$PG_PASS'" >/dev/null
    else
        # Keep the role usable by the tests (cheap and idempotent).
        su_psql -c "alter role $PG_ROLE with login createdb password '$PG_PASS'" >/dev/null
    fi
    owner=$(su_psql -c "select pg_get_userbyid(datdba) from pg_database where datname = '$PG_DB'")
    if [[ -z $owner ]]; then
        log "creating database $PG_DB"
        su_psql -c "create database $PG_DB owner $PG_ROLE" >/dev/null
    elif [[ $owner != "$PG_ROLE" ]]; then
        su_psql -c "alter database $PG_DB owner to $PG_ROLE" >/dev/null
    fi

    local settings maxc fsync sync fpw reload=0
    settings=$(su_psql -F'|' -c "select current_setting('max_connections'),
        current_setting('fsync'), current_setting('synchronous_commit'), current_setting('full_page_writes')") \
        || die "could not read server settings as superuser"
    IFS='|' read -r maxc fsync sync fpw <<<"$settings"
    if [[ $MODE == private || $TUNE != 0 ]]; then
        [[ $fsync == off ]] || { su_psql -c "alter system set fsync = off" >/dev/null; reload=1; }
        [[ $sync == off ]]  || { su_psql -c "alter system set synchronous_commit = off" >/dev/null; reload=1; }
        [[ $fpw == off ]]   || { su_psql -c "alter system set full_page_writes = off" >/dev/null; reload=1; }
        if (( reload )); then
            log "tuned test server (fsync/synchronous_commit/full_page_writes = off)"
            su_psql -c "select pg_reload_conf()" >/dev/null
        fi
    fi
    if (( maxc < MIN_CONNECTIONS )); then
        log "raising max_connections from $maxc to $MIN_CONNECTIONS (restarts the server)"
        su_psql -c "alter system set max_connections = $MIN_CONNECTIONS" >/dev/null
        restart_server
    fi
}

# -------------------------------------------------------------------- main ---

select_target

# Fast path: already reachable and configured -> nothing to do.
if probe "$PORT"; then
    if probe_settings_ok || (( ! IS_ROOT )); then
        probe_settings_ok || log "warning: server at $PG_HOST:$PORT is reachable but not tuned (max_connections/fsync); run as root to fix"
        url "$PORT"; echo
        exit 0
    fi
fi

if (( ! IS_ROOT )); then
    die "PostgreSQL is not reachable at $PG_HOST:$PORT as $PG_ROLE/$PG_DB (${PROBE_ERR:-no server}); run this script as root to install/start it"
fi

# Root: serialise concurrent runs (lock on this script file, read-only).
# Every command that may start a server runs with fd 9 closed, otherwise the
# postmaster would inherit the lock and hold it forever.
if command -v flock >/dev/null 2>&1; then
    exec 9<"$SELF"
    flock -w 600 9 || die "timed out waiting for another ensure-postgres run"
    # Re-evaluate: a concurrent run may have done the work meanwhile.
    MODE="" PG_VER="" PG_CLUSTER="" CL_STATUS=""
    select_target
    if probe "$PORT" && probe_settings_ok; then url "$PORT"; echo; exit 0; fi
fi

if ! server_installed; then
    install_postgres
    MODE="" PG_VER="" PG_CLUSTER="" CL_STATUS=""
    select_target
fi
command -v runuser >/dev/null 2>&1 || die "runuser (util-linux) is required"

case $MODE in
    private) ensure_private_cluster ;;
    *)
        if ! start_debian_cluster; then
            log "Debian cluster unavailable; falling back to a private cluster in $PRIV_BASE"
            ensure_private_cluster
        fi
        ;;
esac

ensure_role_db_settings

# Final check over TCP with the test credentials.
ok=0
for _ in $(seq 1 20); do
    if probe "$PORT"; then ok=1; break; fi
    sleep 0.5
done
(( ok )) || die "server started but $PG_HOST:$PORT is not reachable as $PG_ROLE/$PG_DB: ${PROBE_ERR:-unknown error}"
probe_settings_ok || log "warning: server settings not as expected: $PROBE_OUT (max_connections|fsync|synchronous_commit|full_page_writes)"

log "PostgreSQL ready ($MODE cluster${PG_VER:+ $PG_VER/$PG_CLUSTER}, port $PORT)"
url "$PORT"; echo
