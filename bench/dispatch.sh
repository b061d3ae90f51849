#!/usr/bin/env bash
# ModelRoute end-to-end dispatch benchmark:
#
#   bench/dispatch.sh /path/to/ngx_http_modelroute_module.so
#
# One machine, one run. Starts its own nginx (2 workers, durability full, a
# fresh store in a temp dir under build/) with two routes to the built-in
# simulated provider at 0 ms:
#   - "sim": the simulator is the route's location itself (a subrequest
#     that never leaves the worker);
#   - "up": the route's location proxies to an upstream{} (keepalive) on
#     loopback, a server block of the same nginx running the simulator:
#     every attempt is a real HTTP exchange.
# For each route, wrk submits executions (POST /v1/executions) for
# BENCH_SECONDS while a probe (bench/probe.pl) submits one execution at a
# time and polls it until it is COMPLETED. It prints:
#   - executions submitted per second (wrk, 202s);
#   - executions completed per second (submitted -> COMPLETED, hold
#     settled), from the route's counters in the store (GET /admin/routes:
#     attempts - in flight - failures) over the wrk window, and overall
#     (every accepted execution completed / from wrk start to the last);
#   - the latency the gateway adds (provider answer -> COMPLETED committed,
#     hence visible to a GET), p50/p90/p99: its own measure, to the
#     microsecond (the histogram modelroute_execution_added_seconds, read
#     before and after each window, interpolated within its buckets), and
#     the probe's view (the attempt's ended_at, in whole ms of the event
#     loop's cached clock, to the first GET that sees it, polled every
#     0.5 ms: about a millisecond more); end to end (created_at -> seen)
#     from the probe: alone first (BENCH_QUIET seconds, an idle gateway),
#     then during the wrk run;
#   - the ledger check (GET /admin/accounts/{org}/verify) at the end.
# Targets (the performance issue): >= 20,000 executions/s completed,
# p50 added latency <= 1 ms idle and <= 5 ms under load, end to end p50
# <= 50 ms under load.
#
# Environment: BENCH_SECONDS (60), BENCH_CONNECTIONS ("64 256": each count
# is a run of its own), BENCH_THREADS (2),
# BENCH_ROUTES ("sim up"), BENCH_DRAIN (120: longest wait for the backlog),
# BENCH_QUIET (5: seconds of the probe alone),
# BENCH_PORT, BENCH_UP_PORT, BENCH_TMPDIR (build/), BENCH_KEEP=1,
# MR_NGINX (/usr/sbin/nginx).
#
# Exit code: 1 if anything answered non-2xx, an execution did not complete,
# the ledger check failed or the error log has alerts; missed performance
# targets are reported, not fatal.
set -euo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-60}
. "$(dirname "$0")/lib.sh"
bench_init bench-dispatch "$@"

routes=${BENCH_ROUTES:-sim up}
drain=${BENCH_DRAIN:-120}
quiet=${BENCH_QUIET:-5}
conns_list=${BENCH_CONNECTIONS_LIST:-${BENCH_CONNECTIONS:-64 256}}
port=${BENCH_PORT:-$(free_port)}
uport=${BENCH_UP_PORT:-$(free_port)}
[ "$port" != "$uport" ] || uport=$(free_port)
base="http://127.0.0.1:$port"

# --- nginx -------------------------------------------------------------------
bench_conf "$(cat <<CONF
    modelroute_retention      off;

    modelroute_route sim /providers/sim protocol=openai_chat;
    modelroute_route up  /providers/up  protocol=openai_chat;
    modelroute_model bench-sim per_request=0.002 routes=sim:sim-small;
    modelroute_model bench-up  per_request=0.002 routes=up:sim-small;

    upstream simulator {
        server 127.0.0.1:$uport;
        keepalive 512;   # as many as the attempts a worker makes at once
    }

    server {
        listen 127.0.0.1:$port;

        location /v1/ {
            modelroute_api;
        }
        location /admin/ {
            modelroute_admin;
            allow 127.0.0.1;
            deny all;
        }
    }

    server {
        modelroute_dispatch;

        location /providers/sim {
            internal;
            modelroute_simulator;
        }

        location /providers/up {
            internal;
            proxy_pass http://simulator/v1/chat/completions;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }

    # the provider behind the upstream
    server {
        listen 127.0.0.1:$uport;
        keepalive_requests 1000000;

        location /v1/chat/completions {
            modelroute_simulator;
        }
        location = /ping {
            return 204;
        }
    }
CONF
)"

bench_start "http://127.0.0.1:$uport/ping" 204
bench_account bench-dispatch

echo "bench: nginx $("$nginx" -v 2>&1 | sed 's|.*/||'), ${BENCH_WORKERS:-2} workers, durability full," \
     "store on $(stat -f -c %T "$tmp") ($tmp), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "bench: per route and connection count ($conns_list): wrk -t$threads -d${seconds}s" \
     "POST /v1/executions, and a one-at-a-time probe; simulator at 0 ms"

bad=0
now_ms() { date +%s%3N; }

# done_count ROUTE: attempts - in flight - failures of the route (its
# completed executions: one attempt each at a 0 % failure rate)
done_count() {
    http GET /admin/routes
    expect 200 "GET /admin/routes"
    perl -MJSON::PP -e '
        my $d = decode_json($ARGV[0]);
        for my $r (@{ $d->{data} }) {
            next unless $r->{name} eq $ARGV[1];
            print $r->{attempts} - $r->{in_flight} - $r->{failures}, "\n";
        }' "$body" "$1"
}

# added_hist FILE: the gateway's own histogram of the latency it adds
# (modelroute_execution_added_seconds: the provider's answer -> the
# terminal status committed, to the microsecond), "le count" per line
added_hist() {
    curl -sS -m 10 "$base/admin/metrics" | awk '
        /^modelroute_execution_added_seconds_bucket/ {
            match($0, /le="[^"]*"/); print substr($0, RSTART + 4, RLENGTH - 5), $NF }' > "$1"
}

# hist_pct BEFORE AFTER -> "p50 p90 p99 n" in ms, interpolated within the
# buckets, of what was observed between the two
hist_pct() {
    awk 'NR == FNR { b[FNR] = $2; next }
         { le[FNR] = $1; d[FNR] = $2 - b[FNR]; n = FNR }
         function at(q,  t, i, lo, below) {
             t = q * d[n]
             for (i = 1; i <= n; i++) if (d[i] >= t) break
             if (le[i] == "+Inf") return ">" le[i - 1] * 1000
             lo = 0; below = 0
             if (i > 1) { lo = le[i - 1]; below = d[i - 1] }
             return sprintf("%.2f", 1000 * (lo + (le[i] - lo) * (t - below) / (d[i] - below)))
         }
         END { if (n == 0 || d[n] <= 0) { print "- - - 0"; exit }
               print at(0.5), at(0.9), at(0.99), d[n] }' "$1" "$2"
}

# target LABEL P50 LIMIT: met or missed
target() {
    awk -v l="$1" -v p="$2" -v m="$3" 'BEGIN { printf "%s: %s\n", l,
        ((p ~ /^[0-9.]+$/ && p + 0 <= m) ? "met" : "missed") }'
}

pct() {    # pct FILE COLUMN -> "p50 p90 p99 max n"
    sort -n -k"$2","$2" "$1" | awk -v c="$2" '
        function at(q,  i) { i = int(NR * q) + 1; if (i > NR) i = NR; return v[i] }
        { v[NR] = $c }
        END { if (NR == 0) { print "- - - - 0"; exit }
              printf "%.2f %.2f %.2f %.2f %d\n", at(0.5), at(0.9), at(0.99), v[NR], NR }'
}

for route in $routes; do
for conns in $conns_list; do
    model=bench-$route
    seed="$route-$(date +%s)"
    echo "bench: route $route ($model), $conns connections ..."

    # the probe alone first: the latency of an idle gateway
    added_hist "$tmp/h0"
    perl "$here/probe.pl" "$base" "$key" "$model" "$quiet" \
        > "$tmp/quiet-$route.txt" 2> "$tmp/quiet-$route.err"
    added_hist "$tmp/h1"
    read -r q50 q90 q99 qmax qn <<<"$(pct "$tmp/quiet-$route.txt" 1)"
    read -r qe50 _ qe99 _ _ <<<"$(pct "$tmp/quiet-$route.txt" 2)"
    read -r g50 g90 g99 gn <<<"$(hist_pct "$tmp/h0" "$tmp/h1")"
    echo "bench: $route: idle: added latency (answer -> COMPLETED committed, the gateway's" \
         "own, to the us) ms: p50 $g50 p90 $g90 p99 $g99 ($gn executions)"
    echo "bench: $route: idle: the probe's view (answer's ended_at, in whole ms of the" \
         "event loop's clock -> seen by a GET every 0.5 ms) ms: p50 $q50 p90 $q90 p99 $q99" \
         "max $qmax ($qn probes); end to end p50 $qe50 p99 $qe99"
    target "bench: $route: target p50 added <= 1 ms (idle)" "$g50" 1

    before=$(done_count "$route")
    added_hist "$tmp/h2"

    perl "$here/probe.pl" "$base" "$key" "$model" "$seconds" \
        > "$tmp/probe-$route.txt" 2> "$tmp/probe-$route.err" &
    probe=$!

    start=$(now_ms)
    wrk -t"$threads" -c"$conns" -d"${seconds}s" --latency --timeout 5s \
        -s "$here/post.lua" "$base" -- /v1/executions "$key" "$seed-$conns" "$model" \
        > "$tmp/wrk-$route.txt" 2>&1 \
        || { cat "$tmp/wrk-$route.txt" >&2; die "wrk failed"; }
    end=$(now_ms)
    at_end=$(done_count "$route")
    wait "$probe" || true

    total=$(awk '/ requests in / { print $1 }' "$tmp/wrk-$route.txt")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$tmp/wrk-$route.txt")
    accepted=$((total - non2xx))
    probed=$(wc -l < "$tmp/probe-$route.txt")
    if [ "$non2xx" -ne 0 ]; then
        echo "bench: !!! $non2xx submissions were not 202 — the numbers are not valid !!!" >&2
        bad=1
    fi

    # the backlog: until every accepted execution has completed
    want=$((before + accepted + probed))
    deadline=$((SECONDS + drain))
    last=$at_end
    while :; do
        n=$(done_count "$route")
        [ "$n" -ge "$want" ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "bench: !!! only $((n - before)) of $((want - before)) executions completed in ${drain}s !!!" >&2
            bad=1
            break
        fi
        last=$n
        sleep 0.2
    done
    finish=$(now_ms)
    : "$last"
    added_hist "$tmp/h3"

    sed 's/^/    /' "$tmp/wrk-$route.txt"
    read -r a50 a90 a99 amax an <<<"$(pct "$tmp/probe-$route.txt" 1)"
    read -r e50 e90 e99 emax _ <<<"$(pct "$tmp/probe-$route.txt" 2)"
    awk -v r="$route" -v c="$conns" -v acc="$accepted" -v st="$start" \
        -v en="$end" -v fi="$finish" -v b="$before" -v ae="$at_end" '
        BEGIN {
            win = (ae - b) / ((en - st) / 1000)
            all = acc / ((fi - st) / 1000)
            printf "bench: %s, %d connections: submitted %.0f/s; completed %.0f/s during the run," \
                   " %.0f/s overall (%d in %.1f s, the backlog drained %.1f s after wrk)\n",
                   r, c, acc / ((en - st) / 1000), win, all, acc,
                   (fi - st) / 1000, (fi - en) / 1000
            printf "bench: %s: target >= 20000 completed/s: %s\n", r,
                   (win >= 20000 ? "met" : "missed")
        }'
    read -r l50 l90 l99 ln <<<"$(hist_pct "$tmp/h2" "$tmp/h3")"
    echo "bench: $route: under load: added latency (the gateway's own) ms:" \
         "p50 $l50 p90 $l90 p99 $l99 ($ln executions)"
    echo "bench: $route: under load: the probe's view ms:" \
         "p50 $a50 p90 $a90 p99 $a99 max $amax ($an probes); end to end" \
         "(created -> visible): p50 $e50 p90 $e90 p99 $e99 max $emax"
    target "bench: $route: target p50 added <= 5 ms (under load)" "$l50" 5
    target "bench: $route: target p50 end to end <= 50 ms (under load)" "$e50" 50
done
done

http GET "/admin/accounts/$org/verify"
expect 200 "GET /admin/accounts/$org/verify"
echo "bench: ledger: $body"
grep -q '"ok": *true' <<<"$body" || { echo "bench: !!! the ledger check failed !!!" >&2; bad=1; }

if grep -E '\[(alert|crit|emerg)\]|exited on signal' "$tmp/logs/error.log" >&2; then
    echo "bench: !!! the error log has alerts !!!" >&2
    bad=1
fi

exit "$bad"
