#!/usr/bin/env bash
# Make sure a PostgreSQL server is reachable for the integration tests.
#
# Done at once if LOYALTY_TEST_DATABASE_URL is set (the tests use that server) or something
# already accepts connections on 127.0.0.1:5432. Otherwise, as root, it installs Debian's
# postgresql if needed and starts a cluster as the postgres user (PostgreSQL refuses to run
# as root) with trust auth on the loopback address, which is what tests/conftest.py expects.
# Without root it only says how to enable the PostgreSQL tests, and fails only under CI=true.
#
# LOYALTY_TEST_PG_PORT and LOYALTY_TEST_PG_DATA change the port and the data directory of
# the cluster this script creates itself (when Debian's cluster tooling has none to start).
set -euo pipefail

host=127.0.0.1
port="${LOYALTY_TEST_PG_PORT:-5432}"
data_dir="${LOYALTY_TEST_PG_DATA:-/var/lib/postgresql/loyalty-test}"
enable_hint="PostgreSQL tests need a server: set LOYALTY_TEST_DATABASE_URL (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/postgres) or install PostgreSQL with trust auth on ${host}:${port}"

say() { echo "ensure_postgres: $*"; }

is_ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$host" -p "$port" -t 2
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()' \
      "$host" "$port" 2>/dev/null
  else
    timeout 2 bash -c ": </dev/tcp/$host/$port" 2>/dev/null
  fi
}

unavailable() {
  if [[ "${CI:-}" == "true" ]]; then
    echo "ensure_postgres: ERROR: no PostgreSQL reachable on ${host}:${port} and cannot start one here. ${enable_hint}" >&2
    exit 1
  fi
  say "no PostgreSQL on ${host}:${port}; PostgreSQL tests will be skipped. ${enable_hint}"
  exit 0
}

wait_ready() {
  for _ in $(seq 1 60); do
    if is_ready; then
      say "PostgreSQL is ready on ${host}:${port}"
      return 0
    fi
    sleep 0.5
  done
  echo "ensure_postgres: ERROR: PostgreSQL did not become ready on ${host}:${port}" >&2
  exit 1
}

# Newest installed major version's bin directory (Debian layout), or empty.
pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -n "$dir" && -x "$dir/initdb" ]]; then
    echo "$dir"
  elif command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  fi
}

as_postgres() {
  if command -v runuser >/dev/null 2>&1; then
    runuser -u postgres -- "$@"
  else
    su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  fi
}

if [[ -n "${LOYALTY_TEST_DATABASE_URL:-}" ]]; then
  say "using the server from LOYALTY_TEST_DATABASE_URL"
  exit 0
fi
if is_ready; then
  say "PostgreSQL is reachable on ${host}:${port}"
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  unavailable
fi

installed_now=0
if [[ -z "$(pg_bindir)" ]]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    unavailable
  fi
  say "installing PostgreSQL from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  installed_now=1
fi
bindir=$(pg_bindir)
if [[ -z "$bindir" ]]; then
  echo "ensure_postgres: ERROR: PostgreSQL binaries not found after install" >&2
  exit 1
fi
if ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --create-home --shell /bin/bash postgres
fi

# A Debian cluster already configured for this port (the packages create "main" on 5432).
debian_cluster=""
if command -v pg_lsclusters >/dev/null 2>&1; then
  debian_cluster=$(pg_lsclusters --no-header 2>/dev/null | awk -v p="$port" '$3 == p {print $1, $2; exit}')
fi

if [[ -n "$debian_cluster" ]]; then
  read -r version cluster <<<"$debian_cluster"
  hba="/etc/postgresql/${version}/${cluster}/pg_hba.conf"
  # Only a cluster this script just installed is reconfigured: the packages default to
  # password auth on TCP, and the tests connect as postgres without one. An existing
  # cluster's authentication is its owner's business.
  if [[ "$installed_now" -eq 1 && -f "$hba" ]] && ! grep -q 'loyalty-engine tests' "$hba"; then
    say "allowing trust auth on loopback in $hba (test machine)"
    {
      echo "# loyalty-engine tests: trust on loopback (added by scripts/ensure_postgres.sh)"
      echo "host all all 127.0.0.1/32 trust"
      echo "host all all ::1/128 trust"
      cat "$hba"
    } >"$hba.new"
    chown --reference="$hba" "$hba.new"
    chmod --reference="$hba" "$hba.new"
    mv "$hba.new" "$hba"
  fi
  say "starting cluster ${version}/${cluster}"
  # pg_ctlcluster runs the server as the cluster's owner (postgres), never as root.
  if pg_lsclusters --no-header | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c && $4 == "online" {f=1} END {exit !f}'; then
    pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" reload
  else
    pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start
  fi
else
  if [[ ! -s "$data_dir/PG_VERSION" ]]; then
    say "creating a test cluster in $data_dir"
    mkdir -p "$data_dir"
    chown postgres: "$data_dir"
    chmod 700 "$data_dir"
    as_postgres "$bindir/initdb" -D "$data_dir" -U postgres --auth=trust \
      --encoding=UTF8 --no-instructions >/dev/null
  fi
  say "starting the test cluster in $data_dir on ${host}:${port}"
  # The socket lives in the data directory so it never clashes with a system cluster.
  as_postgres "$bindir/pg_ctl" -D "$data_dir" -l "$data_dir/server.log" -w -t 60 \
    -o "-p $port -c listen_addresses=$host -c unix_socket_directories=$data_dir" start >/dev/null
fi
wait_ready
