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
  _services_dir
  local dir host plugins cpus port1 port2 i
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
      || ! command -v sbatch >/dev/null; then
    echo "services: SLURM is not installed (apt-get install -y slurmctld slurmd slurm-client)" >&2
    return 1
  fi
  dir=$SUITE_SERVICES_DIR/slurm
  mkdir -p "$dir/state" "$dir/spool"
  host=$(hostname -s)
  plugins=$(dirname "$(ls /usr/lib/*/slurm-wlm/select_cons_tres.so /usr/lib/slurm*/select_cons_tres.so 2>/dev/null | head -n 1)")
  cpus=$(nproc)
  port1=$(_free_port); port2=$(_free_port)
  cat >"$dir/slurm.conf" <<CONF
ClusterName=suite
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port1
SlurmdPort=$port2
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmUser=root
SlurmdUser=root
ReturnToService=2
PluginDir=$plugins
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$dir/slurm.conf
  setsid slurmctld -D -f "$SLURM_CONF" >"$dir/slurmctld.out" 2>&1 &
  echo $! >"$dir/slurmctld.child"
  sleep 1
  setsid slurmd -D -f "$SLURM_CONF" >"$dir/slurmd.out" 2>&1 &
  echo $! >"$dir/slurmd.child"
  for i in $(seq 60); do
    if [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]; then
      export SUITE_TEST_SLURM=1
      echo "services: SLURM $(sinfo -V | awk '{print $2}') single node $host idle" \
           "(SLURM_CONF=$SLURM_CONF)"
      return 0
    fi
    sleep 1
  done
  echo "services: the SLURM node did not come up idle:" >&2
  tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2
  return 1
}

stop_slurm() {
  local f
  for f in slurmd slurmctld; do
    if [ -n "${SUITE_SERVICES_DIR:-}" ] && [ -f "$SUITE_SERVICES_DIR/slurm/$f.child" ]; then
      kill "$(cat "$SUITE_SERVICES_DIR/slurm/$f.child")" 2>/dev/null || true
    fi
  done
}
# ---------------------------------------------------------------------------------------------

start_services() {
  start_postgres && start_slurm
}

stop_services() {
  stop_slurm
  stop_postgres
}
