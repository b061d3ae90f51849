# What one account's failures may do to a shared route's circuit breaker
# (issue 10, item 6), played as an attacker.
#
# A FAILED execution costs nothing, and a timeout after the provider took
# the request may be the input's doing (a long answer asked for): on
# main, a handful of executions built to run past the route's timeout
# opened the breaker for every account.  The rule (README, "Circuit
# breaker"): breaker counted failures in a row open it when breaker of
# them are the provider's own failures (no connection, a 5xx, an
# unusable answer, ...), or when attempts of two accounts or more timed
# out among them; a half-open probe's timeout opens it again only if
# another account's attempt timed out since it opened.
#
#  1. Account A's six slow executions (breaker=3) all time out: the
#     breaker stays closed, and account B's execution completes.
#  2. A provider that refuses connections opens it with one account's
#     traffic alone (a genuinely failing provider).
#  3. A provider that hangs for everyone: A's timeouts do not open it,
#     B's timeout with them does.
#  4. A breaker opened by the provider's failure, half-open: A's slow
#     probe times out and it is not opened again (it stays half-open:
#     another probe may go); B's probe closes it.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver;

my $rc = MR::Receiver->new;
$rc->start;
my $RP = $rc->port;
my $DEAD = MR::Test::free_port();    # nobody listens there

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_route shared /p/shared protocol=openai_chat timeout=1s
                 breaker=3 breaker_reset=1h;
modelroute_route down   /p/down   protocol=openai_chat timeout=5s
                 breaker=3 breaker_reset=1h;
modelroute_route hung   /p/hung   protocol=openai_chat timeout=1s
                 breaker=3 breaker_reset=1h;
modelroute_route probe  /p/probe  protocol=openai_chat timeout=1s
                 breaker=1 breaker_reset=4s;
modelroute_model m-shared per_request=0.01 routes=shared attempts=1;
modelroute_model m-down   per_request=0.01 routes=down attempts=1;
modelroute_model m-hung   per_request=0.01 routes=hung attempts=1;
modelroute_model m-probe  per_request=0.01 routes=probe attempts=1;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/shared { internal; proxy_pass http://127.0.0.1:$RP/shared; }
    location /p/down   { internal; proxy_pass http://127.0.0.1:$DEAD/down; }
    location /p/hung   { internal; proxy_pass http://127.0.0.1:$RP/hung; }
    location /p/probe  { internal; proxy_pass http://127.0.0.1:$RP/probe; }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;

my $CHAT = { id => 'c', object => 'chat.completion', choices => [ {
    index => 0, finish_reason => 'stop',
    message => { role => 'assistant', content => 'ok' } } ] };

# an input built to run past the route's timeout: the provider takes it
# and works on it for 4 s (the route's timeout is 1 s)
my $SLOW = 'SLOW: write ten thousand words';
my %slow_rules = (json => $CHAT, cases => [ [ $SLOW, { delay => 4 } ] ]);

my $A = $t->new_account(credit => '10.00');
my $B = $t->new_account(credit => '10.00');

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub create {
    my ($acc, $model, $prompt) = @_;
    my $r = $t->create_exec($acc->{key},
        $t->exec_body(model => $model, input => { prompt => $prompt }));
    is($r->{status}, 202, "$model: created") or diag $r->{body};
    return [ $acc, $r->{json}{id} // 'exec_none' ];
}

sub final {
    my ($x) = @_;
    my ($acc, $id) = @$x;
    my $last = {};
    wait_for(sub {
        my $r = $t->get_exec($acc->{key}, $id);
        $last = $r->{json} if $r->{status} == 200 && ref $r->{json};
        $TERMINAL{ $last->{status} // '' };
    }, 30);
    return $last;
}

sub route { $t->route_state($_[0]) }

# ------------------------------ 1. one account's slow executions, B's next

{
    $rc->set('/shared', %slow_rules);
    my @x = map { create($A, 'm-shared', "$SLOW, please ($_)") } 1 .. 6;
    my @e = map { final($_) } @x;
    is(scalar(grep { ($_->{status} // '') eq 'FAILED'
        && (($_->{error} // {})->{code} // '') eq 'GENERATION_TIMEOUT' } @e),
        6, 'A: its six slow executions time out (GENERATION_TIMEOUT)')
        or diag explain [ map { [ $_->{status}, $_->{error} ] } @e ];
    is(scalar(grep { ($_->{cost} // '') eq '0.00' } @e), 6,
        'A: and cost it nothing');
    is($rc->count(path => '/shared'), 6, 'A: each one reached the provider');
    my $rs = route('shared');
    is($rs->{breaker}, 'closed', 'the route\'s breaker is still closed '
        . '(breaker=3, six timeouts of one account)') or diag explain $rs;
    is($rs->{consecutive_failures}, 6, '... the timeouts are counted');

    my $e = final(create($B, 'm-shared', 'a short question'));
    is($e->{status}, 'COMPLETED', 'B: its execution on the route completes')
        or diag explain $e;
    $rs = route('shared');
    is($rs->{consecutive_failures}, 0, 'B\'s success ends the run');
}

# ------------------------------ 2. a provider that refuses connections

{
    my @e = map { final(create($A, 'm-down', "question $_")) } 1 .. 3;
    is(scalar(grep { (($_->{error} // {})->{code} // '') eq
        'GENERATION_FAILED' } @e), 3, 'down: three failed attempts');
    my $rs = route('down');
    is($rs->{breaker}, 'open', 'down: the provider\'s own failures open the '
        . 'breaker, one account\'s traffic alone') or diag explain $rs;
    my $e = final(create($B, 'm-down', 'B asks'));
    is(($e->{error} // {})->{code}, 'MODEL_UNAVAILABLE',
        'down: then B\'s execution fails at once, MODEL_UNAVAILABLE');
    ok(!@{ $e->{attempts} // [] }, '... without an attempt');
}

# ------------------------------ 3. a provider that hangs for everyone

{
    $rc->set('/hung', json => $CHAT, delay => 4);
    my @e = map { final($_) }
        map { create($A, 'm-hung', "hello $_") } 1 .. 3;
    is(scalar(grep { ($_->{error} // {})->{code} eq 'GENERATION_TIMEOUT' }
        @e), 3, 'hung: A\'s three attempts time out');
    is(route('hung')->{breaker}, 'closed',
        'hung: A\'s timeouts alone do not open it');
    my $e = final(create($B, 'm-hung', 'hello from B'));
    is(($e->{error} // {})->{code}, 'GENERATION_TIMEOUT',
        'hung: B\'s attempt times out too');
    my $rs = route('hung');
    is($rs->{breaker}, 'open', 'hung: with another account\'s timeout, the '
        . 'breaker opens') or diag explain $rs;
    $e = final(create($A, 'm-hung', 'again'));
    is(($e->{error} // {})->{code}, 'MODEL_UNAVAILABLE',
        'hung: then executions fail at once, MODEL_UNAVAILABLE');
}

# ------------------------------ 4. the half-open probe

{
    # the provider fails (a 500): breaker=1 opens it
    $rc->set('/probe', json => $CHAT, cases => [
        [ 'BROKEN', { status => 500, json => { error => {
            message => 'boom', type => 'server_error' } } } ],
        [ $SLOW, { delay => 4 } ] ]);
    my $e = final(create($B, 'm-probe', 'BROKEN'));
    is(($e->{error} // {})->{code}, 'GENERATION_FAILED', 'probe: a 500');
    my $rs = route('probe');
    is($rs->{breaker}, 'open', 'probe: the breaker opened') or diag explain $rs;
    ok(wait_for(sub { (route('probe')->{breaker} // '') eq 'half_open' }, 20),
        'probe: half-open after breaker_reset');

    # A's slow execution is the probe; it times out
    $e = final(create($A, 'm-probe', "$SLOW, as the probe"));
    is(($e->{error} // {})->{code}, 'GENERATION_TIMEOUT',
        'probe: A\'s slow probe times out');
    # (on main it opened again, for breaker_reset: 4 s from the failure)
    $rs = route('probe');
    is($rs->{breaker}, 'half_open',
        'probe: A\'s timeout does not open the breaker again')
        or diag explain $rs;
    ok(!defined $rs->{open_until}, '... no open_until');

    # B's probe goes through and closes it
    $e = final(create($B, 'm-probe', 'a plain question'));
    is($e->{status}, 'COMPLETED', 'probe: B\'s probe completes')
        or diag explain $e;
    is(route('probe')->{breaker}, 'closed', 'probe: closed');
}

for my $acc ($A, $B) {
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, 'the ledger verifies') or diag explain $v;
}

$rc->stop;
$t->done;
