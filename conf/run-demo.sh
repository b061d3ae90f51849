#!/usr/bin/env bash
# Runs the ModelRoute demo on 127.0.0.1:8080 (called by `./build.sh run`):
#
#   conf/run-demo.sh /path/to/ngx_http_modelroute_module.so
#
# Renders conf/nginx.conf into .run/conf/nginx.conf (store .run/store, logs
# .run/logs), starts nginx in the foreground of this script, creates the demo
# account and a full-permission key on first use (kept in .run/demo-key),
# then waits. Ctrl-C stops nginx gracefully.
#
# MR_STORE=postgres: the store is PostgreSQL instead, a private cluster in
# .run/pg (Debian's postgresql-15, initdb'ed there on first use as the
# postgres user when run as root; a unix socket only, port 55432), started
# before nginx, migrated (tools/pg-migrate), and stopped with the demo.
set -euo pipefail

usage() { echo "usage: $0 /path/to/ngx_http_modelroute_module.so" >&2; exit 2; }
die() { echo "run-demo: $*" >&2; exit 1; }

[ $# -eq 1 ] || usage
[ -f "$1" ] || die "module not found: $1 (build it with ./build.sh)"
module=$(readlink -f "$1")

top=$(cd "$(dirname "$0")/.." && pwd)
run="$top/.run"
nginx="${MR_NGINX:-/usr/sbin/nginx}"
addr=127.0.0.1:8080
base="http://$addr"

[ -x "$nginx" ] || die "nginx not found at $nginx (apt-get install nginx)"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"

# --- the runtime directory -------------------------------------------------
# Workers run as `nobody` when we are root: they need to reach .run and its
# tmp dir. The master creates .run/store itself and hands it to the workers.
mkdir -p "$run/conf" "$run/logs" "$run/tmp"
chmod 755 "$run" "$run/conf" "$run/logs" "$run/tmp"
if [ "$(id -u)" -eq 0 ] && command -v runuser >/dev/null \
    && ! runuser -u nobody -- test -x "$run/tmp" 2>/dev/null; then
    die "the nginx workers (user nobody) cannot reach $run:" \
        "a parent directory is not searchable by others (chmod o+x it," \
        "or put the repository elsewhere)"
fi

# --- the store: LMDB in .run/store, or a private PostgreSQL in .run/pg ------
store="modelroute_store      $run/store;"
pg_stop() { :; }

if [ "${MR_STORE:-}" = postgres ]; then
    pgbin=${MR_PG_BIN:-/usr/lib/postgresql/15/bin}
    pgdir="$run/pg"
    pgport=${MR_PG_PORT:-55432}
    [ -x "$pgbin/initdb" ] || die "PostgreSQL 15 not found in $pgbin" \
        "(apt-get install postgresql-15)"
    as=()
    if [ "$(id -u)" -eq 0 ]; then
        # PostgreSQL refuses to run as root
        id postgres >/dev/null 2>&1 || die "no postgres user"
        as=(runuser -u postgres --)
    fi
    if [ ! -f "$pgdir/data/PG_VERSION" ]; then
        echo "run-demo: a PostgreSQL cluster in $pgdir"
        mkdir -p "$pgdir"
        chmod 755 "$pgdir"
        [ ${#as[@]} -eq 0 ] || chown postgres: "$pgdir"
        "${as[@]}" "$pgbin/initdb" -D "$pgdir/data" -A trust -U postgres \
            -E UTF8 --locale=C >"$pgdir/initdb.log" 2>&1 \
            || die "initdb failed (see $pgdir/initdb.log)"
        cat >> "$pgdir/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$pgdir'
port = $pgport
CONF
    fi
    "${as[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w start \
        >/dev/null || die "PostgreSQL did not start (see $pgdir/log)"
    # shellcheck disable=SC2317  # called from stop_nginx
    pg_stop() {
        echo "run-demo: stopping PostgreSQL"
        "${as[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m fast -w stop \
            >/dev/null 2>&1 || true
    }
    trap pg_stop EXIT
    psql -X -q -h "$pgdir" -p "$pgport" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'modelroute'" \
        | grep -q 1 \
        || psql -X -q -h "$pgdir" -p "$pgport" -U postgres -d postgres \
               -c "CREATE DATABASE modelroute" \
        || die "cannot create the database"
    conninfo="host=$pgdir port=$pgport user=postgres dbname=modelroute"
    "$top/tools/pg-migrate" "$conninfo" || die "the migration failed"
    store="modelroute_store \"$conninfo\"; modelroute_node_dir $run/store;"
fi

sed_escape() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }
sed -e "s|@MODULE@|$(sed_escape "$module")|g" \
    -e "s|@STORE@|$(sed_escape "$store")|g" \
    -e "s|@RUN@|$(sed_escape "$run")|g" \
    "$top/conf/nginx.conf" > "$run/conf/nginx.conf"

ngx_args=(-p "$run/" -c "$run/conf/nginx.conf")
"$nginx" "${ngx_args[@]}" -t -q || die "nginx -t refused $run/conf/nginx.conf"

if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
    die "$addr is already in use (an earlier demo? see $run/logs/nginx.pid)"
fi

# --- start nginx -------------------------------------------------------------
# setsid: its own process group, so a Ctrl-C reaches only this script, which
# then asks nginx for a graceful stop (QUIT).
setsid "$nginx" "${ngx_args[@]}" &
ngx=$!

# shellcheck disable=SC2317  # called from the EXIT trap
stop_nginx() {
    if kill -0 "$ngx" 2>/dev/null; then
        echo "run-demo: stopping nginx (pid $ngx)"
        kill -QUIT "$ngx" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$ngx" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$ngx" 2>/dev/null && kill -TERM "$ngx" 2>/dev/null
        wait "$ngx" 2>/dev/null || true
    fi
    pg_stop
}
trap stop_nginx EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail_start() {
    echo "run-demo: $*" >&2
    echo "---- tail $run/logs/error.log" >&2
    tail -20 "$run/logs/error.log" >&2 2>/dev/null || true
    exit 1
}

# Any HTTP answer from a worker will do: GET /admin/ is the dashboard
# ("/" would log "index.html is not found").
deadline=$((SECONDS + 15))
until [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$base/admin/" || true)" != 000 ]; do
    kill -0 "$ngx" 2>/dev/null || fail_start "nginx exited during start"
    [ "$SECONDS" -lt "$deadline" ] || fail_start "nginx does not answer on $addr"
    sleep 0.2
done

# --- the demo account ----------------------------------------------------------
# http METHOD PATH [BODY] [curl args...] -> sets $code and $body
http() {
    local method=$1 path=$2 data=${3:-} out
    shift $(( $# < 3 ? $# : 3 ))
    local args=(-sS -m 10 -X "$method" -w '\n%{http_code}' "$@")
    [ -n "$data" ] && args+=(-H 'Content-Type: application/json' --data-binary "$data")
    out=$(curl "${args[@]}" "$base$path") || out=$'\n000'
    code=${out##*$'\n'}
    body=${out%$'\n'*}
}

key=
if [ -s "$run/demo-key" ]; then
    key=$(cat "$run/demo-key")
    http GET /v1/balance '' -H "Authorization: Bearer $key"
    if [ "$code" = 200 ]; then
        echo "run-demo: reusing the demo key in .run/demo-key"
    else
        echo "run-demo: .run/demo-key is not accepted ($code); creating a new account"
        key=
    fi
fi

if [ -z "$key" ]; then
    http POST /admin/accounts '{"name": "demo", "credit": "100.00"}'
    [ "$code" = 201 ] || fail_start "POST /admin/accounts answered $code: $body"
    org=$(grep -o 'org_[0-9a-f]*' <<<"$body" | head -1)
    [ -n "$org" ] || fail_start "no account id in: $body"

    http POST "/admin/accounts/$org/keys" '{"permission": "full", "name": "demo"}'
    [ "$code" = 201 ] || fail_start "POST /admin/accounts/$org/keys answered $code: $body"
    key=$(grep -o 'sk_[0-9a-f]\{64\}_[0-9a-f]\{8\}' <<<"$body" | head -1)
    [ -n "$key" ] || fail_start "no key in: $body"

    (umask 077 && printf '%s\n' "$key" > "$run/demo-key")
    # `sudo ./build.sh run`: let the user who ran sudo read the key.
    if [ -n "${SUDO_UID:-}" ]; then
        chown "$SUDO_UID" "$run/demo-key" 2>/dev/null || true
    fi
    echo "run-demo: created account $org (credit 100.00) and a full key"
fi

cat <<MSG

ModelRoute demo on $base (nginx pid $ngx)
  API key:   $key   (in .run/demo-key)
  store:     $(if [ "${MR_STORE:-}" = postgres ]; then echo "PostgreSQL in .run/pg (port ${pgport:-})"; else echo ".run/store"; fi)     error log: .run/logs/error.log
  admin API: $base/admin/ (loopback only)
  dashboard: $base/admin/   (open it in a browser)
  metrics:   $base/admin/metrics
  health:    $base/admin/health
  access log (JSON, with \$modelroute_* variables): .run/logs/access.log

In another terminal, from $top (see README.md, "Walk-through"):

  KEY=\$(cat .run/demo-key)
  curl -s -X POST $base/v1/executions \\
    -H "Authorization: Bearer \$KEY" -H 'Content-Type: application/json' \\
    -d '{"model": "demo-chat", "input": {"prompt": "Hello"}, "idempotency_key": "order-1-step-1"}'
  curl -s $base/v1/balance -H "Authorization: Bearer \$KEY"

Ctrl-C stops nginx.
MSG

rc=0
wait "$ngx" || rc=$?
echo "run-demo: nginx exited ($rc)"
exit "$rc"
