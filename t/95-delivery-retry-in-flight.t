# A retry of a delivery that is being sent: that send is the retry.
#
# POST /v1/webhooks/deliveries/{id}/retry made the delivery due at once
# whatever it was doing: one being sent (claimed, its lease running) was
# claimed again and sent a second time while the first send was still in
# flight, and the first one's outcome, when it came, was dropped as late
# (a success missing from the delivery's attempts, a failure not counted
# in the endpoint's health).  Now a retry of a delivery in flight answers
# 202 with the delivery as it is; a retry once it ended (failed here)
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
        . "modelroute_webhook_retry 1h;\n");
$t->start;

my $acc = $t->new_account(credit => '10.00');
my $key = $acc->{key};
my $w = wh_create($t, $key, { url => $rc->url('/held') });
is($w->{status}, 201, 'an endpoint') or diag $w->{body};
my $ep = $w->{json}{id} // 'wh_none';

$rc->set('/held', status => 200, hold => 'go');
my $ev = $t->req(POST => "/v1/webhooks/endpoints/$ep/test", auth($key));
is($ev->{status}, 202, 'a test event') or diag $ev->{body};
my $dlv = $ev->{json}{delivery_id} // 'dlv_none';
is(scalar $rc->wait_requests(1, path => '/held', timeout => 20), 1,
    'its delivery is being sent (the receiver holds it)');

my @r = map {
    $t->req(POST => "/v1/webhooks/deliveries/$dlv/retry", auth($key))
} 1 .. 3;
is_deeply([ map { $_->{status} } @r ], [ 202, 202, 202 ],
    'three retries while it is sent: 202');
is($r[0]{json}{status}, 'pending', '... the delivery, pending');
ok(wh_sync($t, $rc), 'the sender claimed since');
is($rc->count(path => '/held'), 1, 'no second send while the first is '
    . 'in flight');

$rc->release('go');
my $d = wait_delivery($t, $key, $ep, $dlv,
    sub { $_[0]{status} eq 'succeeded' }, 20);
is($d->{status}, 'succeeded', 'the send in flight succeeded');
is(scalar @{ $d->{attempts} // [] }, 1, '... and is in its attempts');
is($rc->count(path => '/held'), 1, 'sent once');

# once it ended, a retry sends it again
my $again = $t->req(POST => "/v1/webhooks/deliveries/$dlv/retry",
    auth($key));
is($again->{status}, 202, 'a retry once it succeeded: 202');
is(scalar $rc->wait_requests(2, path => '/held', timeout => 20), 2,
    '... sent again');

$t->stop;
$t->check_log;
done_testing;
