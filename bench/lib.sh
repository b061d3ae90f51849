# Shared by the benchmarks (sourced, not run): arguments, the temp dir,
# nginx's start and stop, HTTP with curl, an account with a key.
#
#   bench_init NAME "$@"     module, here, top, nginx, seconds, conns,
#                            threads, tmp (build/NAME.XXXXXX, 755)
#   bench_conf HTTP          writes $tmp/conf/nginx.conf: what every
#                            benchmark shares (2 workers, durable store,
#                            temp paths) around the http block's HTTP;
#                            $bench_store replaces the store's line;
#                            BENCH_BODY_BUFFER sets client_body_buffer_size
#   bench_start URL CODE     starts nginx on $tmp/conf/nginx.conf and
#                            waits until URL answers CODE
#   http METHOD PATH [BODY] [curl args...]   -> $code, $body (from $base)
#   expect CODE WHAT
#   bench_account NAME       -> $org, $key, $auth
#   bench_pg                 a private PostgreSQL 15 cluster in $tmp/pg
#                            (durable: fsync, synchronous_commit on), stopped
#                            at the exit: $pgdir, $pgport, $pgbin, pg_sql
#                            SQL [DB], pg_cleanup (the EXIT trap)

die() { echo "bench: $*" >&2; exit 1; }

free_port() {
    perl -MIO::Socket::INET -e \
        'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1",
                                     LocalPort => 0)->sockport'
}

bench_init() {
    local name=$1 c tmpbase
    shift
    [ $# -eq 1 ] || die "usage: $0 /path/to/ngx_http_modelroute_module.so"
    [ -f "$1" ] || die "module not found: $1 (build it with ./build.sh)"
    module=$(readlink -f "$1")

    here=$(cd "$(dirname "$0")" && pwd)
    top=$(cd "$here/.." && pwd)
    nginx=${MR_NGINX:-/usr/sbin/nginx}
    seconds=${BENCH_SECONDS:-10}
    conns=${BENCH_CONNECTIONS:-64}
    threads=${BENCH_THREADS:-2}

    [ -x "$nginx" ] || die "nginx not found at $nginx"
    for c in wrk curl perl cc; do
        command -v "$c" >/dev/null \
            || die "$c not found (./build.sh installs it)"
    done

    # On the repository's disk (not /tmp, which may be tmpfs, where fsync
    # is free). nginx workers run as nobody: 755.
    tmpbase=${BENCH_TMPDIR:-$top/build}
    mkdir -p "$tmpbase"
    tmp=$(mktemp -d "$tmpbase/$name.XXXXXX")
    chmod 755 "$tmp"
    mkdir -p "$tmp/conf" "$tmp/logs" "$tmp/tmp"
    chmod 755 "$tmp/conf" "$tmp/logs" "$tmp/tmp"
    if [ "$(id -u)" -eq 0 ] \
       && ! runuser -u nobody -- test -x "$tmp/tmp" 2>/dev/null
    then
        rm -rf "$tmp"
        die "the nginx workers (user nobody) cannot reach $tmp; set" \
            "BENCH_TMPDIR to a directory on a real disk that others can search"
    fi

    ngx=
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# bench_stop_nginx: QUIT the nginx started by bench_start (TERM after 10 s)
# shellcheck disable=SC2317  # called from the EXIT traps
bench_stop_nginx() {
    if [ -n "$ngx" ] && kill -0 "$ngx" 2>/dev/null; then
        kill -QUIT "$ngx" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$ngx" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$ngx" 2>/dev/null && kill -TERM "$ngx" 2>/dev/null
        wait "$ngx" 2>/dev/null || true
    fi
}

# shellcheck disable=SC2317  # called from the EXIT trap
bench_cleanup() {
    local rc=$?
    bench_stop_nginx
    if [ -n "${BENCH_KEEP:-}" ]; then
        echo "bench: kept $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}

bench_conf() {
    cat > "$tmp/conf/nginx.conf" <<CONF
load_module $module;

master_process on;
daemon off;
worker_processes ${BENCH_WORKERS:-2};
worker_rlimit_nofile 16384;
pid $tmp/logs/nginx.pid;
error_log $tmp/logs/error.log notice;

events {
    worker_connections 4096;
}

http {
    default_type application/json;
    access_log off;
    keepalive_requests 1000000;

    client_body_temp_path $tmp/tmp/body;
    ${BENCH_BODY_BUFFER:+client_body_buffer_size $BENCH_BODY_BUFFER;}
    proxy_temp_path       $tmp/tmp/proxy;
    fastcgi_temp_path     $tmp/tmp/fastcgi;
    uwsgi_temp_path       $tmp/tmp/uwsgi;
    scgi_temp_path        $tmp/tmp/scgi;

    ${bench_store:-modelroute_store          $tmp/store;}
    modelroute_store_map_size 16384m;  # "16g": 1.22's ngx_parse_size has no g
    modelroute_durability     full;
    # one account makes every execution, and they stay PENDING
    modelroute_account_limits executions=1000000000;

$1
}
CONF
}

bench_start() {
    local url=$1 want=$2 deadline
    "$nginx" -p "$tmp/" -c "$tmp/conf/nginx.conf" -t -q \
        || die "nginx -t failed"
    "$nginx" -p "$tmp/" -c "$tmp/conf/nginx.conf" &
    ngx=$!

    deadline=$((SECONDS + 15))
    until [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" || true)" \
            = "$want" ]
    do
        kill -0 "$ngx" 2>/dev/null \
            || { tail -20 "$tmp/logs/error.log" >&2; die "nginx exited"; }
        [ "$SECONDS" -lt "$deadline" ] \
            || { tail -20 "$tmp/logs/error.log" >&2; die "nginx does not answer"; }
        sleep 0.2
    done
}

http() {
    local method=$1 path=$2 data=${3:-} out
    shift $(( $# < 3 ? $# : 3 ))
    local args=(-sS -m 10 -X "$method" -w '\n%{http_code}' "$@")
    [ -n "$data" ] && args+=(-H 'Content-Type: application/json' --data-binary "$data")
    out=$(curl "${args[@]}" "$base$path") || out=$'\n000'
    code=${out##*$'\n'}
    body=${out%$'\n'*}
}

expect() { [ "$code" = "$1" ] || die "$2 answered $code (expected $1): $body"; }

bench_account() {
    http POST /admin/accounts "{\"name\": \"$1\", \"credit\": \"1000000.00\"}"
    expect 201 "POST /admin/accounts"
    org=$(grep -o 'org_[0-9a-f]*' <<<"$body" | head -1)

    http POST "/admin/accounts/$org/keys" '{"permission": "full"}'
    expect 201 "POST /admin/accounts/$org/keys"
    key=$(grep -o 'sk_[0-9a-f]\{64\}_[0-9a-f]\{8\}' <<<"$body" | head -1)
    [ -n "$key" ] || die "no key in: $body"
    auth="Authorization: Bearer $key"
}

bench_pg() {
    pgbin=${MR_PG_BIN:-/usr/lib/postgresql/15/bin}
    [ -x "$pgbin/initdb" ] || die "PostgreSQL 15 not found in $pgbin (apt-get install postgresql-15)"
    command -v psql >/dev/null || die "psql not found (apt-get install postgresql-client-15)"
    pgdir="$tmp/pg"
    pgport=$(free_port)
    pg_as=()
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || die "no postgres user (PostgreSQL refuses root)"
        pg_as=(runuser -u postgres --)
    fi
    mkdir -p "$pgdir"
    chmod 755 "$pgdir"
    [ ${#pg_as[@]} -eq 0 ] || chown postgres: "$pgdir"
    "${pg_as[@]}" "$pgbin/initdb" -D "$pgdir/data" -A trust -U postgres -E UTF8 \
        --locale=C > "$pgdir/initdb.log" 2>&1 || die "initdb failed: $(tail -5 "$pgdir/initdb.log")"
    cat >> "$pgdir/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$pgdir'
port = $pgport
max_connections = 200
shared_buffers = 512MB
max_wal_size = 4GB
# durable: the defaults, said again
fsync = on
synchronous_commit = on
full_page_writes = on
CONF
    # BENCH_PG_STATS=1: what each statement cost (pg_stat_statements; its
    # own cost is a few per cent)
    [ "${BENCH_PG_STATS:-0}" = 0 ] || cat >> "$pgdir/data/postgresql.conf" <<CONF
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track_planning = on
CONF
    # BENCH_PG_CONF: more settings, one per line (experiments: what a
    # figure depends on; the figures in the README use none)
    [ -z "${BENCH_PG_CONF:-}" ] || printf '%s\n' "$BENCH_PG_CONF" >> "$pgdir/data/postgresql.conf"
    "${pg_as[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w start >/dev/null \
        || die "PostgreSQL did not start: $(tail -5 "$pgdir/log")"
    trap pg_cleanup EXIT
}

# shellcheck disable=SC2317  # called from the EXIT trap
pg_stop() {
    "${pg_as[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null 2>&1 || true
}

# shellcheck disable=SC2317  # the EXIT trap
pg_cleanup() {
    local rc=$?
    set +e
    bench_stop_nginx    # before its store
    pg_stop
    (exit "$rc")    # bench_cleanup exits with $?
    bench_cleanup
}

# pg_stats_reset DB; pg_stats_show DB FILE: with BENCH_PG_STATS=1, the
# statements by their time (execution + planning) since the reset, and the
# sequential scans by table
pg_stats_reset() {
    [ "${BENCH_PG_STATS:-0}" != 0 ] || return 0
    pg_sql "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS pg_stat_statements" "$1" >/dev/null
    pg_sql "SELECT pg_stat_statements_reset(), pg_stat_reset()" "$1" >/dev/null
}

pg_stats_show() {
    [ "${BENCH_PG_STATS:-0}" != 0 ] || return 0
    {
        echo "  exec ms | plan ms |  calls |    rows | statement"
        pg_sql "SELECT format('%8s | %7s | %6s | %7s | %s',
                    round(total_exec_time), round(total_plan_time), calls, rows,
                    left(regexp_replace(query, '\s+', ' ', 'g'), 90))
                FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database
                    WHERE datname = current_database())
                ORDER BY total_exec_time + total_plan_time DESC LIMIT 15" "$1"
        echo "  sequential scans (table: scans, rows read):"
        pg_sql "SELECT format('    %s: %s, %s', relname, seq_scan, seq_tup_read)
                FROM pg_stat_user_tables WHERE seq_scan > 0
                ORDER BY seq_tup_read DESC LIMIT 6" "$1"
    } > "$2"
    sed 's/^/bench:   /' "$2"
}

pg_sql() { psql -X -q -v ON_ERROR_STOP=1 -h "$pgdir" -p "$pgport" -U postgres -d "${2:-postgres}" -tAc "$1"; }
