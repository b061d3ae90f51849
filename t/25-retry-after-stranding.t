# A long Retry-After must not strand the executions queued behind it
# (issue 9, item 6; README: "A retry that could not start before
# expires_at fails at once"): when no route of a model can be tried before
# an execution's expires_at, it fails at once with the code that says why
# (RATE_LIMITED), its hold released, instead of waiting PENDING until it
# expires with GENERATION_TIMEOUT.
#
# This fails until the dispatch branch's fix for that item is merged.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver;

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $t = MR::Test->new(http => <<"EOF");
modelroute_store %%STORE%%;
modelroute_route rs /p/rs protocol=openai_chat;
modelroute_route other /p/other protocol=openai_chat;
modelroute_model m-rs per_request=0.01 routes=rs attempts=3;
modelroute_model m-two per_request=0.01 routes=rs,other attempts=3;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/rs { internal; proxy_pass http://127.0.0.1:$RPORT/rs; }
    location /p/other { internal; proxy_pass http://127.0.0.1:$RPORT/other; }
}
EOF
$t->start;
my $acc = $t->new_account(credit => '10.00');
my $key = $acc->{key};

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub terminal {
    my ($id, $timeout) = @_;
    my $e = {};
    wait_for(sub {
        my $r = $t->get_exec($key, $id);
        $e = $r->{json} if $r->{status} == 200;
        $TERMINAL{ $e->{status} // '' };
    }, $timeout);
    return $e;
}

sub ts { parse_rfc3339($_[0] // '') // 0 }

# the only route answers 429 with Retry-After: 3600; the route is paused
# for an hour
$rc->set('/rs', status => 429, headers => { 'Retry-After' => 3600 },
    json => { error => { message => 'slow down', type => 'rate_limit_error' } });
$rc->set('/other', status => 429, headers => { 'Retry-After' => 3600 },
    json => { error => { message => 'slow down', type => 'rate_limit_error' } });
my $first = $t->create_exec($key, $t->exec_body(model => 'm-rs'))->{json}{id};
my $fe = terminal($first, 20);
is($fe->{status}, 'FAILED', 'the execution that got the 429 fails at once');
is($fe->{error}{code}, 'RATE_LIMITED', '... RATE_LIMITED');

# queued behind it, with 60 s to live: nothing can be tried before then
for my $model (qw(m-rs m-two)) {
    my $r = $t->create_exec($key, $t->exec_body(model => $model,
        timeout_seconds => 60));
    is($r->{status}, 202, "$model: created while its routes are paused");
    my $e = terminal($r->{json}{id} // 'exec_none', 30);
    is($e->{status}, 'FAILED', "$model: fails at once, not stranded PENDING")
        or diag explain $e;
    is($e->{error}{code}, 'RATE_LIMITED', "$model: RATE_LIMITED");
    ok(ts($e->{completed_at}) < ts($e->{expires_at}),
        "$model: before its expires_at");
    money_is($e->{cost}, '0.00', "$model: nothing charged");
}
my $b = $t->balance($key);
money_is($b->{held}, '0', 'every hold released');
ok($t->verify($acc->{org})->{ok}, 'verify ok');

$t->done;
$rc->stop;
