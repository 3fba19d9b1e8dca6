#!/usr/bin/env bash
# Scale-out demo on this machine, without Docker (a demo, not part of `make test`).
#
# Starts nginx (deploy/nginx.conf) over two `web` processes, a PostgreSQL streaming
# replica (a second cluster on $REPLICA_PORT made with pg_basebackup from the primary),
# a Celery worker, beat and the simulator; then proves with real requests that
#   1. the replica streams from the primary,
#   2. a session made through one instance works on the other (and its logout too),
#   3. reads that tolerate lag reach the replica; orders stay on the primary, and so do
#      a client's reads right after its own write,
#   4. a WebSocket subscriber on instance B (and one through nginx) receives ticks,
#   5. stopping (SIGTERM) or killing (SIGKILL) one web instance mid-load loses no
#      request nginx can retry.
# The throughput of one vs two web processes behind the same nginx is bench/scale.py.
#
# The shared primary is never restarted: if it refuses replication connections, one
# `host replication` trust line for 127.0.0.1 is added to its pg_hba.conf and the
# configuration reloaded (existing connections stay); cleanup removes the line and
# reloads again. Everything else lives in a temporary directory and a demo database,
# both removed on exit. Exits non-zero on the first failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

case "${1:-}" in
  "") ;;
  -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
  *) echo "usage: $0 (no arguments; ports and names via environment, see below)" >&2; exit 2 ;;
esac

PY="${PYTHON_BIN:-$ROOT/.venv/bin/python}"
PRIMARY_HOST=127.0.0.1
PRIMARY_PORT="${PRIMARY_PORT:-5432}"
REPLICA_PORT="${REPLICA_PORT:-5433}"
NGINX_PORT="${NGINX_PORT:-8080}"
WEB_A_PORT="${WEB_A_PORT:-18001}"
WEB_B_PORT="${WEB_B_PORT:-18002}"
SIMULATOR_PORT="${DEMO_SIMULATOR_PORT:-18765}"
DEMO_DB="${DEMO_DB:-cv_scale_demo}"
DEMO_REDIS_DB="${DEMO_REDIS_DB:-14}"
POLL_SECONDS="${DEMO_POLL_SECONDS:-2}"
APP_NAME="cv_scale_demo_replica"

say() { printf '[scale-demo] %s\n' "$*"; }
ok() { printf '[scale-demo] OK   %s\n' "$*"; }
die() { printf '[scale-demo] FAIL %s\n' "$*" >&2; exit 1; }
psql_primary() { psql -X -q -v ON_ERROR_STOP=1 -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U postgres -At "$@"; }
psql_replica() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -At "$@"; }
port_open() { "$PY" -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))))' "$1"; }

[ "$(id -u)" -eq 0 ] || die "run as root (the replica runs as the postgres user, nginx is installed with apt-get)"
[ -x "$PY" ] || die "no $PY: run 'make install' first"
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$PG_BIN" ] && [ -x "$PG_BIN/pg_ctl" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
command -v redis-cli >/dev/null || die "redis-cli not found"
for port in "$REPLICA_PORT" "$NGINX_PORT" "$WEB_A_PORT" "$WEB_B_PORT" "$SIMULATOR_PORT"; do
  ! port_open "$port" || die "port $port is taken; set REPLICA_PORT/NGINX_PORT/WEB_A_PORT/WEB_B_PORT/DEMO_SIMULATOR_PORT"
done
psql_primary -c 'select 1' >/dev/null || die "the primary PostgreSQL on $PRIMARY_HOST:$PRIMARY_PORT is not reachable"

WORK=$(mktemp -d /tmp/cv-scale-demo.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/logs" "$WORK/mail" "$WORK/nginx" "$WORK/pg"
chown postgres: "$WORK/pg"
declare -A PIDS=()
HBA_FILE=""
HBA_MARK="# cv-scale-demo $$"
DB_CREATED=""

stop_pid() {  # stop one process this script started, politely then firmly
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  say "cleaning up"
  for name in "${!PIDS[@]}"; do stop_pid "${PIDS[$name]}"; done
  if [ -f "$WORK/pg/replica/postmaster.pid" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/replica" -m fast -w stop >/dev/null 2>&1 || true
  fi
  if [ -n "$HBA_FILE" ] && grep -qF "$HBA_MARK" "$HBA_FILE"; then
    sed -i "/$HBA_MARK\$/d" "$HBA_FILE"
    psql_primary -c 'select pg_reload_conf()' >/dev/null || true
    say "removed the temporary replication line from $HBA_FILE"
  fi
  if [ -n "$DB_CREATED" ]; then
    psql_primary -c "drop database if exists $DEMO_DB with (force)" >/dev/null 2>&1 || true
  fi
  redis-cli -n "$DEMO_REDIS_DB" flushdb >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ] && [ -d "$WORK/logs" ]; then
    for log in "$WORK"/logs/*.log; do
      printf '\n----- last lines of %s -----\n' "$(basename "$log")" >&2
      tail -n 15 "$log" >&2 || true
    done
  fi
  rm -rf "$WORK"
  [ "$rc" -eq 0 ] && say "done: every check passed" || say "exit $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- nginx ----------------------------------------------------------------------------
if ! command -v nginx >/dev/null; then
  say "installing nginx (Debian package)"
  apt-get update -qq >/dev/null
  # policy-rc.d-less machines would start the packaged site on port 80: stop it again.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  { invoke-rc.d nginx stop || service nginx stop; } >/dev/null 2>&1 || true
fi

# --- primary: replication allowed? ------------------------------------------------------
WAL_LEVEL=$(psql_primary -c 'show wal_level')
WAL_SENDERS=$(psql_primary -c 'show max_wal_senders')
[ "$WAL_LEVEL" != minimal ] && [ "$WAL_SENDERS" -gt 0 ] \
  || die "the primary has wal_level=$WAL_LEVEL, max_wal_senders=$WAL_SENDERS: streaming needs wal_level=replica and max_wal_senders>0, which take a restart this demo will not do"
if ! psql -X -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U postgres "replication=true" -c IDENTIFY_SYSTEM >/dev/null 2>&1; then
  HBA_FILE=$(psql_primary -c 'show hba_file')
  say "allowing local replication connections in $HBA_FILE (reload, no restart)"
  sed -i "1i host replication postgres 127.0.0.1/32 trust $HBA_MARK" "$HBA_FILE"
  psql_primary -c 'select pg_reload_conf()' >/dev/null
  for _ in $(seq 1 20); do
    psql -X -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U postgres "replication=true" -c IDENTIFY_SYSTEM >/dev/null 2>&1 && break
    sleep 0.25
  done
fi

# --- the demo database on the primary -----------------------------------------------------
export DATABASE_URL="postgres://postgres@$PRIMARY_HOST:$PRIMARY_PORT/$DEMO_DB"
export DATABASE_REPLICA_URL="postgres://postgres@127.0.0.1:$REPLICA_PORT/$DEMO_DB"
export REDIS_URL="redis://127.0.0.1:6379/$DEMO_REDIS_DB"
export MARKET_DATA_URL="http://127.0.0.1:$SIMULATOR_PORT/api/v3"
export PRICE_POLL_SECONDS="$POLL_SECONDS" TICKERS_POLL_SECONDS=30
export EMAIL_BACKEND=django.core.mail.backends.filebased.EmailBackend EMAIL_FILE_PATH="$WORK/mail"
export TRUSTED_PROXIES=127.0.0.1 APP_URL="http://127.0.0.1:$NGINX_PORT"
export DEBUG=true LOG_LEVEL=WARNING DJANGO_SETTINGS_MODULE=cryptovault.settings
# One connection per request, so each backend's scan counters reach pg_stat as it ends
# (the replica check below reads them); production keeps connections (CONN_MAX_AGE).
export CONN_MAX_AGE=0
export RATELIMIT_ENABLE="${RATELIMIT_ENABLE:-true}"
redis-cli -n "$DEMO_REDIS_DB" flushdb >/dev/null

say "creating database $DEMO_DB on the primary, migrating, seeding"
psql_primary -c "drop database if exists $DEMO_DB with (force)" >/dev/null
psql_primary -c "create database $DEMO_DB" >/dev/null
DB_CREATED=1
# Migrations run on the primary only (the router never migrates the replica).
env -u DATABASE_REPLICA_URL "$PY" manage.py migrate --noinput >"$WORK/logs/migrate.log" 2>&1 || die "migrate failed"
env -u DATABASE_REPLICA_URL "$PY" manage.py seed_demo >>"$WORK/logs/migrate.log" 2>&1 || die "seed_demo failed"

# --- the replica: pg_basebackup + hot standby on $REPLICA_PORT ------------------------------
say "pg_basebackup from $PRIMARY_HOST:$PRIMARY_PORT into a standby on port $REPLICA_PORT"
runuser -u postgres -- pg_basebackup -d "host=$PRIMARY_HOST port=$PRIMARY_PORT user=postgres application_name=$APP_NAME" \
  -D "$WORK/pg/replica" -R -X stream -c fast >"$WORK/logs/basebackup.log" 2>&1 || die "pg_basebackup failed: $(tail -n 3 "$WORK/logs/basebackup.log")"
# Debian keeps postgresql.conf and pg_hba.conf outside the data directory, so the copy
# has none. A hot standby needs these limits at least as high as the primary's.
{
  echo "port = $REPLICA_PORT"
  echo "listen_addresses = '127.0.0.1'"
  echo "unix_socket_directories = '$WORK/pg'"
  echo "hot_standby = on"
  echo "shared_buffers = 32MB"
  for setting in max_connections max_worker_processes max_wal_senders max_prepared_transactions max_locks_per_transaction; do
    echo "$setting = $(psql_primary -c "show $setting")"
  done
} | runuser -u postgres -- tee "$WORK/pg/replica/postgresql.conf" >/dev/null
printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' | runuser -u postgres -- tee "$WORK/pg/replica/pg_hba.conf" >/dev/null
touch "$WORK/logs/replica.log" && chown postgres: "$WORK/logs/replica.log"
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/replica" -l "$WORK/logs/replica.log" -w -t 60 start >/dev/null \
  || die "the replica did not start"
[ "$(psql_replica -d "$DEMO_DB" -c 'select pg_is_in_recovery()')" = t ] || die "the replica is not in recovery"

# --- the platform -----------------------------------------------------------------------
start() {  # start NAME COMMAND...: a process of ours, logged, remembered for cleanup
  local name=$1; shift
  "$@" >"$WORK/logs/$name.log" 2>&1 &
  PIDS[$name]=$!
}
start_web() {  # start_web NAME PORT
  start "$1" "$PY" -m uvicorn cryptovault.asgi:application --host 127.0.0.1 --port "$2" \
    --proxy-headers --forwarded-allow-ips 127.0.0.1 --no-access-log --timeout-graceful-shutdown 10
}
wait_http() {  # wait_http URL [seconds]
  local deadline=$((SECONDS + ${2:-40}))
  until "$PY" -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.3
  done
}
write_nginx_conf() {  # write_nginx_conf PORT...: deploy/nginx.conf over these local instances
  local servers="" port
  for port in "$@"; do servers+="server 127.0.0.1:$port max_fails=2 fail_timeout=10s; "; done
  sed -e "s|server web:8000 .*# cv:upstream-servers|$servers|" \
      -e "s|listen 80;  # cv:listen|listen 127.0.0.1:$NGINX_PORT;|" \
      deploy/nginx.conf >"$WORK/nginx/nginx.conf"
  grep -q "127.0.0.1:$NGINX_PORT" "$WORK/nginx/nginx.conf" || die "could not adapt deploy/nginx.conf"
}
NGINX_ARGS=(-p "$WORK/nginx" -c "$WORK/nginx/nginx.conf")
NGINX_GLOBALS="pid $WORK/nginx/nginx.pid; daemon off; user www-data;"

say "starting simulator, web A (:$WEB_A_PORT), web B (:$WEB_B_PORT), worker, beat, nginx (:$NGINX_PORT)"
start simulator "$PY" manage.py run_simulator --host 127.0.0.1 --port "$SIMULATOR_PORT"
start_web web_a "$WEB_A_PORT"
start_web web_b "$WEB_B_PORT"
start worker "$PY" -m celery -A cryptovault worker --loglevel WARNING --concurrency 2 -Q celery,orders -n "demo-worker@%h"
start beat "$PY" -m celery -A cryptovault beat --loglevel WARNING \
  --scheduler django_celery_beat.schedulers:DatabaseScheduler
write_nginx_conf "$WEB_A_PORT" "$WEB_B_PORT"
nginx -t "${NGINX_ARGS[@]}" -g "$NGINX_GLOBALS" >"$WORK/logs/nginx-test.log" 2>&1 || die "nginx -t failed: $(cat "$WORK/logs/nginx-test.log")"
start nginx nginx "${NGINX_ARGS[@]}" -g "$NGINX_GLOBALS"

wait_http "http://127.0.0.1:$SIMULATOR_PORT/api/v3/ping" || die "the simulator did not come up"
for port in "$WEB_A_PORT" "$WEB_B_PORT" "$NGINX_PORT"; do
  wait_http "http://127.0.0.1:$port/health" 60 || die "no healthy answer on :$port/health"
done
ok "nginx :$NGINX_PORT -> web A :$WEB_A_PORT + web B :$WEB_B_PORT are healthy"

# --- 1. replication ---------------------------------------------------------------------
state=$(psql_primary -c "select state from pg_stat_replication where application_name = '$APP_NAME'")
[ "$state" = streaming ] || die "the replica is not streaming (pg_stat_replication state: '${state:-none}')"
ok "replica on :$REPLICA_PORT is a hot standby streaming from :$PRIMARY_PORT (pg_stat_replication: $state)"

# The HTTP and WebSocket checks are Python; every request is a real one.
cat >"$WORK/checks.py" <<'PYTHON'
import asyncio, concurrent.futures, email, json, os, re, signal, sys, threading, time
from pathlib import Path

import httpx, websockets

NGINX, A, B = (f"http://127.0.0.1:{os.environ[k]}" for k in ("NGINX_PORT", "WEB_A_PORT", "WEB_B_PORT"))
API = "/api/v1"


def fail(message):
    print(f"[scale-demo] FAIL {message}", file=sys.stderr)
    sys.exit(1)


def expect(response, status):
    if response.status_code != status:
        fail(f"{response.request.method} {response.request.url} -> {response.status_code}, expected {status}: {response.text[:300]}")
    return response


def verification_token(address, timeout=20.0):
    """The token of the verification link in the last email to ``address``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(Path(os.environ["EMAIL_FILE_PATH"]).glob("*.log"), key=os.path.getmtime, reverse=True):
            for raw in reversed(path.read_text().split("-" * 79)):
                message = email.message_from_string(raw.strip())
                if address not in (message.get("To") or ""):
                    continue
                parts = message.walk() if message.is_multipart() else [message]
                for part in parts:
                    if part.get_content_type() == "text/plain":
                        body = part.get_payload(decode=True).decode()
                        found = re.search(r"token=([A-Za-z0-9_\-.:]+)", body)
                        if found:
                            return found.group(1)
        time.sleep(0.3)
    fail(f"no verification email for {address}")


def session():
    address = f"scale-{int(time.time() * 1000)}@example.com"
    password = "Scale-demo-passw0rd!"
    with httpx.Client(timeout=10) as http:
        echoed = expect(http.get(f"{NGINX}/health", headers={"X-Request-ID": "scale-demo-1"}), 200)
        if echoed.headers.get("X-Request-ID") != "scale-demo-1":
            fail(f"X-Request-ID not passed through nginx: {echoed.headers.get('X-Request-ID')}")
        expect(http.post(f"{NGINX}{API}/auth/signup", json={"email": address, "password": password}), 201)
        expect(http.post(f"{A}{API}/auth/verify-email", json={"token": verification_token(address)}), 200)
        tokens = expect(http.post(f"{A}{API}/auth/login", json={"email": address, "password": password}), 200).json()
        auth = {"Authorization": f"Bearer {tokens['access']}"}
        me = expect(http.get(f"{B}{API}/auth/me", headers=auth), 200).json()
        if me.get("email") != address:
            fail(f"instance B answered /me for {me.get('email')}, not {address}")
        print(f"[scale-demo] OK   logged in on web A, instance B knows the session (/me = {address})")
        rotated = expect(http.post(f"{B}{API}/auth/token/refresh", json={"refresh": tokens["refresh"]}), 200).json()
        expect(http.get(f"{A}{API}/auth/me", headers={"Authorization": f"Bearer {rotated['access']}"}), 200)
        expect(http.post(f"{B}{API}/auth/logout", json={"refresh": rotated["refresh"]}, headers={"Authorization": f"Bearer {rotated['access']}"}), 204)
        expect(http.get(f"{A}{API}/auth/me", headers={"Authorization": f"Bearer {rotated['access']}"}), 401)
        print("[scale-demo] OK   refreshed on B, used on A; logged out on B, the access token is refused at once on A")
        tokens = expect(http.post(f"{NGINX}{API}/auth/login", json={"email": address, "password": password}), 200).json()
    Path(os.environ["WORK"], "access").write_text(tokens["access"])
    Path(os.environ["WORK"], "email").write_text(address)


def reads(count):
    """Lag-tolerant reads (coins, history, notifications) and own-writes reads (orders)."""
    access = Path(os.environ["WORK"], "access").read_text()
    auth = {"Authorization": f"Bearer {access}"}
    with httpx.Client(base_url=NGINX, timeout=10) as http:
        for _ in range(count):
            expect(http.get(f"{API}/coins"), 200)
            expect(http.get(f"{API}/notifications", headers=auth), 200)
            expect(http.get(f"{API}/orders", headers=auth), 200)


def own_writes(count):
    """A write, then reads of the same lag-tolerant data with the same credentials."""
    access = Path(os.environ["WORK"], "access").read_text()
    auth = {"Authorization": f"Bearer {access}"}
    with httpx.Client(base_url=NGINX, timeout=10) as http:
        expect(http.post(f"{API}/notifications/read-all", headers=auth), 200)
        for _ in range(count):
            if expect(http.get(f"{API}/notifications/unread-count", headers=auth), 200).json()["count"]:
                fail("unread-count is not 0 right after read-all")


async def first_tick(url, timeout):
    async with websockets.connect(url, open_timeout=10) as socket:
        snapshot = json.loads(await asyncio.wait_for(socket.recv(), 10))
        if snapshot.get("type") != "snapshot":
            fail(f"{url}: first frame is {snapshot.get('type')}, not a snapshot")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = json.loads(await asyncio.wait_for(socket.recv(), deadline - time.monotonic()))
            if frame.get("type") == "tick":
                return frame
    fail(f"{url}: no tick within {timeout}s")


def ticks():
    timeout = 5 * int(os.environ["PRICE_POLL_SECONDS"]) + 15

    async def both():
        return await asyncio.gather(
            first_tick(B.replace("http", "ws") + "/ws/prices", timeout),
            first_tick(NGINX.replace("http", "ws") + "/ws/prices", timeout),
        )

    on_b, via_nginx = asyncio.run(both())
    coins = ", ".join(sorted(on_b["prices"])[:3])
    print(f"[scale-demo] OK   WebSocket on web B got a tick as of {on_b['as_of']} ({coins}, ...), and so did one through nginx")


def load(total, kill_after, pid, signame, who):
    """``total`` GETs through nginx from 8 threads; send ``signame`` to ``pid`` after ``kill_after``."""
    paths = [f"{API}/coins", f"{API}/prices", f"{API}/coins/bitcoin", f"{API}/coins/bitcoin/history?days=1"]
    done, failures, lock = 0, [], threading.Lock()
    killed = threading.Event()

    durations = {p: [] for p in paths}

    http = httpx.Client(base_url=NGINX, timeout=30, limits=httpx.Limits(max_connections=8))

    def one(i):
        nonlocal done
        path = paths[i % len(paths)]
        began = time.monotonic()
        response = http.get(path, headers={"X-Request-ID": f"scale-load-{i}"})
        with lock:
            durations[path].append(time.monotonic() - began)
            done += 1
            if response.status_code != 200:
                failures.append(f"{paths[i % len(paths)]} -> {response.status_code}")
            if done == kill_after and not killed.is_set():
                os.kill(pid, getattr(signal, signame))
                killed.set()

    started = time.monotonic()
    with http, concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(total)))
    if not killed.is_set():
        fail("the web instance was never killed")
    if failures:
        fail(f"{len(failures)} of {total} requests failed after {signame} to {who}: {failures[:5]}")
    print(f"[scale-demo] OK   {total} GETs through nginx in {time.monotonic() - started:.1f}s, {who} got {signame} after {kill_after}: 0 failed")
    medians = ", ".join(f"{p} {sorted(d)[len(d) // 2] * 1000:.0f}" for p, d in durations.items())
    print(f"[scale-demo]      median ms: {medians}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"session": session, "reads": lambda n: reads(int(n)), "own_writes": lambda n: own_writes(int(n)), "ticks": ticks,
     "load": lambda t, k, p, s, w: load(int(t), int(k), int(p), s, w)}[command](*args)
PYTHON
export NGINX_PORT WEB_A_PORT WEB_B_PORT WORK
checks() { "$PY" "$WORK/checks.py" "$@"; }

# --- 2. a session across instances --------------------------------------------------------
checks session

# --- 3. reads reach the replica -----------------------------------------------------------
# Each server counts the scans it ran itself, so the replica's counters only move for
# queries routed to it. Backends flush their counters when they end (CONN_MAX_AGE=0).
scans_sql="select coalesce(sum(coalesce(seq_scan,0) + coalesce(idx_scan,0)), 0) from pg_stat_user_tables where relname = '%s'"
scans() { "psql_$1" -d "$DEMO_DB" -c "$(printf "$scans_sql" "$2")"; }
declare -A BEFORE=()
for table in markets_coin notifications_notification orders_order; do
  BEFORE[replica:$table]=$(scans replica "$table")
  BEFORE[primary:$table]=$(scans primary "$table")
done
checks reads 10
moved() { [ "$(scans "$1" "$2")" -gt "${BEFORE[$1:$2]}" ]; }
for _ in $(seq 1 30); do
  moved replica markets_coin && moved replica notifications_notification && moved primary orders_order && break
  sleep 0.2
done
for table in markets_coin notifications_notification; do
  moved replica "$table" || die "no read of $table reached the replica"
  ok "reads of $table went to the replica (scans on :$REPLICA_PORT ${BEFORE[replica:$table]} -> $(scans replica "$table"))"
done
moved primary orders_order || die "orders were not read from the primary"
! moved replica orders_order || die "orders were read from the replica"
ok "orders were read from the primary only (scans on :$REPLICA_PORT unchanged at ${BEFORE[replica:orders_order]})"
address=$(cat "$WORK/email")
[ "$(psql_replica -d "$DEMO_DB" -c "select count(*) from accounts_user where email = '$address'")" = 1 ] \
  || die "the user signed up on the primary is not on the replica"
lag=$(psql_primary -c "select coalesce(extract(epoch from replay_lag)::numeric(10,3)::text || 's', '0 (caught up)') from pg_stat_replication where application_name = '$APP_NAME'")
ok "the user who signed up through nginx is on the replica too (replay lag: $lag)"
BEFORE[replica:notifications_notification]=$(scans replica notifications_notification)
BEFORE[primary:notifications_notification]=$(scans primary notifications_notification)
checks own_writes 5
for _ in $(seq 1 30); do moved primary notifications_notification && break; sleep 0.2; done
moved primary notifications_notification || die "the writer's reads did not reach the primary"
! moved replica notifications_notification || die "the writer's reads went to the replica right after its write"
ok "after POST read-all, that client's unread-count reads stayed on the primary (read-your-writes)"

# --- 4. ticks on instance B -----------------------------------------------------------------
checks ticks

# --- 5. stop one instance under load, then crash the other ------------------------------------
# SIGTERM is a rolling deploy (uvicorn drains and exits), SIGKILL a crash (in-flight
# requests are cut). Either way nginx must retry every GET on the surviving instance.
stop_under_load() {  # stop_under_load NAME PORT SIGNAL
  local name=$1 port=$2 signal=$3 lines_before
  lines_before=$(wc -l <"$WORK/logs/nginx.log")
  checks load 400 100 "${PIDS[$name]}" "$signal" "$name"
  wait "${PIDS[$name]}" 2>/dev/null || true
  unset "PIDS[$name]"
  tail -n +"$((lines_before + 1))" "$WORK/logs/nginx.log" | "$PY" -c '
import json, sys
rows = [json.loads(line) for line in sys.stdin if line.startswith("{")]
rows = [r for r in rows if r["uri"].startswith(("/api/v1/coins", "/api/v1/prices"))]
retried = sum("," in r["upstream"] for r in rows)
per = {}
for r in rows:
    last = r["upstream"].split(",")[-1].strip()
    per[last] = per.get(last, 0) + 1
print(f"[scale-demo] OK   nginx log: {len(rows)} requests, answered by {per}; {retried} retried on the other instance")
'
  start_web "$name" "$port"
  wait_http "http://127.0.0.1:$port/health" 60 || die "$name did not come back"
  ok "$name restarted and healthy; nginx takes it back after fail_timeout"
}
stop_under_load web_b "$WEB_B_PORT" SIGTERM
sleep 10  # nginx's fail_timeout: web B is back in rotation before web A goes
stop_under_load web_a "$WEB_A_PORT" SIGKILL
