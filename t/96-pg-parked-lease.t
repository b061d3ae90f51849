# PostgreSQL, two nodes: a delivery claimed again after its lease ended
# and parked behind an earlier delivery of its execution is no longer
# leased: the outcome of its old lease, when it comes, is dropped.
#
# A parked delivery kept the token of the lease that had ended, so the
# send of that lease still counted as the delivery's own: its outcome
# was recorded while an earlier event of the execution was still to be
# delivered (a success there delivers the events out of order), and a
# retry of the delivery did not make it due.  Parking now clears the
# token (mr_rule_dlv_park()).
#
# execution.started succeeds; node 0 sends execution.completed, which
# the receiver holds, and node 0's worker stops.  A retry of
# execution.started from node 1 fails twice (it is due again 30 s
# later); after the completed delivery's lease node 1 claims it and
# parks it behind the started one.  The receiver answers node 0's send
# and node 0 goes on: its outcome comes after the lease and is dropped.
# Retries of both then deliver them, in order.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $rc = MR::Receiver->new;
$rc->start;

my $http = sim_http('modelroute_webhook_allow_private on;',
    'modelroute_webhook_retry 1s 30s;', 'modelroute_webhook_timeout 4s;',
    'modelroute_webhook_max_age 10m;');

# node 0 logs at info too: a dropped outcome's line
my $n0 = MR::Test->new(store => 'postgres', workers => 1, http => $http,
    extra_main => "error_log %%PREFIX%%/logs/info.log info;\n");
my $n1 = MR::Test->new(store => 'postgres', workers => 1, http => $http,
    db => $n0->db);
$n0->start;

my $acc = $n0->new_account(credit => '10.00');
my $key = $acc->{key};

# started succeeds; completed is held
$rc->set('/h', status => 200,
    cases => [ [ '"execution.completed"', { hold => 'd2' } ] ]);
my $ep = wh_create($n0, $key, { url => $rc->url('/h') });
is($ep->{status}, 201, 'an endpoint') or diag $ep->{body};

my $x = $n0->create_exec($key, $n0->exec_body(model => 'm-sim'));
is($x->{status}, 202, 'an execution') or diag $x->{body};
my $exec = $x->{json}{id} // 'exec_none';

# the node that answers the API (node 0 until its worker stops)
my $api = $n0;

sub of_type {
    my ($type) = @_;
    my ($d) = grep { ($_->{event_type} // '') eq $type }
        @{ wh_exec_deliveries($api, $key, $exec) // [] };
    return $d // {};
}

sub sends {
    my ($type) = @_;
    return grep { ((event_of($_) // {})->{event_type} // '') eq $type }
        $rc->requests_to('/h');
}

ok(wait_for(sub {
    (of_type('execution.started')->{status} // '') eq 'succeeded' }, 30),
    'execution.started delivered');
my $d1 = of_type('execution.started')->{id} // 'dlv_none';
ok(wait_for(sub { sends('execution.completed') == 1 }, 30),
    'node 0 sent execution.completed: held by the receiver');
my $d2 = of_type('execution.completed')->{id} // 'dlv_none';

my ($w0) = $n0->worker_pids;
ok($w0, "node 0's worker");
kill 'STOP', $w0;
my $lease = $n0->psql("SELECT due_ms FROM mr_deliveries WHERE id = '$d2'");
like($lease, qr/^\d+$/, "the completed delivery's lease ends at $lease");

# node 1 sends started again: it fails twice, then waits 30 s
$rc->set('/h', status => 500,
    cases => [ [ '"execution.completed"', { status => 200 } ] ]);
$n1->start;
$api = $n1;
my $r = $n1->req(POST => "/v1/webhooks/deliveries/$d1/retry", auth($key));
is($r->{status}, 202, 'a retry of execution.started (node 1)')
    or diag $r->{body};
ok(wait_for(sub {
    @{ of_type('execution.started')->{attempts} // [] } == 2 }, 30),
    'it failed twice: pending, due again in 30 s')
    or diag explain of_type('execution.started');
ok(wait_for(sub {
    my $due = $n0->psql("SELECT due_ms FROM mr_deliveries WHERE id = '$d2'");
    $due ne $lease }, 30, 0.05),
    'node 1 claimed execution.completed after its lease: parked');
is(sends('execution.completed'), 1, '... and did not send it');

# node 0's send is answered; node 0 goes on
$rc->release('d2');
kill 'CONT', $w0;
sub info_log {
    open my $fh, '<', $n0->prefix . '/logs/info.log' or return '';
    local $/;
    return <$fh>;
}
my $dropped = "an attempt of $d2 ended after its delivery was deleted or "
    . 'its lease had passed; its outcome was dropped';
$dropped = qr/\Q$dropped\E/;
ok(wait_for(sub {
    info_log() =~ $dropped
        || @{ (of_type('execution.completed')->{attempts}) // [] } }, 30),
    "node 0's outcome came");
like(info_log(), $dropped, "... after the lease: dropped");
is(scalar @{ of_type('execution.completed')->{attempts} // [] }, 0,
    '... not among the attempts of the delivery, which waits')
    or diag explain of_type('execution.completed');
is(of_type('execution.completed')->{status}, 'pending',
    'execution.completed still pending behind execution.started');

# retries of both: started goes, then completed
$rc->set('/h', status => 200);
$r = $n1->req(POST => "/v1/webhooks/deliveries/$d1/retry", auth($key));
is($r->{status}, 202, 'a retry of execution.started') or diag $r->{body};
ok(wait_for(sub {
    (of_type('execution.started')->{status} // '') eq 'succeeded' }, 30),
    'execution.started delivered');
$r = $n1->req(POST => "/v1/webhooks/deliveries/$d2/retry", auth($key));
is($r->{status}, 202, 'a retry of execution.completed') or diag $r->{body};
ok(wait_for(sub {
    (of_type('execution.completed')->{status} // '') eq 'succeeded' }, 30),
    '... due at once: delivered');
is(scalar @{ of_type('execution.completed')->{attempts} // [] }, 1,
    '... with one attempt, its own');
my @c = sends('execution.completed');
my @s = sends('execution.started');
is(scalar @c, 2, 'execution.completed sent twice: node 0, then node 1');
ok(@c == 2 && @s && $c[1]{arrived} > $s[-1]{arrived},
    "node 1's send of it came after execution.started's last one");

my $v = $n1->verify($acc->{org});
ok($v->{ok}, 'verify exact') or diag explain $v;

$n1->stop;
$n0->stop;
$n1->check_log;
$n0->check_log;
done_testing;
