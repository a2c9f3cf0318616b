# Sourced by scripts: find, start and stop a private MariaDB server.
#
#   my_find_bin             directory with mariadbd, or "" when not installed
#   my_start DIR            mariadb-install-db + start on a free 127.0.0.1 port,
#                           data in DIR; sets MY_URL (user weft with a random
#                           password and every privilege, database weft); serves
#                           TLS too when DB_TLS_DIR is set (db_certs in dbtls.sh)
#   my_stop DIR             stop (safe to call when not started)
#
# Needs free_port from postgres.sh. As root the server runs as the mysql
# user (created when missing), which must be able to reach DIR.

my_find_bin() {
  local d
  for d in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin; do
    if [ -x "$d/mariadbd" ]; then
      echo "$d"
      return
    fi
  done
  echo ""
}

my_start() {
  local dir=$1 bin port password user_opt=()
  bin=$(my_find_bin)
  port=$(free_port)
  password="weft-$RANDOM$RANDOM"
  echo "== starting MariaDB ($bin/mariadbd) on 127.0.0.1:$port (data in $dir)"
  mkdir -p "$dir"
  chmod 755 "$(dirname "$dir")"
  if [ "$(id -u)" -eq 0 ]; then
    id mysql >/dev/null 2>&1 || useradd --system --no-create-home mysql
    chown -R mysql "$dir"
    user_opt=(--user=mysql)
  fi
  local tls_opts=()
  if [ -n "${DB_TLS_DIR:-}" ]; then
    cp "$DB_TLS_DIR/server.crt" "$DB_TLS_DIR/server.key" "$DB_TLS_DIR/ca.crt" "$dir/"
    chmod 600 "$dir/server.key"
    [ "$(id -u)" -eq 0 ] && chown mysql "$dir/server.crt" "$dir/server.key" "$dir/ca.crt"
    tls_opts=(--ssl-cert="$dir/server.crt" --ssl-key="$dir/server.key" --ssl-ca="$dir/ca.crt")
  fi
  mariadb-install-db --no-defaults --datadir="$dir/data" "${user_opt[@]}" \
    --auth-root-authentication-method=socket --skip-test-db >"$dir/install.log" 2>&1 || {
    echo "mariadb-install-db failed:" >&2
    cat "$dir/install.log" >&2
    return 1
  }
  "$bin/mariadbd" --no-defaults --datadir="$dir/data" "${user_opt[@]}" \
    --port="$port" --bind-address=127.0.0.1 --socket="$dir/mysqld.sock" \
    --pid-file="$dir/mysqld.pid" --log-error="$dir/server.log" \
    --skip-name-resolve --innodb-flush-log-at-trx-commit=0 --innodb-buffer-pool-size=256M \
    --max-connections=300 --character-set-server=utf8mb4 "${tls_opts[@]}" >/dev/null 2>&1 &
  local i
  for i in $(seq 1 300); do
    if mariadb --no-defaults -S "$dir/mysqld.sock" -u root -e 'SELECT 1' >/dev/null 2>&1; then
      break
    fi
    if [ "$i" -eq 300 ]; then
      echo "MariaDB failed to start:" >&2
      cat "$dir/server.log" >&2
      return 1
    fi
    sleep 0.1
  done
  mariadb --no-defaults -S "$dir/mysqld.sock" -u root -e "
    CREATE USER 'weft'@'127.0.0.1' IDENTIFIED BY '$password';
    GRANT ALL PRIVILEGES ON *.* TO 'weft'@'127.0.0.1' WITH GRANT OPTION;
    CREATE DATABASE weft;" || return 1
  MY_URL="mysql://weft:$password@127.0.0.1:$port/weft"
}

my_stop() {
  local dir=$1 pid
  [ -f "$dir/mysqld.pid" ] || return 0
  pid=$(cat "$dir/mysqld.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}
