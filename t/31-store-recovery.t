# A full store recovers by itself.  Accounts fill a small store with
# large executions until creates get 507; then they try everything that
# would write new data into the reserve kept for the work that frees
# space or releases money (webhook test events, endpoint changes that
# grow, delivery retries, new endpoints, keys, accounts): all refused
# with 507, so the reserve stays whole.  Without the operator doing
# anything, the executions expire (their holds are released), the
# retention purges them and their events, and creates succeed again.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

MR::Test::lmdb_only('a store full at its map size recovers by itself');

my $http = MR::Test::default_http();
$http =~ s/client_max_body_size 64k;/client_max_body_size 256k;/;

my $t = MR::Test->new(http => "modelroute_store_map_size 2m;\n"
    . "modelroute_retention 2s;\nmodelroute_sweep_interval 200ms;\n"
    . "modelroute_webhook_allow_private on;\n"
    . "modelroute_webhook_retry 1s;\n$http");
$t->start;
my $rc = MR::Receiver->new;
$rc->start;

# eight accounts (each may keep a quarter of the map), each with an
# endpoint that answers
my @acc = map { $t->new_account(credit => '100.00') } 1 .. 8;
for my $a (@acc) {
    my $r = wh_create($t, $a->{key}, { url => $rc->url('/ok') });
    $a->{wh} = $r->{json}{id} // 'wh_none';
    $r = $t->req(POST => "/v1/webhooks/endpoints/$a->{wh}/test",
        auth($a->{key}));
    $a->{dlv} = $r->{json}{delivery_id} // 'dlv_none';
}
ok($rc->wait_requests(8, path => '/ok'), 'a test event for each delivered');

# ---- fill: large executions that expire in 4 s, until the store is full
my $big = 'x' x 30_000;
my ($n, $full) = (0);
FILL: for my $round (1 .. 200) {
    for my $a (@acc) {
        my $r = $t->create_exec($a->{key}, $t->exec_body(timeout_seconds => 4,
            input => { prompt => $big, r => $round }));
        if ($r->{status} == 202) { $n++; next }
        next if $r->{status} == 403;       # that account's own limit
        $full = $r;
        last FILL;
    }
}
ok($n > 20, "$n large executions accepted");
is_error($full // {}, 507, 'STORAGE_FULL', 'then the store is full: 507');
my $held = 0;
$held += micros($t->balance($_->{key})->{held}) for @acc;
ok($held > 0, 'holds are open');

# ---- new data is refused in the reserve, however it comes
my ($tests, $refused) = (0, 0);
for my $i (1 .. 1500) {
    my $a = $acc[$i % @acc];
    my $r = $t->req(POST => "/v1/webhooks/endpoints/$a->{wh}/test",
        auth($a->{key}));
    if ($r->{status} == 202) { $tests++; next }
    $refused++ if $r->{status} == 507;
    last if $refused >= 16;
}
ok($refused >= 16, "webhook test events refused with 507 ($tests went in)");
for my $a (@acc) {
    my $r = $t->req(PATCH => "/v1/webhooks/endpoints/$a->{wh}",
        auth($a->{key}), { description => 'd' x 1000,
            headers => { map { ("X-Pad-$_" => 'p' x 200) } 1 .. 10 } });
    is_error($r, 507, 'STORAGE_FULL', 'a patch that grows an endpoint: 507');
    last;
}
is_error($t->req(POST => "/v1/webhooks/deliveries/$acc[0]{dlv}/retry",
    auth($acc[0]{key})), 507, 'STORAGE_FULL', 'a delivery retry: 507');
is_error(wh_create($t, $acc[0]{key}, { url => $rc->url('/more') }), 507,
    'STORAGE_FULL', 'a new endpoint: 507');
is_error($t->admin(POST => "/accounts/$acc[0]{org}/keys",
    { permission => 'full' }), 507, 'STORAGE_FULL', 'a new key: 507');
is_error($t->req(POST => "/v1/api-keys/$acc[0]{key_id}/rotate",
    auth($acc[0]{key})), 507, 'STORAGE_FULL', 'a key rotation: 507');
is_error($t->admin(POST => '/accounts', {}), 507, 'STORAGE_FULL',
    'a new account: 507');

# ---- by itself: expiry releases the holds, the retention frees the room
my $released = wait_for(sub {
    my $h = 0;
    $h += micros($t->balance($_->{key})->{held}) for @acc;
    return $h == 0;
}, 60, 0.25);
ok($released, 'every execution expired: the holds are released');

my $back = wait_for(sub {
    $t->create_exec($acc[0]{key}, $t->exec_body)->{status} == 202;
}, 60, 0.25);
ok($back, 'creates are accepted again, without the operator');
is(wh_create($t, $acc[1]{key}, { url => $rc->url('/new') })->{status}, 201,
    'and new endpoints');

for my $a (@acc) {
    my $v = $t->verify($a->{org});
    ok($v->{ok}, "verify $a->{org}") or diag explain $v;
}
my $log = $t->read_log;
unlike($log, qr/the sweep was not committed/,
    'the sweeps were committed all along');
unlike($log, qr/steps did not fit in the store/,
    'every expiry and purge fitted in the reserve when it was due');

$t->done;
$rc->stop;
