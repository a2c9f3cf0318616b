#!/usr/bin/env bash
# Runs Weft on this machine: builds it (installing protoc first when missing)
# and starts `weft local`, a coordinator and workers in one process with the
# built-in `sample` TPC-H catalog. Arguments go to `weft local` (see --help).
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}"

if ! command -v protoc >/dev/null 2>&1; then
  echo "== installing protobuf-compiler (etcd-client generates code at build time)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq protobuf-compiler >/dev/null
fi

exec cargo run --release -p weft-cli -- local "$@"
