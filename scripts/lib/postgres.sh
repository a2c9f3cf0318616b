# Sourced by scripts: find, start and stop a private PostgreSQL server.
#
#   pg_find_bin             directory with initdb/pg_ctl, or "" when not installed
#   pg_start DIR            initdb + start on a free 127.0.0.1 port, data in DIR;
#                           sets PG_URL (user weft, random password, database postgres);
#                           serves TLS too when DB_TLS_DIR is set (db_certs in dbtls.sh)
#   pg_stop DIR             immediate stop (safe to call when not started)
#
# PostgreSQL refuses to run as root; as root the server runs as the postgres
# user (created when missing), which must be able to reach DIR.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

pg_find_bin() {
  local d found=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && found="$d"
  done
  echo "$found"
}

pg_as() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_start() {
  local dir=$1 bin port password
  bin=$(pg_find_bin)
  port=$(free_port)
  password="weft-$RANDOM$RANDOM"
  echo "== starting PostgreSQL ($bin) on 127.0.0.1:$port (data in $dir)"
  mkdir -p "$dir"
  chmod 755 "$(dirname "$dir")"
  printf '%s\n' "$password" >"$dir/pwfile"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown -R postgres "$dir"
  fi
  local tls_opts=""
  if [ -n "${DB_TLS_DIR:-}" ]; then
    # The key must belong to the server's user and be private to it.
    cp "$DB_TLS_DIR/server.crt" "$DB_TLS_DIR/server.key" "$dir/"
    chmod 600 "$dir/server.key"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir/server.crt" "$dir/server.key"
    tls_opts="-c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key"
  fi
  pg_as "$bin/initdb" -D "$dir/data" -U weft --pwfile="$dir/pwfile" \
    --auth=scram-sha-256 -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
    echo "initdb failed:" >&2
    cat "$dir/initdb.log" >&2
    return 1
  }
  pg_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off $tls_opts" \
    start >/dev/null || {
    echo "PostgreSQL failed to start:" >&2
    cat "$dir/server.log" >&2
    return 1
  }
  PG_URL="postgresql://weft:$password@127.0.0.1:$port/postgres"
}

pg_stop() {
  local dir=$1
  [ -f "$dir/data/postmaster.pid" ] || return 0
  pg_as "$(pg_find_bin)/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
}
