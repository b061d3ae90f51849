#!/usr/bin/env bash
# ModelRoute for nginx: build, run the demo, run the tests.
#
#   ./build.sh              install what is missing, build the module
#   ./build.sh run          build, then run nginx with conf/ on 127.0.0.1:8080
#                           (MR_STORE=postgres: on a private PostgreSQL
#                           cluster in .run/pg)
#   ./build.sh cluster      build, then run the demo as a fleet: a private
#                           PostgreSQL in .run/pg, three nodes, a load
#                           balancer on 127.0.0.1:8080 (conf/run-cluster.sh)
#   ./build.sh test         build, then run every test (prove -r t)
#   ./build.sh test-pg      build, then run every test on PostgreSQL (a
#                           private cluster per test file; files about
#                           LMDB itself are skipped, saying so)
#   ./build.sh pg-migrate CONNINFO
#                           apply the PostgreSQL store's migrations (sql/)
#   ./build.sh bench        build, then run the benchmarks in bench/
#   ./build.sh bench-cost   build, then bench/cost.sh: CPU per create, per
#                           execution, per delivery, by stage (perf)
#   ./build.sh bench-pg     build, then bench/pg.sh: both stores side by
#                           side, on a private PostgreSQL cluster
#   ./build.sh bench-fleet  build, then bench/fleet.sh: 1, 2 and 3 nodes on
#                           one private PostgreSQL cluster, completed/s
#   ./build.sh bench-soak   build, then run the soak benchmark (bench/soak.sh:
#                           a million executions, about 20 minutes;
#                           BENCH_SOAK_EXECUTIONS=20000 for a short run)
#   ./build.sh deb          build the Debian package (build/*.deb), lintian
#   ./build.sh test-package build the package, then install, use and purge
#                           it on this machine (root; xt/package.t)
#   ./build.sh compile      build the module only, installing nothing (what
#                           debian/rules runs)
#   ./build.sh build-sanitize
#                           build with ASan + UBSan into build/sanitize/
#   ./build.sh test-sanitize
#                           build-sanitize, then run every test with that
#                           module; any sanitizer report fails the test file
#
# NGINX_SRC=/path/to/nginx-source builds against another nginx tree.
# MR_BUILD_DIR (default build/) is where the module is built; MR_CC_OPT
# and MR_LD_OPT are added to the compiler's and the linker's flags.
set -euo pipefail

top=$(cd "$(dirname "$0")" && pwd)
out="${MR_BUILD_DIR:-$top/build}"
module="$out/ngx_http_modelroute_module.so"

# The sanitizer build: a directory of its own, so that it never replaces the
# normal module.  UBSan stops at its first report, as ASan does.
san_out="$top/build/sanitize"
san_module="$san_out/ngx_http_modelroute_module.so"
san_flags="-fsanitize=address,undefined,float-cast-overflow"
san_flags="$san_flags -fno-sanitize-recover=undefined,float-cast-overflow"
san_flags="$san_flags -fno-omit-frame-pointer -g"
san_deps=(libasan8 libubsan1)    # gcc's runtimes (gcc depends on them)

deps=(nginx nginx-dev liblmdb-dev lmdb-utils libjansson-dev
      libcurl4-openssl-dev libssl-dev libpq-dev gcc make perl
      libtest-base-perl libnginx-mod-http-echo curl wrk
      libnginx-mod-http-lua lua-resty-core lua-cjson
      prometheus chromium    # the tests: promtool, a headless browser
      libio-socket-ssl-perl  # t/46: TLS clients of the production nginx
      postgresql-15 postgresql-client-15     # the PostgreSQL store's tests
      libfaketime)    # t/99: a PostgreSQL server whose clock is behind

# what ./build.sh deb needs on top (debian/control's Build-Depends are
# among the above)
deb_deps=(debhelper dpkg-dev lintian)

# install_deps [more packages]: deps and the packages named
install_deps() {
    local missing=() p
    for p in "${deps[@]}" "$@"; do
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
    # Debian starts the packaged nginx, prometheus and PostgreSQL services:
    # not ours (the tests start PostgreSQL clusters of their own).
    if command -v systemctl >/dev/null 2>&1; then
        for svc in nginx prometheus postgresql; do
            systemctl stop "$svc" >/dev/null 2>&1 || true
            systemctl disable "$svc" >/dev/null 2>&1 || true
        done
    fi
    [ -f /run/nginx.pid ] && kill "$(cat /run/nginx.pid)" 2>/dev/null || true
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
    fi
}

# build [output directory, compiler flags, linker flags]: the normal build
# without arguments
build() {
    local out="${1:-$out}" cc_opt="-Werror ${2:-${MR_CC_OPT:-}}"
    local ld_opt="${3:-${MR_LD_OPT:-}}"
    local module="$out/ngx_http_modelroute_module.so"
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
        if [ -n "$ld_opt" ]; then flags+=("--with-ld-opt=$ld_opt"); fi
        $cfg "${flags[@]}" --add-dynamic-module="$top" \
            --with-cc-opt="$cc_opt" > "$out/configure.log" 2>&1 || {
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

# The npm packages of package-lock.json (the OpenAPI linter and validator
# that t/41-openapi.t runs) in node_modules/; Debian's nodejs and npm
# where there is no node or npm (Debian 12's node 18 runs them).
install_node_deps() {
    local missing=()
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "build.sh: missing ${missing[*]}: run as root or:" \
                 "apt-get install ${missing[*]}" >&2
            exit 1
        fi
        echo "build.sh: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # once per package-lock.json
    cmp -s "$top/package-lock.json" "$top/node_modules/.mr-lock" && return 0
    echo "build.sh: npm ci"
    (cd "$top" && npm ci --ignore-scripts --no-audit --no-fund \
        --loglevel=error) || {
        echo "build.sh: npm ci failed" >&2
        exit 1
    }
    cp "$top/package-lock.json" "$top/node_modules/.mr-lock"
}

# The Debian package: dpkg-buildpackage in a copy of the working tree
# (build/deb/), so that the checkout gets no debian/ build files and the
# .deb is not written next to it; debian/rules builds the module with
# `./build.sh compile`. Then lintian on the result.
deb() {
    local version arch stage src name

    version=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
    arch=$(dpkg --print-architecture)
    name="libnginx-mod-http-modelroute_${version}_$arch"
    stage="$out/deb"
    src="$stage/libnginx-mod-http-modelroute-$version"

    rm -rf "$stage"
    mkdir -p "$src"
    (cd "$top" && tar --exclude=./build --exclude=./.run --exclude=./.git \
        --exclude=./node_modules -cf - .) | tar -xf - -C "$src"

    (cd "$src" && dpkg-buildpackage -us -uc -b) > "$stage/build.log" 2>&1 || {
        tail -40 "$stage/build.log" >&2
        echo "build.sh: dpkg-buildpackage failed (log: $stage/build.log)" >&2
        exit 1
    }

    # every tag counts, down to pedantic ones; what remains is explained
    # in debian/*.lintian-overrides and the README
    lintian --fail-on error,warning,info,pedantic --info --pedantic \
        --display-experimental "$stage/$name.changes" || {
        echo "build.sh: lintian found problems in $stage/$name.changes" >&2
        exit 1
    }

    cp "$stage/$name.deb" "$out/$name.deb"
    echo "build.sh: built $out/$name.deb"
    deb_file="$out/$name.deb"
}

run_demo() {
    exec "$top/conf/run-demo.sh" "$module"
}

cmd="${1:-build}"
case "$cmd" in
    build) install_deps; install_node_deps; build ;;
    compile) build ;;
    deb)   install_deps "${deb_deps[@]}"; deb ;;
    test-package)
           install_deps "${deb_deps[@]}"; deb
           cd "$top" && MR_DEB="$deb_file" prove -v xt/package.t ;;
    run)   install_deps; build; run_demo ;;
    cluster)
           install_deps; build
           exec "$top/conf/run-cluster.sh" "$module" ;;
    test)  install_deps; install_node_deps; build
           # no module, no tests: a failure, never a green run of skips
           [ -f "$module" ] || { echo "build.sh: no $module" >&2; exit 1; }
           cd "$top" && MR_MODULE="$module" prove -r t ;;
    test-pg)
           install_deps; install_node_deps; build
           [ -f "$module" ] || { echo "build.sh: no $module" >&2; exit 1; }
           cd "$top" && MR_STORE=postgres MR_MODULE="$module" prove -r t ;;
    pg-migrate)
           [ $# -eq 2 ] || {
               echo "usage: $0 pg-migrate CONNINFO" >&2; exit 2; }
           exec "$top/tools/pg-migrate" "$2" ;;
    build-sanitize)
           install_deps "${san_deps[@]}"
           build "$san_out" "$san_flags" "$san_flags" ;;
    test-sanitize)
           install_deps "${san_deps[@]}"; install_node_deps
           build "$san_out" "$san_flags" "$san_flags"
           [ -f "$san_module" ] || {
               echo "build.sh: no $san_module" >&2; exit 1; }
           # nginx is not built with ASan: the harness preloads its runtime
           asan=$(gcc -print-file-name=libasan.so)
           if [ ! -f "$asan" ]; then
               echo "build.sh: no ASan runtime (libasan.so)" >&2
               exit 1
           fi
           cd "$top" && MR_MODULE="$san_module" MR_SANITIZE="$asan" \
               prove -r t ;;
    bench) install_deps linux-perf; build
           rc=0
           "$top/bench/run.sh" "$module" || rc=1
           "$top/bench/webhooks.sh" "$module" || rc=1
           "$top/bench/dispatch.sh" "$module" || rc=1
           "$top/bench/cost.sh" "$module" || rc=1
           exit $rc ;;
    bench-cost)
           install_deps linux-perf; build
           exec "$top/bench/cost.sh" "$module" ;;
    bench-pg)
           install_deps; build
           exec "$top/bench/pg.sh" "$module" ;;
    bench-fleet)
           install_deps; build
           exec "$top/bench/fleet.sh" "$module" ;;
    bench-soak)
           install_deps; build
           exec "$top/bench/soak.sh" "$module" ;;
    *)     echo "usage: $0 [build|run|cluster|test|test-pg|pg-migrate CONNINFO|bench|bench-pg|bench-fleet|"\
                "bench-cost|bench-soak|deb|test-package|compile|build-sanitize|test-sanitize]" >&2
           exit 2 ;;
esac
