# A store that fills to its map size again and again keeps sweeping.
# Cycle after cycle, accounts fill a small store with large executions
# of varied sizes (that expire in 4 s, longer than a fill takes) until
# creates get 507; the executions expire and the
# retention purges them.  Every sweep must commit: one whose expiries use
# the last free pages must still leave its transaction the pages its
# commit needs ("work that frees space can always run").
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

MR::Test::lmdb_only('the sweeps of a store full at its map size commit');

my $http = MR::Test::default_http();
$http =~ s/client_max_body_size 64k;/client_max_body_size 256k;/;

my $t = MR::Test->new(http => "modelroute_store_map_size 2m;\n"
    . "modelroute_retention 1s;\nmodelroute_sweep_interval 200ms;\n$http");
$t->start;

my @acc = map { $t->new_account(credit => '1000.00') } 1 .. 8;

my $cycles = $ENV{MR_CYCLES} // 5;
for my $cycle (1 .. $cycles) {
    my ($n, $full) = (0);
    FILL: for my $round (1 .. 400) {
        for my $a (@acc) {
            my $size = 6_000 + int(rand(34_000));
            my $r = $t->create_exec($a->{key}, $t->exec_body(
                timeout_seconds => 4,
                input => { prompt => 'x' x $size, r => $round }));
            if ($r->{status} == 202) { $n++; next }
            next if $r->{status} == 403;
            $full = $r;
            last FILL;
        }
    }
    is($full && $full->{status}, 507, "cycle $cycle: full after $n creates");
    my $back = wait_for(sub {
        my $h = 0;
        $h += micros($t->balance($_->{key})->{held}) for @acc;
        $h == 0 && $t->create_exec($acc[0]{key},
            $t->exec_body(timeout_seconds => 4))->{status} == 202;
    }, 60, 0.25);
    ok($back, "cycle $cycle: expired, purged, creates accepted again");
    last unless $back;
}

for my $a (@acc) {
    my $v = $t->verify($a->{org});
    ok($v->{ok}, "verify $a->{org}") or diag explain $v;
}
my $log = $t->read_log;
my @lost = $log =~ /(the sweep was not committed)/g;
is(scalar @lost, 0, 'every sweep was committed');
my @waited = $log =~ /(steps did not fit in the store and wait)/g;
is(scalar @waited, 0, 'every expiry and purge fitted when it was due');

$t->done;
