# PostgreSQL: the statements are planned again when a table they read has
# grown, so that reads by keys stay index look-ups however large the
# executions' table grew since its plans were made.
#
# PostgreSQL caches a prepared statement's generic plan after five runs
# (at once without parameters) and keeps it until the next ANALYZE.  Made
# while mr_executions was empty or small, as after a deployment or an
# ANALYZE of a quiet table, the plans of the executions' locked reads by
# id, of the account lock, the endpoints' and the secrets' reads (each
# with "SELECT org FROM mr_executions WHERE id = ANY($2)" inside) and of
# the claims' candidates were scans of the whole table: here 300 scans of
# 50,000 rows in 30 dispatches; in bench/fleet.sh with one node, 40% of
# PostgreSQL's CPU.  Each connection now looks at the tables' sizes once
# a second and prepares its statements anew when one has doubled.
#
# Here: autovacuum off for the table, which is analyzed while empty; 40
# executions dispatched one at a time (each connection's plans are made);
# 50,000 ended executions added; once both connections of the worker said
# that they plan again, 30 more dispatched one at a time: PostgreSQL's
# counters must show no sequential scan of mr_executions while they ran.
# Then another session holds an exclusive lock on a table that dispatches
# do not read, for 10 s: 20 more executions complete before it ends (the
# looks at the sizes wait 100 ms at most for a lock).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use MR::Test qw(:all);

my $t = MR::Test->new(store => 'postgres', http => sim_http(), workers => 1,
    timeout => 30);
$t->start;

$t->psql("ALTER TABLE mr_executions SET (autovacuum_enabled = false)");
$t->psql("ANALYZE mr_executions");

my $acc = $t->new_account(credit => '1000.00');
my $key = $acc->{key};

sub one_by_one {
    my ($n, $what) = @_;
    is($t->one_by_one($key, 'm-sim', $n), $n,
        "$n executions $what, one at a time");
}

sub exec_stats {
    my $r = $t->psql("SELECT seq_scan, n_tup_ins, n_tup_upd "
        . "FROM pg_stat_user_tables WHERE relname = 'mr_executions'");
    chomp $r;
    return split /\|/, $r;
}

one_by_one(40, 'dispatched and completed');

# the table grows, as it does under load between two ANALYZEs
$t->psql("INSERT INTO mr_executions (id, org, status, estimate, hold, cost, "
    . "created_ms, expires_ms, ord, fingerprint, model) "
    . "SELECT 'exec_bulk' || g, 'org_bulk', 5, 0, 0, 0, 1, 1, g, "
    . "'\\x00', 'm-sim' FROM generate_series(1, 50000) g");
# counted once the backends report (within 1 s of going idle, 10 s at most)
ok(wait_for(sub { ((exec_stats())[1] // 0) >= 50040 }, 20, 0.2),
    'the executions added are counted');
# the writer's and the reader's connection
ok(wait_for(sub {
    my @l = $t->read_log =~ /mr_executions is \d+ kB, was 64 kB .*planned again/g;
    @l >= 2 }, 20, 0.1), 'both connections plan again')
    or diag $t->tail_log;
my ($seq0, undef, $upd0) = exec_stats();

one_by_one(30, 'more');
ok(wait_for(sub { ((exec_stats())[2] // 0) >= $upd0 + 60 }, 20, 0.2),
    'their dispatch is counted');
my ($seq1) = exec_stats();
is($seq1 - $seq0, 0, 'no sequential scan of mr_executions while claiming')
    or diag $t->psql("SELECT relname, seq_scan, seq_tup_read, idx_scan "
        . "FROM pg_stat_user_tables ORDER BY seq_tup_read DESC LIMIT 5");

# Another session holds a table's lock (an ALTER TABLE or a VACUUM FULL
# of mr_credit_refs, which no dispatch reads): the connections still look
# at the sizes every second, and wait at most 100 ms for it; the requests
# behind their looks do not wait for the lock (before: every connection's
# requests waited behind a look until the lock was released)
my $hold = 10;
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    eval { $t->psql("BEGIN; LOCK TABLE mr_credit_refs IN ACCESS EXCLUSIVE "
        . "MODE; SELECT pg_sleep($hold); COMMIT") };
    POSIX::_exit(0);
}
ok(wait_for(sub { $t->psql("SELECT count(*) FROM pg_locks l JOIN pg_class c "
    . "ON c.oid = l.relation WHERE c.relname = 'mr_credit_refs' "
    . "AND l.mode = 'AccessExclusiveLock' AND l.granted") eq '1' }, 10, 0.05),
    'another session holds mr_credit_refs');
# two looks of each connection (1 s apart) fall into the lock, each for
# 100 ms: watched from inside PostgreSQL every 10 ms (a psql per look
# at pg_stat_activity, slower than that on a busy machine, missed them)
ok(eval { $t->psql("DO \$\$ BEGIN FOR i IN 1 .. 500 LOOP "
    . "IF EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c "
    . "ON c.oid = l.relation WHERE c.relname = 'mr_credit_refs' "
    . "AND NOT l.granted) THEN RETURN; END IF; "
    . "PERFORM pg_sleep(0.01); END LOOP; "
    . "RAISE EXCEPTION 'no look waited'; END \$\$"); 1 },
    'a look waits for the lock') or diag $@;
for my $i (1 .. 2) {
    is($t->one_by_one($key, 'm-sim', 10), 10,
        "10 executions completed while the lock is held ($i)");
}
is(waitpid($pid, POSIX::WNOHANG()), 0, 'all of them before it was released');
waitpid($pid, 0);
unlike($t->read_log, qr/the tables' sizes/, 'a lock not had is not logged');

my $v = $t->verify($acc->{org});
ok($v->{ok}, 'verify') or diag explain $v;

$t->done;
