# A full store: new work gets 507 STORAGE_FULL and nothing is stored;
# reads, lists and cancels of accepted executions keep working (a cancel
# drops the execution's input: its room takes new work); a larger map
# size and a reload bring creates back.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

MR::Test::lmdb_only('the store full at its map size (507 STORAGE_FULL)');

sub http_with_map {
    my ($size) = @_;
    my $http = MR::Test::default_http();
    $http =~ s/client_max_body_size 64k;/client_max_body_size 256k;/;
    # one account fills the store: its own limit is not what is tested
    return "modelroute_store_map_size $size;\n"
        . "modelroute_account_limits bytes=1g;\n$http";
}

# The smallest map size the module accepts.
my $t = MR::Test->new(http => http_with_map('1m'));
my $size;
for my $s (qw(1m 2m 4m 8m 16m)) {
    $t->write_config(http => http_with_map($s));
    my ($rc) = $t->test_config;
    if ($rc == 0) { $size = $s; last }
}
ok($size, 'a small map size is accepted: ' . ($size // 'none'));
unless ($size) {
    done_testing();
    exit;
}
$t->start;

my $acc = $t->new_account(credit => '1000.00');
my $key = $acc->{key};
my $oth = $t->new_account(credit => '10.00');
my ($spare_key, $spare_id) = $t->admin_create_key($acc->{org}, 'full');

my $big = 'x' x 20_000;
my (@ids, $full);
for my $i (1 .. 5000) {
    my $r = $t->create_exec($key, $t->exec_body(
        input => { prompt => $big, i => $i }));
    if ($r->{status} == 202) {
        push @ids, $r->{json}{id};
        next;
    }
    $full = $r;
    last;
}
ok(@ids > 5, scalar(@ids) . " creates accepted before the store filled");
unless (ok($full, 'the store filled up')) {
    $t->done;
    exit;
}
my $e = is_error($full, 507, 'STORAGE_FULL', 'full store: 507 STORAGE_FULL');
ok($e && JSON::PP::is_bool($e->{retryable}) && $e->{retryable},
    'STORAGE_FULL is retryable');

my $held = MR::Test::micros($t->balance($key)->{held});
is($held, 48_000 * @ids, 'held = accepted holds only');

# Reads keep working.
my @missing = grep { $t->get_exec($key, $_)->{status} != 200 } @ids;
is(scalar @missing, 0, 'every accepted execution can be read');
is(scalar $t->list_all($key), scalar @ids, 'list shows every accepted one');
is($t->req(GET => '/v1/models', auth($key))->{status}, 200, 'models');
is($t->admin(GET => "/accounts/$acc->{org}")->{status}, 200,
    'admin account read');

# Changes to accepted executions keep working.
my $can = $t->req(POST => "/v1/executions/$ids[0]/cancel", auth($key));
is($can->{status}, 200, 'cancel in a full store: 200') or diag $can->{body};
is($can->{json}{status}, 'CANCELLED', 'cancel: CANCELLED');
my $can2 = $t->req(POST => "/v1/executions/$ids[1]/cancel", auth($key));
is($can2->{status}, 200, 'second cancel in a full store: 200');
is($t->get_exec($key, $ids[0])->{json}{status}, 'CANCELLED',
    'the cancel was stored');
money_is($t->balance($key)->{held}, sprintf('%.6f', 0.048 * (@ids - 2)),
    'cancelled holds released');

# Key revocation is a change, not new data.
my $rv = $t->admin(POST => "/keys/$spare_id/revoke");
is($rv->{status}, 200, 'revoke in a full store: 200');

# A cancelled execution keeps no input: its room is there for new work,
# until the store is full again.
my ($refill, $full2) = (0);
for my $i (1 .. 100) {
    my $r = $t->create_exec($key, $t->exec_body(
        input => { prompt => $big, refill => $i }));
    if ($r->{status} == 202) {
        push @ids, $r->{json}{id};
        $refill++;
        next;
    }
    $full2 = $r;
    last;
}
ok($refill >= 1, "the cancels' room took $refill large creates");
is_error($full2 // {}, 507, 'STORAGE_FULL', 'then the store is full again');

# New things: 507, nothing stored.
my $count = @ids;
for my $try (1 .. 3) {
    my $r = $t->create_exec($key, $t->exec_body(
        input => { prompt => $big }));
    is_error($r, 507, 'STORAGE_FULL', "large create again ($try): 507");
}
is_error($t->create_exec($key, $t->exec_body), 507, 'STORAGE_FULL',
    'small create: 507');
is_error($t->create_exec($oth->{key}, $t->exec_body), 507, 'STORAGE_FULL',
    'create by another account: 507');
is_error($t->admin(POST => '/accounts', { name => 'late' }), 507,
    'STORAGE_FULL', 'new account: 507');
is_error($t->admin(POST => "/accounts/$acc->{org}/keys",
    { permission => 'full' }), 507, 'STORAGE_FULL', 'new key: 507');
is_error($t->admin(POST => "/accounts/$oth->{org}/credit",
    { amount => '1.00' }), 507, 'STORAGE_FULL', 'credit: 507');
is(scalar $t->list_all($key), $count, 'nothing new stored');
is(scalar $t->list_all($oth->{key}), 0, 'nothing stored for the other');
money_is($t->balance($oth->{key})->{balance}, '10.00',
    'the refused credit changed nothing');
is(scalar @{ $t->admin(GET => "/accounts/$acc->{org}/keys")->{json}{data} },
    2, 'no key added');
my $v = $t->verify($acc->{org});
ok($v->{ok}, 'verify ok in a full store') or diag explain $v;
is($v->{executions}, $count, 'verify: every accepted execution');
is($v->{open_executions}, $count - 2, 'verify: open executions');

# A restart keeps all of it, and the store is still full.
$t->restart;
is(scalar $t->list_all($key), $count, 'after restart: all there');
is_error($t->create_exec($key, $t->exec_body), 507, 'STORAGE_FULL',
    'after restart: still full');

# Raise the map size and reload: creates work again.
(my $n, my $unit) = $size =~ /^(\d+)(\w)$/;
$t->write_config(http => http_with_map(($n * 8) . $unit));
$t->reload;
my $again = $t->create_exec($key, $t->exec_body);
is($again->{status}, 202, 'after a larger map size and reload: 202')
    or diag $again->{body};
ok($t->verify($acc->{org})->{ok}, 'verify ok at the end');

$t->done;
