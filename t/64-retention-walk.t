# The retention's walk is bounded: executions that are not ended yet (a
# model without routes, a long timeout) and older than a short retention
# stand in front of ended ones.  Each sweep reads at most
# MR_STORE_WALK_MAX (1,024) of them and the next one goes on from there,
# so the ended executions behind them are purged after a few sweeps, and
# no sweep walks all of them in the store's thread (it did: every sweep,
# once a second, walked every open execution older than the retention).
#
# The sweeper's debug line says how many entries the retention read; the
# main error_log is at debug level for it.  On PostgreSQL the retention
# reads a partial index of ended rows: the purge behind the wall is
# checked, the count is LMDB's.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

my $t = MR::Test->new(
    extra_main => "error_log logs/debug.log debug;\n",
    extra_http => "modelroute_retention 1s;\n"
        . "modelroute_sweep_interval 200ms;\n");
$t->start;

# ---- a wall of 3,000 open executions (demo-chat has no routes)
my $N = 3000;
my $acc = $t->new_account(credit => '1000.00');
my $key = $acc->{key};

my @res = $t->parallel(10, sub {
    my ($i) = @_;
    my ($ok, $bad) = (0, 0);
    for my $chunk (0 .. $N / 10 / 50 - 1) {
        my @msg = map {
            my $j = $chunk * 50 + $_;
            http_message(POST => '/v1/executions',
                { %{ auth($key) }, 'Content-Type' => 'application/json' },
                json_encode({ model => 'demo-chat', input => {},
                    idempotency_key => "wall-$i-$j",
                    timeout_seconds => 300 }), $_ == 50);
        } 1 .. 50;
        for my $r ($t->raw_all(join '', @msg)) {
            $r->{status} == 202 ? $ok++ : $bad++;
        }
    }
    return { ok => $ok, bad => $bad };
}, timeout => 120);

my ($ok, $bad) = (0, 0);
for (@res) {
    diag "client died: $_->{died}" if $_->{died};
    $ok += $_->{ok} // 0;
    $bad += $_->{bad} // 1;
}
is($ok, $N, "$N open executions");
is($bad, 0, 'no refusals');

# ---- ended ones behind the wall
my @ended;
for my $i (1 .. 20) {
    my $c = $t->create_exec($key, $t->exec_body(idempotency_key => "end-$i"));
    my $id = $c->{json}{id} // '';
    is($t->req(POST => "/v1/executions/$id/cancel", auth($key))->{status},
        200, "ended $i") or next;
    push @ended, $id;
}

my $gone = wait_for(sub {
    !grep { $t->get_exec($key, $_)->{status} != 404 } @ended;
}, 60, 0.3);
ok($gone, 'the ended executions behind the open ones are purged');

my $open = $t->req(GET => '/v1/executions?status=PENDING&limit=100',
    auth($key))->{json}{data} // [];
is(scalar @$open, 100, 'the open ones are kept');

my $v = $t->verify($acc->{org});
ok($v->{ok}, 'ledger invariant after the purges');
is($v->{executions}, $N, 'the account holds the open ones only');

SKIP: {
    skip 'the count of entries read is the LMDB store\'s', 3
        unless $t->backend eq 'lmdb';

    my @read;
    open my $fh, '<', $t->prefix . '/logs/debug.log' or die "debug.log: $!";
    while (<$fh>) {
        push @read, $1 if /modelroute sweeper: .* (\d+) read by the retention/;
    }
    close $fh;

    my ($max) = sort { $b <=> $a } @read;
    ok(@read > 3, scalar(@read) . ' sweeps logged');
    cmp_ok($max // 0, '>=', 1000, 'a sweep met the wall (the test means '
        . 'something)');
    cmp_ok($max // 0, '<=', 1024, 'no sweep read more than 1,024 entries');
}

$t->stop;
$t->check_log;
done_testing;
