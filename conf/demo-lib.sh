# shellcheck shell=bash disable=SC2154  # the callers set $me, $run, $top...
# What conf/run-demo.sh (./build.sh run) and conf/run-cluster.sh
# (./build.sh cluster) share; sourced by them, after they set $top, $run,
# $nginx, $addr, $base and $me (the name their messages start with).
#
#   demo_rundir DIR...        the runtime directories, reachable by nobody
#   demo_pg_start             a private PostgreSQL in $run/pg (sets
#                             $conninfo, $pgdir, $pgport and pg_stop)
#   demo_render TEMPLATE OUT STORE RUNDIR
#                             conf/nginx.conf-like template -> OUT
#   demo_wait_http PID        until $base answers (PID: the nginx to watch)
#   demo_account              the demo account and key (sets $key)
#   demo_banner STORE PIDS    what to do next, as ./build.sh run says it

die() { echo "$me: $*" >&2; exit 1; }

demo_rundir() {
    local d
    mkdir -p "$@"
    chmod 755 "$@"
    # Workers run as `nobody` when we are root: they need to reach $run.
    for d in "$@"; do
        if [ "$(id -u)" -eq 0 ] && command -v runuser >/dev/null \
            && ! runuser -u nobody -- test -x "$d" 2>/dev/null; then
            die "the nginx workers (user nobody) cannot reach $d:" \
                "a parent directory is not searchable by others (chmod o+x" \
                "it, or put the repository elsewhere)"
        fi
    done
}

pg_stop() { :; }

demo_pg_start() {
    pgbin=${MR_PG_BIN:-/usr/lib/postgresql/15/bin}
    pgdir="$run/pg"
    pgport=${MR_PG_PORT:-55432}
    [ -x "$pgbin/initdb" ] || die "PostgreSQL 15 not found in $pgbin" \
        "(apt-get install postgresql-15)"
    pg_as=()
    if [ "$(id -u)" -eq 0 ]; then
        # PostgreSQL refuses to run as root
        id postgres >/dev/null 2>&1 || die "no postgres user"
        pg_as=(runuser -u postgres --)
    fi
    if [ ! -f "$pgdir/data/PG_VERSION" ]; then
        echo "$me: a PostgreSQL cluster in $pgdir"
        mkdir -p "$pgdir"
        chmod 755 "$pgdir"
        [ ${#pg_as[@]} -eq 0 ] || chown postgres: "$pgdir"
        "${pg_as[@]}" "$pgbin/initdb" -D "$pgdir/data" -A trust -U postgres \
            -E UTF8 --locale=C >"$pgdir/initdb.log" 2>&1 \
            || die "initdb failed (see $pgdir/initdb.log)"
        cat >> "$pgdir/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$pgdir'
port = $pgport
CONF
    fi
    "${pg_as[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w start \
        >/dev/null || die "PostgreSQL did not start (see $pgdir/log)"
    # shellcheck disable=SC2317  # called when the demo stops
    pg_stop() {
        echo "$me: stopping PostgreSQL"
        "${pg_as[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m fast -w stop \
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
}

sed_escape() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

# demo_render TEMPLATE OUT STORE RUNDIR [LISTEN]: @MODULE@, @STORE@, @RUN@
# replaced; LISTEN (host:port) instead of the template's 127.0.0.1:8080
demo_render() {
    local listen=${5:-$addr}
    sed -e "s|@MODULE@|$(sed_escape "$module")|g" \
        -e "s|@STORE@|$(sed_escape "$3")|g" \
        -e "s|@RUN@|$(sed_escape "$4")|g" \
        -e "s|listen 127\.0\.0\.1:8080;|listen $listen;|" \
        "$1" > "$2"
}

fail_start() {
    echo "$me: $*" >&2
    echo "---- tail $errlog" >&2
    tail -20 "$errlog" >&2 2>/dev/null || true
    exit 1
}

# Any HTTP answer from a worker will do: GET /admin/ is the dashboard
# ("/" would log "index.html is not found").  demo_wait_http PID [URL]
demo_wait_http() {
    local deadline=$((SECONDS + 15)) url=${2:-$base}
    until [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url/admin/" \
               || true)" != 000 ]; do
        kill -0 "$1" 2>/dev/null || fail_start "nginx exited during start"
        [ "$SECONDS" -lt "$deadline" ] \
            || fail_start "nginx does not answer on ${url#http://}"
        sleep 0.2
    done
}

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

demo_account() {
    local org
    key=
    if [ -s "$run/demo-key" ]; then
        key=$(cat "$run/demo-key")
        http GET /v1/balance '' -H "Authorization: Bearer $key"
        if [ "$code" = 200 ]; then
            echo "$me: reusing the demo key in .run/demo-key"
        else
            echo "$me: .run/demo-key is not accepted ($code); creating a new account"
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
        echo "$me: created account $org (credit 100.00) and a full key"
    fi
}

# demo_banner WHAT STORE LOGS: WHAT says what runs (e.g. "nginx pid 1"),
# STORE where the store is, LOGS where the error and access logs are
demo_banner() {
    cat <<MSG

ModelRoute demo on $base ($1)
  API key:   $key   (in .run/demo-key)
  store:     $2     error log: $3/error.log
  admin API: $base/admin/ (loopback only)
  dashboard: $base/admin/   (open it in a browser)
  metrics:   $base/admin/metrics
  health:    $base/admin/health
  access log (JSON, with \$modelroute_* variables): $3/access.log

In another terminal, from $top (see README.md, "Walk-through"):

  KEY=\$(cat .run/demo-key)
  curl -s -X POST $base/v1/executions \\
    -H "Authorization: Bearer \$KEY" -H 'Content-Type: application/json' \\
    -d '{"model": "demo-chat", "input": {"prompt": "Hello"}, "idempotency_key": "order-1-step-1"}'
  curl -s $base/v1/balance -H "Authorization: Bearer \$KEY"

Ctrl-C stops nginx.
MSG
}
