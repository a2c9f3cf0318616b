#!/usr/bin/env bash
# PostgreSQL scan benchmark on a private PostgreSQL: starts one on a free
# port (data in a temporary directory), runs `weft-bench pgscan` against it
# (TPC-H lineitem, SF1 by default), stops it. Arguments go to `pgscan`.
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
cargo run --profile bench-release -p weft-benches -- pgscan --pg-url "$PG_URL" "$@"
