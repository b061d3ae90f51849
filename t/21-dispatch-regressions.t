# Dispatch regressions found in review: a debug log line with a missing
# argument; the dispatch endpoint's limits with the real secret; a
# callback with a valid token for an execution the store no longer has;
# one half-open probe at a time; an answer that comes after expires_at but
# before the sweep is dropped; executions that wait for a capped route are
# passed over without starving another model.
#
# The provider holds its answers where the test needs an attempt in
# flight (MR::Receiver hold/release), and "the dispatcher has claimed
# since" is an execution of another model that completes (dispatch_sync):
# no assertion depends on how fast anything is.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use Time::HiRes qw(time);
use MR::Test qw(:all);
use MR::Receiver qw(chat_completion);

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $CHAT = chat_completion();

# no sweep until the test asks for one (a reload): an answer that comes
# after expires_at meets an execution that is not expired yet
sub http {
    my ($sweep) = @_;
    return <<"EOF";
modelroute_store %%STORE%%;
modelroute_sweep_interval $sweep;
error_log %%PREFIX%%/logs/error.log debug;
modelroute_route up /p/up protocol=openai_chat;
modelroute_route probe /p/probe protocol=openai_chat breaker=1
                 breaker_reset=1s timeout=20s;
modelroute_route late /p/late protocol=openai_chat timeout=20s;
modelroute_route capped /p/capped protocol=openai_chat max_concurrency=1
                 timeout=20s;
modelroute_model m-up per_request=0.01 routes=up;
modelroute_model m-probe per_request=0.01 routes=probe attempts=1;
modelroute_model m-late per_request=0.01 routes=late attempts=1;
modelroute_model m-capped per_request=0.01 routes=capped;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/up { internal; proxy_pass http://127.0.0.1:$RPORT/up; }
    location /p/probe {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/probe;
        proxy_read_timeout 30s;
    }
    location /p/late {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/late;
        proxy_read_timeout 30s;
    }
    location /p/capped {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/capped;
        proxy_read_timeout 30s;
    }
}
EOF
}

# the main error_log at debug too: the module's own timers (dispatch,
# webhooks, health) are logged there, and nginx's timer debug line reads
# each timer's data as a connection
my $t = MR::Test->new(http => http('1h'),
    extra_main => "error_log logs/debug.log debug;\n");
$t->start;
my $acct = $t->new_account(credit => '100.00');
my $key = $acct->{key};

sub create {
    my ($model, %over) = @_;
    my $r = $t->create_exec($key, $t->exec_body(model => $model, %over));
    is($r->{status}, 202, "create $model") or diag $r->{body};
    return $r->{json}{id};
}

sub final {
    my ($id, $timeout) = @_;
    my $e;
    wait_for(sub {
        $e = $t->get_exec($key, $id)->{json};
        $e && $e->{status} =~ /^(?:COMPLETED|FAILED|CANCELLED|EXPIRED)$/;
    }, $timeout // 15);
    return $e;
}

# A point after which the dispatcher has claimed again: an m-up execution
# created now completes.
sub dispatch_sync {
    my $e = final(create('m-up'), 20);
    return ($e->{status} // '') eq 'COMPLETED';
}

sub route_state {
    my ($name) = @_;
    my $r = $t->admin(GET => '/routes')->{json};
    my ($p) = grep { $_->{name} eq $name } @{ $r->{data} // [] };
    return $p // {};
}

# ---- a dispatched execution with the error log at debug level
$rc->set('/up', json => $CHAT);
my $e = final(create('m-up'));
is($e->{status}, 'COMPLETED', 'debug log: completed (no crash in the '
    . 'dispatch debug line)');

# ---- the dispatch endpoint with the real secret
# The dispatch socket is not part of the contract: only this nginx's own
# dispatcher, which holds the secret of this start, speaks to it, and its
# protocol (one "exec_<id> <token hex> <deadline ms>" line per attempt) is
# internal.  These limits cannot be reached from outside, so the test
# reads the secret from the store (store_secret) and speaks that protocol.
SKIP: {
    my $secret = $t->store_secret('dsecret');
    skip 'mdb_dump (lmdb-utils) not available', 8
        if !defined $secret && $t->backend eq 'lmdb'
           && !-x '/usr/bin/mdb_dump';
    ok(defined $secret, 'the store has a dispatch secret');
    $secret //= '';
    is(length $secret, 64, '256-bit secret');

    my $post = sub {
        my ($body) = @_;
        my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM,
            Peer => $t->store . '/dispatch.sock') or return (0, '');
        print $s "POST /dispatch HTTP/1.1\r\nHost: x\r\n"
            . "X-ModelRoute-Dispatch: $secret\r\nConnection: close\r\n"
            . "Content-Length: " . length($body) . "\r\n\r\n$body";
        local $/;
        my $resp = <$s> // '';
        my ($code) = $resp =~ m{^HTTP/1\.1 (\d+)};
        my (undef, $b) = split /\r\n\r\n/, $resp, 2;
        return ($code // 0, $b // '');
    };

    my $line = sub {
        my ($i) = @_;
        sprintf "exec_%012x%032x %016x %d\n", 1, $i, 1, 9999999999999;
    };

    my ($code, $body) = $post->(join '', map { $line->($_) } 1 .. 16);
    is($code, 200, '16 unknown attempts: 200');
    is($body, "0 16\n", 'none made, none recorded');

    ($code) = $post->(join '', map { $line->($_) } 1 .. 17);
    is($code, 400, 'more than a batch (17 attempts): 400');

    ($code) = $post->("exec_x 1 2\n");
    is($code, 400, 'a malformed line: 400');

    # token 0 is no lease's; one execution twice in a request is no
    # dispatcher's either (found by fuzzing: attempts outside any lease)
    ($code) = $post->(sprintf "exec_%012x%032x %016x %d\n", 1, 7, 0,
        9999999999999);
    is($code, 400, 'a zero lease token: 400');

    ($code) = $post->($line->(7) x 2);
    is($code, 400, 'the same execution twice: 400');
}

# ---- one half-open probe at a time
$rc->set('/probe', status => 500, json => { error => { message => 'x' } });
$e = final(create('m-probe'));
is($e->{error}{code}, 'GENERATION_FAILED', 'breaker=1: the first failure');
$e = final(create('m-probe'));
is($e->{error}{code}, 'MODEL_UNAVAILABLE', 'then the breaker is open');

$rc->clear;
$rc->set('/probe', json => $CHAT, hold => 'probe');
ok(wait_for(sub { (route_state('probe')->{breaker} // '') eq 'half_open' },
    5), 'half-open after breaker_reset');

my @ids = map { create('m-probe') } 1 .. 3;
ok($rc->wait_requests(1, path => '/probe', timeout => 10),
    'the probe reached the provider');
ok(dispatch_sync(), 'the dispatcher has claimed since');
my @states = map { $t->get_exec($key, $_)->{json}{status} } @ids;
is($rc->count(path => '/probe'), 1,
    'one provider request while the probe is in flight');
is(scalar(grep { $_ eq 'PENDING' } @states), 2,
    'the others wait (PENDING)') or diag "@states";
$rc->release('probe');
my @done = map { final($_) } @ids;
is(scalar(grep { $_->{status} eq 'COMPLETED' } @done), 3,
    'the probe closed the breaker: all three completed');
is($rc->count(path => '/probe'), 3, 'three provider requests in all');

# ---- an answer after expires_at, before the sweeper: dropped
# The provider answers once expires_at has passed; the sweeper (every
# hour) has not expired the execution yet.  "Dropped" is logged when the
# answer is recorded: the test waits for that line, then looks.
$rc->set('/late', json => $CHAT, hold => 'late');
my $late = create('m-late', timeout_seconds => 1);
ok($rc->wait_requests(1, path => '/late', timeout => 10),
    'late: the provider has the request');
my $lx = $t->get_exec($key, $late)->{json} // {};
my $deadline = parse_rfc3339($lx->{expires_at} // '') // time;
wait_for(sub { time > $deadline + 0.01 }, 10);
$rc->release('late');
ok(wait_for(sub { $t->read_log =~
    /the answer for \Q$late\E came when its lease was over/ }, 15),
    'late: the answer was recorded as dropped') or diag $t->tail_log;
$lx = $t->get_exec($key, $late)->{json} // {};
isnt($lx->{status}, 'COMPLETED', 'answer after expires_at: not COMPLETED');
ok(!defined $lx->{result}, 'no result');
ok(!grep({ ($_->{outcome} // '') eq 'succeeded' } @{ $lx->{attempts} // [] }),
    'no succeeded attempt') or diag explain $lx->{attempts};
money_is($t->balance($key)->{held}, $lx->{hold_amount} // '-1',
    'its hold is still held, nothing charged');

# ---- a capped route's waiting executions do not hold up another model
# The capped route's provider holds its one request: 19 wait.
$rc->set('/capped', json => $CHAT, hold => 'capped');
my @capped = map { create('m-capped') } 1 .. 20;
ok($rc->wait_requests(1, path => '/capped', timeout => 10),
    'capped: one attempt in flight');
$e = final(create('m-up'), 20);
is($e->{status}, 'COMPLETED', 'another model completes while 19 wait '
    . 'for a capped route');
my $pending = grep { $t->get_exec($key, $_)->{json}{status} eq 'PENDING' }
    @capped;
is($pending, 19, 'capped executions still waiting (PENDING)');
is($rc->count(path => '/capped'), 1, 'one provider request on the capped '
    . 'route');
is(scalar(grep { $t->req(POST => "/v1/executions/$_/cancel", auth($key))
    ->{status} != 200 } @capped), 0, 'capped: each cancelled');
$rc->release('capped');

# ---- the sweeper, now: the late execution is EXPIRED and charged nothing
$t->write_config(http => http('200ms'));
$t->reload;
$e = final($late, 20);
is($e->{status}, 'EXPIRED', 'late: EXPIRED once the sweeper runs');
is($e->{cost}, '0.00', 'late: nothing charged');

my $v = $t->verify($acct->{org});
ok($v->{ok}, 'ledger verifies') or diag explain $v;

$t->stop;
$t->check_log;

# ---- a callback with a valid token for an execution the store no longer
# has (purged by the retention): 404
{
    my $c = MR::Test->new(http => <<"EOF");
modelroute_store %%STORE%%;
modelroute_retention 1s;
modelroute_sweep_interval 200ms;
modelroute_callback_url http://127.0.0.1:%%PORT%%/v1/callbacks;
modelroute_route job /p/job protocol=async;
modelroute_model m-job per_request=0.01 routes=job;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/job { internal; proxy_pass http://127.0.0.1:$RPORT/job; }
}
EOF
    $c->start;
    $rc->set('/job', status => 202, json => { job_id => 'j' });
    my $a = $c->new_account(credit => '1.00');
    my $r = $c->create_exec($a->{key}, $c->exec_body(model => 'm-job'));
    my $id = $r->{json}{id} // 'exec_none';
    my ($q) = $rc->wait_requests(1, path => '/job', timeout => 10,
        where => sub { ($_[0]{json}{execution_id} // '') eq $id });
    my ($cb) = ($q && $q->{json}{callback_url} // '') =~ m{(/v1/callbacks/.*)$};
    my $tok = ($q && $q->{json}{callback_token}) // '';
    ok($cb && $tok, 'the provider has a callback url and its token');
    ok(wait_for(sub { ($c->get_exec($a->{key}, $id)->{json}{status} // '')
        eq 'AWAITING_WEBHOOK' }, 10), 'AWAITING_WEBHOOK');
    is($c->req(POST => "/v1/executions/$id/cancel", auth($a->{key}))
        ->{status}, 200, 'cancelled');
    ok(wait_for(sub { $c->get_exec($a->{key}, $id)->{status} == 404 }, 20),
        'purged by the retention');
    is_error($c->req(POST => $cb // '/v1/callbacks/none',
        { Authorization => "Bearer $tok" },
        { status => 'succeeded', output => { text => 'x' } }), 404,
        'NOT_FOUND', 'a callback with its valid token: 404 NOT_FOUND');
    ok($c->verify($a->{org})->{ok}, 'ledger verifies');
    $c->stop;
    $c->check_log;
}

done_testing();
