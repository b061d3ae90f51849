#!/usr/bin/env bash
# ModelRoute soak benchmark:
#
#   bench/soak.sh /path/to/ngx_http_modelroute_module.so
#
# One machine, one long run. Starts its own nginx (2 workers, durability
# full, a fresh store in a temp dir under build/) with the dispatch path of
# bench/dispatch.sh (route "sim": the simulator at 0 ms as the route's
# location) and a webhook receiver (a server block of the same nginx,
# `return 200`). One account, one webhook endpoint on it that receives all
# its events (execution.started and execution.completed: two deliveries per
# execution). The retention is short (BENCH_SOAK_RETENTION, and the same
# for modelroute_idempotency_ttl and modelroute_webhook_max_age; the retry
# schedule 1s 2s and the webhook timeout 5s: an event is kept until its
# deliveries' last possible attempt), so that the sweeper purges
# executions, deliveries, events and idempotency keys while the load runs.
#
# wrk submits BENCH_SOAK_EXECUTIONS executions (POST /v1/executions, each
# with its own idempotency key; each wrk thread stops at its share), and
# every BENCH_SOAK_INTERVAL seconds bench/soak.pl samples:
#   - each worker's RSS from /proc/PID/status: anonymous memory (what a
#     leak grows), file-backed (the store's pages the worker has touched:
#     LMDB maps data.mdb) and shared (nginx's zones);
#   - the store: data.mdb's size on disk, and LMDB's pages in use (the
#     highest page and the free list, from `mdb_stat -ef`: a reader, like
#     any other), the executions kept (modelroute_executions_stored);
#   - the metrics at /admin/metrics: executions created and finished, open
#     holds, the webhook backlog, deliveries, and the p50/p99 of the
#     latency histograms (created -> COMPLETED, the latency added after the
#     provider's answer, a store commit) over each interval, from the
#     buckets' deltas as Prometheus' histogram_quantile() computes them;
#   - /admin/health's answer.
# After the load it waits until every execution is finished and every
# delivery made (the drain), then for the retention to pass (the purge: the
# store should give back what the run left), and prints the table of
# samples and the verdict:
#   - RSS flat: each worker's anonymous RSS grew by at most
#     BENCH_SOAK_RSS_MB over the second half of the load (from the sample
#     where half the executions were created to the end of the load);
#   - the store bounded: data.mdb grew by at most BENCH_SOAK_STORE_PCT % of
#     its size at the middle over the second half of the load, and after
#     the retention no execution is left in the store. A run whose second
#     half starts before the first events can be purged (the retention +
#     17 s) cannot show it: the store part is then "not judged" (shorten
#     BENCH_SOAK_RETENTION for short runs).
#
# Environment: BENCH_SOAK_EXECUTIONS (1000000), BENCH_SOAK_RETENTION (30s:
# nginx time), BENCH_SOAK_INTERVAL (10: seconds between samples),
# BENCH_SOAK_RATE (1000: at most this many submissions/s, by a pause
# before each request of each connection; 0: as fast as it goes),
# BENCH_SOAK_MAX_SECONDS (0: none; else the load stops after this long even
# if fewer executions were made, and the report says so),
# BENCH_SOAK_RSS_MB (4), BENCH_SOAK_STORE_PCT (10), BENCH_SOAK_EVENTS ([]:
# the endpoint's events, JSON), BENCH_CONNECTIONS (64), BENCH_THREADS (2),
# BENCH_DRAIN (600: longest wait for the backlog after the load), BENCH_PORT,
# BENCH_RECEIVER_PORT, BENCH_TMPDIR (build/), BENCH_KEEP=1, MR_NGINX
# (/usr/sbin/nginx).
#
# Exit code: 1 if anything answered non-2xx (wrk's submissions, error
# answers counted by the metrics, webhook deliveries that were not 2xx), an
# execution did not complete, the ledger check failed, the error log has
# alerts, a worker exited, or the verdict fails.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
bench_init bench-soak "$@"
command -v mdb_stat >/dev/null || die "mdb_stat not found (package lmdb-utils)"

executions=${BENCH_SOAK_EXECUTIONS:-1000000}
retention=${BENCH_SOAK_RETENTION:-30s}
interval=${BENCH_SOAK_INTERVAL:-10}
rate=${BENCH_SOAK_RATE:-1000}
max_s=${BENCH_SOAK_MAX_SECONDS:-0}
rss_mb=${BENCH_SOAK_RSS_MB:-4}
store_pct=${BENCH_SOAK_STORE_PCT:-10}
events=${BENCH_SOAK_EVENTS:-[]}
drain=${BENCH_DRAIN:-600}
[[ "$executions" =~ ^[1-9][0-9]*$ ]] \
    || die "BENCH_SOAK_EXECUTIONS must be a positive number"
[ "$executions" -ge "$threads" ] || die "fewer executions than wrk threads"
[[ "$rate" =~ ^[0-9]+$ ]] || die "BENCH_SOAK_RATE must be a number"
[[ "$max_s" =~ ^[0-9]+$ ]] || die "BENCH_SOAK_MAX_SECONDS must be a number"

port=${BENCH_PORT:-$(free_port)}
rport=${BENCH_RECEIVER_PORT:-$(free_port)}
[ "$port" != "$rport" ] || rport=$(free_port)
base="http://127.0.0.1:$port"

# --- nginx -------------------------------------------------------------------
bench_conf "$(cat <<CONF
    modelroute_retention         $retention;
    modelroute_idempotency_ttl   $retention;
    modelroute_webhook_max_age   $retention;
    # an event is kept until its deliveries' last possible attempt (the max
    # age, the longest retry step, the timeout): short too
    modelroute_webhook_retry     1s 2s;
    modelroute_webhook_timeout   5s;
    modelroute_webhook_allow_private on;

    modelroute_route sim /providers/sim protocol=openai_chat;
    modelroute_model bench-sim per_request=0.002 routes=sim:sim-small;

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
    }

    # the webhook receiver
    server {
        listen 127.0.0.1:$rport;
        keepalive_requests 1000000;

        location /hook {
            return 200;
        }
        location = /ping {
            return 204;
        }
    }
CONF
)"

bench_start "http://127.0.0.1:$rport/ping" 204
bench_account bench-soak

http POST /v1/webhooks/endpoints \
    "{\"url\": \"http://127.0.0.1:$rport/hook\", \"description\": \"soak\", \"events\": $events}" \
    -H "$auth"
expect 201 "POST /v1/webhooks/endpoints"

sec=$(perl -e '
    my %u = (ms => 0.001, s => 1, m => 60, h => 3600, d => 86400);
    my $t = 0;
    $t += $1 * $u{$2 // "s"} while $ARGV[0] =~ /(\d+)(ms|s|m|h|d)?/g;
    print $t' "$retention")

bad=0
cut_short=0
"$here/soak.pl" sample "$base" "$ngx" "$tmp/store" "$interval" \
    "$tmp/samples.jsonl" "$tmp/phase" "$tmp/stop" &
sampler=$!
phase() { echo "$1" > "$tmp/phase.new"; mv "$tmp/phase.new" "$tmp/phase"; }
phase load

# --- the load ----------------------------------------------------------------
per_thread=$(( (executions + threads - 1) / threads ))
delay_ms=0
if [ "$rate" -gt 0 ]; then
    delay_ms=$(( conns * 1000 / rate ))
    [ "$delay_ms" -gt 0 ] || delay_ms=1
fi
echo "bench: nginx $("$nginx" -v 2>&1 | sed 's|.*/||'), ${BENCH_WORKERS:-2} workers, durability full," \
     "store on $(stat -f -c %T "$tmp") ($tmp), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "bench: $executions executions (wrk -t$threads -c$conns, $per_thread a thread$(
     [ "$rate" -gt 0 ] && echo ", at most $rate/s: ${delay_ms} ms before each request")) to" \
     "the simulator at 0 ms, an endpoint receiving events $events; retention," \
     "idempotency TTL, webhook max age $retention; a sample every ${interval}s"

start=$SECONDS
BENCH_SOAK_DELAY_MS=$delay_ms \
wrk -t"$threads" -c"$conns" -d24h --latency --timeout 10s \
    -s "$here/soak.lua" "$base" -- /v1/executions "$key" "soak-$(date +%s)" \
    bench-sim "$per_thread" "$tmp/done" > "$tmp/wrk.txt" 2>&1 &
wrk=$!

while :; do
    n=$(find "$tmp" -maxdepth 1 -name 'done.*' | wc -l)
    [ "$n" -ge "$threads" ] && break
    kill -0 "$wrk" 2>/dev/null || { cat "$tmp/wrk.txt" >&2; die "wrk exited"; }
    kill -0 "$ngx" 2>/dev/null || { bad=1; echo "bench: !!! nginx exited !!!" >&2; break; }
    if [ "$max_s" -gt 0 ] && [ $((SECONDS - start)) -ge "$max_s" ]; then
        echo "bench: BENCH_SOAK_MAX_SECONDS ($max_s) reached: the load stops before $executions executions"
        cut_short=1
        break
    fi
    sleep 0.2
done
kill -INT "$wrk" 2>/dev/null || true
wait "$wrk" || true
load_s=$((SECONDS - start))
phase drain
sed 's/^/    /' "$tmp/wrk.txt"

# (a thread stopped by BENCH_SOAK_MAX_SECONDS wrote no file: wrk's own
# count is the answers then)
read -r answers accepted others < <(cat "$tmp"/done.* 2>/dev/null \
    | awk '{ a += $1; b += $2; c += $3 } END { print a + 0, b + 0, c + 0 }')
if [ "$cut_short" = 1 ]; then
    answers=$(awk '/ requests in / { print $1 }' "$tmp/wrk.txt")
    others=$(awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$tmp/wrk.txt")
    accepted=$((answers - others))
fi
sockerr=$(awk '/Socket errors:/ { sub(/.*Socket errors: /, ""); print }' "$tmp/wrk.txt")
echo "bench: load: $answers answers in ${load_s}s ($accepted 202, $others others)"
if [ "$others" -ne 0 ]; then
    echo "bench: !!! $others submissions were not 202 !!!" >&2
    bad=1
fi
wrk_non2xx=$(awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$tmp/wrk.txt")
if [ "$wrk_non2xx" -ne 0 ]; then
    echo "bench: !!! wrk counted $wrk_non2xx answers that were not 2xx !!!" >&2
    bad=1
fi
if [ -n "$sockerr" ]; then
    echo "bench: !!! wrk: socket errors: $sockerr !!!" >&2
    bad=1
fi

# --- the drain, then the purge --------------------------------------------------
metric() {    # metric NAME: the sum of its samples in /admin/metrics
    curl -sS -m 10 "$base/admin/metrics" \
        | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%.0f\n", s }'
}
echo "bench: drain: until no hold is open and no delivery is waiting (at most ${drain}s) ..."
deadline=$((SECONDS + drain))
while :; do
    kill -0 "$ngx" 2>/dev/null || die "nginx exited"
    holds=$(metric modelroute_holds_open)
    backlog=$(metric modelroute_webhook_backlog)
    [ "$holds" = 0 ] && [ "$backlog" = 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "bench: !!! after ${drain}s: $holds holds open, $backlog deliveries waiting !!!" >&2
        bad=1
        break
    fi
    sleep 1
done
drain_s=$((SECONDS - start - load_s))

phase purge
# executions are purged once past the retention, finished deliveries too,
# events once past both the retention and the webhook max age (the same
# here): the drain's last deliveries are purged a retention after it
purge_wait=$(awk -v s="$sec" 'BEGIN { printf "%d", 2 * s + 20 }')
echo "bench: purge: ${purge_wait}s (twice the retention, $retention, + 20 s) for the sweeper to purge what the run left ..."
deadline=$((SECONDS + purge_wait))
while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$ngx" 2>/dev/null || die "nginx exited"
    sleep 1
done
sleep "$interval"    # one more sample with the store as the sweeper left it
: > "$tmp/stop"
wait "$sampler" || true
[ -s "$tmp/samples.jsonl" ] || die "no samples"

# what is left in each table of the store (mdb_stat is a reader)
echo "bench: the store's tables after the purge (entries):" \
     "$(mdb_stat -a "$tmp/store" | awk '
         /^Status of / { t = $3 }
         /Entries:/ && t != "" && t != "Main" { printf "%s%s %s", s, t, $2; s = ", " }')"

# --- the report ----------------------------------------------------------------
http GET "/admin/accounts/$org/verify"
expect 200 "GET /admin/accounts/$org/verify"
if grep -q '"ok": *true' <<<"$body"; then
    echo "bench: ledger check (verify): ok"
else
    echo "bench: !!! the ledger check failed: $body !!!" >&2
    bad=1
fi

echo
"$here/soak.pl" report "$tmp/samples.jsonl" "$executions" "$sec" \
    "$rss_mb" "$store_pct" "$load_s" "$drain_s" || bad=1
if [ "$cut_short" = 1 ]; then
    echo "bench: the load was cut short by BENCH_SOAK_MAX_SECONDS ($max_s s):" \
         "$accepted of the $executions executions asked for"
fi

n=$(grep -c -E '\[(error|warn)\]' "$tmp/logs/error.log" || true)
if [ "$n" -gt 0 ]; then
    echo "bench: the error log has $n [error]/[warn] lines; the most frequent:" >&2
    grep -E '\[(error|warn)\]' "$tmp/logs/error.log" \
        | sed -E 's/^[0-9\/: ]+//; s/[0-9]+#[0-9]+: (\*[0-9]+ )?//; s/(exec|evt|dlv|wh)_[0-9a-f]+/\1_…/g' \
        | sort | uniq -c | sort -rn | head -5 >&2
fi
if grep -E '\[(alert|crit|emerg)\]|exited on signal' "$tmp/logs/error.log" >&2; then
    echo "bench: !!! the error log has alerts (above) !!!" >&2
    bad=1
fi
echo "bench: load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$bad"
