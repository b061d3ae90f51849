#!/usr/bin/env bash
# ModelRoute webhook-delivery benchmark:
#
#   bench/webhooks.sh /path/to/ngx_http_modelroute_module.so
#
# One machine, one run. Starts its own nginx (2 workers, durability full, a
# fresh store in a temp dir under build/) with a second server block on
# another loopback port as the receiver (`return 200`, one access-log line
# "$msec $http_webhook_id" per delivery). Creates an account, a full key and
# one endpoint (events: []) pointing to the receiver, then produces events at
# full speed with wrk (POST /v1/webhooks/endpoints/{id}/test: each 202 is a
# webhook.test event and its delivery), waits until every accepted event has
# reached the receiver (or deliveries stop), and prints:
#   - events produced per second (wrk),
#   - deliveries/s: receiver lines / (last delivery - first delivery), and
#     overall: lines / (last delivery - start of wrk),
#   - latency from event to delivery: receiver $msec - the creation time in
#     the event id (evt_ + 12 hex of ms + 32 hex): p50, p90, p99, max,
#   - duplicates (one webhook-id delivered more than once) and accepted
#     events never delivered.
# Part 0 (BENCH_IDLE=30 events; 0 skips it): before the wrk runs, events
# one at a time, 0 to 1.2 s apart: what an event waits when nothing else
# goes on (the sender's wake-up after the event's commit), p50/p90/max.
# Part 2 (BENCH_BACKLOG=1): the same wrk run with the endpoint disabled
# (PATCH is_active false), then enabled again: the drain rate of that backlog
# is the delivery capacity, whatever the rate at which events can be made.
# Targets (the performance issue): >= 15,000 deliveries/s, p50 <= 5 ms
# (the webhook issue asked 10,000/s).
#
# BENCH_STORE=pg runs it all on a private PostgreSQL 15 cluster (bench/lib.sh
# bench_pg: initdb in a temp dir, durable settings) instead of LMDB.
#
# Environment: BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_THREADS (2),
# BENCH_WH_CONCURRENCY ("256 64", the module's default for
# modelroute_webhook_concurrency),
# BENCH_BACKLOG (1: also measure the drain of a backlog, see part 2),
# BENCH_STALL (10: seconds without a new delivery before giving up),
# BENCH_DRAIN (300: longest wait for deliveries after wrk), BENCH_PORT and
# BENCH_RECEIVER_PORT (free ports), BENCH_TMPDIR (build/), BENCH_KEEP=1 keeps
# the temp dir, MR_NGINX (/usr/sbin/nginx).
#
# Exit code: 1 if anything answered non-2xx, an accepted event was never
# delivered or the error log has alerts; missed performance targets are
# reported, not fatal.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
bench_init bench-webhooks "$@"
mkdir -p "$tmp/ids"

concurrency=${BENCH_WH_CONCURRENCY:-256 64}
stall=${BENCH_STALL:-10}
drain=${BENCH_DRAIN:-300}

port=${BENCH_PORT:-$(free_port)}
rport=${BENCH_RECEIVER_PORT:-$(free_port)}
[ "$port" != "$rport" ] || rport=$(free_port)
base="http://127.0.0.1:$port"
rlog=$tmp/logs/receiver.log

store=${BENCH_STORE:-lmdb}
case $store in
    lmdb) ;;
    pg)
        bench_pg
        pg_sql "CREATE DATABASE webhooks"
        "$top/tools/pg-migrate" \
            "host=$pgdir port=$pgport user=postgres dbname=webhooks" \
            >/dev/null || die "the migration failed"
        bench_store="modelroute_store \"host=$pgdir port=$pgport user=postgres dbname=webhooks\"; modelroute_node_dir $tmp/node;"
        ;;
    *) die "BENCH_STORE: lmdb or pg, not $store" ;;
esac

# --- nginx -------------------------------------------------------------------
bench_conf "$(cat <<CONF
    log_format rcv '\$msec \$http_webhook_id';
    modelroute_model demo-chat per_request=0.002 timeout=5m;

    modelroute_webhook_allow_private on;
    modelroute_webhook_concurrency   $concurrency;

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

    # the receiver
    server {
        listen 127.0.0.1:$rport;

        location /hook {
            access_log $rlog rcv;
            return 200;
        }
        location = /ping {
            return 204;
        }
    }
CONF
)"

bench_start "http://127.0.0.1:$rport/ping" 204
bench_account bench-webhooks

http POST /v1/webhooks/endpoints \
    "{\"url\": \"http://127.0.0.1:$rport/hook\", \"description\": \"bench\", \"events\": []}" \
    -H "$auth"
expect 201 "POST /v1/webhooks/endpoints"
wh=$(grep -o '"id": *"wh_[0-9a-f]*"' <<<"$body" | grep -o 'wh_[0-9a-f]*' | head -1)
[ -n "$wh" ] || die "no endpoint id in: $body"

# One test event by hand: the receiver must see it before the run starts.
http POST "/v1/webhooks/endpoints/$wh/test" "" -H "$auth"
expect 202 "POST /v1/webhooks/endpoints/$wh/test"
deadline=$((SECONDS + 10))
until [ -s "$rlog" ]; do
    [ "$SECONDS" -lt "$deadline" ] || {
        tail -20 "$tmp/logs/error.log" >&2
        http GET "/v1/webhooks/endpoints/$wh/deliveries?limit=1" "" -H "$auth"
        die "the first test event did not reach the receiver in 10 s; its delivery: $body"
    }
    sleep 0.1
done
: > "$rlog"    # nginx opened it with O_APPEND: truncating is safe

# --- wrk -----------------------------------------------------------------------
echo "bench: nginx $("$nginx" -v 2>&1 | sed 's|.*/||'), ${BENCH_WORKERS:-2} workers, durability full," \
     "modelroute_webhook_concurrency $concurrency, store $store on $(stat -f -c %T "$tmp") ($tmp), $(nproc) CPUs"
echo "bench: wrk -t$threads -c$conns -d${seconds}s POST /v1/webhooks/endpoints/{id}/test;" \
     "receiver: 127.0.0.1:$rport (same nginx); load average $(cut -d' ' -f1-3 /proc/loadavg)"

bad=0
now_ms() { date +%s%3N; }

# produce NAME: wrk of test events -> $tmp/wrk-NAME.txt, $tmp/accepted-NAME.txt
# (the event ids answered 202), $wrk_start, $wrk_end, $accepted, $non2xx
produce() {
    local name=$1 total listed sockerr
    echo "bench: wrk $name ..."
    wrk_start=$(now_ms)
    wrk -t"$threads" -c"$conns" -d"${seconds}s" --latency --timeout 5s \
        -s "$here/webhook_test.lua" "$base" -- "/v1/webhooks/endpoints/$wh/test" \
        "$key" "$tmp/ids/$name" > "$tmp/wrk-$name.txt" 2>&1 \
        || { cat "$tmp/wrk-$name.txt" >&2; die "wrk $name failed"; }
    wrk_end=$(now_ms)
    sed 's/^/    /' "$tmp/wrk-$name.txt"
    total=$(awk '/ requests in / { print $1 }' "$tmp/wrk-$name.txt")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$tmp/wrk-$name.txt")
    sockerr=$(awk '/Socket errors:/ { sub(/.*Socket errors: /, ""); print }' "$tmp/wrk-$name.txt")
    accepted=$((total - non2xx))
    cat "$tmp/ids/$name".* > "$tmp/accepted-$name.txt"
    listed=$(wc -l < "$tmp/accepted-$name.txt")
    [ -z "$sockerr" ] || echo "bench: wrk $name: socket errors: $sockerr" >&2
    if [ "$non2xx" -ne 0 ]; then
        echo "bench: !!! $name: $non2xx test requests were NOT 2xx — the numbers are not valid !!!" >&2
        http POST "/v1/webhooks/endpoints/$wh/test" "" -H "$auth"
        echo "bench: a probe POST .../test now answers $code: $body" >&2
        bad=1
    fi
    if [ "$listed" -ne "$accepted" ]; then
        echo "bench: !!! $name: wrk counted $accepted 2xx but $listed answers had an event_id !!!" >&2
        bad=1
    fi
}

# undelivered NAME: accepted event ids not (yet) in the receiver log
undelivered() {
    awk 'NR == FNR { want[$1] = 1; next } { delete want[$2] }
         END { n = 0; for (k in want) n++; print n }' "$tmp/accepted-$1.txt" "$rlog"
}

# await NAME: until every accepted event is in the receiver log, nothing new
# arrives for $stall s, or $drain s have passed
await() {
    local name=$1 lines last_lines=-1 last_change=$SECONDS deadline=$((SECONDS + drain))
    echo "bench: waiting for $accepted deliveries (at most ${drain}s, or ${stall}s without a new one) ..."
    while :; do
        lines=$(wc -l < "$rlog")
        if [ "$lines" -ne "$last_lines" ]; then
            last_lines=$lines; last_change=$SECONDS
        fi
        if [ "$lines" -ge "$accepted" ] && [ "$(undelivered "$name")" -eq 0 ]; then
            break
        fi
        if [ $((SECONDS - last_change)) -ge "$stall" ]; then
            echo "bench: no new delivery for ${stall}s, stopping the wait" >&2; break
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "bench: deliveries still arriving after ${drain}s, stopping the wait" >&2; break
        fi
        kill -0 "$ngx" 2>/dev/null || die "nginx exited"
        sleep 0.5
    done
    wait_end=$(now_ms)
    sleep 1    # late duplicates
}

# analyze NAME: one perl pass over the receiver log -> $lines $distinct $dups
# $extra (delivered, but not seen answered by wrk: in flight when it stopped)
# $first $last (ms) and the latency of each event's first delivery: $p50
# $p90 $p99 $pmax $neg (deliveries logged before their event's time)
analyze() {
    read -r lines distinct dups extra first last p50 p90 p99 pmax neg < <(
        perl -e '
            my ($accepted_file, $log) = @ARGV;
            my %acc;
            open(my $af, "<", $accepted_file) or die;
            while (<$af>) { chomp; $acc{$_} = 1 }
            open(my $lf, "<", $log) or die;
            my (%seen, @lat, $first, $last);
            my ($lines, $dups, $extra, $neg) = (0, 0, 0, 0);
            while (<$lf>) {
                my ($t, $id) = split;
                next unless defined $id;
                $lines++;
                my $ms = $t * 1000;
                $first = $ms if !defined $first || $ms < $first;
                $last = $ms if !defined $last || $ms > $last;
                if ($seen{$id}++) { $dups++; next }
                $extra++ unless $acc{$id};
                if ($id =~ /^evt_([0-9a-f]{12})[0-9a-f]{32}$/) {
                    my $lat = $ms - hex($1);
                    $neg++ if $lat < 0;
                    push @lat, $lat;
                }
            }
            @lat = sort { $a <=> $b } @lat;
            my $pct = sub {
                return "-" unless @lat;
                my $i = int($_[0] / 100 * @lat + 0.5) - 1;
                $i = 0 if $i < 0;
                $i = $#lat if $i > $#lat;
                return sprintf "%.0f", $lat[$i];
            };
            printf "%d %d %d %d %.0f %.0f %s %s %s %s %d\n",
                $lines, scalar(keys %seen), $dups, $extra, $first // 0, $last // 0,
                $pct->(50), $pct->(90), $pct->(99),
                (@lat ? sprintf("%.0f", $lat[-1]) : "-"), $neg;
        ' "$tmp/accepted-$1.txt" "$rlog"
    )
}

# check_missing NAME: accepted events never delivered are an error
check_missing() {
    local name=$1
    missing=$(undelivered "$name")
    [ "$missing" -eq 0 ] && return 0
    echo "bench: !!! $name: $missing accepted events never reached the receiver" \
         "(waited $(( (wait_end - wrk_end) / 1000 )) s after wrk) !!!" >&2
    awk 'NR == FNR { want[$1] = 1; next } { delete want[$2] }
         END { n = 0; for (k in want) if (n++ < 5) print "bench:   " k }' \
        "$tmp/accepted-$name.txt" "$rlog" >&2
    http GET "/v1/webhooks/endpoints/$wh/deliveries?limit=3" "" -H "$auth"
    echo "bench: the endpoint's newest deliveries ($code): ${body:0:2000}" >&2
    bad=1
}

to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}
rate() {    # rate COUNT FROM-MS TO-MS
    awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.0f", (b > a ? n * 1000 / (b - a) : 0) }'
}
secs() {    # secs FROM-MS TO-MS
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1000 }'
}
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN {
    if (v == "-" || v == "") { print "MISSED"; exit }
    print ((op == ">=" ? v + 0 >= t : v + 0 <= t) ? "PASS" : "MISSED") }'; }
row() { printf '%-48s %12s  %s\n' "$@"; }

# --- 0: idle: one event at a time, 0 to 1.2 s apart ---------------------------
# (a claim that waited for the sender's idle poll, not its kick, showed
# here: deliveries up to 0.3 s late)
idle=${BENCH_IDLE:-30}
idle_table=
if [ "$idle" -gt 0 ]; then
    echo "bench: $idle events one at a time, 0 to 1.2 s apart ..."
    : > "$tmp/accepted-idle.txt"
    for _ in $(seq "$idle"); do
        sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", r / 32767 * 1.2 }')"
        http POST "/v1/webhooks/endpoints/$wh/test" "" -H "$auth"
        expect 202 "POST /v1/webhooks/endpoints/$wh/test"
        id=$(grep -o 'evt_[0-9a-f]\{44\}' <<<"$body" | head -1 || true)
        [ -n "$id" ] || die "no event id in: $body"
        echo "$id" >> "$tmp/accepted-idle.txt"
    done
    accepted=$(wc -l < "$tmp/accepted-idle.txt")
    wrk_end=$(now_ms)
    await idle
    analyze idle
    check_missing idle
    idle_table=$(
        row "idle: events, one at a time" "$accepted"
        row "idle: event -> delivery p50 ms" "$p50"
        row "idle: event -> delivery p90 ms" "$p90"
        row "idle: event -> delivery max ms" "$pmax"
    )
    cp "$rlog" "$tmp/logs/receiver-idle.log"
    : > "$rlog"
fi

# --- 1: streaming: events produced at full speed, delivered as they come -------
produce stream
await stream
analyze stream
check_missing stream

f=$tmp/wrk-stream.txt
produced=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$f")
rate_span=$(rate "$lines" "$first" "$last")
rate_all=$(rate "$lines" "$wrk_start" "$last")
table=$(
    row "" "value" "target"
    [ -z "$idle_table" ] || printf '%s\n\n' "$idle_table"
    row "events produced/s (wrk)" "$produced" \
        "(wrk p50 $(to_ms "$(awk '$1 == "50%" { print $2 }' "$f")") ms, p99 $(to_ms "$(awk '$1 == "99%" { print $2 }' "$f")") ms)"
    row "events accepted (wrk requests - non-2xx)" "$accepted"
    row "deliveries (receiver lines)" "$lines"
    row "deliveries/s, first to last delivery" "$rate_span" ">= 15000 $(verdict "$rate_span" 15000 '>=')"
    row "deliveries/s, start of wrk to last delivery" "$rate_all" \
        "(last delivery $(secs "$wrk_end" "$last") s after wrk ended)"
    row "event -> delivery p50 ms" "$p50" "<= 5 $(verdict "$p50" 5 '<=')"
    row "event -> delivery p90 ms" "$p90"
    row "event -> delivery p99 ms" "$p99"
    row "event -> delivery max ms" "$pmax"
    row "distinct events delivered" "$distinct"
    row "duplicates (webhook-id delivered again)" "$dups"
    row "accepted events never delivered" "$missing"
    row "delivered, not seen answered by wrk" "$extra" "(in flight when wrk stopped)"
)
[ "$neg" -eq 0 ] || table+=$'\n'"bench: $neg deliveries logged before their event's time (cached clocks)"

# --- 2: backlog: the same events made while the endpoint is disabled, then
# delivered at once when it is enabled again: delivery capacity, whatever the
# rate at which events can be produced (deliveries of a disabled endpoint are
# looked at again every 2 s, so the drain starts within 2 s of the PATCH).
if [ "${BENCH_BACKLOG:-1}" != 0 ]; then
    cp "$rlog" "$tmp/logs/receiver-stream.log"
    : > "$rlog"
    http PATCH "/v1/webhooks/endpoints/$wh" '{"is_active": false}' -H "$auth"
    expect 200 "PATCH /v1/webhooks/endpoints/$wh (is_active false)"
    produce backlog
    early=$(wc -l < "$rlog")
    [ "$early" -eq 0 ] || echo "bench: $early deliveries while the endpoint was disabled (late ones of part 1?)"
    : > "$rlog"
    enabled=$(now_ms)
    http PATCH "/v1/webhooks/endpoints/$wh" '{"is_active": true}' -H "$auth"
    expect 200 "PATCH /v1/webhooks/endpoints/$wh (is_active true)"
    await backlog
    analyze backlog
    check_missing backlog
    b_rate=$(rate "$lines" "$first" "$last")
    table+=$'\n'$(
        echo
        row "backlog: events made while disabled" "$accepted" \
            "($(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$tmp/wrk-backlog.txt")/s)"
        row "backlog: deliveries (receiver lines)" "$lines" \
            "(first $(secs "$enabled" "$first") s after the PATCH)"
        row "backlog: deliveries/s, first to last delivery" "$b_rate" \
            ">= 15000 $(verdict "$b_rate" 15000 '>=')"
        row "backlog: duplicates" "$dups"
        row "backlog: accepted events never delivered" "$missing"
    )
fi

echo
echo "$table"

# What the module logged while delivering (not fatal unless [alert]/[crit]).
n=$(grep -c -E '\[(error|warn)\]' "$tmp/logs/error.log" || true)
if [ "$n" -gt 0 ]; then
    echo "bench: the error log has $n [error]/[warn] lines; the most frequent:" >&2
    grep -E '\[(error|warn)\]' "$tmp/logs/error.log" \
        | sed -E 's/^[0-9\/: ]+//; s/[0-9]+#[0-9]+: (\*[0-9]+ )?//; s/(evt|dlv|wh)_[0-9a-f]+/\1_…/g' \
        | sort | uniq -c | sort -rn | head -5 >&2
fi
if grep -E '\[(alert|crit|emerg)\]|exited on signal' "$tmp/logs/error.log" >&2; then
    echo "bench: !!! the error log has alerts (above) !!!" >&2; bad=1
fi
exit "$bad"
