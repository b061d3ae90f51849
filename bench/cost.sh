#!/usr/bin/env bash
# ModelRoute: what an execution costs in CPU, stage by stage.
#
#   bench/cost.sh /path/to/ngx_http_modelroute_module.so
#
# One machine, one run, one nginx (2 workers, durability full, a fresh
# store under build/). Each phase drives one kind of work with wrk
# (-c BENCH_CONNECTIONS) for BENCH_SECONDS, waits until all of it is done
# (every accepted execution COMPLETED, every event delivered), and divides
# the CPU the nginx workers used (user + system, from /proc, every thread:
# the event loop and the store's commit thread apart) by the work done:
#   raw      POST to a plain `return 202` of an execution-sized body: what
#            nginx itself costs per request (the floor of every stage);
#   create   POST /v1/executions of a model without routes: a durable
#            create, the execution stays PENDING;
#   sim      the same for a model routed to the simulator in-process:
#            create + claim + dispatch request + subrequest + adapter +
#            settle;
#   up       the same through an upstream{} (keepalive, loopback) whose
#            server is the simulator in the same nginx: + one HTTP exchange
#            per attempt, both of its sides;
#   webhook  POST /v1/webhooks/endpoints/{id}/test: an event made, claimed,
#            signed, sent to a receiver (`return 200`, same nginx) and
#            recorded.
#   provider POST straight to the simulator's server: what the provider side
#            of "up" costs (it runs in the same nginx);
#   inflight BENCH_INFLIGHT (1000) executions at once at a provider that
#            answers after BENCH_SLOW_MS (10000): the workers' private
#            memory (RssAnon) per execution in flight.
# Then the stages by difference (create - raw, sim - create, up - sim), the
# commits per unit of work and the commit thread's CPU per commit, the mean
# commit (duration, operations), and (with perf, BENCH_PERF=1, the default
# when perf is installed) where the CPU of one phase goes (BENCH_PERF_PHASE,
# "up": run once more under perf): the workers' samples by library and the
# top symbols; with BENCH_PERF_CALLGRAPH=1 (call graphs, perf's DWARF
# unwinding: a larger and slower record) also the commit thread's samples
# by part (fdatasync, page writes, LMDB, the module's operations) and the
# samples of jansson and libc by the module's function that called them.
#
# Environment: BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_THREADS (2),
# BENCH_PHASES ("inflight raw provider create sim up webhook"), BENCH_PERF
# (1 if perf exists), BENCH_PERF_PHASE (up), BENCH_PERF_CALLGRAPH (0),
# BENCH_INFLIGHT, BENCH_SLOW_MS,
# BENCH_DRAIN (120), BENCH_PORT, BENCH_TMPDIR (build/), BENCH_KEEP=1,
# MR_NGINX (/usr/sbin/nginx).
#
# Exit code: 1 if anything answered non-2xx, work did not finish, the ledger
# check failed or the error log has alerts.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
bench_init bench-cost "$@"
mkdir -p "$tmp/ids"

phases=${BENCH_PHASES:-inflight raw provider create sim up webhook}
drain=${BENCH_DRAIN:-120}
perf_on=${BENCH_PERF:-$(command -v perf >/dev/null && echo 1 || echo 0)}
perf_phase=${BENCH_PERF_PHASE:-up}
perf_cg=()
[ "${BENCH_PERF_CALLGRAPH:-0}" != 1 ] || perf_cg=(--call-graph dwarf,16384)
port=${BENCH_PORT:-$(free_port)}
uport=$(free_port)
rport=$(free_port)
base="http://127.0.0.1:$port"
slow_ms=${BENCH_SLOW_MS:-10000}
inflight_n=${BENCH_INFLIGHT:-1000}

# the same body as bench/run.sh's baseline (no quote, dollar or backslash)
raw_body='{"id":"exec_5f0c3b7e9a1d4e2f8b6c0a9d7e3f1b2c","object":"execution","status":"PENDING","model":"demo-chat","idempotency_key":"bench-17641063001234-1-123456","metadata":{},"webhook_url":null,"estimated_cost":"0.002","hold_amount":"0.01","cost":null,"result":null,"error":null,"attempts":[],"created_at":"2025-11-25T22:40:00.123Z","started_at":null,"completed_at":null,"expires_at":"2025-11-25T22:45:00.123Z","latency_ms":null}'

bench_conf "$(cat <<CONF
    modelroute_retention      off;
    modelroute_webhook_allow_private on;
    modelroute_dispatch_concurrency  1024;

    modelroute_route sim /providers/sim protocol=openai_chat;
    modelroute_route up  /providers/up  protocol=openai_chat;
    modelroute_route slow /providers/slow protocol=openai_chat;
    modelroute_model bench-create per_request=0.002 timeout=1h;
    modelroute_model bench-sim    per_request=0.002 routes=sim:sim-small;
    modelroute_model bench-up     per_request=0.002 routes=up:sim-small;
    modelroute_model bench-slow   per_request=0.002 routes=slow:sim-small;

    upstream simulator {
        server 127.0.0.1:$uport;
        keepalive 512;
    }

    server {
        listen 127.0.0.1:$port;

        location = /baseline {
            return 202 '$raw_body';
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

    server {
        modelroute_dispatch;

        location /providers/sim {
            internal;
            modelroute_simulator;
        }
        location /providers/slow {
            internal;
            modelroute_simulator latency=${slow_ms}ms;
        }
        location /providers/up {
            internal;
            proxy_pass http://simulator/v1/chat/completions;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }

    # the provider behind the upstream, and the webhook receiver
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
    server {
        listen 127.0.0.1:$rport;
        keepalive_requests 1000000;

        location /hook {
            return 200;
        }
    }
CONF
)"

bench_start "http://127.0.0.1:$uport/ping" 204
# the webhook phase's account has the endpoint (it takes every event: the
# executions' accounts have none, their executions make no deliveries)
bench_account bench-cost-webhook
wh_key=$key
http POST /v1/webhooks/endpoints \
    "{\"url\": \"http://127.0.0.1:$rport/hook\", \"events\": []}" -H "$auth"
expect 201 "POST /v1/webhooks/endpoints"
wh=$(grep -o 'wh_[0-9a-f]*' <<<"$body" | head -1)
[ -n "$wh" ] || die "no endpoint id in: $body"
bench_account bench-cost

# what the adapter sends for {"prompt": "hello"}, straight to the provider
cat > "$tmp/provider.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"sim-small","messages":[{"role":"user","content":"hello"}]}'
wrk.headers["Content-Type"] = "application/json"
LUA

workers=$(pgrep -P "$ngx" -f 'nginx: worker process' | tr '\n' ' ')
[ -n "$workers" ] || die "no worker processes"

echo "bench: nginx $("$nginx" -v 2>&1 | sed 's|.*/||'), ${BENCH_WORKERS:-2} workers, durability full," \
     "store on $(stat -f -c %T "$tmp"), $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1))," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "bench: per phase: wrk -t$threads -c$conns -d${seconds}s, then until all" \
     "of it is done; CPU = the workers' user + system time"

bad=0
hz=$(getconf CLK_TCK)

# cpu: "EVENT_LOOP_TICKS THREAD_TICKS" over the workers (a task whose id is
# its process's is the event loop; the others are the thread pool's)
cpu() {
    local p t ev=0 th=0 v
    for p in $workers; do
        for t in /proc/"$p"/task/*; do
            v=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "$t/stat")
            if [ "${t##*/}" = "$p" ]; then ev=$((ev + v)); else th=$((th + v)); fi
        done
    done
    echo "$ev $th"
}

# metric NAME_AND_LABELS: the sum of the matching samples in /admin/metrics
metric() {
    http GET /admin/metrics
    expect 200 "GET /admin/metrics"
    awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { printf "%d\n", s }' \
        <<<"$body"
}

metricf() {
    http GET /admin/metrics
    expect 200 "GET /admin/metrics"
    awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { printf "%.6f\n", s }' \
        <<<"$body"
}

done_of() {
    case $1 in
    raw|create|provider) echo 0 ;;
    sim|up)     metric "modelroute_executions_finished_total{model=\"bench-$1\",status=\"COMPLETED\"}" ;;
    webhook)    metric 'modelroute_webhook_deliveries_total{outcome="delivered"}' ;;
    esac
}

declare -A per ev_per th_per commits_per per_commit commit_ms commit_ops

run_phase() {
    local ph=$1 d0 c0 c1 cpu0 cpu1 ev th total non2xx accepted n want deadline
    local pp= s0 s1 o0 o1
    echo "bench: phase $ph${2:+ (again, under perf)} ..."
    d0=$(done_of "$ph")
    c0=$(metric 'modelroute_store_commits_total{result="ok"}')
    s0=$(metricf 'modelroute_store_commit_duration_seconds_sum')
    o0=$(metric 'modelroute_store_commit_operations_sum')
    read -r -a cpu0 <<<"$(cpu)"
    if [ "${2:-}" = profile ]; then
        perf record -q -F 499 ${perf_cg[@]+"${perf_cg[@]}"} \
            -p "$(tr ' ' ',' <<<"${workers% }")" \
            -o "$tmp/perf.data" -- sleep "$seconds" >/dev/null 2>&1 &
        pp=$!
    fi
    case $ph in
    raw)     wrk -t"$threads" -c"$conns" -d"${seconds}s" --timeout 5s \
                 -s "$here/post.lua" "$base" -- /baseline "$key" x ;;
    provider)
             wrk -t"$threads" -c"$conns" -d"${seconds}s" --timeout 5s \
                 -s "$tmp/provider.lua" "http://127.0.0.1:$uport/v1/chat/completions" ;;
    create|sim|up)
             wrk -t"$threads" -c"$conns" -d"${seconds}s" --timeout 5s \
                 -s "$here/post.lua" "$base" -- /v1/executions "$key" \
                 "$ph-$(date +%s)" "bench-$ph" ;;
    webhook) wrk -t"$threads" -c"$conns" -d"${seconds}s" --timeout 5s \
                 -s "$here/webhook_test.lua" "$base" -- \
                 "/v1/webhooks/endpoints/$wh/test" "$wh_key" "$tmp/ids/x" ;;
    esac > "$tmp/wrk-$ph.txt" 2>&1 \
        || { cat "$tmp/wrk-$ph.txt" >&2; die "wrk failed"; }
    [ -z "$pp" ] || wait "$pp" || true

    total=$(awk '/ requests in / { print $1 }' "$tmp/wrk-$ph.txt")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$tmp/wrk-$ph.txt")
    accepted=$((total - non2xx))
    if [ "$non2xx" -ne 0 ]; then
        echo "bench: !!! $ph: $non2xx answers were not 2xx !!!" >&2
        bad=1
    fi

    n=$accepted
    case $ph in
    sim|up|webhook)
        want=$((d0 + accepted))
        deadline=$((SECONDS + drain))
        until [ "$(done_of "$ph")" -ge "$want" ]; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "bench: !!! $ph: $(( $(done_of "$ph") - d0 )) of $accepted done in ${drain}s !!!" >&2
                bad=1
                break
            fi
            sleep 0.2
        done
        n=$(( $(done_of "$ph") - d0 )) ;;
    esac
    read -r -a cpu1 <<<"$(cpu)"
    c1=$(metric 'modelroute_store_commits_total{result="ok"}')
    s1=$(metricf 'modelroute_store_commit_duration_seconds_sum')
    o1=$(metric 'modelroute_store_commit_operations_sum')
    [ "$n" -gt 0 ] || die "$ph: nothing done"
    read -r commit_ms[$ph] commit_ops[$ph] <<<"$(awk -v c=$((c1 - c0)) \
        -v s="$(awk -v a="$s0" -v b="$s1" 'BEGIN { print b - a }')" -v o=$((o1 - o0)) '
        BEGIN { if (c > 0) printf "%.2f %.1f\n", s * 1000 / c, o / c; else print "- -" }')"

    ev=$(( cpu1[0] - cpu0[0] ))
    th=$(( cpu1[1] - cpu0[1] ))
    read -r per[$ph] ev_per[$ph] th_per[$ph] commits_per[$ph] per_commit[$ph] \
        <<<"$(awk -v ev="$ev" -v th="$th" -v n="$n" -v c=$((c1 - c0)) -v hz="$hz" '
        BEGIN { us = 1e6 / hz
                printf "%.1f %.1f %.1f %.3f %s\n", (ev + th) * us / n, ev * us / n,
                       th * us / n, c / n, c ? sprintf("%.0f", th * us / c) : "-" }')"
    echo "bench: $ph: $n done ($(awk -v n="$n" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }')/s in the wrk window);" \
         "CPU ${per[$ph]} µs each (event loop ${ev_per[$ph]}, commit thread ${th_per[$ph]});" \
         "${commits_per[$ph]} commits each, ${per_commit[$ph]} µs of the commit thread per commit;" \
         "a commit: ${commit_ms[$ph]} ms, ${commit_ops[$ph]} operations (means)"
}

# anon_kb: the workers' private memory (RssAnon, kB: the store's map is
# file-backed and shared, not counted)
anon_kb() {
    local p t=0 v
    for p in $workers; do
        v=$(awk '/^RssAnon:/ { print $2 }' /proc/"$p"/status)
        t=$((t + v))
    done
    echo "$t"
}

# inflight: BENCH_INFLIGHT executions parked at a provider that answers
# after slow_ms; the workers' private memory with them in flight against
# before (run it first: later phases leave freed heap that it would reuse)
inflight() {
    local a0 a1=0 n=0 peak=0 d0 want deadline
    echo "bench: phase inflight ($inflight_n executions, the provider answers after ${slow_ms} ms) ..."
    d0=$(metric 'modelroute_executions_finished_total{model="bench-slow",status="COMPLETED"}')
    a0=$(anon_kb)
    perl -MHTTP::Tiny -e '
        my ($base, $key, $n, $seed) = @ARGV;
        my @kids;
        for my $k (0 .. 9) {    # ten clients: all made within the latency
            my $pid = fork // die "fork: $!\n";
            if ($pid) { push @kids, $pid; next }
            my $h = HTTP::Tiny->new(keep_alive => 1, timeout => 10);
            for my $i (grep { $_ % 10 == $k } 1 .. $n) {
                my $r = $h->post("$base/v1/executions", {
                    headers => { "Authorization" => "Bearer $key",
                                 "Content-Type" => "application/json" },
                    content => qq({"model":"bench-slow",)
                               . qq("input":{"prompt":"hello"},)
                               . qq("idempotency_key":"$seed-$i"}) });
                $r->{status} == 202
                    or die "create: $r->{status} $r->{content}\n";
            }
            exit 0;
        }
        for (@kids) { waitpid($_, 0); $? == 0 or die "a client failed\n" }' "$base" "$key" "$inflight_n" "slow-$(date +%s)" \
        || die "inflight: the creates failed"
    deadline=$((SECONDS + slow_ms / 1000 - 2))
    while [ "$SECONDS" -lt "$deadline" ]; do
        n=$(metric 'modelroute_route_in_flight{route="slow"}')
        [ "$n" -le "$peak" ] || { peak=$n; a1=$(anon_kb); }
        [ "$peak" -lt "$inflight_n" ] || break
        sleep 0.2
    done
    [ "$peak" -gt 0 ] || die "inflight: nothing went in flight"
    mem_per=$(awk -v a="$a0" -v b="$a1" -v n="$peak" 'BEGIN { printf "%.1f", (b - a) / n }')
    echo "bench: inflight: $peak of $inflight_n in flight at once; the workers'" \
         "private memory $a0 -> $a1 kB: ${mem_per} kB per execution in flight"
    want=$((d0 + inflight_n))
    deadline=$((SECONDS + slow_ms / 1000 + drain))
    until [ "$(metric 'modelroute_executions_finished_total{model="bench-slow",status="COMPLETED"}')" -ge "$want" ]; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "bench: !!! inflight: not all completed !!!" >&2; bad=1; break; }
        sleep 0.5
    done
}

mem_per=
for ph in $phases; do
    if [ "$ph" = inflight ]; then inflight; else run_phase "$ph"; fi
done

# the profile: the phase once more, with perf (whose own cost would
# inflate the figures above)
if [ "$perf_on" = 1 ]; then
    keep=("${per[$perf_phase]:-}" "${ev_per[$perf_phase]:-}"
          "${th_per[$perf_phase]:-}" "${commits_per[$perf_phase]:-}"
          "${per_commit[$perf_phase]:-}" "${commit_ms[$perf_phase]:-}"
          "${commit_ops[$perf_phase]:-}")
    run_phase "$perf_phase" profile
    if [ -n "${keep[0]}" ]; then
        per[$perf_phase]=${keep[0]} ev_per[$perf_phase]=${keep[1]}
        th_per[$perf_phase]=${keep[2]} commits_per[$perf_phase]=${keep[3]}
        per_commit[$perf_phase]=${keep[4]} commit_ms[$perf_phase]=${keep[5]}
        commit_ops[$perf_phase]=${keep[6]}
    fi
fi

sub() { awk -v a="${per[$1]:-}" -v b="${per[$2]:-}" 'BEGIN { if (a == "" || b == "") print "-"; else printf "%.1f", a - b }'; }

echo
echo "bench: CPU per unit of work, µs (both cores' time; stages by difference):"
printf '    %-44s %10s\n' "stage" "µs"
[ -z "${per[raw]:-}" ]    || printf '    %-44s %10s\n' "nginx request + response (raw)" "${per[raw]}"
[ -z "${per[create]:-}" ] || printf '    %-44s %10s\n' "durable create (whole request)" "${per[create]}"
[ -z "${per[create]:-}" ] || printf '    %-44s %10s\n' "  of which the module (create - raw)" "$(sub create raw)"
[ -z "${per[create]:-}" ] || printf '    %-44s %10s\n' "  of which commit thread" "${th_per[create]}"
[ -z "${per[sim]:-}" ]    || printf '    %-44s %10s\n' "execution, in-process provider (sim)" "${per[sim]}"
[ -z "${per[sim]:-}" ]    || printf '    %-44s %10s\n' "  dispatch + settle (sim - create)" "$(sub sim create)"
[ -z "${per[up]:-}" ]     || printf '    %-44s %10s\n' "execution through upstream{} (up)" "${per[up]}"
[ -z "${per[up]:-}" ]     || printf '    %-44s %10s\n' "  the upstream HTTP exchange (up - sim)" "$(sub up sim)"
[ -z "${per[provider]:-}" ] || printf '    %-44s %10s\n' "the provider alone (HTTP + simulator)" "${per[provider]}"
[ -z "${per[provider]:-}" ] || [ -z "${per[up]:-}" ] \
    || printf '    %-44s %10s\n' "  the gateway's part of up (up - provider)" "$(sub up provider)"
[ -z "${per[webhook]:-}" ] || printf '    %-44s %10s\n' "webhook event made and delivered" "${per[webhook]}"
[ -z "$mem_per" ] || printf '    %-44s %10s\n' "private memory per execution in flight, kB" "$mem_per"
for ph in $phases; do
    [ -n "${per_commit[$ph]:-}" ] || continue
    [ "${commits_per[$ph]}" != 0.000 ] || continue
    printf '    %-44s %10s\n' "commit thread per commit ($ph)" "${per_commit[$ph]}"
done

if [ "$perf_on" = 1 ] && [ -s "$tmp/perf.data" ]; then
    echo
    echo "bench: phase $perf_phase: the workers' CPU by library (perf, 499 Hz), µs per execution:"
    perf report -i "$tmp/perf.data" --sort dso --stdio --no-children -g none 2>/dev/null \
        | awk -v per="${per[$perf_phase]}" '/^ *[0-9.]+%/ { p = $1; sub(/%/, "", p);
              if (n++ < 12) printf "    %6.2f%%  %7.1f µs  %s\n", p, p * per / 100, $2 }' 
    echo "bench: phase $perf_phase: top symbols:"
    perf report -i "$tmp/perf.data" --sort dso,sym --stdio --no-children -g none 2>/dev/null \
        | awk '/^ *[0-9.]+%/ && n++ < 25 { print "    " $0 }'
fi

if [ "$perf_on" = 1 ] && [ ${#perf_cg[@]} -gt 0 ] && [ -s "$tmp/perf.data" ]; then
    perf script -i "$tmp/perf.data" -F ip,sym,dso 2>/dev/null > "$tmp/perf.txt"
    echo "bench: phase $perf_phase: the commit thread's samples by part:"
    # a sample is a block of frames, the first its own; the part is the
    # first frame of these below mdb_txn_commit or mr_store_run
    awk 'BEGIN { RS = ""; FS = "\n" }
        { for (i = 2; i <= NF; i++) if ($i ~ /mr_store_batch_thread/) break
          if (i > NF) next
          n++; k = "other"
          for (i = 2; i <= NF; i++) {
              if ($i ~ /mdb_txn_commit/) {
                  k = "commit: other"
                  for (j = 1; j < i; j++) {
                      if ($j ~ /fdatasync|do_fsync/) { k = "commit: fdatasync"; break }
                      if ($j ~ /pwrite|writev|vfs_write/) { k = "commit: page writes"; break }
                  }
                  break
              }
              if ($i ~ /mr_store_run|mr_store_apply/) {
                  k = "operations: the module"
                  for (j = 1; j < i; j++) if ($j ~ / mdb_/) { k = "operations: LMDB"; break }
                  break
              }
          }
          c[k]++ }
        END { for (k in c) printf "    %5.1f%%  %s\n", 100 * c[k] / n, k
              printf "    (%d samples)\n", n }' "$tmp/perf.txt" | sort -rn
    echo "bench: phase $perf_phase: jansson's and libc's samples by the module's caller" \
         "(share of all the workers' samples):"
    awk 'BEGIN { RS = ""; FS = "\n" }
        { n++
          if ($1 ~ /libjansson/) lib = "jansson"; else if ($1 ~ /libc\.so/) lib = "libc"
          else next
          who = "(no module frame)"
          for (i = 2; i <= NF; i++)
              if (match($i, / mr_[a-z_0-9]+/)) { who = substr($i, RSTART + 1, RLENGTH - 1); break }
          c[lib " <- " who]++ }
        END { for (k in c) if (c[k] * 200 >= n) printf "    %5.1f%%  %s\n", 100 * c[k] / n, k }' \
        "$tmp/perf.txt" | sort -rn | head -15
fi

http GET "/admin/accounts/$org/verify"
expect 200 "GET /admin/accounts/$org/verify"
grep -q '"ok": *true' <<<"$body" || { echo "bench: !!! the ledger check failed: $body !!!" >&2; bad=1; }

if grep -E '\[(alert|crit|emerg)\]|exited on signal' "$tmp/logs/error.log" >&2; then
    echo "bench: !!! the error log has alerts !!!" >&2
    bad=1
fi

exit "$bad"
