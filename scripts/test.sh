#!/usr/bin/env bash
# Runs Weft's whole test suite on a fresh machine.
#
# Installs what the tests need when missing (protoc, etcd, PostgreSQL, and
# ADBC's Flight SQL driver for Python), starts etcd and PostgreSQL on private
# ports with temporary data directories, runs `cargo test --workspace` and
# stops them afterwards. Extra arguments go to `cargo test`.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}"

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
find_pg_bin() {
  local d found=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && found="$d"
  done
  echo "$found"
}
[ -n "$(find_pg_bin)" ] || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# ADBC's Flight SQL driver, for the client-compatibility test.
if ! python3 -c 'import adbc_driver_flightsql, pyarrow' >/dev/null 2>&1; then
  echo "== installing adbc-driver-flightsql and pyarrow (pip)"
  python3 -m pip install -q --disable-pip-version-check adbc-driver-flightsql pyarrow
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

work=$(mktemp -d -t weft-test-XXXXXX)
# PostgreSQL refuses to run as root; as root it runs as the postgres user,
# which must be able to reach its directory.
chmod 755 "$work"
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}
etcd_pid=""
pg_started=""
cleanup() {
  if [ -n "$pg_started" ]; then
    as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ -n "$etcd_pid" ]; then
    kill "$etcd_pid" 2>/dev/null || true
    wait "$etcd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

client_port=$(free_port)
peer_port=$(free_port)
echo "== starting etcd on 127.0.0.1:$client_port (data in $work/etcd)"
etcd --name weft-test \
  --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$client_port" \
  --advertise-client-urls "http://127.0.0.1:$client_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "weft-test=http://127.0.0.1:$peer_port" \
  --log-level error >"$work/etcd.log" 2>&1 &
etcd_pid=$!

for _ in $(seq 1 100); do
  if curl -fs "http://127.0.0.1:$client_port/health" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$etcd_pid" 2>/dev/null; then
    echo "etcd failed to start:" >&2
    cat "$work/etcd.log" >&2
    exit 1
  fi
  sleep 0.1
done
export WEFT_TEST_ETCD="http://127.0.0.1:$client_port"

pg_bin=$(find_pg_bin)
pg_port=$(free_port)
pg_password="weft-test-$RANDOM$RANDOM"
echo "== starting PostgreSQL ($pg_bin) on 127.0.0.1:$pg_port (data in $work/pg)"
mkdir -p "$work/pg"
printf '%s\n' "$pg_password" >"$work/pg/pwfile"
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown -R postgres "$work/pg"
fi
as_pg "$pg_bin/initdb" -D "$work/pg/data" -U weft --pwfile="$work/pg/pwfile" \
  --auth=scram-sha-256 -E UTF8 --locale=C >"$work/pg/initdb.log" 2>&1 || {
  echo "initdb failed:" >&2
  cat "$work/pg/initdb.log" >&2
  exit 1
}
as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w -t 60 \
  -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  start >/dev/null || {
  echo "PostgreSQL failed to start:" >&2
  cat "$work/pg/server.log" >&2
  exit 1
}
pg_started=1
export WEFT_TEST_PG="postgresql://weft:$pg_password@127.0.0.1:$pg_port/postgres"

echo "== cargo test (target dir $CARGO_TARGET_DIR)"
cargo test --workspace "$@"
