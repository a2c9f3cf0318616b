# Sourced by scripts: a private CA and a server certificate for the test
# databases, so PostgreSQL and MariaDB serve TLS like production ones do.
#
#   db_certs DIR    writes DIR/ca.crt, DIR/ca.key, DIR/server.crt,
#                   DIR/server.key (for 127.0.0.1 and localhost) with
#                   openssl; sets DB_TLS_DIR=DIR and DB_CA=DIR/ca.crt

db_certs() {
  local dir=$1
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj "/CN=weft test database CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" >/dev/null 2>&1 || return 1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$dir/server.key" -out "$dir/server.csr" >/dev/null 2>&1 || return 1
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$dir/ext.cnf"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 3 -extfile "$dir/ext.cnf" -out "$dir/server.crt" >/dev/null 2>&1 || return 1
  chmod 644 "$dir/server.crt" "$dir/ca.crt"
  DB_TLS_DIR="$dir"
  DB_CA="$dir/ca.crt"
}
