#!/usr/bin/env bash
# Runs the ModelRoute demo as a fleet (called by `./build.sh cluster`):
#
#   conf/run-cluster.sh /path/to/ngx_http_modelroute_module.so
#
# A private PostgreSQL in .run/pg (as MR_STORE=postgres ./build.sh run
# makes it), three nginx nodes with the module (conf/nginx.conf, each in
# .run/nodeN with its own logs and node directory, on 127.0.0.1:8081-8083),
# and a plain nginx load balancer in front on 127.0.0.1:8080
# (conf/cluster-lb.conf: upstream{} of the nodes, the next node on a
# connection error only).  In the foreground: it creates the demo account
# and key on first use (.run/demo-key) and says what to do, as
# ./build.sh run does; Ctrl-C stops the balancer, the nodes (QUIT) and
# PostgreSQL.  MR_NODES=N runs N nodes (1 to 9).  Kill a node (kill -9 of
# the master in .run/nodeN/logs/nginx.pid and its workers) to see the
# others take over.
set -euo pipefail

me="run-cluster"
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
nodes=${MR_NODES:-3}
errlog="$run/lb/logs/error.log"

[ -x "$nginx" ] || die "nginx not found at $nginx (apt-get install nginx)"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"
[[ "$nodes" =~ ^[1-9]$ ]] || die "MR_NODES must be 1 to 9"

for port in 8080 $(seq 8081 $((8080 + nodes))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is already in use (an earlier demo?)"
    fi
done

demo_rundir "$run"
demo_pg_start

pids=()
# shellcheck disable=SC2317  # called from the EXIT trap
stop_all() {
    local p
    for p in "${pids[@]}"; do
        kill -QUIT "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        for _ in $(seq 100); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
        wait "$p" 2>/dev/null || true
    done
    [ ${#pids[@]} -eq 0 ] || echo "$me: stopped the balancer and the nodes"
    pg_stop
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the nodes: the demo's nginx.conf, a prefix and a port each -------------
upstreams=
for i in $(seq 1 "$nodes"); do
    dir="$run/node$i"
    demo_rundir "$dir" "$dir/conf" "$dir/logs" "$dir/tmp"
    store="modelroute_store \"$conninfo\"; modelroute_node_dir $dir/node;"
    demo_render "$top/conf/nginx.conf" "$dir/conf/nginx.conf" "$store" \
        "$dir" "127.0.0.1:$((8080 + i))"
    args=(-p "$dir/" -c "$dir/conf/nginx.conf")
    "$nginx" "${args[@]}" -t -q || die "nginx -t refused $dir/conf/nginx.conf"
    # setsid: a Ctrl-C reaches only this script, which stops them (QUIT)
    setsid "$nginx" "${args[@]}" &
    pids+=($!)
    upstreams="$upstreams        server 127.0.0.1:$((8080 + i));"$'\n'
done

for i in $(seq 1 "$nodes"); do
    errlog="$run/node$i/logs/error.log"
    demo_wait_http "${pids[$((i - 1))]}" "http://127.0.0.1:$((8080 + i))"
done

# --- the load balancer --------------------------------------------------------
lb="$run/lb"
errlog="$lb/logs/error.log"
demo_rundir "$lb" "$lb/conf" "$lb/logs" "$lb/tmp"
awk -v up="${upstreams%$'\n'}" '{ if ($0 == "@UPSTREAMS@") print up; else print }' \
    "$top/conf/cluster-lb.conf" > "$lb/conf/nginx.conf.in"
demo_render "$lb/conf/nginx.conf.in" "$lb/conf/nginx.conf" "" "$lb"
rm -f "$lb/conf/nginx.conf.in"
"$nginx" -p "$lb/" -c "$lb/conf/nginx.conf" -t -q \
    || die "nginx -t refused $lb/conf/nginx.conf"
setsid "$nginx" -p "$lb/" -c "$lb/conf/nginx.conf" &
pids+=($!)
demo_wait_http "${pids[-1]}"

# --- the demo account ----------------------------------------------------------
demo_account
demo_banner "a load balancer in front of $nodes nodes on 127.0.0.1:8081-$((8080 + nodes))" \
    "PostgreSQL in .run/pg (port $pgport)" ".run/node{1..$nodes}/logs"

# until the balancer exits (or Ctrl-C): a node may be stopped or killed
# meanwhile (the others go on, and take over its work), and started again
# with: nginx -p .run/nodeN/ -c .run/nodeN/conf/nginx.conf
rc=0
wait "${pids[-1]}" || rc=$?
echo "$me: the balancer exited ($rc); stopping the nodes"
exit "$rc"
