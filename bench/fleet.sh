#!/usr/bin/env bash
# A fleet on one PostgreSQL (called by `./build.sh bench-fleet`):
#
#   bench/fleet.sh /path/to/ngx_http_modelroute_module.so
#
# One machine, one run. Starts a private PostgreSQL 15 cluster (bench/lib.sh:
# durable), then for N = 1, 2, 3 nginx nodes (BENCH_NODES), each with 2
# workers, its own prefix, port and node directory, on a fresh database of
# that cluster, with a route to the built-in simulator at 0 ms: one wrk per
# node (BENCH_CONNECTIONS and BENCH_THREADS split among them) POSTs executions of
# BENCH_ACCOUNTS accounts (100) taking turns, and it measures executions
# completed per second end to end (created, claimed, sent to the provider,
# answered, settled: COMPLETED), fleet-wide from the route's counters
# (they are in the database), during the wrk window and until the last
# one completed; with the CPU seconds per second that PostgreSQL, the
# nodes' workers and the whole machine (wrk included) used in the window
# (from /proc: where the bound is).  Then the ledger
# check (verify) of a few accounts.
#
# Environment: BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_THREADS
# (2), BENCH_ACCOUNTS
# (100), BENCH_NODES ("1 2 3"), BENCH_DRAIN (120), BENCH_WARMUP (3),
# MR_PG_BIN, BENCH_TMPDIR (build/), BENCH_KEEP=1, MR_NGINX.
#
# Exit code: 1 if anything answered non-2xx, an execution did not complete,
# a ledger check failed or an error log has alerts.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
bench_init bench-fleet "$@"

accounts=${BENCH_ACCOUNTS:-100}
fleets=${BENCH_NODES:-1 2 3}
drain=${BENCH_DRAIN:-120}
warmup=${BENCH_WARMUP:-3}

load() { cut -d' ' -f1-3 /proc/loadavg; }
now_ms() { date +%s%3N; }

bench_pg

# the nodes' masters, stopped at the exit before PostgreSQL
nodes_pids=()
stop_nodes() {
    local p
    for p in "${nodes_pids[@]}"; do
        kill -QUIT "$p" 2>/dev/null || true
    done
    for p in "${nodes_pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    nodes_pids=()
}
# shellcheck disable=SC2317  # the EXIT trap
fleet_cleanup() {
    local rc=$?
    set +e
    stop_nodes
    (exit "$rc")
    pg_cleanup
}
trap fleet_cleanup EXIT

# cpu PID...: clock ticks used so far by the children of the PIDs (the
# PostgreSQL server's processes, the nodes' workers)
cpu() {
    local pid sum=0 f
    for pid in $(for p in "$@"; do pgrep -P "$p"; done); do
        f=$(cut -d' ' -f14-15 "/proc/$pid/stat" 2>/dev/null) || continue
        sum=$((sum + ${f% *} + ${f#* }))
    done
    echo "$sum"
}

# busy: "busy total" clock ticks of the whole machine so far
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }

bad=0
declare -A R

field() {    # field FILE KEY
    case $2 in
        rps)    awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$1" ;;
        total)  awk '/ requests in / { print $1 }' "$1" ;;
        non2xx) awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$1" ;;
    esac
}

# done_count: the simulator route's completed attempts, fleet-wide
done_count() {
    http GET /admin/routes
    expect 200 "GET /admin/routes"
    perl -MJSON::PP -e '
        my $d = decode_json($ARGV[0]);
        for my $r (@{ $d->{data} }) {
            next unless $r->{name} eq "sim";
            print $r->{attempts} - $r->{in_flight} - $r->{failures}, "\n";
        }' "$body"
}

# node_conf I DB: the configuration of node I on database DB
node_conf() {
    local i=$1 db=$2 dir="$tmp/node$1"
    mkdir -p "$dir/conf" "$dir/logs" "$dir/tmp"
    chmod 755 "$dir" "$dir/conf" "$dir/logs" "$dir/tmp"
    cat > "$dir/conf/nginx.conf" <<CONF
load_module $module;

master_process on;
daemon off;
worker_processes 2;
worker_rlimit_nofile 16384;
pid $dir/logs/nginx.pid;
error_log $dir/logs/error.log notice;

events {
    worker_connections 4096;
}

http {
    default_type application/json;
    access_log off;
    keepalive_requests 1000000;

    client_body_temp_path $dir/tmp/body;
    proxy_temp_path       $dir/tmp/proxy;
    fastcgi_temp_path     $dir/tmp/fastcgi;
    uwsgi_temp_path       $dir/tmp/uwsgi;
    scgi_temp_path        $dir/tmp/scgi;

    modelroute_store "host=$pgdir port=$pgport user=postgres dbname=$db";
    modelroute_node_dir $dir/node;
    modelroute_durability     full;
    modelroute_account_limits executions=1000000000;
    modelroute_retention      off;

    modelroute_route sim /providers/sim protocol=openai_chat;
    modelroute_model bench-sim per_request=0.002 routes=sim:sim-small;

    server {
        listen 127.0.0.1:${ports[$i]};
        location /v1/ { modelroute_api; }
        location /admin/ { modelroute_admin; allow 127.0.0.1; deny all; }
    }

    server {
        modelroute_dispatch;
        location /providers/sim { internal; modelroute_simulator; }
    }
}
CONF
}

# run_fleet N: N nodes on a database of their own
run_fleet() {
    local n=$1 db="fleet_$1" i f seed before at_end start end want accepted \
          non2xx total c_pg c_ngx deadline finish got orgs pgpid b0 t0 b1 t1
    pg_sql "CREATE DATABASE $db"
    "$top/tools/pg-migrate" "host=$pgdir port=$pgport user=postgres dbname=$db" >/dev/null \
        || die "the migration failed"
    for i in $(seq 1 "$n"); do
        node_conf "$i" "$db"
        "$nginx" -p "$tmp/node$i/" -c "$tmp/node$i/conf/nginx.conf" -t -q \
            || die "nginx -t failed (node $i)"
        "$nginx" -p "$tmp/node$i/" -c "$tmp/node$i/conf/nginx.conf" &
        nodes_pids+=($!)
    done
    for i in $(seq 1 "$n"); do
        base="http://127.0.0.1:${ports[$i]}"
        deadline=$((SECONDS + 15))
        until [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$base/admin/routes" || true)" = 200 ]; do
            [ "$SECONDS" -lt "$deadline" ] \
                || { tail -20 "$tmp/node$i/logs/error.log" >&2; die "node $i does not answer"; }
            sleep 0.2
        done
    done
    base="http://127.0.0.1:${ports[1]}"

    echo "bench: $n node(s): $accounts accounts, each with a key and an execution ..."
    perl "$here/accounts.pl" "$base" "$accounts" bench-sim "$tmp/accounts-$n.txt" \
        || die "accounts.pl failed"
    pg_sql "ANALYZE" "$db"

    seed="fleet$n-$(date +%s)"
    # wrk: one per node, the connections and threads (BENCH_THREADS, at
    # least one each) split among them
    wrk_all() {    # wrk_all SECONDS TAG
        local j pids=()
        for j in $(seq 1 "$n"); do
            wrk -t"$(( n < threads ? threads / n : 1 ))" -c$((conns / n)) -d"$1s" --timeout 5s -s "$here/accounts.lua" \
                "http://127.0.0.1:${ports[$j]}" -- post "$tmp/accounts-$n.txt" \
                "$seed-$2-$j" bench-sim > "$tmp/wrk-$n-$2-$j.txt" 2>&1 &
            pids+=($!)
        done
        for j in "${pids[@]}"; do
            wait "$j" || die "wrk failed"
        done
    }
    [ "$warmup" -le 0 ] || { wrk_all "$warmup" warm; sleep 2; }

    before=$(done_count)
    pgpid=$(head -1 "$pgdir/data/postmaster.pid")
    c_pg=$(cpu "$pgpid")
    c_ngx=$(cpu "${nodes_pids[@]}")
    read -r b0 t0 < <(busy)
    start=$(now_ms)
    wrk_all "$seconds" run
    end=$(now_ms)
    read -r b1 t1 < <(busy)
    at_end=$(done_count)
    c_pg=$(( $(cpu "$pgpid") - c_pg ))
    c_ngx=$(( $(cpu "${nodes_pids[@]}") - c_ngx ))

    total=0
    non2xx=0
    for i in $(seq 1 "$n"); do
        f="$tmp/wrk-$n-run-$i.txt"
        total=$((total + $(field "$f" total)))
        non2xx=$((non2xx + $(field "$f" non2xx)))
    done
    [ "$non2xx" -eq 0 ] || { echo "bench: !!! $n nodes: $non2xx non-2xx !!!" >&2; bad=1; }
    accepted=$((total - non2xx))
    want=$((before + accepted))
    deadline=$((SECONDS + drain))
    while :; do
        got=$(done_count)
        [ "$got" -ge "$want" ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "bench: !!! $n nodes: only $((got - before)) of $accepted completed in ${drain}s !!!" >&2
            bad=1
            break
        fi
        sleep 0.2
    done
    finish=$(now_ms)

    R[$n,sub]=$(awk -v n="$accepted" -v ms="$((end - start))" 'BEGIN { printf "%.0f", n * 1000 / ms }')
    R[$n,done]=$(awk -v n="$((at_end - before))" -v ms="$((end - start))" 'BEGIN { printf "%.0f", n * 1000 / ms }')
    R[$n,all]=$(awk -v n="$((got - before))" -v ms="$((finish - start))" 'BEGIN { printf "%.0f", n * 1000 / ms }')
    # CPU seconds per second of the window (2.00 = both cores)
    R[$n,pg]=$(awk -v t="$c_pg" -v ms="$((end - start))" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz * 1000 / ms }')
    R[$n,ngx]=$(awk -v t="$c_ngx" -v ms="$((end - start))" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz * 1000 / ms }')
    R[$n,busy]=$(awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" -v c="$(nproc)" 'BEGIN { printf "%.2f", t ? b / t * c : 0 }')
    R[$n,load]=$(load)
    echo "bench: $n node(s): submitted ${R[$n,sub]}/s, completed ${R[$n,done]}/s during the run," \
         "${R[$n,all]}/s until the last ($((got - before)) in $((finish - start)) ms);" \
         "CPU s/s: PostgreSQL ${R[$n,pg]}, nginx ${R[$n,ngx]}, the machine ${R[$n,busy]} of $(nproc) (load average ${R[$n,load]})"

    # the ledger of a few accounts
    orgs=$(awk 'NR % 25 == 1 { print $3 }' "$tmp/accounts-$n.txt")
    for org in $orgs; do
        http GET "/admin/accounts/$org/verify"
        if [ "$code" != 200 ] || ! grep -Eq '"ok": *true' <<<"$body"; then
            echo "bench: !!! $n nodes: the ledger check of $org failed: $code $body !!!" >&2
            bad=1
        fi
    done

    for i in $(seq 1 "$n"); do
        if grep -E '\[(alert|crit|emerg)\]|exited on signal' "$tmp/node$i/logs/error.log" >&2; then
            echo "bench: !!! $n nodes: node $i's error log has alerts (above) !!!" >&2
            bad=1
        fi
        mv "$tmp/node$i/logs/error.log" "$tmp/node$i/logs/error-$n.log"
    done
    stop_nodes
    rm -rf "$tmp"/node*/node
}

declare -A ports
for i in 1 2 3 4 5 6 7 8 9; do
    ports[$i]=$(free_port)
done

echo "bench: nginx $("$nginx" -v 2>&1 | sed 's|.*/||'), 2 workers per node, durability full," \
     "on $(stat -f -c %T "$tmp") ($tmp), $(nproc) CPUs, PostgreSQL $("$pgbin/postgres" -V | awk '{ print $3 }')" \
     "on the same machine; wrk -c$conns -d${seconds}s split over the nodes; load average $(load)"

cols=()
for n in $fleets; do
    [[ "$n" =~ ^[1-9]$ ]] || die "BENCH_NODES: 1 to 9, not $n"
    run_fleet "$n"
    cols+=("$n")
done

printf '\n%-46s' "nodes"
for c in "${cols[@]}"; do printf '%10s' "$c"; done
printf '\n'
row() {    # row LABEL NAME
    printf '%-46s' "$1"
    for c in "${cols[@]}"; do printf '%10s' "${R[$c,$2]:--}"; done
    printf '\n'
}
row "creates accepted/s"                        sub
row "completed/s during the run"                done
row "completed/s until the last"                all
row "CPU s/s: PostgreSQL (its backends)"        pg
row "CPU s/s: nginx workers (all nodes)"        ngx
row "CPU s/s: the whole machine (wrk included)"  busy
exit "$bad"
