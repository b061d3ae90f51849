# Expiries that do not fit in one transaction go in chunks.  A small
# store is filled with open executions whose inputs are large, and whose
# accounts have eight webhook endpoints each: expiring all of them at
# once writes an event and eight deliveries each, more than the store's
# free pages, while each expiry, once committed, frees its input.  The
# sweep does not fit as a whole (a failed commit is counted) and must
# expire them chunk after chunk, each committed before the next (what
# one frees is there for the next): no step waits for room, no sweep is
# lost, every hold is released.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);
use MR::Metrics qw(parse_metrics metric);

MR::Test::lmdb_only('expiries in chunks in a full store');

my $http = MR::Test::default_http();
$http =~ s/client_max_body_size 64k;/client_max_body_size 256k;/;

# one worker: two sweepers taking turns at the same entries would make
# each other's chunks wait
my $t = MR::Test->new(workers => 1, http => "modelroute_store_map_size 2m;\n"
    . "modelroute_account_limits bytes=1g;\n"
    . "modelroute_sweep_interval 5s;\n"
    . "modelroute_webhook_allow_private on;\n$http");
$t->start;
my $rc = MR::Receiver->new;
$rc->start;

my @acc = map { $t->new_account(credit => '100.00') } 1 .. 2;
for my $a (@acc) {
    for my $i (1 .. 8) {
        is(wh_create($t, $a->{key}, { url => $rc->url("/ok$i"),
            events => ['execution.expired'] })->{status}, 201,
            "endpoint $i") or last;
    }
}

# open executions of 20 KB that all expire within a second or so, and
# in one sweep (every 5 s)
my $big = 'x' x 20_000;
my ($n, $full) = (0);
for my $i (1 .. 400) {
    my $r = $t->create_exec($acc[$i % 2]{key}, $t->exec_body(
        timeout_seconds => 3, input => { prompt => $big, i => $i }));
    if ($r->{status} == 202) { $n++; next }
    $full = $r;
    last;
}
ok($n > 40, "$n executions accepted");
is_error($full // {}, 507, 'STORAGE_FULL', 'then the store is full');

ok(wait_for(sub {
    my $h = 0;
    $h += micros($t->balance($_->{key})->{held}) for @acc;
    return $h == 0;
}, 30, 0.25), 'every execution expired: the holds are released');
ok($rc->wait_requests(8 * $n, timeout => 60),
    'an execution.expired delivery for each endpoint');

for my $a (@acc) {
    my $v = $t->verify($a->{org});
    ok($v->{ok}, "verify $a->{org}") or diag explain $v;
}
# the sweep did not fit as a whole (a failed commit), and went in chunks
my $m = parse_metrics($t->admin(GET => '/metrics')->{body} // '');
cmp_ok(metric($m, 'modelroute_store_commits_total', result => 'failed') // 0,
    '>=', 1, 'the expiries did not fit in one transaction');
my $log = $t->read_log;
unlike($log, qr/the sweep was not committed/, 'every sweep was committed');
unlike($log, qr/steps did not fit in the store/,
    'no expiry waited for room');

$t->done;
$rc->stop;
