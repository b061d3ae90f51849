# Regressions found in review: money and deadline overflows, a full store
# that never recovered, verify between two snapshots, nginx's own error
# page behind a slow client.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);

# ---- prices above $1,000,000 are refused by nginx -t
{
    my $t = MR::Test->new(extra_http =>
        "modelroute_model huge per_request=18446744073709;\n");
    my ($rc, $out) = $t->test_config;
    isnt($rc, 0, 'a price that would overflow is refused');
    like($out, qr/modelroute_model.*invalid price/, 'the message names it');
}

my $http = MR::Test::default_http();
$http =~ s/client_max_body_size 64k;/client_max_body_size 256k;/;
$http =~ s{location /admin/ \{ modelroute_admin; \}}
          {location /admin/ { modelroute_admin; }
    location /slow/ { modelroute_api; limit_rate 100; deny all; }};

my $t = MR::Test->new(http => "modelroute_store_map_size 2m;\n"
    . "modelroute_account_limits bytes=1g;\n"
    . "modelroute_retention 1s;\nmodelroute_sweep_interval 200ms;\n$http");
$t->start;

# ---- amounts that overflow 64 bits are refused, never wrapped
my $acc = $t->new_account(credit => '1000.00');
for my $amount ('18446744073709', '18446744073710', '9223372036854.775808') {
    my $r = $t->admin(POST => '/accounts', { credit => $amount });
    is_error($r, 400, 'INPUT_VALIDATION_ERROR', "account credit $amount");
    $r = $t->admin(POST => "/accounts/$acc->{org}/credit",
        { amount => $amount });
    is_error($r, 400, 'INPUT_VALIDATION_ERROR', "credit $amount");
}
money_is($t->balance($acc->{key})->{balance}, '1000.00', 'balance intact');

# ---- a huge timeout_seconds is a 400, not a wrapped deadline
for my $tmo (18446744073709552, 9223372036854776) {
    my $r = $t->create_exec($acc->{key},
        $t->exec_body(timeout_seconds => $tmo));
    is_error($r, 400, 'INPUT_VALIDATION_ERROR', "timeout_seconds $tmo");
}

# ---- nginx's own refusal, enveloped, reaches a slow client in full (sent
# at limit_rate; an answer held until send_timeout, 60 s, would leave the
# client's read idle past its 10 s timeout: a 599 here)
{
    my $r = $t->req(GET => '/slow/v1/balance');
    is_error($r, 403, 'FORBIDDEN', 'deny all in a modelroute location');
}

# ---- verify is one snapshot: never ok:false while creates commit
{
    my $poller = $t->background(sub {
        my ($stopped) = @_;
        my ($bad, $n) = (0, 0);
        until ($stopped->()) {
            my $v = $t->admin(GET => "/accounts/$acc->{org}/verify");
            $n++;
            $bad++ unless $v->{json} && $v->{json}{ok};
        }
        return { n => $n, bad => $bad };
    });
    $t->parallel(4, sub {
        for my $j (1 .. 30) {
            $t->create_exec($acc->{key}, $t->exec_body);
        }
        return 1;
    });
    my $p = $t->stop_background($poller);
    ok($p->{n} > 0, "verify polled $p->{n} times during creates");
    is($p->{bad}, 0, 'every verify was ok');
}

# ---- a store that filled up takes new work again once space is freed
# (LMDB: a PostgreSQL store has no map to fill)
if ($t->backend ne 'lmdb') {
    $t->done;
    exit;
}
my @ids;
my $full;
for my $i (1 .. 5000) {
    my $r = $t->create_exec($acc->{key},
        $t->exec_body(input => { prompt => 'x' x 20000, i => $i }));
    if ($r->{status} == 202) { push @ids, $r->{json}{id}; next }
    $full = $r;
    last;
}
is_error($full, 507, 'STORAGE_FULL', 'the store fills up');
ok(@ids > 10, scalar(@ids) . ' large executions fitted');
my @not_cancelled = grep {
    $t->req(POST => "/v1/executions/$_/cancel", auth($acc->{key}))->{status}
        != 200 } @ids;
is(scalar @not_cancelled, 0, 'each cancelled in the full store (200)');
my $back = wait_for(sub {
    $t->create_exec($acc->{key}, $t->exec_body)->{status} == 202;
}, 20, 0.2);
ok($back, 'after cancel and retention purge, creates are accepted again');
ok($t->verify($acc->{org})->{ok}, 'ledger invariant');

$t->done;
