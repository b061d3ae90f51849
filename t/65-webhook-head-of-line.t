# An endpoint's queue never stops behind deliveries that wait.
#
# The events of one execution reach an endpoint in order: execution.completed
# waits while execution.started is pending.  A started delivery that failed
# is due again a retry step later, after its completed one was made; a claim
# reads a bounded number of the queue's first due entries (64 per target).
# With more than that many executions in that state, every entry a claim
# read was a completed delivery that waits, the started ones were never
# reached, and the endpoint's queue stopped for good.  A delivery that waits
# now goes back in the queue behind the one it waits for.
#
# Setting it up without a stop of another kind: the endpoint's started
# deliveries fail (500) until at least 80 of them have failed once; the
# endpoint is deactivated after 10 failures in a row and activated again by
# the test (PATCH is_active) until then.  Then the receiver answers 200 and
# every event must arrive, in order per execution.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $rc = MR::Receiver->new;
$rc->start;

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_webhook_allow_private on;
modelroute_webhook_retry 4s;
modelroute_webhook_timeout 10s;
modelroute_webhook_max_age 10m;
modelroute_route sim /p/sim protocol=openai_chat;
modelroute_model m-ok per_request=0.01 routes=sim;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/sim { internal; modelroute_simulator; }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;

my $N = 100;
my $acc = $t->new_account(credit => '100.00');
my $key = $acc->{key};

# started fails, completed succeeds (it is only sent after started anyway)
$rc->set('/hook', status => 200,
    cases => [ [ '"execution.started"', { status => 500 } ] ]);

my $ep = $t->req(POST => '/v1/webhooks/endpoints', auth($key),
    { url => $rc->url('/hook') });
is($ep->{status}, 201, 'an endpoint');
my $whid = $ep->{json}{id} // 'wh_none';

my %ids;
for my $i (1 .. $N) {
    my $x = $t->create_exec($key, $t->exec_body(model => 'm-ok'));
    $ids{ $x->{json}{id} } = 1 if $x->{status} == 202;
}
is(scalar keys %ids, $N, "$N executions");

ok(wait_for(sub {
    my $l = $t->req(GET => '/v1/executions?status=COMPLETED&limit=100',
        auth($key))->{json}{data} // [];
    @$l == $N;
}, 60, 0.3), 'all completed');

sub ev { event_of($_[0]) // {} }

sub failed_started {
    my %f;
    for my $r ($rc->requests_to('/hook')) {
        my $e = ev($r);
        next unless ($e->{event_type} // '') eq 'execution.started';
        $f{ $e->{execution_id} // '' } = 1;
    }
    return scalar keys %f;
}

# the started deliveries fail, 10 at a time between deactivations
my $deadline = time + 90;
while (failed_started() < 80 && time < $deadline) {
    my $w = $t->req(GET => "/v1/webhooks/endpoints/$whid", auth($key));
    if (!($w->{json}{is_active} // 1)) {
        $t->req(PATCH => "/v1/webhooks/endpoints/$whid", auth($key),
            { is_active => JSON::PP::true() });
    }
    select undef, undef, undef, 0.2;
}
cmp_ok(failed_started(), '>=', 80, 'at least 80 started deliveries failed '
    . 'once (their completed ones wait, in front of them)');

# the receiver recovers, the endpoint goes on
$rc->set('/hook', status => 200);
$t->req(PATCH => "/v1/webhooks/endpoints/$whid", auth($key),
    { is_active => JSON::PP::true() });

my %got;
my $all = wait_for(sub {
    %got = ();
    for my $r ($rc->requests_to('/hook')) {
        my $e = ev($r);
        push @{ $got{ $e->{event_type} // '' } }, $e;
    }
    my %done = map { ($_->{execution_id} // '') => 1 }
        @{ $got{'execution.completed'} // [] };
    (grep { $done{$_} } keys %ids) == $N;
}, 60, 0.5);
ok($all, "every execution's completed event arrives (the queue did not "
    . 'stop behind the ones that wait)');

# in order per execution: its started ones (the failed ones, then the one
# that succeeded) all before its completed one
my $bad = 0;
my (%last_started, %first_completed);
my @reqs = $rc->requests_to('/hook');
for my $i (0 .. $#reqs) {
    my $e = ev($reqs[$i]);
    my $id = $e->{execution_id} // '';
    my $type = $e->{event_type} // '';
    $last_started{$id} = $i if $type eq 'execution.started';
    $first_completed{$id} //= $i if $type eq 'execution.completed';
}
for my $id (keys %ids) {
    $bad++ unless defined $last_started{$id} && defined $first_completed{$id}
        && $last_started{$id} < $first_completed{$id};
}
is($bad, 0, 'per execution, every started attempt came before its '
    . 'completed event');

ok($t->verify($acc->{org})->{ok}, 'ledger invariant');

$t->stop;
$t->check_log;
$rc->stop;
done_testing;
