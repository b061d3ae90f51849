#!/usr/bin/env bash
# ModelRoute for nginx: build, run the demo, run the tests.
#
#   ./build.sh          install what is missing, build the module
#   ./build.sh run      build, then run nginx with conf/ on 127.0.0.1:8080
#   ./build.sh test     build, then run every test (prove -r t)
#   ./build.sh bench    build, then run the benchmarks in bench/
#
# NGINX_SRC=/path/to/nginx-source builds against another nginx tree.
set -euo pipefail

top=$(cd "$(dirname "$0")" && pwd)
out="$top/build"
module="$out/ngx_http_modelroute_module.so"

deps=(nginx nginx-dev liblmdb-dev lmdb-utils libjansson-dev
      libcurl4-openssl-dev libssl-dev gcc make perl libtest-base-perl
      libnginx-mod-http-echo curl wrk
      libnginx-mod-http-lua lua-resty-core lua-cjson)

install_deps() {
    local missing=() p
    for p in "${deps[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null \
            | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "build.sh: missing packages: ${missing[*]}" >&2
        echo "build.sh: run as root or: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "build.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the packaged nginx service: it is not ours.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl stop nginx >/dev/null 2>&1 || true
        systemctl disable nginx >/dev/null 2>&1 || true
    fi
    [ -f /run/nginx.pid ] && kill "$(cat /run/nginx.pid)" 2>/dev/null || true
}

build() {
    local src="${NGINX_SRC:-/usr/share/nginx/src}" tree
    local flags=()

    # a tree of its own: builds running side by side do not collide
    mkdir -p "$out"
    rm -rf "$out/nginx-src"
    tree=$(mktemp -d "$out/nginx-src.XXXXXX")
    cp -a "$src/." "$tree"
    if [ -f "$tree/conf_flags" ]; then
        # shellcheck disable=SC1091
        . "$tree/conf_flags"
        flags=("${NGX_CONF_FLAGS[@]}")
    fi
    (
        cd "$tree"
        if [ -x ./configure ]; then cfg=./configure; else cfg=./auto/configure; fi
        $cfg "${flags[@]}" --add-dynamic-module="$top" \
            --with-cc-opt="-Werror" > "$out/configure.log" 2>&1 || {
            tail -20 "$out/configure.log" >&2
            exit 1
        }
        make -f objs/Makefile modules > "$out/make.log" 2>&1 || {
            grep -E -A3 ': (error|warning)|undefined' "$out/make.log" | head -60 >&2
            exit 1
        }
    )
    # rename, not overwrite: running nginx processes keep their mapping
    cp "$tree/objs/ngx_http_modelroute_module.so" "$module.tmp.$$"
    mv -f "$module.tmp.$$" "$module"
    rm -rf "$tree"
    echo "build.sh: built $module"
}

run_demo() {
    exec "$top/conf/run-demo.sh" "$module"
}

cmd="${1:-build}"
case "$cmd" in
    build) install_deps; build ;;
    run)   install_deps; build; run_demo ;;
    test)  install_deps; build
           # no module, no tests: a failure, never a green run of skips
           [ -f "$module" ] || { echo "build.sh: no $module" >&2; exit 1; }
           cd "$top" && MR_MODULE="$module" prove -r t ;;
    bench) install_deps; build
           rc=0
           "$top/bench/run.sh" "$module" || rc=1
           "$top/bench/webhooks.sh" "$module" || rc=1
           "$top/bench/dispatch.sh" "$module" || rc=1
           exit $rc ;;
    *)     echo "usage: $0 [build|run|test|bench]" >&2; exit 2 ;;
esac
