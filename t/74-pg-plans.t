# PostgreSQL: the idempotency keys are read by their primary key, whatever
# the plan PostgreSQL caches.
#
# A create batch reads its keys in mr_idem.  Written as a join of unnest()
# with the table, the statement's generic plan, made after five executions
# while the table was small, was a hash join over a sequential scan of all
# of mr_idem, and PostgreSQL kept it until the next ANALYZE: every create
# batch read the whole table (4.6 ms a batch at 90,000 keys; creates fell
# from 9,100/s to 3,800/s in bench/pg.sh).  The sweeper's purge of old keys
# had the same flaw in its generic plan.
#
# Here: a few creates while the table is small and analyzed (the plans
# are made), the table grown by 50,000 keys, then 300 creates and 100
# replays; PostgreSQL's counters must show no sequential scan of mr_idem
# while they ran (the old statement: one a batch).
#
# Then 1,000 accounts (and their keys), analyzed, and 40 cancels: batches
# that lock their accounts by the executions they name.  With PostgreSQL's
# default random_page_cost (4) both forms of that statement were planned,
# on a table of that size, as a scan of every account (the old one 40
# times in 40 cancels, "= ANY (ARRAY(...))" alone as often); the store's
# sessions plan with random_page_cost 1.1 at most: no scan.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

# no sweep while counting (its purge of old keys may scan a small table)
my $t = MR::Test->new(store => 'postgres',
    extra_http => "modelroute_sweep_interval 1h;\n");
$t->start;

my $acc = $t->new_account(credit => '1000.00');
my $key = $acc->{key};

sub idem_stats {
    my $r = $t->psql("SELECT seq_scan, n_tup_ins FROM pg_stat_user_tables "
        . "WHERE relname = 'mr_idem'");
    chomp $r;
    return split /\|/, $r;
}

# every writer connection runs the statement more than five times on a
# small table: its generic plan is made then
for my $i (1 .. 20) {
    is($t->create_exec($key, $t->exec_body(idempotency_key => "warm-$i"))
        ->{status}, 202, "warm-up create $i") or last;
}
# the table analyzed while it is small (what autovacuum does on a new
# table), and not again during the test: plans made now stay cached
$t->psql("ALTER TABLE mr_idem SET (autovacuum_enabled = false)");
$t->psql("ANALYZE mr_idem");
for my $i (21 .. 30) {
    is($t->create_exec($key, $t->exec_body(idempotency_key => "warm-$i"))
        ->{status}, 202, "warm-up create $i, after ANALYZE") or last;
}
# the warm-up's own counts flushed (a backend reports them within 1 s
# of going idle, or 10 s at most)
ok(wait_for(sub { (idem_stats())[1] >= 30 }, 15, 0.2),
    'the warm-up is counted');
# then the table grows (another account's keys), as it does under load
# between two ANALYZEs: a plan made for the small table reads all of it
$t->psql("INSERT INTO mr_idem (org, key, exec_id, created_ms) "
    . "SELECT 'org_bulk', 'k-' || g, 'exec_bulk' || g, 1 "
    . "FROM generate_series(1, 50000) g");
ok(wait_for(sub { (idem_stats())[1] >= 50030 }, 15, 0.2),
    'the keys added are counted');
my ($seq0, $n0) = idem_stats();

my $N = 300;
my $ok = 0;
for my $i (1 .. $N) {
    $ok++ if $t->create_exec($key,
        $t->exec_body(idempotency_key => "k-$i"))->{status} == 202;
}
is($ok, $N, "$N creates");
my $replayed = 0;
for my $i (1 .. 100) {
    my $r = $t->create_exec($key, $t->exec_body(idempotency_key => "k-$i"));
    $replayed++ if $r->{status} == 202 || $r->{status} == 200;
}
is($replayed, 100, '100 replays');
# a last create: once it is counted, so are the scans before it (a
# backend reports all of its counts at once)
is($t->create_exec($key, $t->exec_body(idempotency_key => 'last'))
    ->{status}, 202, 'a last create');

ok(wait_for(sub { (idem_stats())[1] >= $n0 + $N + 1 }, 20, 0.2),
    'the creates are counted');
my ($seq1) = idem_stats();
is($seq1 - $seq0, 0, 'no sequential scan of mr_idem while creating')
    or diag $t->psql("SELECT relname, seq_scan, seq_tup_read, idx_scan "
        . "FROM pg_stat_user_tables ORDER BY seq_tup_read DESC LIMIT 5");

# Batches of other operations (a cancel here) find their accounts by
# the ids they name.  Written "org IN (SELECT ... UNION ...)", that
# statement was planned, on every batch, as a hash join over a scan of
# every account (of all 1,000 in bench/pg.sh); "= ANY (ARRAY(...))" reads
# the accounts by their index, whatever the estimates.
sub table_stats {
    my ($rel) = @_;
    my $r = $t->psql("SELECT seq_scan, n_tup_upd FROM pg_stat_user_tables "
        . "WHERE relname = '$rel'");
    chomp $r;
    return split /\|/, $r;
}
$t->psql("INSERT INTO mr_accounts (org, balance, created_ms) "
    . "SELECT 'org_bulk' || g, 1000000, 1 FROM generate_series(1, 1000) g");
$t->psql("INSERT INTO mr_keys (key_id, org, hash, hint, permission, "
    . "created_ms) SELECT 'key_bulk' || g, 'org_bulk' || g, "
    . "decode(md5(g::text), 'hex'), 'x', 1, 1 FROM generate_series(1, 1000) g");
$t->psql("ANALYZE mr_accounts");
$t->psql("ANALYZE mr_keys");
my $idem0 = (idem_stats())[1];
my @ids;
for my $i (1 .. 40) {
    my $r = $t->create_exec($key, $t->exec_body(idempotency_key => "c-$i"));
    push @ids, $r->{json}{id} if $r->{status} == 202;
}
is(scalar @ids, 40, '40 executions to cancel');
# the creates' own counts first (their account updates come in the same
# reports as their keys): else they could pass for the cancels' below
ok(wait_for(sub { (idem_stats())[1] >= $idem0 + 40 }, 20, 0.2),
    'the creates are counted');
my ($acc_seq0, $acc_upd0) = table_stats('mr_accounts');
my ($keys_seq0) = table_stats('mr_keys');
my $cancelled = 0;
for my $id (@ids) {
    $cancelled++ if $t->req(POST => "/v1/executions/$id/cancel",
        auth($key))->{status} == 200;
}
is($cancelled, 40, '40 cancels');
ok(wait_for(sub { (table_stats('mr_accounts'))[1] >= $acc_upd0 + 40 },
    20, 0.2), 'the cancels are counted');
my ($acc_seq1) = table_stats('mr_accounts');
my ($keys_seq1) = table_stats('mr_keys');
is($acc_seq1 - $acc_seq0, 0,
    'no sequential scan of mr_accounts while cancelling')
    or diag $t->psql("SELECT calls, left(query, 120) FROM pg_stat_statements "
        . "ORDER BY calls DESC LIMIT 30");
is($keys_seq1 - $keys_seq0, 0,
    'no sequential scan of mr_keys while cancelling')
    or diag $t->psql("SELECT relname, seq_scan, seq_tup_read, idx_scan "
        . "FROM pg_stat_user_tables ORDER BY seq_tup_read DESC LIMIT 5");

$t->done;
