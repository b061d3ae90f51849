# Dispatch rules no other file pins down: a Retry-After pauses its route
# for every execution, not only the one that got it; a retry that could
# not start before expires_at fails at once; modelroute_dispatch_concurrency
# caps the attempts a worker has in flight.
#
# Order and outcome only: the server's times (attempts, /admin/routes)
# and the provider's held answers (MR::Receiver hold/release).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(chat_completion);

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $CHAT = chat_completion();
my $R429 = { status => 429, json => { error => { message => 'slow down',
    type => 'rate_limit_error' } } };

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub terminal {
    my ($t, $key, $id, $timeout) = @_;
    my $e = {};
    wait_for(sub {
        my $r = $t->get_exec($key, $id);
        $e = $r->{json} if $r->{status} == 200;
        $TERMINAL{ $e->{status} // '' };
    }, $timeout // 20);
    return $e;
}

sub ts { parse_rfc3339($_[0] // '') // 0 }

my $t = MR::Test->new(http => <<"EOF");
modelroute_store %%STORE%%;
modelroute_route ra /p/ra protocol=openai_chat;
modelroute_route rx /p/rx protocol=openai_chat;
modelroute_model m-ra per_request=0.01 routes=ra attempts=2;
modelroute_model m-rx per_request=0.01 routes=rx attempts=3;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/ra { internal; proxy_pass http://127.0.0.1:$RPORT/ra; }
    location /p/rx { internal; proxy_pass http://127.0.0.1:$RPORT/rx; }
}
EOF
$t->start;
my $acc = $t->new_account(credit => '10.00');
my $key = $acc->{key};

sub create {
    my ($model, %over) = @_;
    my $r = $t->create_exec($key, $t->exec_body(model => $model, %over));
    is($r->{status}, 202, "create $model") or diag $r->{body};
    return $r->{json}{id} // 'exec_none';
}

sub route { $t->route_state($_[0]) }

# ---------------------------------------------------------------- pause

# A's first attempt gets a 429 with Retry-After: 3.  B, created once the
# route is paused, makes its first attempt only when the pause is over;
# A's retry too.
{
    $rc->set('/ra', json => $CHAT, sequence => [
        { %$R429, headers => { 'Retry-After' => 3 } }, {} ]);
    my $ea = create('m-ra');
    # the 429 is recorded with the route's pause, in one transaction
    ok(wait_for(sub { @{ $t->get_exec($key, $ea)->{json}{attempts} // [] } },
        15), 'pause: A\'s first attempt is recorded');
    my $paused = parse_rfc3339(route('ra')->{paused_until} // '') // 0;
    my $eb = create('m-ra');
    my $be = terminal($t, $key, $eb);
    my $ae = terminal($t, $key, $ea);
    is($ae->{status}, 'COMPLETED', 'pause: A completes after its retry');
    is($be->{status}, 'COMPLETED', 'pause: B completes');
    my @aa = @{ $ae->{attempts} // [] };
    is(scalar @aa, 2, 'pause: A made two attempts');
    is($aa[0]{status}, 429, 'pause: A\'s first got the 429');
    my $until = ts($aa[0]{ended_at}) + 3;
    ok($paused >= $until - 0.0005, 'pause: /admin/routes shows the route '
        . 'paused until 3 s after the 429 was recorded');
    my @ba = @{ $be->{attempts} // [] };
    is(scalar @ba, 1, 'pause: B made one attempt');
    ok(ts($ba[0]{started_at}) >= $until - 0.0005,
        'pause: B\'s attempt waited for the pause, though B never got a 429')
        or diag "B started $ba[0]{started_at}, A's 429 ended "
            . "$aa[0]{ended_at}";
    ok(ts($aa[1]{started_at}) >= $until - 0.0005,
        'pause: so did A\'s retry');
    is($rc->count(path => '/ra'), 3, 'pause: three provider requests');
}

# ---------------------------------------------------------------- expiry

# A 429 whose Retry-After ends after expires_at: the retry could not
# start in time, so the execution fails at once (RATE_LIMITED), before
# its deadline, with its hold released; it does not wait to expire.
{
    $rc->set('/rx', %$R429, headers => { 'Retry-After' => 600 });
    my $id = create('m-rx', timeout_seconds => 30);
    my $e = terminal($t, $key, $id, 25);
    is($e->{status}, 'FAILED', 'no time left: FAILED, not waiting to expire')
        or diag explain $e;
    is($e->{error}{code}, 'RATE_LIMITED', 'no time left: RATE_LIMITED');
    ok(ts($e->{completed_at}) < ts($e->{expires_at}),
        'no time left: failed before expires_at');
    is(scalar @{ $e->{attempts} // [] }, 1, 'no time left: one attempt');
    money_is($e->{cost}, '0.00', 'no time left: nothing charged');
    ok($t->verify($acc->{org})->{ok}, 'verify ok');
}

$t->stop;
$t->check_log;

# ---------------------------------------------------------------- per worker

# modelroute_dispatch_concurrency 2 with one worker and a route without a
# cap: the provider holds each answer until the test releases it; five
# executions go two at a time.  From the provider's records: when a
# request arrived, how many earlier ones were still unanswered.
{
    my $c = MR::Test->new(workers => 1, http => <<"EOF");
modelroute_store %%STORE%%;
modelroute_dispatch_concurrency 2;
modelroute_route free /p/free protocol=openai_chat timeout=60s;
modelroute_model m-free per_request=0.01 routes=free attempts=1;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/free { internal; proxy_pass http://127.0.0.1:$RPORT/free;
                       proxy_read_timeout 60s; }
}
EOF
    $c->start;
    my $ca = $c->new_account(credit => '1.00');
    $rc->set('/free', json => $CHAT,
        sequence => [ map { { hold => "f$_" } } 1 .. 5 ]);
    my @ids = map { $c->create_exec($ca->{key}, $c->exec_body(
        model => 'm-free'))->{json}{id} // 'exec_none' } 1 .. 5;
    ok($rc->wait_requests(2, path => '/free', timeout => 20),
        'concurrency: two requests made');
    for my $k (1 .. 3) {
        $rc->release("f$k");
        ok($rc->wait_requests($k + 2, path => '/free', timeout => 20),
            "concurrency: another once answer $k came");
    }
    $rc->release("f$_") for 4, 5;
    my @e = map { terminal($c, $ca->{key}, $_) } @ids;
    is(scalar(grep { ($_->{status} // '') eq 'COMPLETED' } @e), 5,
        'concurrency: all five COMPLETED');
    my @r = sort { $a->{arrived} <=> $b->{arrived} }
        $rc->requests(path => '/free');
    is(scalar @r, 5, 'concurrency: five provider requests');
    my $max = 0;
    for my $j (0 .. $#r) {
        my $n = grep { ($r[$_]{released_at} // 9e9) > $r[$j]{arrived} }
            0 .. $j;
        $max = $n if $n > $max;
    }
    is($max, 2, 'concurrency: never more than 2 in flight');
    $c->stop;
    $c->check_log;
}

$rc->stop;
done_testing();
