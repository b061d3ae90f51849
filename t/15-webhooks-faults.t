# Webhooks under faults: a receiver that is down then up, an nginx
# restart with a delivery pending, an attempt that times out, deliveries
# in flight during a reload and a quit (finished, recorded, sent once),
# 410 Gone,
# a schedule that runs out and a manual retry, a deleted endpoint, every
# worker killed with SIGKILL while a delivery is in flight (at-least-once,
# same event id), and 10 consecutive failures deactivating an endpoint.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $COMMON = "modelroute_webhook_allow_private on;\n"
    . "modelroute_webhook_timeout 2s;\n"
    . "modelroute_sweep_interval 200ms;\n";
my $t = MR::Test->new(extra_http => $COMMON
    . "modelroute_webhook_retry 1s 1s 1s;\n");
$t->start;
my $rc = MR::Receiver->new;
$rc->start;

sub is_true  { JSON::PP::is_bool($_[0]) && $_[0] }
sub is_false { JSON::PP::is_bool($_[0]) && !$_[0] }

# A fresh account with one endpoint on $path: (key, endpoint id, secret).
sub setup {
    my ($t, $path, %body) = @_;
    my $acc = $t->new_account(credit => '10.00');
    my $r = wh_create($t, $acc->{key}, { url => $rc->url($path), %body });
    is($r->{status}, 201, "endpoint on $path") or diag $r->{body};
    return ($acc->{key}, $r->{json}{id} // 'wh_none',
        $r->{json}{secret} // 'whsec_', $acc);
}

sub send_test {
    my ($t, $key, $id) = @_;
    my $r = $t->req(POST => "/v1/webhooks/endpoints/$id/test", auth($key));
    is($r->{status}, 202, "test event to $id: 202") or diag $r->{body};
    return $r->{json} // {};
}

sub failed_attempt {
    my ($a) = @_;
    return ref $a eq 'HASH' && defined $a->{error} && length $a->{error}
        && !$a->{status_code};
}

sub same_event {
    my ($name, $id, @reqs) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @bad = grep {
        ($_->{headers}{'webhook-id'} // '') ne $id
            || (event_of($_)->{id} // '') ne $id
    } @reqs;
    ok(@reqs && !@bad, $name)
        or diag join ', ', map { $_->{headers}{'webhook-id'} // 'undef' }
            @reqs;
}

# Each request signed with the secret; the attempts of one event each at
# its own time.
sub all_signed {
    my ($name, $secret, @reqs) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @p = map { signature_problems($_, $secret) } @reqs;
    my %by;
    push @{ $by{ $_->{headers}{'webhook-id'} // '' } }, $_ for @reqs;
    push @p, resign_problems(@$_) for values %by;
    ok(@reqs && !@p, $name) or diag join "\n", @p;
}

# ---------------------------------------------------------------- down, up

{
    my ($key, $id, $secret) = setup($t, '/down');
    $rc->stop;
    my $ev = send_test($t, $key, $id);
    my $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { @{ $_[0]{attempts} } >= 2 }, 15);
    ok(!$d->{timed_out}, 'receiver down: attempts are made')
        or diag explain $d;
    is($d->{status}, 'pending', 'receiver down: still pending');
    ok(is_rfc3339($d->{next_attempt_at}), 'receiver down: next_attempt_at');
    ok(!grep({ !failed_attempt($_) } @{ $d->{attempts} // [] }),
        'receiver down: each attempt failed with an error, no status code')
        or diag explain $d->{attempts};
    my $e = wh_get($t, $key, $id);
    ok($e->{failure_count} >= 2, 'receiver down: failure_count counts them')
        or diag explain $e;
    ok(is_true($e->{is_active}), 'receiver down: endpoint still active');

    $rc->start;
    $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { $_[0]{status} eq 'succeeded' }, 15);
    is($d->{status}, 'succeeded', 'receiver up: delivered');
    my @at = @{ $d->{attempts} // [] };
    ok(@at >= 3, 'receiver up: failed attempts then success ('
        . scalar(@at) . ' attempts)');
    ok(!grep({ !failed_attempt($_) } @at[0 .. $#at - 1]),
        'receiver up: the earlier attempts are the failures');
    is($at[-1]{status_code}, 200, 'receiver up: last attempt 200');
    ok(!defined $at[-1]{error}, 'receiver up: last attempt without error');
    ok(!grep({ !defined $_->{latency_ms} || $_->{latency_ms} !~ /^\d+$/ } @at),
        'receiver up: every attempt has latency_ms');
    # each retry starts no sooner than the step (1 s) after the failure
    # before it was recorded (at + latency_ms)
    my @ts = map { parse_rfc3339($_->{at} // '') // 0 } @at;
    my @early = grep { $ts[$_] < $ts[$_ - 1]
        + ($at[$_ - 1]{latency_ms} // 0) / 1000 + 1 - 0.0005 } 1 .. $#ts;
    ok(!@early, 'attempts follow the 1 s schedule') or diag explain \@at;
    my @got = $rc->requests(path => '/down');
    is(scalar @got, 1, 'receiver up: one request arrived');
    same_event('receiver up: the event id', $ev->{event_id} // '-', @got);
    all_signed('receiver up: signed', $secret, @got);
    $e = wh_get($t, $key, $id);
    is($e->{failure_count}, 0, 'a success resets failure_count');
    ok(is_rfc3339($e->{last_success}), 'last_success set');
}

# ---------------------------------------------------------------- restart

{
    my ($key, $id, $secret) = setup($t, '/restart');
    $rc->set('/restart', status => 503);
    my $ev = send_test($t, $key, $id);
    ok($rc->wait_requests(1, path => '/restart'), 'restart: a failed attempt');
    ok(!wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { @{ $_[0]{attempts} } >= 1 }, 10)->{timed_out},
        'restart: the failed attempt is recorded');
    $t->stop;
    $rc->set('/restart');
    $t->start;
    my $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { $_[0]{status} eq 'succeeded' }, 15);
    is($d->{status}, 'succeeded', 'restart: delivered after nginx restarts');
    my @got = $rc->requests(path => '/restart');
    ok(@got >= 2, 'restart: sent again');
    same_event('restart: same event id', $ev->{event_id} // '-', @got);
    all_signed('restart: signed', $secret, @got);
}

# ---------------------------------------------------------------- timeout

{
    # the receiver answers only once the attempt was given up and recorded
    my ($key, $id, $secret) = setup($t, '/slow');
    $rc->set('/slow', hold => 'slow');
    my $ev = send_test($t, $key, $id);
    my $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { @{ $_[0]{attempts} } >= 1 }, 15);
    my $a = $d->{attempts}[0] // {};
    ok(failed_attempt($a), 'no answer within the timeout is a failure')
        or diag explain $d;
    my ($held) = $rc->requests(path => '/slow');
    ok($held && !defined $held->{answered_at},
        'recorded while the receiver had not answered yet');
    ok(($a->{latency_ms} // 0) >= 1900, 'the attempt waited the 2 s timeout ('
        . ($a->{latency_ms} // 'undef') . ' ms)');
    is($d->{status}, 'pending', 'timeout: retried');
    $rc->set('/slow');
    $rc->release('slow');
    $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { $_[0]{status} eq 'succeeded' }, 15);
    is($d->{status}, 'succeeded', 'timeout: delivered by a later attempt');
    my @got = $rc->requests(path => '/slow');
    ok(@got >= 2, 'timeout: sent at least twice');
    same_event('timeout: same event id', $ev->{event_id} // '-', @got);
}

# ---------------------------------------------------------------- no answer

{
    my ($key, $id, $secret) = setup($t, '/closer');
    $rc->set('/closer', close => 1);
    my $ev = send_test($t, $key, $id);
    my $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { @{ $_[0]{attempts} } >= 1 }, 10);
    ok(failed_attempt($d->{attempts}[0]),
        'a connection closed without an answer is a failure')
        or diag explain $d;
    $rc->set('/closer');
    $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { $_[0]{status} eq 'succeeded' }, 15);
    is($d->{status}, 'succeeded', 'no answer: delivered by a later attempt');
    same_event('no answer: same event id', $ev->{event_id} // '-',
        $rc->requests(path => '/closer'));
}

# ---------------------------------------------------------------- big answer

{
    my ($key, $id) = setup($t, '/big');
    $rc->set('/big', body_bytes => 4_000_000);
    my $ev = send_test($t, $key, $id);
    my $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { $_[0]{status} ne 'pending' }, 15);
    is($d->{status}, 'succeeded', 'a 4 MB answer body: succeeded');
    is($d->{attempts}[0]{status_code}, 200, '... status 200');
    is(scalar $t->worker_pids, 2, '... the workers are fine');
}

# ---------------------------------------------------------------- reload
# Deliveries in flight when nginx reloads (HUP) or quits: the exiting
# workers finish them and record each attempt with its outcome; nothing is
# sent twice.

{
    my @d;
    for my $i (1 .. 4) {
        my ($key, $id, $secret) = setup($t, "/reload$i");
        $rc->set("/reload$i", delay => 1.5);
        push @d, [ $key, $id, $secret, send_test($t, $key, $id) ];
    }
    my $in = grep { $rc->wait_requests(1, path => "/reload$_") } 1 .. 4;
    is($in, 4, 'reload: four deliveries in flight');
    my $t0 = time;
    ok(eval { $t->reload; 1 }, 'reload while deliveries are in flight: the '
        . 'old workers exit') or diag $@;
    note sprintf 'reload took %.1f s', time - $t0;
    for my $i (1 .. 4) {
        my ($key, $id, $secret, $ev) = @{ $d[$i - 1] };
        my $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
            sub { $_[0]{status} ne 'pending' }, 30);
        is($d->{status}, 'succeeded', "reload $i: delivered");
        is(scalar @{ $d->{attempts} // [] }, 1,
            "reload $i: one attempt, recorded by the exiting worker")
            or diag explain $d;
        is($d->{attempts}[0]{status_code}, 200, "reload $i: with its 200");
        my @got = $rc->requests(path => "/reload$i");
        is(scalar @got, 1, "reload $i: sent once");
        same_event("reload $i: the event id", $ev->{event_id} // '-', @got);
        all_signed("reload $i: signed", $secret, @got);
    }

    my ($key, $id, $secret) = setup($t, '/quit');
    $rc->set('/quit', delay => 1.5);
    my $ev = send_test($t, $key, $id);
    ok($rc->wait_requests(1, path => '/quit'), 'quit: a delivery in flight');
    $t->stop;
    $t->start;
    my $d = wh_delivery($t, $key, $id, $ev->{delivery_id} // '-') // {};
    is($d->{status}, 'succeeded', 'quit: the exiting worker recorded the '
        . 'attempt before nginx stopped') or diag explain $d;
    is(scalar @{ $d->{attempts} // [] }, 1, 'quit: one attempt');
    is($d->{attempts}[0]{status_code}, 200, 'quit: with its 200');
    is($rc->count(path => '/quit'), 1, 'quit: sent once');
}

# ---------------------------------------------------------------- 410 Gone

{
    my ($key, $id, $secret, $acc) = setup($t, '/gone');
    $rc->set('/gone', status => 410);
    my $ev = send_test($t, $key, $id);
    ok($rc->wait_requests(1, path => '/gone'), '410: the attempt');
    my $e = wait_for(sub {
        my $g = wh_get($t, $key, $id);
        $g && is_false($g->{is_active}) ? $g : undef;
    }, 10, 0.05);
    ok($e, '410 deactivates the endpoint');
    my $d = wh_delivery($t, $key, $id, $ev->{delivery_id} // '-') // {};
    is($d->{attempts}[0]{status_code}, 410, '410: recorded');
    isnt($d->{status}, 'succeeded', '410: not a success');

    # while inactive: nothing is sent, once both deliveries are due
    $rc->set('/gone');
    my $x = $t->create_exec($key, $t->exec_body)->{json}{id} // 'exec_none';
    is($t->req(POST => "/v1/executions/$x/cancel", auth($key))->{status}, 200,
        'inactive: an execution cancelled');
    my ($cd) = @{ wh_exec_deliveries($t, $key, $x) // [] };
    ok($cd, 'inactive: the delivery is created');
    my $due = parse_rfc3339($d->{next_attempt_at} // '') // time;
    wait_for(sub { time > $due + 0.01 }, 10);
    ok(wh_sync($t, $rc), 'inactive: the sender claimed since both were due');
    is($rc->count(path => '/gone'), 1, 'inactive: nothing is sent');
    $cd = wh_delivery($t, $key, $id, $cd->{id} // '-') // {};
    is($cd->{status}, 'pending', 'inactive: the new delivery waits');
    is_deeply($cd->{attempts}, [], 'inactive: no attempt');
    $d = wh_delivery($t, $key, $id, $ev->{delivery_id} // '-') // {};
    is(scalar @{ $d->{attempts} // [] }, 1, 'inactive: the 410 one waits too');
    is($d->{status}, 'pending', 'inactive: ... as pending');
    ok(is_false(wh_get($t, $key, $id)->{is_active}), 'still inactive');

    # re-enabled: failure_count 0, the waiting deliveries go out
    my $r = $t->req(PATCH => "/v1/webhooks/endpoints/$id", auth($key),
        { is_active => JSON::PP::true });
    is($r->{status}, 200, 'patch is_active true: 200');
    ok(is_true($r->{json}{is_active}), 're-enabled');
    is($r->{json}{failure_count}, 0, 're-enabled: failure_count 0');
    my @got = $rc->wait_requests(3, path => '/gone', timeout => 15);
    is(scalar @got, 3, 're-enabled: both waiting deliveries sent');
    my %types = map { (event_of($_)->{event_type} // '') => 1 } @got[1 .. 2];
    is_deeply([sort keys %types], ['execution.cancelled', 'webhook.test'],
        're-enabled: the cancel and the test event');
    all_signed('re-enabled: signed', $secret, @got);
    for my $did ($ev->{delivery_id}, $cd->{id}) {
        my $dd = wait_delivery($t, $key, $id, $did // '-',
            sub { $_[0]{status} eq 'succeeded' }, 10);
        is($dd->{status}, 'succeeded', "re-enabled: $dd->{event_type} "
            . 'delivery succeeded');
    }
}

# ---------------------------------------------------------------- exhausted

{
    my ($key, $id, $secret) = setup($t, '/exhaust');
    $rc->set('/exhaust', status => 500);
    my $ev = send_test($t, $key, $id);
    my $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { $_[0]{status} ne 'pending' }, 20);
    is($d->{status}, 'failed', 'the schedule runs out: failed');
    my @at = @{ $d->{attempts} // [] };
    is(scalar @at, 4, 'failed: 1 attempt + 3 retries');
    ok(!grep({ ($_->{status_code} // 0) != 500 } @at),
        'failed: each attempt recorded with status_code 500')
        or diag explain \@at;
    ok(!defined $d->{next_attempt_at}, 'failed: next_attempt_at null');
    ok(wh_sync($t, $rc), 'failed: the sender has claimed since');
    is($rc->count(path => '/exhaust'), 4, 'failed: no fifth attempt');
    my @got = $rc->requests(path => '/exhaust');
    is(scalar @got, 4, 'the receiver saw 4 attempts');
    same_event('every attempt carries the same event id',
        $ev->{event_id} // '-', @got);
    all_signed('every attempt signed', $secret, @got);
    my $e = wh_get($t, $key, $id);
    ok(is_true($e->{is_active}), '4 failures: still active');
    is($e->{failure_count}, 4, 'failure_count 4');

    $rc->set('/exhaust');
    my $r = $t->req(POST => "/v1/webhooks/deliveries/$ev->{delivery_id}/retry",
        auth($key));
    is($r->{status}, 202, 'retry a failed delivery: 202') or diag $r->{body};
    is($r->{json}{id}, $ev->{delivery_id}, 'retry: the same delivery');
    is($r->{json}{object}, 'webhook_delivery', 'retry: a delivery object');
    is($r->{json}{status}, 'pending', 'retry: pending again');
    $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { $_[0]{status} eq 'succeeded' }, 10);
    is($d->{status}, 'succeeded', 'retry: delivered');
    is(scalar @{ $d->{attempts} // [] }, 5, 'retry: a fifth attempt');
    is($d->{attempts}[-1]{status_code}, 200, 'retry: 200');
    @got = $rc->requests(path => '/exhaust');
    is(scalar @got, 5, 'retry: the receiver got it');
    same_event('retry: same event id', $ev->{event_id} // '-', @got);
    all_signed('retry: signed', $secret, $got[-1]);
    is(wh_get($t, $key, $id)->{failure_count}, 0, 'retry: failure_count 0');
}

# ---------------------------------------------------------------- delete

{
    my ($key, $id) = setup($t, '/del');
    $rc->set('/del', status => 500);
    my $ev = send_test($t, $key, $id);
    ok($rc->wait_requests(1, path => '/del'), 'delete: a failed attempt');
    my $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { @{ $_[0]{attempts} } >= 1 }, 10);
    my $r = $t->req(DELETE => "/v1/webhooks/endpoints/$id", auth($key));
    is($r->{status}, 200, 'delete with a delivery pending: 200');
    $rc->set('/del');
    my $n = $rc->count(path => '/del');
    my $due = parse_rfc3339($d->{next_attempt_at} // '') // time;
    wait_for(sub { time > $due + 0.01 }, 10);
    ok(wh_sync($t, $rc), 'delete: the sender claimed since it was due');
    is($rc->count(path => '/del'), $n, 'delete: its pending delivery is '
        . 'dropped');
    is_error($t->req(POST => "/v1/webhooks/deliveries/$ev->{delivery_id}/retry",
        auth($key)), 404, 'NOT_FOUND', 'delete: its delivery is gone');
}

# ---------------------------------------------------------------- kill -9

{
    my ($key, $id, $secret) = setup($t, '/kill');
    $rc->set('/kill', hold => 'kill');
    my $ev = send_test($t, $key, $id);
    my ($first) = $rc->wait_requests(1, path => '/kill', timeout => 10);
    ok($first, 'kill: the delivery is in flight');
    my @old = $t->kill_workers('KILL');
    my $killed = time;
    ($first) = $rc->requests(path => '/kill');
    ok($first && !defined $first->{answered_at},
        'every worker killed while the receiver holds the request');
    $rc->set('/kill');
    $rc->release('kill');
    my %old = map { $_ => 1 } @old;
    ok(wait_for(sub {
        my @w = $t->worker_pids;
        @w == 2 && !grep { $old{$_} } @w;
    }, 20), 'the master replaced the workers');
    my @got = $rc->wait_requests(2, path => '/kill', timeout => 90);
    ok(@got >= 2, 'kill: delivered again by the new workers');
    note sprintf 'kill: sent again %.1f s after the kill',
        $got[1]{arrived} - $killed if @got >= 2;
    same_event('kill: same event id (at-least-once)', $ev->{event_id} // '-',
        @got);
    all_signed('kill: signed', $secret, @got);
    my $d = wait_delivery($t, $key, $id, $ev->{delivery_id} // '-',
        sub { $_[0]{status} eq 'succeeded' }, 10);
    is($d->{status}, 'succeeded', 'kill: the delivery succeeded');
    is($d->{attempts}[-1]{status_code}, 200, 'kill: last attempt 200');
}

$t->stop;
$t->check_log;
unlike($t->read_log, qr/whsec_/, 'no secret in the error log');

# ---------------------------------------------------------------- 10 failures
# A long schedule so that the deliveries do not run out first.

my $t2 = MR::Test->new(extra_http => $COMMON
    . "modelroute_webhook_retry 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s;\n");
$t2->start;
{
    my ($key, $id, $secret) = setup($t2, '/flaky');
    $rc->set('/flaky', status => 500);
    my @ev = map { send_test($t2, $key, $id) } 1 .. 3;
    my $e = wait_for(sub {
        my $g = wh_get($t2, $key, $id);
        $g && is_false($g->{is_active}) ? $g : undef;
    }, 30, 0.05);
    ok($e, '10 consecutive failures deactivate the endpoint');
    # the attempts in flight when it happened are recorded too
    my $list;
    my $recorded = 0;
    ok(wait_for(sub {
        $list = wh_deliveries($t2, $key, $id) // [];
        $recorded = 0;
        $recorded += @{ $_->{attempts} // [] } for @$list;
        $recorded == $rc->count(path => '/flaky');
    }, 15), 'every attempt recorded');
    is(scalar @$list, 3, 'three deliveries');
    # each delivery has one attempt at a time: when the 10th failure is
    # recorded, at most the two others are in flight
    ok(!grep({ $_->{status} ne 'pending' } @$list),
        'the deliveries wait (pending)');
    my ($due) = sort { $b <=> $a } map {
        parse_rfc3339($_->{next_attempt_at} // '') // time } @$list;
    wait_for(sub { time > $due + 0.01 }, 10);
    ok(wh_sync($t2, $rc), 'inactive: the sender claimed since all were due');
    # an attempt claimed before the 10th failure was recorded may still
    # have been on its way when "every attempt recorded" held: settled
    # only now, after a claim that came when all were due
    ok(wait_for(sub {
        $list = wh_deliveries($t2, $key, $id) // [];
        $recorded = 0;
        $recorded += @{ $_->{attempts} // [] } for @$list;
        $recorded == $rc->count(path => '/flaky');
    }, 15), 'every attempt recorded, the last ones too');
    my $total = $rc->count(path => '/flaky');
    ok($total >= 10 && $total <= 12,
        "deactivated after the 10th failure, not before ($total attempts)");
    is(wh_get($t2, $key, $id)->{failure_count}, $total,
        "failure_count counts every failure ($total)");
    ok(wh_sync($t2, $rc), 'inactive: the sender claimed again');
    is($rc->count(path => '/flaky'), $total, 'inactive: attempts stop');

    $rc->set('/flaky');
    my $r = $t2->req(PATCH => "/v1/webhooks/endpoints/$id", auth($key),
        { is_active => JSON::PP::true });
    is($r->{status}, 200, 're-enable');
    is($r->{json}{failure_count}, 0, 're-enable: failure_count 0');
    for my $ev (@ev) {
        my $d = wait_delivery($t2, $key, $id, $ev->{delivery_id} // '-',
            sub { $_[0]{status} eq 'succeeded' }, 15);
        is($d->{status}, 'succeeded', 're-enabled: delivered');
    }
    my @ok = grep { !$_->{rule}{status} }
        $rc->requests(path => '/flaky');
    is(scalar @ok, 3, 're-enabled: each event once');
    all_signed('re-enabled: signed', $secret, @ok);
    ok(is_true(wh_get($t2, $key, $id)->{is_active}), 'active');
}

$t2->stop;
$t2->check_log;
unlike($t2->read_log, qr/whsec_/, 'no secret in the error log');

$rc->stop;
done_testing();
