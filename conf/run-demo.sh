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
# What this shares with conf/run-cluster.sh is in conf/demo-lib.sh.
set -euo pipefail

me="run-demo"
usage() { echo "usage: $0 /path/to/ngx_http_modelroute_module.so" >&2; exit 2; }

[ $# -eq 1 ] || usage
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=conf/demo-lib.sh
. "$top/conf/demo-lib.sh"
[ -f "$1" ] || die "module not found: $1 (build it with ./build.sh)"
module=$(readlink -f "$1")

run="$top/.run"
nginx="${MR_NGINX:-/usr/sbin/nginx}"
addr=127.0.0.1:8080
base="http://$addr"
errlog="$run/logs/error.log"

[ -x "$nginx" ] || die "nginx not found at $nginx (apt-get install nginx)"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"

# --- the runtime directory -------------------------------------------------
# The master creates .run/store itself and hands it to the workers.
demo_rundir "$run" "$run/conf" "$run/logs" "$run/tmp"

# --- the store: LMDB in .run/store, or a private PostgreSQL in .run/pg ------
store="modelroute_store      $run/store;"

if [ "${MR_STORE:-}" = postgres ]; then
    demo_pg_start
    store="modelroute_store \"$conninfo\"; modelroute_node_dir $run/store;"
fi

demo_render "$top/conf/nginx.conf" "$run/conf/nginx.conf" "$store" "$run"

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

demo_wait_http "$ngx"

# --- the demo account ----------------------------------------------------------
demo_account

if [ "${MR_STORE:-}" = postgres ]; then
    where="PostgreSQL in .run/pg (port ${pgport:-})"
else
    where=".run/store"
fi
demo_banner "nginx pid $ngx" "$where" .run/logs

rc=0
wait "$ngx" || rc=$?
echo "run-demo: nginx exited ($rc)"
exit "$rc"
