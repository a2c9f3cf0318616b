#!/usr/bin/env bash
# PostgreSQL benchmarks on a private PostgreSQL: starts one on a free port
# (data in a temporary directory), runs `weft-bench pgscan` (scan throughput
# of TPC-H lineitem), `weft-bench fedjoin` (cross-database joins vs
# postgres_fdw) or `weft-bench pgtpch` (the 22 TPC-H queries over one
# database: Weft as deployed vs PostgreSQL itself) against it, SF1 by
# default, stops it.
#
#   scripts/bench-postgres.sh pgscan [--splits 4] [--iterations 3]
#   scripts/bench-postgres.sh fedjoin [--iterations 3] [--queries 3,5]
#   scripts/bench-postgres.sh pgtpch [--iterations 3] [--queries 4,21] [--pg-timeout 60]
set -euo pipefail

cd "$(dirname "$0")/.."
. scripts/lib/postgres.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}"
if [ -z "$(pg_find_bin)" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
work=$(mktemp -d -t weft-bench-XXXXXX)
trap 'pg_stop "$work/pg"; rm -rf "$work"' EXIT INT TERM
pg_start "$work/pg"
bench=pgscan
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  bench=$1
  shift
fi
# All binaries (pgtpch starts weft-coordinator and weft-worker processes);
# building the workspace at once also keeps features unified with the tests.
cargo build --profile bench-release --workspace --bins
"$CARGO_TARGET_DIR/bench-release/weft-bench" "$bench" --pg-url "$PG_URL" "$@"
