# Prometheus metrics: the exposition passes `promtool check metrics`
# (promtool must be installed: ./build.sh installs Debian's prometheus);
# executions created, finished by model and status, replays, error answers
# by code (the API's and nginx's own refusals), dispatch attempts by route
# and outcome against the store's route counters, breaker and in-flight
# gauges against /admin/routes, webhook attempts by outcome and the
# backlog, open holds and their amount against the accounts, the store's
# commits and size, the histograms' counts; numbers exact though both
# workers did the work; labels never carry ids; a reload keeps the
# counters; modelroute_metrics serves the same at a location of its own.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use MR::Test qw(:all);
use MR::Receiver qw(:all);
use MR::Metrics qw(:all);

ok(promtool(), 'promtool is installed (Debian package prometheus)')
    or diag 'install it: ./build.sh installs what the tests need';

my $http = <<'EOF';
modelroute_store %%STORE%%;
modelroute_webhook_allow_private on;
modelroute_webhook_retry 1s;
modelroute_sweep_interval 200ms;

modelroute_route ok  /providers/ok  protocol=openai_chat;
modelroute_route bad /providers/bad protocol=openai_chat
                 breaker=2 breaker_reset=1h;

modelroute_model good   per_request=0.01 routes=ok;
modelroute_model broken per_request=0.01 routes=bad attempts=2;
modelroute_model idle   per_request=0.01;
%%EXTRA%%
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; client_max_body_size 4k; }
    location /admin/ { modelroute_admin; }
    location = /metrics { modelroute_metrics; }
}
server {
    modelroute_dispatch;
    location /providers/ok  { internal; modelroute_simulator; }
    location /providers/bad {
        internal;
        modelroute_simulator failure_rate=1 failure_status=503;
    }
}
EOF

(my $conf = $http) =~ s/%%EXTRA%%\n//;
my $t = MR::Test->new(http => $conf, access_log => 1);
$t->start;
my $rc = MR::Receiver->new;
$rc->start;

sub scrape {
    my ($path) = @_;
    my $r = $t->req(GET => $path // '/admin/metrics');
    is($r->{status}, 200, "GET " . ($path // '/admin/metrics')) or return {};
    return parse_metrics($r->{body});
}

sub promtool_ok {
    my ($name) = @_;
    my $r = $t->req(GET => '/admin/metrics');
    like($r->{headers}{'content-type'} // '', qr{^text/plain; version=0\.0\.4},
        "$name: the text exposition's Content-Type");
    my ($ok, $out) = promtool_check($r->{body});
    ok($ok, "$name: promtool check metrics") or diag $out;
    unlike($r->{body}, qr/\b(?:org|exec|key|dlv|evt|wh)_[0-9a-f]{8}/,
        "$name: no id in any label");
    return $r->{body};
}

sub terminal {
    my ($key, $id) = @_;
    my $e;
    wait_for(sub {
        $e = $t->get_exec($key, $id)->{json};
        $e && $e->{status} =~ /^(COMPLETED|FAILED|CANCELLED|EXPIRED)$/;
    }, 20);
    return $e // {};
}

promtool_ok('empty');

my $m0 = scrape();
is(metric($m0, 'modelroute_executions_created_total', model => 'good'), 0,
    'nothing created yet');
is(metric($m0, 'modelroute_holds_open'), 0, 'no open hold');

# ---- executions that complete, from connections spread over both workers

my $acct = $t->new_account(credit => '50.00');
my $key = $acct->{key};
my @good;
for my $round (1 .. 5) {
    my @r = $t->parallel(10, sub {
        my $r = $t->create_exec($key, $t->exec_body(model => 'good'));
        return [$r->{status}, $r->{json}{id}];
    });
    push @good, map { $_->[1] } grep { ref $_ eq 'ARRAY' && $_->[0] == 202 }
        @r;
    my %pids = map { (split ' ', $_)[0] => 1 }
        grep { m{ 202 POST /v1/executions } } $t->access_log_lines;
    last if keys %pids >= 2;
}
my %pids = map { (split ' ', $_)[0] => 1 }
    grep { m{ 202 POST /v1/executions } } $t->access_log_lines;
cmp_ok(scalar keys %pids, '>=', 2, 'both workers created executions');
my $n_good = @good;
cmp_ok($n_good, '>=', 10, "$n_good executions of good");
is(terminal($key, $_)->{status}, 'COMPLETED', "$_ completed")
    for $good[0], $good[-1];
ok(wait_for(sub {
    !grep { terminal($key, $_)->{status} ne 'COMPLETED' } @good }, 30),
    'every good execution completed');

# ---- one that fails after two attempts (the breaker opens), one at once

my $b1 = $t->create_exec($key, $t->exec_body(model => 'broken'))->{json}{id};
is(terminal($key, $b1)->{status}, 'FAILED', 'broken: FAILED');
my $b2 = $t->create_exec($key, $t->exec_body(model => 'broken'))->{json}{id};
my $e2 = terminal($key, $b2);
is($e2->{status}, 'FAILED', 'broken again: FAILED');
is(scalar @{ $e2->{attempts} // [] }, 0, 'no attempt: the breaker is open');

# ---- no routes: cancelled, expired, open; a replay

my $body_open = $t->exec_body(model => 'idle');
my $open = $t->create_exec($key, $body_open)->{json}{id};
my $c = $t->create_exec($key, $t->exec_body(model => 'idle'))->{json}{id};
is($t->req(POST => "/v1/executions/$c/cancel", auth($key))->{status}, 200,
    'cancel');
my $x = $t->create_exec($key, $t->exec_body(model => 'idle',
    timeout_seconds => 1))->{json}{id};
is(terminal($key, $x)->{status}, 'EXPIRED', 'expired');
my $rp = $t->create_exec($key, $body_open);
is($rp->{headers}{'idempotent-replayed'}, 'true', 'a replay');

my $m = scrape();
is(metric($m, 'modelroute_executions_created_total', model => 'good'),
    $n_good, "created{good} = $n_good, summed over both workers");
is(metric($m, 'modelroute_executions_created_total', model => 'broken'),
    2, 'created{broken} = 2');
is(metric($m, 'modelroute_executions_created_total', model => 'idle'), 3,
    'created{idle} = 3 (the replay is not one)');
is(metric($m, 'modelroute_idempotent_replays_total'), 1, 'one replay');
my %want = (
    'good COMPLETED' => $n_good, 'good FAILED' => 0,
    'broken FAILED' => 2, 'broken COMPLETED' => 0,
    'idle CANCELLED' => 1, 'idle EXPIRED' => 1, 'idle COMPLETED' => 0,
);
for my $k (sort keys %want) {
    my ($model, $status) = split ' ', $k;
    is(metric($m, 'modelroute_executions_finished_total',
        model => $model, status => $status), $want{$k},
        "finished{$model,$status} = $want{$k}");
}

# histograms: one observation per terminal execution, cumulative buckets
for my $s (qw(COMPLETED FAILED CANCELLED EXPIRED)) {
    my $n = msum($m, 'modelroute_executions_finished_total', status => $s);
    is(metric($m, 'modelroute_execution_duration_seconds_count',
        status => $s), $n, "duration_seconds_count{$s} = $n");
    is(metric($m, 'modelroute_execution_duration_seconds_bucket',
        status => $s, le => '+Inf'), $n, "its +Inf bucket too");
}
is(metric($m, 'modelroute_execution_added_seconds_count'), $n_good + 1,
    'added_seconds: one per execution ended by a provider\'s answer');
# to the microsecond, with buckets under a millisecond: most answers are
# committed within one.  Counted in whole ms (before), the sum was a
# multiple of 0.001 and no observation fell between two whole ms (in
# the buckets 0.25-0.5, 0.5-0.75, 1-1.5 or 2-3 ms); now one of the two
# fails only by chance (the sum a whole number of ms: 1 in 1,000) while
# every observation lies outside those buckets as well
my $added_us = sprintf '%.0f',
    (metric($m, 'modelroute_execution_added_seconds_sum') // 0) * 1e6;
my %le = map { $_ => metric($m, 'modelroute_execution_added_seconds_bucket',
    le => $_) // 0 } qw(0.00025 0.0005 0.00075 0.001 0.0015 0.002 0.003);
my $between = $le{'0.00075'} - $le{'0.00025'} + $le{'0.0015'} - $le{'0.001'}
    + $le{'0.003'} - $le{'0.002'};
ok(defined metric($m, 'modelroute_execution_added_seconds_bucket',
    le => '0.00025'), 'added_seconds: a bucket of 250 us');
ok($added_us > 0 && ($added_us % 1000 != 0 || $between > 0),
    "... observed to the microsecond (sum $added_us us, $between between "
    . 'whole ms)');
cmp_ok(metric($m, 'modelroute_execution_duration_seconds_bucket',
    status => 'EXPIRED', le => '0.5') // -1, '==', 0,
    'the expired one took at least its second');
is(metric($m, 'modelroute_execution_duration_seconds_bucket',
    status => 'EXPIRED', le => '5'), 1, '... and less than 5 s');

# ---- holds: the store's state
is(metric($m, 'modelroute_holds_open'), 1, 'one open hold');
my $accts = $t->admin(GET => '/accounts?limit=100')->{json}{data} // [];
my $held = 0;
$held += micros($_->{held}) for @$accts;
is(micros(metric_text($m, 'modelroute_holds_open_dollars')), $held,
    'open holds amount = the accounts\' held sum');
is($held, 12_000, '... which is the open execution\'s hold');
is(metric($m, 'modelroute_accounts'), scalar @$accts, 'accounts');

sub metric_text {
    my ($mm, $name) = @_;
    my $v = metric($mm, $name) // 0;
    return sprintf '%.6f', $v;
}

# ---- dispatch: attempts against the store's route counters
my $routes = $t->admin(GET => '/routes')->{json}{data} // [];
my %route = map { $_->{name} => $_ } @$routes;
is(metric($m, 'modelroute_dispatch_attempts_total', route => 'ok',
    outcome => 'succeeded'), $n_good, "attempts{ok,succeeded} = $n_good");
is(metric($m, 'modelroute_dispatch_attempts_total', route => 'bad',
    outcome => 'failed'), 2, 'attempts{bad,failed} = 2');
for my $name (qw(ok bad)) {
    is(msum($m, 'modelroute_dispatch_attempts_total', route => $name),
        $route{$name}{attempts}, "attempts of $name = /admin/routes");
    is(metric($m, 'modelroute_route_in_flight', route => $name),
        $route{$name}{in_flight}, "in flight on $name = /admin/routes");
    for my $st (qw(closed half_open open)) {
        is(metric($m, 'modelroute_route_breaker', route => $name,
            state => $st), $route{$name}{breaker} eq $st ? 1 : 0,
            "breaker{$name,$st} agrees with /admin/routes");
    }
}
is($route{bad}{breaker}, 'open', 'the bad route\'s breaker is open');

# ---- errors by code, the API's and nginx's own
my %codes = (NOT_FOUND => 1, UNAUTHORIZED => 1, INPUT_VALIDATION_ERROR => 1,
    METHOD_NOT_ALLOWED => 1, PAYLOAD_TOO_LARGE => 1);
my $before = scrape();
is($t->req(GET => '/v1/executions/exec_' . ('0' x 44), auth($key))
    ->{status}, 404, 'an unknown execution: 404');
is($t->req(GET => '/v1/balance', auth('sk_nope'))->{status}, 401,
    'a malformed key: 401');
is($t->create_exec($key, { model => 'good' })->{status}, 400,
    'a create without input: 400');
is($t->req(DELETE => '/v1/balance', auth($key))->{status}, 405,
    'DELETE /v1/balance: 405');
is($t->req(POST => '/v1/executions',
    { %{ auth($key) }, 'Content-Type' => 'application/json' },
    '{"x":"' . ('a' x 8000) . '"}')->{status}, 413,
    '413 from client_max_body_size');
my $after = scrape();
for my $code (sort keys %codes) {
    is(metric($after, 'modelroute_errors_total', code => $code)
        - metric($before, 'modelroute_errors_total', code => $code),
        $codes{$code}, "errors{$code} + $codes{$code}");
}
is(msum($after, 'modelroute_errors_total')
    - msum($before, 'modelroute_errors_total'), 5, 'and no other error');

# ---- webhooks: delivered, retrying then failed, and the backlog
$rc->set('/fail', status => 500);
$rc->set('/slow', delay => 4);
my $wacct = $t->new_account(credit => '1.00');
my %ep;
for my $p (qw(ok fail slow)) {
    my $r = wh_create($t, $wacct->{key}, { url => $rc->url("/$p") });
    is($r->{status}, 201, "endpoint $p") or diag $r->{body};
    $ep{$p} = $r->{json}{id};
}
sub test_event {
    my ($p) = @_;
    my $r = $t->req(POST => "/v1/webhooks/endpoints/$ep{$p}/test",
        auth($wacct->{key}));
    ok($r->{status} >= 200 && $r->{status} < 300, "test event to $p")
        or diag $r->{body};
}
test_event('ok');
test_event('fail');
ok(wait_for(sub {
    my $d = $t->admin(GET => '/deliveries')->{json}{data} // [];
    grep { $_->{status} eq 'failed' && $_->{attempts} == 2 } @$d;
}, 20), 'the failing delivery failed after its retry');
ok(wait_for(sub { $rc->count(path => '/ok') >= 1 }, 10), 'delivered');
my $mw;
ok(wait_for(sub {
    $mw = scrape();
    metric($mw, 'modelroute_webhook_deliveries_total',
        outcome => 'delivered') == 1
}, 10), 'deliveries{delivered} = 1');
is(metric($mw, 'modelroute_webhook_deliveries_total', outcome => 'retrying'),
    1, 'deliveries{retrying} = 1');
is(metric($mw, 'modelroute_webhook_deliveries_total', outcome => 'failed'),
    1, 'deliveries{failed} = 1');
is(metric($mw, 'modelroute_webhook_backlog'), 0, 'no backlog');

test_event('slow');
ok(scalar $rc->wait_requests(1, path => '/slow', timeout => 10),
    'the slow receiver has the delivery');
is(metric(scrape(), 'modelroute_webhook_backlog'), 1,
    'backlog 1 while it is in flight');
ok(wait_for(sub { metric(scrape(), 'modelroute_webhook_backlog') == 0 }, 15),
    'backlog 0 once it is answered');

# ---- the store
$m = scrape();
my $commits = metric($m, 'modelroute_store_commits_total', result => 'ok');
cmp_ok($commits, '>', $n_good, 'store commits counted');
is(metric($m, 'modelroute_store_commits_total', result => 'failed'), 0,
    'no failed commit');
my $dc = metric($m, 'modelroute_store_commit_duration_seconds_count');
my $oc = metric($m, 'modelroute_store_commit_operations_count');
# read in this order in one answer, while the sweepers may commit
ok($commits <= $dc && $dc <= $oc && $oc - $commits < 10,
    'one duration and one operations count per commit')
    or diag "commits $commits, durations $dc, ops $oc";
cmp_ok(metric($m, 'modelroute_store_commit_operations_sum'), '>=', $oc,
    'at least one operation per commit');
my $size = metric($m, 'modelroute_store_size_bytes');
my $map = metric($m, 'modelroute_store_map_size_bytes');
if ($t->backend eq 'lmdb') {
    is($map, 1024 * 1024 * 1024, 'map size: the default 1g');
    ok($size > 0 && $size <= $map, 'store size');
    ok(abs(metric($m, 'modelroute_store_map_used_ratio') - $size / $map)
        < 1e-6, 'map used ratio');
} else {
    # PostgreSQL: the database's size; no map
    is($map, 0, 'map size: none (PostgreSQL)');
    ok($size > 0, 'store size: the database\'s');
    is(metric($m, 'modelroute_store_map_used_ratio'), 0,
        'map used ratio: none');
}

# every histogram's buckets are cumulative
my %hist;
for my $k (keys %$m) {
    next unless $k =~ /^(\w+)_bucket\{(.*)\}$/;
    my ($name, $labels) = ($1, $2);
    my ($le) = $labels =~ /le="([^"]+)"/;
    (my $rest = $labels) =~ s/,?le="[^"]+"//;
    push @{ $hist{"$name $rest"} }, [$le eq '+Inf' ? 9**9**9 : $le, $m->{$k}];
}
my @bad = grep {
    my @b = sort { $a->[0] <=> $b->[0] } @{ $hist{$_} };
    grep { $b[$_][1] < $b[$_ - 1][1] } 1 .. $#b;
} keys %hist;
is_deeply(\@bad, [], 'histogram buckets never decrease');

my $full = promtool_ok('after the work');

# ---- modelroute_metrics at a location of its own
my $own = $t->req(GET => '/metrics');
is($own->{status}, 200, 'modelroute_metrics location');
my $mo = parse_metrics($own->{body});
is(metric($mo, 'modelroute_executions_created_total', model => 'good'),
    $n_good, '... the same counters');
is($t->req(POST => '/metrics')->{status}, 405, '... GET only');

# the counters are the same whichever worker answers
my %seen;
for (1 .. 8) {
    my $s = scrape('/metrics');
    $seen{ join ',', map { metric($s, @$_) // 'undef' }
        ['modelroute_executions_created_total', model => 'good'],
        ['modelroute_executions_finished_total', model => 'idle',
            status => 'CANCELLED'],
        ['modelroute_idempotent_replays_total'],
        ['modelroute_webhook_deliveries_total', outcome => 'delivered'] } = 1;
}
is(scalar keys %seen, 1, 'eight scrapes, one set of numbers');

# ---- a reload (with one model more) keeps every counter
(my $conf2 = $http) =~ s/%%EXTRA%%/modelroute_model extra per_request=0.01;/;
$t->write_config(http => $conf2);
$t->reload;
my $mr = scrape();
is(metric($mr, 'modelroute_executions_created_total', model => 'good'),
    $n_good, 'after a reload: created{good} kept');
is(metric($mr, 'modelroute_executions_created_total', model => 'extra'), 0,
    '... and the new model counts from 0');
is(metric($mr, 'modelroute_idempotent_replays_total'), 1,
    '... replays kept');
my $x2 = $t->create_exec($key, $t->exec_body(model => 'extra'));
is($x2->{status}, 202, 'a create of the new model');
is(metric(scrape(), 'modelroute_executions_created_total', model => 'extra'),
    1, '... counted under its name');
promtool_ok('after the reload');

$rc->stop;
$t->done;
