#!/usr/bin/env bash
# ModelRoute benchmark (called by `./build.sh bench`):
#
#   bench/run.sh /path/to/ngx_http_modelroute_module.so
#
# One machine, one run. Starts its own nginx (2 workers, durability full, a
# fresh store in a temp dir under build/), creates an account and a key,
# and runs wrk against:
#   - a plain `return 202` of an execution-sized body (the baseline),
#   - POST /v1/executions, each request with its own idempotency key,
#   - GET /v1/executions/{id} of one execution,
# then prints requests/s, p50, p99 and the ratio to the baseline.
#
# Environment: BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_THREADS (2),
# BENCH_PORT (a free port), BENCH_TMPDIR (build/), BENCH_KEEP=1 keeps the
# temp dir, MR_NGINX (/usr/sbin/nginx).
#
# Exit code: 1 if anything answered non-2xx, the ledger check failed or the
# error log has alerts; missed performance targets are reported, not fatal.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
bench_init bench "$@"
mkdir -p "$tmp/lmdb"

port=${BENCH_PORT:-$(free_port)}
base="http://127.0.0.1:$port"

# --- raw LMDB commit rate --------------------------------------------------------
# One put per fsynced write transaction: what one-commit-per-request would
# give on this disk.
lmdb_rate=
if cc -O2 -o "$tmp/lmdb_commit" "$here/lmdb_commit.c" -llmdb 2>"$tmp/cc.log"; then
    read -r n t < <("$tmp/lmdb_commit" "$tmp/lmdb" 2) || true
    [ -n "${n:-}" ] && lmdb_rate=$(awk -v n="$n" -v t="$t" 'BEGIN { printf "%.0f", n / t }')
else
    echo "bench: cannot build bench/lmdb_commit.c, skipping the raw LMDB rate" >&2
    cat "$tmp/cc.log" >&2
fi
rm -rf "$tmp/lmdb"

# --- nginx -------------------------------------------------------------------
# A typical 202 execution object (~600 bytes), served by `return` as the
# baseline. No quote, dollar sign or backslash inside (nginx string).
baseline_body='{"id":"exec_5f0c3b7e9a1d4e2f8b6c0a9d7e3f1b2c","object":"execution","status":"PENDING","model":"demo-chat","idempotency_key":"bench-17641063001234-1-123456","metadata":{},"webhook_url":null,"estimated_cost":"0.002","hold_amount":"0.01","cost":null,"result":null,"error":null,"attempts":[],"created_at":"2025-11-25T22:40:00.123Z","started_at":null,"completed_at":null,"expires_at":"2025-11-25T22:45:00.123Z","latency_ms":null}'

bench_conf "$(cat <<CONF
    modelroute_model demo-chat per_request=0.002 timeout=5m;

    server {
        listen 127.0.0.1:$port;

        location = /baseline {
            return 202 '$baseline_body';
        }
        location /v1/ {
            modelroute_api;
        }
        location /admin/ {
            modelroute_admin;
            allow 127.0.0.1;
            deny all;
        }
    }
CONF
)"

bench_start "$base/baseline" 202
bench_account bench

http POST /v1/executions \
    '{"model":"demo-chat","input":{"prompt":"hello"},"idempotency_key":"bench-setup"}' -H "$auth"
expect 202 "POST /v1/executions"
exec_id=$(grep -o 'exec_[0-9a-f]*' <<<"$body" | head -1)
exec_bytes=${#body}

# --- wrk -----------------------------------------------------------------------
seed="$(date +%s)$RANDOM"
wrk_args=(-t"$threads" -c"$conns" -d"${seconds}s" --latency --timeout 5s)

# run_wrk NAME wrk-args... : raw output in $tmp/wrk-NAME.txt
run_wrk() {
    local name=$1; shift
    echo "bench: wrk $name ..."
    wrk "${wrk_args[@]}" "$@" > "$tmp/wrk-$name.txt" 2>&1 \
        || { cat "$tmp/wrk-$name.txt" >&2; die "wrk $name failed"; }
    sed 's/^/    /' "$tmp/wrk-$name.txt"
    sleep 1
}

echo "bench: nginx $("$nginx" -v 2>&1 | sed 's|.*/||'), ${BENCH_WORKERS:-2} workers, durability full," \
     "store on $(stat -f -c %T "$tmp") ($tmp), $(nproc) CPUs"
echo "bench: wrk -t$threads -c$conns -d${seconds}s; 202 bodies: baseline ${#baseline_body} B, module $exec_bytes B;" \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"

# Warm-up, not reported: the first seconds of a fresh store grow its file,
# and an fdatasync that extends a file costs more than one that does not.
warmup=${BENCH_WARMUP:-5}
if [ "$warmup" -gt 0 ]; then
    echo "bench: warm-up: ${warmup}s of POST /v1/executions (not reported)"
    wrk -t"$threads" -c"$conns" -d"${warmup}s" --timeout 5s \
        -s "$here/post.lua" "$base" -- /v1/executions "$key" "$seed-w" \
        > "$tmp/wrk-warmup.txt" 2>&1 || die "wrk warm-up failed"
fi

run_wrk post-baseline -s "$here/post.lua" "$base" -- /baseline "$key" "$seed-b"
run_wrk post          -s "$here/post.lua" "$base" -- /v1/executions "$key" "$seed"
wrk_args=(-t"$threads" -c256 -d"${seconds}s" --latency --timeout 5s)
run_wrk post-256      -s "$here/post.lua" "$base" -- /v1/executions "$key" "$seed-c"
wrk_args=(-t"$threads" -c"$conns" -d"${seconds}s" --latency --timeout 5s)
run_wrk get-baseline  "$base/baseline"
run_wrk get           -H "$auth" "$base/v1/executions/$exec_id"

# --- results -------------------------------------------------------------------
# wrk latency "123.45us" / "1.23ms" / "1.02s" -> milliseconds
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}
field() {    # field NAME KEY
    local f="$tmp/wrk-$1.txt"
    case $2 in
        rps)   awk '/^Requests\/sec:/ { print $2 }' "$f" ;;
        p50)   to_ms "$(awk '$1 == "50%" { print $2 }' "$f")" ;;
        p99)   to_ms "$(awk '$1 == "99%" { print $2 }' "$f")" ;;
        total) awk '/ requests in / { print $1 }' "$f" ;;
        non2xx) awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$f" ;;
        sockerr) awk '/Socket errors:/ { sub(/.*Socket errors: /, ""); print }' "$f" ;;
    esac
}

bad=0
printf '\n%-34s %12s %9s %9s %9s %8s  %s\n' \
    "" "requests/s" "p50 ms" "p99 ms" "x base" "non-2xx" "target"
row() {    # row LABEL NAME BASELINE-NAME MIN-RATIO (none: the ratio alone)
    local rps p50 p99 ratio non2xx target=""
    rps=$(field "$2" rps); p50=$(field "$2" p50); p99=$(field "$2" p99)
    non2xx=$(field "$2" non2xx)
    if [ -n "$3" ]; then
        ratio=$(awk -v a="$rps" -v b="$(field "$3" rps)" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
        [ -z "$4" ] || target=$(awk -v r="$ratio" -v m="$4" -v p="$p99" 'BEGIN {
            printf "%s >= %.1fx, %s p99 <= 5 ms", (r >= m ? "ok" : "MISSED"), m, (p <= 5 ? "ok" : "MISSED") }')
    else
        ratio=1.00
    fi
    printf '%-34s %12.0f %9s %9s %9s %8s  %s\n' "$1" "$rps" "$p50" "$p99" "$ratio" "$non2xx" "$target"
    [ "$non2xx" -eq 0 ] || bad=1
}
row "baseline POST (return 202)"   post-baseline "" ""
row "POST /v1/executions (durable)" post post-baseline 0.5
row "POST, 256 connections"         post-256 post-baseline ""
row "baseline GET (return 202)"    get-baseline "" ""
row "GET /v1/executions/{id}"      get get-baseline 0.7
if [ -n "$lmdb_rate" ]; then
    printf '%-34s %12s   (one put per fsynced commit, same disk)\n' "raw LMDB commits/s" "$lmdb_rate"
fi

for name in post-baseline post post-256 get-baseline get; do
    n=$(field "$name" non2xx)
    if [ "$n" -ne 0 ]; then
        echo "bench: !!! $name: $n responses were NOT 2xx/3xx — the numbers above are not valid !!!" >&2
    fi
    s=$(field "$name" sockerr)
    [ -z "$s" ] || echo "bench: $name: socket errors: $s" >&2
done
if [ "$bad" -ne 0 ]; then
    # Show what such an answer looks like.
    http POST /v1/executions \
        "{\"model\":\"demo-chat\",\"input\":{\"prompt\":\"hello\"},\"idempotency_key\":\"bench-probe-$seed\"}" -H "$auth"
    echo "bench: a probe POST /v1/executions now answers $code: $body" >&2
fi

# --- consistency ---------------------------------------------------------------
http GET "/admin/accounts/$org/verify"
echo
echo "bench: ledger check ($code): $body"
# the first "executions": the ledger's (usage objects follow)
stored=$(grep -o '"executions": *[0-9]*' <<<"$body" | head -1 \
         | grep -o '[0-9]*$' || true)
posted=$(( $(field post total) + $(field post-256 total) + 1 ))
[ -f "$tmp/wrk-warmup.txt" ] && posted=$(( posted + $(awk '/ requests in / { print $1 }' "$tmp/wrk-warmup.txt") ))
if [ "$code" != 200 ] || ! grep -Eq '"ok": *true' <<<"$body"; then
    echo "bench: !!! the ledger check failed !!!" >&2; bad=1
elif [ -n "$stored" ] && [ "$stored" -lt "$posted" ]; then
    echo "bench: !!! $stored executions stored, but $posted were answered 202 !!!" >&2; bad=1
else
    echo "bench: executions stored: ${stored:-?} (answered by wrk: $posted; in-flight requests at the end may add a few)"
fi

if grep -E '\[(alert|crit|emerg)\]|exited on signal' "$tmp/logs/error.log" >&2; then
    echo "bench: !!! the error log has alerts (above) !!!" >&2; bad=1
fi
exit "$bad"
