# Webhook rules no other file pins down: the retry schedule (order and
# size of each step, and the default 2, 4, 8, 16, 30 minutes), the
# execution.failed event, an execution's webhook_url getting its terminal
# events and not execution.started, an endpoint created while an
# execution runs getting the events that follow, an event nobody can
# receive not being stored, and no proxy taken from the environment.
#
# The schedule is read from the server's own times: a failed attempt is
# recorded at `at` + latency_ms and its delivery is due again exactly one
# step later (next_attempt_at), so nothing here depends on how fast the
# machine is.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_webhook_allow_private on;
modelroute_webhook_retry 1s 3s 2s;
modelroute_webhook_timeout 10s;
modelroute_callback_url http://127.0.0.1:%%PORT%%/v1/callbacks;
modelroute_route sim  /p/sim  protocol=openai_chat;
modelroute_route fail /p/fail protocol=openai_chat;
modelroute_route job  /p/job  protocol=async;
modelroute_model m-ok   per_request=0.01 routes=sim;
modelroute_model m-fail per_request=0.01 routes=fail;
modelroute_model m-job  per_request=0.01 routes=job;
modelroute_model plain  per_request=0.01;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/sim  { internal; modelroute_simulator; }
    location /p/fail { internal;
                       modelroute_simulator failure_rate=1 failure_status=400; }
    location /p/job  { internal; proxy_pass http://127.0.0.1:$RPORT/job; }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;
$rc->set('/job', status => 202, json => { job_id => 'j' });

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub ms { sprintf '%.3f', $_[0] }

sub terminal {
    my ($key, $id) = @_;
    my $e = {};
    wait_for(sub {
        my $r = $t->get_exec($key, $id);
        $e = $r->{json} if $r->{status} == 200;
        $TERMINAL{ $e->{status} // '' };
    }, 20);
    return $e;
}

# The delivery's due time after its last attempt, less that attempt's
# end: the step the server applied (seconds, to the millisecond).
sub step_of {
    my ($d) = @_;
    my $a = $d->{attempts}[-1] // {};
    return (parse_rfc3339($d->{next_attempt_at} // '') // 0)
        - (parse_rfc3339($a->{at} // '') // 0) - ($a->{latency_ms} // 0) / 1000;
}

# Deliveries of an execution: "<destination> <event type>" in event order
# (ids sort by creation).
sub exec_events {
    my ($key, $id, $ep) = @_;
    return [ map { (defined $_->{endpoint_id} ? 'endpoint' : 'webhook_url')
            . " $_->{event_type}" }
        grep { !defined $ep || ($_->{endpoint_id} // '') eq $ep }
        sort { $a->{event_id} cmp $b->{event_id}
            || defined $b->{endpoint_id} <=> defined $a->{endpoint_id} }
        @{ wh_exec_deliveries($t, $key, $id) // [] } ];
}

# ---------------------------------------------------------------- schedule

# modelroute_webhook_retry 1s 3s 2s: three retries, each after its own
# step, in that order; then the delivery is failed.
{
    my $acc = $t->new_account(credit => '1.00');
    my $r = wh_create($t, $acc->{key}, { url => $rc->url('/sched') });
    is($r->{status}, 201, 'schedule: an endpoint');
    my $ep = $r->{json}{id} // 'wh_none';
    $rc->set('/sched', status => 500);
    my $ev = $t->req(POST => "/v1/webhooks/endpoints/$ep/test",
        auth($acc->{key}))->{json} // {};
    my @step = (1, 3, 2);
    for my $n (1 .. 3) {
        my $d = wait_delivery($t, $acc->{key}, $ep, $ev->{delivery_id} // '-',
            sub { @{ $_[0]{attempts} } >= $n }, 15);
        is(scalar @{ $d->{attempts} // [] }, $n, "schedule: attempt $n "
            . 'failed') or diag explain $d;
        is($d->{status}, 'pending', "schedule: pending after attempt $n");
        is(ms(step_of($d)), ms($step[$n - 1]), "schedule: retry $n is due "
            . "$step[$n - 1] s after attempt $n ended");
    }
    my $d = wait_delivery($t, $acc->{key}, $ep, $ev->{delivery_id} // '-',
        sub { $_[0]{status} ne 'pending' }, 20);
    is($d->{status}, 'failed', 'schedule: failed after the last step');
    my @at = @{ $d->{attempts} // [] };
    is(scalar @at, 4, 'schedule: 1 attempt + 3 retries');
    ok(!defined $d->{next_attempt_at}, 'schedule: next_attempt_at null');
    # and each retry was made no sooner than its step
    for my $i (1 .. $#at) {
        my $gap = (parse_rfc3339($at[$i]{at} // '') // 0)
            - (parse_rfc3339($at[$i - 1]{at} // '') // 0)
            - ($at[$i - 1]{latency_ms} // 0) / 1000;
        ok($gap >= $step[$i - 1] - 0.0005, "schedule: retry $i came "
            . sprintf('%.3f s after attempt %d (step %d s)', $gap, $i,
                $step[$i - 1]));
    }
    is($rc->count(path => '/sched'), 4, 'schedule: 4 requests');
}

# ---------------------------------------------------------------- failed

# execution.failed: to the endpoints, and to the execution's webhook_url,
# which gets the terminal event only (never execution.started); the same
# for execution.completed.
{
    my $acc = $t->new_account(credit => '1.00');
    my $r = wh_create($t, $acc->{key}, { url => $rc->url('/ev') });
    is($r->{status}, 201, 'events: an endpoint for every event');
    my $ep = $r->{json}{id} // 'wh_none';
    my $secret = $r->{json}{secret} // 'whsec_';
    my $default = $t->req(GET => '/v1/webhooks/default/secret',
        auth($acc->{key}))->{json}{secret} // 'whsec_';

    for my $c ([ 'm-fail', 'FAILED', 'execution.failed', '/u-failed' ],
        [ 'm-ok', 'COMPLETED', 'execution.completed', '/u-completed' ]) {
        my ($model, $status, $type, $path) = @$c;
        my $x = $t->create_exec($acc->{key}, $t->exec_body(model => $model,
            webhook_url => $rc->url($path)));
        is($x->{status}, 202, "$status: created");
        my $id = $x->{json}{id} // 'exec_none';
        my $e = terminal($acc->{key}, $id);
        is($e->{status}, $status, "$status on its own");
        is_deeply(exec_events($acc->{key}, $id), [ 'endpoint '
            . 'execution.started', "endpoint $type", "webhook_url $type" ],
            "$status: the endpoint gets execution.started and $type, the "
            . "webhook_url $type only");
        my @q = $rc->wait_requests(2, path => '/ev',
            where => sub { (event_of($_[0])->{execution_id} // '') eq $id });
        is_deeply([ map { event_of($_)->{event_type} } @q ],
            [ 'execution.started', $type ], "$status: in that order at the "
            . 'endpoint');
        is_deeply([ map { signature_problems($_, $secret) } @q ], [],
            "$status: signed");
        my ($u) = $rc->wait_requests(1, path => $path);
        my $uev = event_of($u // {}) // {};
        is($uev->{event_type}, $type, "$status: $type at the webhook_url");
        is_deeply([ signature_problems($u // {}, $default) ], [],
            "$status: signed with the default secret");
        is_deeply($uev->{data}, $e, "$status: data is the $status object");
        is($uev->{data}{error}{code}, 'INPUT_VALIDATION_ERROR',
            'FAILED: the error in the event') if $status eq 'FAILED';
        ok(wh_sync($t, $rc), "$status: the sender has gone past them");
        is($rc->count(path => $path), 1,
            "$status: nothing else at the webhook_url");
    }
}

# ---------------------------------------------------------------- mid-run

# An endpoint created while an execution waits for its provider's
# callback: execution.started happened before it existed, the completion
# comes after; it gets that, and only that.
{
    my $acc = $t->new_account(credit => '1.00');
    my $x = $t->create_exec($acc->{key}, $t->exec_body(model => 'm-job'));
    my $id = $x->{json}{id} // 'exec_none';
    my ($q) = $rc->wait_requests(1, path => '/job', timeout => 15,
        where => sub { ($_[0]{json}{execution_id} // '') eq $id });
    my ($cb) = ($q && $q->{json}{callback_url} // '') =~ m{(/v1/callbacks/.*)$};
    my $tok = ($q && $q->{json}{callback_token}) // '';
    ok(wait_for(sub { ($t->get_exec($acc->{key}, $id)->{json}{status} // '')
        eq 'AWAITING_WEBHOOK' }, 15), 'mid-run: AWAITING_WEBHOOK');
    is_deeply(exec_events($acc->{key}, $id), [],
        'mid-run: no endpoint yet, no delivery');
    my $r = wh_create($t, $acc->{key}, { url => $rc->url('/mid') });
    is($r->{status}, 201, 'mid-run: an endpoint created now');
    my $ep = $r->{json}{id} // 'wh_none';
    $r = $t->req(POST => $cb // '/v1/callbacks/none',
        { Authorization => "Bearer $tok" },
        { status => 'succeeded', output => { text => 'done' } });
    is($r->{json}{status}, 'COMPLETED', 'mid-run: the callback completes it');
    is_deeply(exec_events($acc->{key}, $id, $ep),
        [ 'endpoint execution.completed' ],
        'mid-run: the new endpoint gets execution.completed');
    my ($m) = $rc->wait_requests(1, path => '/mid');
    is(event_of($m // {})->{event_type}, 'execution.completed',
        'mid-run: delivered');
    ok(wh_sync($t, $rc), 'mid-run: the sender has gone past it');
    is($rc->count(path => '/mid'), 1, 'mid-run: nothing else');
}

# ---------------------------------------------------------------- nobody

# An event that no endpoint and no webhook_url can receive is not stored:
# no delivery, and an endpoint created afterwards never gets it.  "Not
# stored" itself is the store's business (nothing in the API lists
# events without deliveries): the store counts them (store_entries).
{
    my $acc = $t->new_account(credit => '1.00');
    my $r = wh_create($t, $acc->{key}, { url => $rc->url('/expired-only'),
        events => ['execution.expired'] });
    is($r->{status}, 201, 'nobody: an endpoint for execution.expired only');
    my $only = $r->{json}{id} // 'wh_none';
    my @ids = map { $t->create_exec($acc->{key},
        $t->exec_body(model => 'plain'))->{json}{id} // 'exec_none' } 1 .. 2;
    my $events = sub { $t->store_entries('event') };
    my $before = $events->();
    is($t->req(POST => "/v1/executions/$_/cancel", auth($acc->{key}))
        ->{status}, 200, 'nobody: an execution cancelled') for @ids;
    is_deeply(exec_events($acc->{key}, $_), [], 'nobody: no delivery') for @ids;
    SKIP: {
        skip 'mdb_stat (lmdb-utils) not installed', 1 unless defined $before;
        is($events->(), $before, 'nobody: no event stored');
    }
    $r = wh_create($t, $acc->{key}, { url => $rc->url('/later') });
    is($r->{status}, 201, 'nobody: an endpoint created afterwards');
    ok(wh_sync($t, $rc), 'nobody: the sender has gone past');
    is($rc->count(path => '/later'), 0, 'nobody: it gets nothing');
    is($rc->count(path => '/expired-only'), 0, 'nobody: nor the other');
}

$t->stop;
$t->check_log;

# ---------------------------------------------------------------- default

# The default schedule, 2, 4, 8, 16 and 30 minutes.  Delivery k is first
# made to fail k-1 times under a schedule of 1 s steps, the last of them
# a 410 that deactivates its endpoint (its delivery waits, attempts kept);
# then nginx reloads without modelroute_webhook_retry, the endpoints are
# enabled again, and each delivery fails once more: the step the server
# applies after attempt k is the k-th of the default schedule, and after
# the 6th attempt the delivery is failed.
{
    my $d = MR::Test->new(extra_http => "modelroute_webhook_allow_private on;\n"
        . "modelroute_webhook_retry 1s 1s 1s 1s 1s;\n");
    $d->start;
    my $acc = $d->new_account(credit => '1.00');
    my (%ep, %dlv);
    for my $k (2 .. 6) {
        $rc->set("/d$k", sequence => [ ({ status => 500 }) x ($k - 2),
            { status => 410 } ]);
        my $r = wh_create($d, $acc->{key}, { url => $rc->url("/d$k") });
        $ep{$k} = $r->{json}{id} // 'wh_none';
        $dlv{$k} = $d->req(POST => "/v1/webhooks/endpoints/$ep{$k}/test",
            auth($acc->{key}))->{json}{delivery_id} // 'dlv_none';
    }
    for my $k (2 .. 6) {
        my $x = wait_delivery($d, $acc->{key}, $ep{$k}, $dlv{$k},
            sub { @{ $_[0]{attempts} } >= $k - 1 }, 30);
        is(scalar @{ $x->{attempts} // [] }, $k - 1,
            "default: delivery $k has failed " . ($k - 1) . ' time(s)');
        ok(wait_for(sub { !wh_get($d, $acc->{key}, $ep{$k})->{is_active} },
            10), "default: its endpoint is deactivated (410)");
    }
    $d->write_config(extra_http => "modelroute_webhook_allow_private on;\n");
    $d->reload;
    my $r = wh_create($d, $acc->{key}, { url => $rc->url('/d1') });
    $ep{1} = $r->{json}{id} // 'wh_none';
    for my $k (1 .. 6) {
        $rc->set("/d$k", status => 500);
    }
    $dlv{1} = $d->req(POST => "/v1/webhooks/endpoints/$ep{1}/test",
        auth($acc->{key}))->{json}{delivery_id} // 'dlv_none';
    for my $k (2 .. 6) {
        is($d->req(PATCH => "/v1/webhooks/endpoints/$ep{$k}", auth($acc->{key}),
            { is_active => JSON::PP::true })->{status}, 200,
            "default: endpoint $k enabled again");
    }
    my @minutes = (2, 4, 8, 16, 30);
    for my $k (1 .. 6) {
        my $x = wait_delivery($d, $acc->{key}, $ep{$k}, $dlv{$k},
            sub { @{ $_[0]{attempts} } >= $k }, 30);
        is(scalar @{ $x->{attempts} // [] }, $k,
            "default: delivery $k failed attempt $k");
        if ($k <= 5) {
            is($x->{status}, 'pending', "default: delivery $k is retried");
            is(ms(step_of($x)), ms(60 * $minutes[$k - 1]),
                "default: retry $k is due $minutes[$k - 1] minutes after "
                . "attempt $k");
        } else {
            is($x->{status}, 'failed', 'default: after 5 retries the '
                . 'delivery is failed');
            ok(!defined $x->{next_attempt_at}, 'default: next_attempt_at '
                . 'null');
        }
    }
    $d->stop;
    $d->check_log;
}

# ---------------------------------------------------------------- proxy

# No proxy from the environment: with http_proxy, https_proxy, ALL_PROXY
# set in the workers' environment (nginx's env directive), deliveries
# still go straight to their receiver, and the "proxy" gets nothing.
{
    my $px = MR::Receiver->new;
    $px->start;
    my $proxy = "http://127.0.0.1:" . $px->port;
    my $p = MR::Test->new(
        extra_main => join('', map { "env $_=$proxy;\n" }
            qw(http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy
               ALL_PROXY)),
        extra_http => "modelroute_webhook_allow_private on;\n");
    $p->start;
    my $acc = $p->new_account(credit => '1.00');
    my $r = wh_create($p, $acc->{key}, { url => $rc->url('/direct') });
    is($r->{status}, 201, 'proxy: an endpoint');
    my $ev = $p->req(POST => "/v1/webhooks/endpoints/$r->{json}{id}/test",
        auth($acc->{key}))->{json} // {};
    my $x = $p->create_exec($acc->{key}, $p->exec_body(
        webhook_url => $rc->url('/direct-url')))->{json}{id} // 'exec_none';
    is($p->req(POST => "/v1/executions/$x/cancel", auth($acc->{key}))
        ->{status}, 200, 'proxy: an execution with a webhook_url cancelled');
    my $dd = wait_delivery($p, $acc->{key}, $r->{json}{id} // '-',
        $ev->{delivery_id} // '-', sub { $_[0]{status} ne 'pending' }, 20);
    is($dd->{status}, 'succeeded', 'proxy: the test event delivered');
    ok($rc->wait_requests(1, path => '/direct'), 'proxy: straight to the '
        . 'endpoint');
    ok($rc->wait_requests(1, path => '/direct-url'), 'proxy: and to the '
        . 'webhook_url');
    is(scalar $px->connections, 0, 'proxy: nothing reached the proxy');
    $p->stop;
    $p->check_log;
    $px->stop;
}

$rc->stop;
done_testing();
