# A retry of a delivery that is being sent: that send is the retry, on a
# new schedule.
#
# POST /v1/webhooks/deliveries/{id}/retry made the delivery due at once
# whatever it was doing: one being sent (claimed, its lease running) was
# claimed again and sent a second time while the first send was still in
# flight, and the first one's outcome, when it came, was dropped as late
# (a success missing from the delivery's attempts, a failure not counted
# in the endpoint's health).  Now a retry of a delivery in flight answers
# 202 and leaves that send going; like any retry it gives the delivery a
# new schedule and a new max age, which that send's outcome follows.
#
# A schedule of one retry after 1 s: the first send fails (500); the
# second, the last of the schedule, is held by the receiver; three
# retries meanwhile send nothing more; the held send then fails too: on
# the new schedule the delivery is sent again a second later (without
# it, it would have failed for good).  A retry of the failed delivery
# sends it again.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $rc = MR::Receiver->new;
$rc->start;

my $t = MR::Test->new(workers => 2,
    extra_http => "modelroute_webhook_allow_private on;\n"
        . "modelroute_webhook_timeout 30s;\n"
        . "modelroute_webhook_retry 1s;\n");
$t->start;

my $acc = $t->new_account(credit => '10.00');
my $key = $acc->{key};
my $w = wh_create($t, $key, { url => $rc->url('/h') });
is($w->{status}, 201, 'an endpoint') or diag $w->{body};
my $ep = $w->{json}{id} // 'wh_none';

$rc->set('/h', status => 500);
my $ev = $t->req(POST => "/v1/webhooks/endpoints/$ep/test", auth($key));
is($ev->{status}, 202, 'a test event') or diag $ev->{body};
my $dlv = $ev->{json}{delivery_id} // 'dlv_none';
is(scalar $rc->wait_requests(1, path => '/h', timeout => 20), 1,
    'the first send fails (500)');
$rc->set('/h', status => 500, hold => 'go');
is(scalar $rc->wait_requests(2, path => '/h', timeout => 20), 2,
    'the second, the last of its schedule, is held by the receiver');

my @r = map {
    $t->req(POST => "/v1/webhooks/deliveries/$dlv/retry", auth($key))
} 1 .. 3;
is_deeply([ map { $_->{status} } @r ], [ 202, 202, 202 ],
    'three retries while it is sent: 202');
is($r[0]{json}{status}, 'pending', '... the delivery, pending');
ok(wh_sync($t, $rc), 'the sender claimed since');
is($rc->count(path => '/h'), 2, 'no other send while one is in flight');

$rc->set('/h', status => 500);
$rc->release('go');
is(scalar $rc->wait_requests(3, path => '/h', timeout => 20), 3,
    'the held send failed: on the new schedule, sent again');
my $d = wait_delivery($t, $key, $ep, $dlv,
    sub { $_[0]{status} eq 'failed' }, 20);
is($d->{status}, 'failed', 'then failed, its new schedule done');
is(scalar @{ $d->{attempts} // [] }, 3, 'three attempts recorded, the '
    . 'held one too');
is($rc->count(path => '/h'), 3, 'three sends');

$rc->set('/h', status => 200);
my $again = $t->req(POST => "/v1/webhooks/deliveries/$dlv/retry",
    auth($key));
is($again->{status}, 202, 'a retry of the failed delivery: 202');
$d = wait_delivery($t, $key, $ep, $dlv,
    sub { $_[0]{status} eq 'succeeded' }, 20);
is($d->{status}, 'succeeded', '... sent again, delivered');
is($rc->count(path => '/h'), 4, 'four sends');

$t->stop;
$t->check_log;
done_testing;
