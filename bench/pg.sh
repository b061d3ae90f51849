#!/usr/bin/env bash
# ModelRoute on both stores, side by side (called by `./build.sh bench-pg`):
#
#   bench/pg.sh /path/to/ngx_http_modelroute_module.so
#
# One machine, one run. Starts a private PostgreSQL 15 cluster (initdb in a
# temp dir under build/, on the repository's disk; a unix socket only;
# fsync and synchronous_commit on: durable), measures pgbench's own rate of
# one INSERT per transaction, then, for each store (LMDB, then PostgreSQL),
# starts nginx (BENCH_WORKERS workers, durability full) with a model without routes
# (executions stay PENDING) and one with a route to the built-in simulator
# at 0 ms, and measures with wrk:
#   - durable creates/s (POST /v1/executions, a new idempotency key each),
#   - GETs/s (GET /v1/executions/{id}),
#   - executions completed/s end to end (created, claimed, sent to the
#     provider, answered, settled: COMPLETED), from the route's counters
#     over the wrk window, and until the last one completed,
# each for one hot account and for BENCH_ACCOUNTS accounts (1,000) that
# take turns; then the ledger check (verify) of the hot account and of
# some of the others, and that every 202 was stored. The PostgreSQL
# database is ANALYZEd after the set-up (as autovacuum keeps a database in
# use: a fresh one has no statistics, and plans made for empty tables).
#
# BENCH_BASE_MODULE=/path/to/an/older/module.so adds a column before each
# store's: that store with that build, measured in the same run (the
# figures before and after a change).
#
# Columns: lmdb; pg (the defaults); pg-kc (the same with
# modelroute_key_cache 1s: a request with a known key needs no read).
#
# Environment: BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_THREADS
# (2), BENCH_WORKERS (nginx's worker_processes, 2), BENCH_ACCOUNTS (1000),
# BENCH_STORES ("lmdb pg pg-kc"), BENCH_MEASURES ("create get done": which
# of the three to measure), BENCH_WARMUP (5), BENCH_BASE_MODULE,
# BENCH_DRAIN (120), MR_PG_BIN (/usr/lib/postgresql/15/bin),
# BENCH_PG_CONNECTIONS (the module's modelroute_store_connections, its
# default if unset), BENCH_PGBENCH_CLIENTS (64: pgbench's clients, whatever
# BENCH_CONNECTIONS; the cluster allows 200 connections), BENCH_PG_STATS=1
# (after each measure, PostgreSQL's statements by their time and its
# sequential scans: pg_stat_statements), BENCH_PG_CONF (more
# postgresql.conf lines, for experiments), BENCH_INPUT_BYTES (0: that
# many more bytes in each execution's prompt, for inputs of a real size;
# post.lua and accounts.lua read it), BENCH_TMPDIR (build/),
# BENCH_KEEP=1, MR_NGINX.
#
# Exit code: 1 if anything answered non-2xx, an execution did not complete,
# a ledger check failed or an error log has alerts; the targets (issue 11:
# >= 10,000 creates/s, >= 5,000 completions/s, creates >= 1.5x pgbench)
# are reported, not fatal.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
bench_init bench-pg "$@"

accounts=${BENCH_ACCOUNTS:-1000}
stores=${BENCH_STORES:-lmdb pg pg-kc}
drain=${BENCH_DRAIN:-120}
warmup=${BENCH_WARMUP:-5}
measures=${BENCH_MEASURES:-create get done}
base_module=${BENCH_BASE_MODULE:-}
this_module=$module
[ -z "$base_module" ] || base_module=$(readlink -f "$base_module")

load() { cut -d' ' -f1-3 /proc/loadavg; }
now_ms() { date +%s%3N; }

# --- a private PostgreSQL cluster (bench/lib.sh) ---------------------------------
bench_pg

# --- pgbench: one INSERT per transaction ------------------------------------------
pg_sql "CREATE DATABASE pgbench"
pg_sql "CREATE TABLE one_insert (id bigserial PRIMARY KEY, at bigint, body text)" pgbench
echo "INSERT INTO one_insert (at, body) VALUES (extract(epoch from now())::bigint, repeat('x', 200));" > "$tmp/insert.sql"
pgbench_clients=${BENCH_PGBENCH_CLIENTS:-64}
echo "bench: pgbench: one INSERT per transaction, -c$pgbench_clients -j$threads -T$seconds ..."
pgbench -n -h "$pgdir" -p "$pgport" -U postgres -c "$pgbench_clients" -j "$threads" -T "$seconds" \
    -f "$tmp/insert.sql" pgbench > "$tmp/pgbench.txt" 2>&1 \
    || { cat "$tmp/pgbench.txt" >&2; die "pgbench failed"; }
pgbench_tps=$(awk '/^tps = / { printf "%.0f", $3; exit }' "$tmp/pgbench.txt")
pgbench_load=$(load)
echo "bench: pgbench: $pgbench_tps transactions/s (load average $pgbench_load)"

# --- one store ------------------------------------------------------------------
port=$(free_port)
base="http://127.0.0.1:$port"
bad=0
declare -A R

field() {    # field FILE KEY
    case $2 in
        rps)    awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$1" ;;
        total)  awk '/ requests in / { print $1 }' "$1" ;;
        non2xx) awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$1" ;;
        p99)    awk '$1 == "99%" { v = $2; n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
                    if (u == "us") n /= 1000; else if (u == "s") n *= 1000;
                    printf "%.1f", n }' "$1" ;;
    esac
}

# done_count: the simulator route's completed attempts
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

# pg_col_stats reset|show COLUMN [NAME]: BENCH_PG_STATS for a PostgreSQL
# column (its database)
pg_col_stats() {
    case $2 in
        pg*) if [ "$1" = reset ]; then pg_stats_reset "${2//-/_}"
             else pg_stats_show "${2//-/_}" "$tmp/pg-stats-$2-$3.txt"; fi ;;
    esac
}

# measure COLUMN NAME wrk-args...: requests/s into R[COLUMN,NAME]
measure() {
    local col=$1 name=$2 f
    shift 2
    f="$tmp/wrk-$col-$name.txt"
    pg_col_stats reset "$col"
    wrk -t"$threads" -c"$conns" -d"${seconds}s" --latency --timeout 5s "$@" \
        > "$f" 2>&1 || { cat "$f" >&2; die "wrk $col $name failed"; }
    R[$col,$name]=$(field "$f" rps)
    R[$col,$name.p99]=$(field "$f" p99)
    R[$col,$name.load]=$(load)
    if [ "$(field "$f" non2xx)" -ne 0 ]; then
        echo "bench: !!! $col $name: $(field "$f" non2xx) answers were not 2xx !!!" >&2
        bad=1
    fi
    echo "bench: $col: $name: ${R[$col,$name]}/s, p99 ${R[$col,$name.p99]} ms (load average ${R[$col,$name.load]})"
    pg_col_stats show "$col" "$name"
    sleep 1
}

# completions COLUMN NAME wrk-args...: executions completed/s end to end
completions() {
    local col=$1 name=$2 f before at_end start end n want finish accepted
    shift 2
    f="$tmp/wrk-$col-$name.txt"
    before=$(done_count)
    pg_col_stats reset "$col"
    start=$(now_ms)
    wrk -t"$threads" -c"$conns" -d"${seconds}s" --latency --timeout 5s "$@" \
        > "$f" 2>&1 || { cat "$f" >&2; die "wrk $col $name failed"; }
    end=$(now_ms)
    at_end=$(done_count)
    accepted=$(( $(field "$f" total) - $(field "$f" non2xx) ))
    [ "$(field "$f" non2xx)" -eq 0 ] || { echo "bench: !!! $col $name: non-2xx !!!" >&2; bad=1; }
    want=$((before + accepted))
    local deadline=$((SECONDS + drain))
    while :; do
        n=$(done_count)
        [ "$n" -ge "$want" ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "bench: !!! $col $name: only $((n - before)) of $accepted completed in ${drain}s !!!" >&2
            bad=1
            break
        fi
        sleep 0.2
    done
    finish=$(now_ms)
    R[$col,$name]=$(awk -v n="$((at_end - before))" -v ms="$((end - start))" 'BEGIN { printf "%.0f", n * 1000 / ms }')
    R[$col,$name.all]=$(awk -v n="$((n - before))" -v ms="$((finish - start))" 'BEGIN { printf "%.0f", n * 1000 / ms }')
    R[$col,$name.sub]=$(field "$f" rps)
    R[$col,$name.load]=$(load)
    echo "bench: $col: $name: submitted ${R[$col,$name.sub]}/s, completed ${R[$col,$name]}/s during the run," \
         "${R[$col,$name.all]}/s until the last ($((n - before)) in $((finish - start)) ms; load average ${R[$col,$name.load]})"
    pg_col_stats show "$col" "$name"
    sleep 1
}

# run_store COLUMN MODULE STORE-LINE
run_store() {
    local col=$1 mod=$2 storeline=$3 orgs org_hot key_hot exec_hot seed v i
    module=$mod
    bench_store=$storeline
    rm -rf "$tmp/store" "$tmp/node"
    bench_conf "$(cat <<CONF
    modelroute_retention      off;

    modelroute_route sim /providers/sim protocol=openai_chat;
    modelroute_model bench-hold per_request=0.002 timeout=30m;
    modelroute_model bench-sim  per_request=0.002 routes=sim:sim-small;

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
CONF
)"
    bench_start "$base/admin/routes" 200
    echo "bench: $col: $(basename "$mod"), store: ${storeline//$tmp/\$tmp}"

    bench_account hot
    org_hot=$org
    key_hot=$key
    http POST /v1/executions '{"model":"bench-hold","input":{"prompt":"hello"},"idempotency_key":"setup"}' -H "$auth"
    expect 202 "POST /v1/executions"
    exec_hot=$(grep -o 'exec_[0-9a-f]*' <<<"$body" | head -1)

    echo "bench: $col: $accounts accounts, each with a key and an execution ..."
    perl "$here/accounts.pl" "$base" "$accounts" bench-hold "$tmp/accounts-$col.txt" \
        || die "accounts.pl failed"

    # statistics, as autovacuum keeps them on a database in use (a fresh
    # one has none: its first plans are for empty tables)
    case $col in pg*) pg_sql "ANALYZE" "${col//-/_}" ;; esac

    seed="$col-$(date +%s)"
    if [ "$warmup" -gt 0 ]; then
        wrk -t"$threads" -c"$conns" -d"${warmup}s" --timeout 5s \
            -s "$here/post.lua" "$base" -- /v1/executions "$key_hot" "$seed-w" bench-hold \
            > "$tmp/wrk-$col-warmup.txt" 2>&1 || die "wrk warm-up failed"
        sleep 1
    fi

    if [[ " $measures " == *" create "* ]]; then
        measure "$col" create-hot -s "$here/post.lua" "$base" -- /v1/executions "$key_hot" "$seed-c1" bench-hold
        measure "$col" create-many -s "$here/accounts.lua" "$base" -- post "$tmp/accounts-$col.txt" "$seed-cn" bench-hold
    fi
    if [[ " $measures " == *" get "* ]]; then
        measure "$col" get-hot -H "Authorization: Bearer $key_hot" "$base/v1/executions/$exec_hot"
        measure "$col" get-many -s "$here/accounts.lua" "$base" -- get "$tmp/accounts-$col.txt"
    fi
    if [[ " $measures " == *" done "* ]]; then
        completions "$col" done-hot -s "$here/post.lua" "$base" -- /v1/executions "$key_hot" "$seed-d1" bench-sim
        completions "$col" done-many -s "$here/accounts.lua" "$base" -- post "$tmp/accounts-$col.txt" "$seed-dn" bench-sim
    fi

    # the ledger: the hot account and a few others
    orgs="$org_hot $(awk 'NR % 250 == 1 { print $3 }' "$tmp/accounts-$col.txt")"
    for org in $orgs; do
        http GET "/admin/accounts/$org/verify"
        if [ "$code" != 200 ] || ! grep -Eq '"ok": *true' <<<"$body"; then
            echo "bench: !!! $col: the ledger check of $org failed: $code $body !!!" >&2
            bad=1
        fi
    done
    # every 202 of the hot account was stored
    http GET "/admin/accounts/$org_hot/verify"
    v=$(grep -o '"executions": *[0-9]*' <<<"$body" | head -1 | grep -o '[0-9]*$' || true)
    i=1
    for f in "$tmp/wrk-$col-warmup.txt" "$tmp/wrk-$col-create-hot.txt" "$tmp/wrk-$col-done-hot.txt"; do
        [ -f "$f" ] && i=$((i + $(field "$f" total) - $(field "$f" non2xx)))
    done
    if [ -n "$v" ] && [ "$v" -lt "$i" ]; then
        echo "bench: !!! $col: $v executions of the hot account stored, $i answered 202 !!!" >&2
        bad=1
    fi
    echo "bench: $col: ledger checks done; hot account: $v executions stored, $i answered 202 (in-flight requests at the ends may add a few)"

    if grep -E '\[(alert|crit|emerg)\]|exited on signal' "$tmp/logs/error.log" >&2; then
        echo "bench: !!! $col: the error log has alerts (above) !!!" >&2
        bad=1
    fi

    kill -QUIT "$ngx" 2>/dev/null || true
    wait "$ngx" 2>/dev/null || true
    ngx=
    mv "$tmp/logs/error.log" "$tmp/logs/error-$col.log"
}

echo "bench: nginx $("$nginx" -v 2>&1 | sed 's|.*/||'), ${BENCH_WORKERS:-2} workers, durability full," \
     "on $(stat -f -c %T "$tmp") ($tmp), $(nproc) CPUs, PostgreSQL $("$pgbin/postgres" -V | awk '{ print $3 }')" \
     "on the same machine; wrk -t$threads -c$conns -d${seconds}s${BENCH_INPUT_BYTES:+, prompts $BENCH_INPUT_BYTES bytes longer};" \
     "load average $(load)"

cols=()
run_pg() {    # run_pg COLUMN MODULE
    local db=${1//-/_} extra
    pg_sql "CREATE DATABASE $db"
    "$top/tools/pg-migrate" "host=$pgdir port=$pgport user=postgres dbname=$db" >/dev/null \
        || die "the migration failed"
    extra=${BENCH_PG_CONNECTIONS:+ modelroute_store_connections $BENCH_PG_CONNECTIONS;}
    [ "${1%-before}" != pg-kc ] || extra="$extra modelroute_key_cache 1s;"
    run_store "$1" "$2" "modelroute_store \"host=$pgdir port=$pgport user=postgres dbname=$db\"; modelroute_node_dir $tmp/node;$extra"
    cols+=("$1")
}
for s in $stores; do
    case $s in
        lmdb)
            if [ -n "$base_module" ]; then
                run_store lmdb-before "$base_module" "modelroute_store $tmp/store;"
                cols+=(lmdb-before)
            fi
            run_store lmdb "$this_module" "modelroute_store $tmp/store;"
            cols+=(lmdb) ;;
        pg|pg-kc)
            [ -z "$base_module" ] || run_pg "$s-before" "$base_module"
            run_pg "$s" "$this_module" ;;
        *) die "BENCH_STORES: lmdb, pg or pg-kc, not $s" ;;
    esac
done

# --- the table ---------------------------------------------------------------------
printf '\n%-44s' ""
for c in "${cols[@]}"; do printf '%14s' "$c"; done
printf '\n'
row() {    # row LABEL NAME
    printf '%-44s' "$1"
    for c in "${cols[@]}"; do printf '%14s' "${R[$c,$2]:--}"; done
    printf '\n'
}
row "creates/s, one account"                   create-hot
row "creates/s, $accounts accounts"            create-many
row "GETs/s, one account"                      get-hot
row "GETs/s, $accounts accounts"               get-many
row "completed/s during the run, one account"  done-hot
row "completed/s until the last, one account"  done-hot.all
row "completed/s during the run, $accounts acc." done-many
row "completed/s until the last, $accounts acc." done-many.all
printf '%-44s%14s\n' "pgbench, one INSERT per transaction (tps)" "$pgbench_tps"

echo
for c in pg pg-kc; do
    # the targets need all four (BENCH_MEASURES may leave some out)
    [ -n "${R[$c,create-hot]:-}" ] && [ -n "${R[$c,create-many]:-}" ] \
        && [ -n "${R[$c,done-hot]:-}" ] && [ -n "${R[$c,done-many]:-}" ] \
        || continue
    awk -v col="$c" -v c1="${R[$c,create-hot]}" -v cn="${R[$c,create-many]}" \
        -v d1="${R[$c,done-hot]}" -v dn="${R[$c,done-many]}" -v p="$pgbench_tps" 'BEGIN {
        c = (c1 < cn ? c1 : cn); d = (d1 < dn ? d1 : dn)
        printf "bench: %s: creates/s >= 10,000: %s (%d); completions/s >= 5,000: %s (%d); creates >= 1.5x pgbench: %s (%.2fx)\n",
            col, (c >= 10000 ? "met" : "missed"), c, (d >= 5000 ? "met" : "missed"), d,
            (c >= 1.5 * p ? "met" : "missed"), (p > 0 ? c / p : 0) }'
done
exit "$bad"
