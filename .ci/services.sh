# Services the tests need, from Debian's packages, started by hand (no systemd): sourced by
# .ci/run, or by a developer:
#
#   apt-get install -y postgresql slurmctld slurmd slurm-client
#   . .ci/services.sh && start_services     # exports SUITE_TEST_POSTGRES_URI (and SLURM's)
#   python -m pytest tests/test_server.py
#   stop_services
#
# Everything lives in one temporary folder ($SUITE_SERVICES_DIR) and listens on 127.0.0.1 only.
# Bash functions only: sourcing this file starts nothing.

SUITE_SERVICES_DIR=${SUITE_SERVICES_DIR:-}

_services_dir() {
  if [ -z "$SUITE_SERVICES_DIR" ]; then
    SUITE_SERVICES_DIR=$(mktemp -d /tmp/suite-services.XXXXXX)
    # The PostgreSQL server runs as the postgres user, which must traverse this folder.
    chmod 755 "$SUITE_SERVICES_DIR"
  fi
  export SUITE_SERVICES_DIR
}

_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Run a command as the postgres user when root (PostgreSQL refuses to run as root).
_as_pg() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

# PostgreSQL: a throw-away cluster (trust auth, loopback only) with a database suite_test;
# exports SUITE_TEST_POSTGRES_URI=postgresql://postgres@127.0.0.1:PORT/suite_test.
start_postgres() {
  _services_dir
  local bin dir port
  # Debian installs the server under a versioned folder, not on PATH (15 on Debian 12).
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "services: PostgreSQL is not installed (apt-get install -y postgresql)" >&2
    return 1
  fi
  dir=$SUITE_SERVICES_DIR/postgres
  port=$(_free_port)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
  _as_pg "'$bin/initdb' -D '$dir/data' -A trust -U postgres >'$dir/initdb.log' 2>&1" || {
    cat "$dir/initdb.log" >&2; return 1; }
  # -w: wait until it accepts connections; -k: its Unix socket in our folder, not /run.
  _as_pg "'$bin/pg_ctl' -D '$dir/data' -w -l '$dir/server.log' \
    -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1\" start >/dev/null" || {
    cat "$dir/server.log" >&2; return 1; }
  "$bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -c "create database suite_test;" || return 1
  SUITE_PG_BIN=$bin
  SUITE_PG_DATA=$dir/data
  export SUITE_TEST_POSTGRES_URI="postgresql://postgres@127.0.0.1:$port/suite_test"
  echo "services: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" \
       "(SUITE_TEST_POSTGRES_URI=$SUITE_TEST_POSTGRES_URI)"
}

stop_postgres() {
  if [ -n "${SUITE_PG_DATA:-}" ] && [ -d "$SUITE_PG_DATA" ]; then
    _as_pg "'$SUITE_PG_BIN/pg_ctl' -D '$SUITE_PG_DATA' -m fast -w stop >/dev/null" || true
  fi
}

# ---------------------------------------------------------------------------------------------
# SLURM hook: start a single-node cluster here (slurmctld and slurmd as root, see
# shared/SCALEOUT.md) and export SUITE_TEST_SLURM=1 when it is idle. Keep it a function pair
# named start_slurm / stop_slurm: start_services and stop_services call them.
start_slurm() {
  :
}

stop_slurm() {
  :
}
# ---------------------------------------------------------------------------------------------

start_services() {
  start_postgres && start_slurm
}

stop_services() {
  stop_slurm
  stop_postgres
}
