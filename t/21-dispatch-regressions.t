# Dispatch regressions found in review: a debug log line with a missing
# argument; the dispatch endpoint's limits with the real secret, and a
# callback with a valid token for an unknown execution (keys read from the
# store with mdb_dump); one half-open probe at a time; an answer that
# comes after expires_at but before the sweep is dropped; executions that
# wait for a capped route are passed over without starving another model.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use Digest::SHA qw(hmac_sha256_hex);
use MR::Test qw(:all);
use MR::Receiver;

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $CHAT = { id => 'c', object => 'chat.completion',
    choices => [ { index => 0, finish_reason => 'stop',
        message => { role => 'assistant', content => 'ok' } } ],
    usage => { prompt_tokens => 3, completion_tokens => 5 } };

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_sweep_interval 3s;
error_log %%PREFIX%%/logs/error.log debug;
modelroute_route up /p/up protocol=openai_chat;
modelroute_route probe /p/probe protocol=openai_chat breaker=1
                 breaker_reset=1s timeout=5s;
modelroute_route late /p/late protocol=openai_chat timeout=10s;
modelroute_route capped /p/capped protocol=openai_chat max_concurrency=1
                 timeout=10s;
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
    location /p/probe { internal; proxy_pass http://127.0.0.1:$RPORT/probe; }
    location /p/late {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/late;
        proxy_read_timeout 20s;
    }
    location /p/capped {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/capped;
        proxy_read_timeout 20s;
    }
}
EOF

# the main error_log at debug too: the module's own timers (dispatch,
# webhooks, health) are logged there, and nginx's timer debug line reads
# each timer's data as a connection
my $t = MR::Test->new(http => $http,
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

# ---- a dispatched execution with the error log at debug level
$rc->set('/up', json => $CHAT);
my $e = final(create('m-up'));
is($e->{status}, 'COMPLETED', 'debug log: completed (no crash in the '
    . 'dispatch debug line)');

# ---- the dispatch endpoint with the real secret
SKIP: {
    my $dump = `mdb_dump -s meta ${\ $t->store} 2>/dev/null`;
    skip 'mdb_dump (lmdb-utils) not available', 10 unless $? == 0 && $dump;
    # the bytevalue format: a key line, then its value, in hex
    my $name = unpack 'H*', 'dsecret';
    my ($secret) = $dump =~ /^ $name\n ([0-9a-f]+)$/m;
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

    # a callback with the right token for an execution that does not exist
    my $cbname = unpack 'H*', 'cbkey';
    my ($cbkey) = $dump =~ /^ $cbname\n ([0-9a-f]+)$/m;
    my $ghost = sprintf 'exec_%012x%032x', 1, 42;
    my $token = hmac_sha256_hex($ghost, pack 'H*', $cbkey // '');
    my $r = $t->req(POST => "/v1/callbacks/$ghost?token=$token", {},
        { status => 'succeeded', output => { text => 'x' } });
    is($r->{status}, 404, 'callback for an unknown execution: 404');
    is($r->{json}{error}{code}, 'NOT_FOUND', '... with the envelope');

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
$rc->set('/probe', json => $CHAT, delay => 1.5);
ok(wait_for(sub {
    my $r = $t->admin(GET => '/routes')->{json};
    my ($p) = grep { $_->{name} eq 'probe' } @{ $r->{data} };
    $p && $p->{breaker} eq 'half_open';
}, 5), 'half-open after breaker_reset');

my @ids = map { create('m-probe') } 1 .. 3;
ok(wait_for(sub { $rc->count >= 1 }, 5), 'the probe reached the provider');
my @states = map { $t->get_exec($key, $_)->{json}{status} } @ids;
is($rc->count, 1, 'one provider request while the probe is in flight');
is(scalar(grep { $_ eq 'PENDING' } @states), 2,
    'the others wait (PENDING)') or diag "@states";
my @done = map { final($_) } @ids;
is(scalar(grep { $_->{status} eq 'COMPLETED' } @done), 3,
    'the probe closed the breaker: all three completed');
is($rc->count, 3, 'three provider requests in all');

# ---- an answer after expires_at, before the sweeper: dropped
$rc->set('/late', json => $CHAT, delay => 2);
my $id = create('m-late', timeout_seconds => 1);
$e = final($id, 20);
is($e->{status}, 'EXPIRED', 'answer after expires_at: EXPIRED, not '
    . 'COMPLETED');
is($e->{cost}, '0.00', 'nothing charged');

# ---- a capped route's waiting executions do not hold up another model
$rc->set('/capped', json => $CHAT, delay => 2);
my @capped = map { create('m-capped') } 1 .. 20;
$rc->set('/up', json => $CHAT);
$e = final(create('m-up'), 5);
is($e->{status}, 'COMPLETED', 'another model completes while 20 wait '
    . 'for a capped route');
my $pending = grep { $t->get_exec($key, $_)->{json}{status} eq 'PENDING' }
    @capped;
ok($pending >= 17, "capped executions still waiting ($pending of 20)");
$t->req(POST => "/v1/executions/$_/cancel", auth($key)) for @capped;

my $v = $t->verify($acct->{org});
ok($v->{ok}, 'ledger verifies') or diag explain $v;

$t->done;
