#!/usr/bin/env bash
# Make PostgreSQL and Redis reachable for CryptoVault, then create the database.
# Order of preference: use what is running; start installed servers; install
# Debian's postgresql and redis-server with apt-get and start them; else fail
# with a clear message. Idempotent and quiet when everything is already up.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -f .env ] && set -a && . ./.env && set +a
DATABASE_URL="${DATABASE_URL:-postgres://postgres@localhost:5432/cryptovault}"
REDIS_URL="${REDIS_URL:-redis://localhost:6379/0}"
PY="${PYTHON_BIN:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

say() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# host and port of a URL, via Python's parser (handles user:pass@host:port/db)
url_part() { "$PY" -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(p.hostname or "localhost" if sys.argv[2]=="host" else (p.port or int(sys.argv[3])))' "$1" "$2" "${3:-0}"; }
port_open() { "$PY" -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex((sys.argv[1], int(sys.argv[2]))))' "$1" "$2"; }
wait_port() { for _ in $(seq 1 30); do port_open "$1" "$2" && return 0; sleep 1; done; return 1; }
is_local() { case "$1" in localhost|127.0.0.1|::1) return 0;; *) return 1;; esac; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null || die "cannot install $* (no apt-get): install it yourself and re-run"
  [ -n "$APT_UPDATED" ] || { say "apt-get update"; $SUDO apt-get update -qq; APT_UPDATED=1; }
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

PG_HOST=$(url_part "$DATABASE_URL" host); PG_PORT=$(url_part "$DATABASE_URL" port 5432)
REDIS_HOST=$(url_part "$REDIS_URL" host); REDIS_PORT=$(url_part "$REDIS_URL" port 6379)

start_postgres() {
  if ! command -v pg_ctlcluster >/dev/null && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] || die "PostgreSQL is installed but has no cluster in /etc/postgresql"
  local conf="/etc/postgresql/$version/main"
  # A fresh Debian cluster asks for passwords over TCP; the local dev default is trust.
  if ! grep -q '^# cryptovault-trust' "$conf/pg_hba.conf"; then
    say "allowing local trust auth in $conf/pg_hba.conf"
    $SUDO sed -i '1i # cryptovault-trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all postgres trust' "$conf/pg_hba.conf"
  fi
  $SUDO sed -i "s/^#\?port = .*/port = $PG_PORT/" "$conf/postgresql.conf"
  say "starting PostgreSQL $version on port $PG_PORT"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main restart
}

start_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting Redis on port $REDIS_PORT"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
    --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/cryptovault.log
}

if ! port_open "$PG_HOST" "$PG_PORT"; then
  is_local "$PG_HOST" || die "PostgreSQL at $PG_HOST:$PG_PORT is unreachable (not local: start it yourself)"
  start_postgres
  wait_port "$PG_HOST" "$PG_PORT" || die "PostgreSQL did not come up on $PG_HOST:$PG_PORT"
fi
if ! port_open "$REDIS_HOST" "$REDIS_PORT"; then
  is_local "$REDIS_HOST" || die "Redis at $REDIS_HOST:$REDIS_PORT is unreachable (not local: start it yourself)"
  start_redis
  wait_port "$REDIS_HOST" "$REDIS_PORT" || die "Redis did not come up on $REDIS_HOST:$REDIS_PORT"
fi

# Create the application database if it is missing (the test database is pytest-django's).
"$PY" - "$DATABASE_URL" <<'PYEOF' || die "cannot create the database named in DATABASE_URL"
import sys, urllib.parse as up
import psycopg2
from psycopg2 import sql
url = up.urlsplit(sys.argv[1])
name = url.path.lstrip("/") or "cryptovault"
conn = psycopg2.connect(host=url.hostname or "localhost", port=url.port or 5432,
                        user=up.unquote(url.username or "postgres"),
                        password=up.unquote(url.password) if url.password else None,
                        dbname="postgres", connect_timeout=5)
conn.autocommit = True
with conn.cursor() as cur:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    if cur.fetchone() is None:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        print(f"[services] created database {name}", file=sys.stderr)
PYEOF
say "PostgreSQL $PG_HOST:$PG_PORT and Redis $REDIS_HOST:$REDIS_PORT are reachable."
