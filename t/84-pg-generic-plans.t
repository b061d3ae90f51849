# PostgreSQL: the statements every batch runs at its end are planned once
# per connection, not on every call.
#
# A batch changes its accounts by deltas in its last round trip: it locks
# them (mr_lock_account_ids) and adds what its operations did
# (mr_w_accounts_delta).  Both are prepared, but PostgreSQL planned them
# anew on every call: planned for the values at hand, an array of one
# account is one row, cheaper than the ten rows a generic plan assumes of
# any array, so its custom plans always looked the better buy.  In
# bench/pg.sh that was about 150 us of planning a batch (1.2 s of 10 s of
# creates on one account).  The arrays are now read so that a plan for
# the values cannot see their length either ("= ANY (ARRAY(SELECT
# unnest($1)))", "unnest((SELECT $1), ...)"): both plans cost the same,
# and PostgreSQL keeps the generic one after its first five runs.
#
# Here: pg_stat_statements (with track_planning) in the cluster, 1,000
# accounts in the table (analyzed); 30 executions created and completed
# one at a time (every create, claim and outcome is a batch of its own),
# then twelve creates of four accounts at once; each statement must have
# been planned on far fewer calls than it ran (before: on every call),
# and the ledger must hold.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

$MR::Test::PG_CONF = "shared_preload_libraries = 'pg_stat_statements'\n"
    . "pg_stat_statements.track_planning = on\n";

my $t = MR::Test->new(store => 'postgres', http => sim_http(), workers => 1,
    timeout => 30);
$t->psql('CREATE EXTENSION pg_stat_statements');
# a thousand accounts besides (as in bench/pg.sh): ten lookups by the
# index cost more than one, so a custom plan of one account looked cheaper
$t->psql("INSERT INTO mr_accounts (org, balance, created_ms) "
    . "SELECT 'org_bulk' || g, 1000000, 1 FROM generate_series(1, 1000) g");
$t->psql('ANALYZE mr_accounts');
$t->start;

my @accs = map { $t->new_account(credit => '100.00') } 1 .. 4;

$t->psql('SELECT pg_stat_statements_reset()');

is($t->one_by_one($accs[0]{key}, 'm-sim', 30), 30,
    '30 executions completed one at a time');

# several accounts in one batch: twelve creates at once
my @res = $t->parallel(12, sub {
    my ($i) = @_;
    return $t->create_exec($accs[$i % 4]{key},
        $t->exec_body(model => 'm-sim'))->{status};
}, timeout => 30);
is(scalar(grep { !ref && $_ == 202 } @res), 12,
    '12 more, of four accounts, at once');
ok(wait_for(sub {
        !grep { micros($t->balance($_->{key})->{held}) } @accs }, 20, 0.05),
    '... completed');

sub stats {
    my ($like) = @_;
    my $r = $t->psql("SELECT coalesce(sum(calls), 0), "
        . "coalesce(sum(plans), 0) FROM pg_stat_statements "
        . "WHERE query LIKE '$like'");
    return split /\|/, $r;
}

for (['mr_lock_account_ids', 'SELECT org FROM mr_accounts WHERE % FOR UPDATE'],
     ['mr_w_accounts_delta', 'WITH d AS (UPDATE mr_accounts a SET%'])
{
    my ($name, $like) = @$_;
    my ($calls, $plans) = stats($like);
    ok($calls >= 60 && $plans <= $calls / 4,
        "$name: planned $plans times in $calls calls");
}

for my $a (@accs) {
    my $v = $t->verify($a->{org});
    ok($v->{ok}, "verify $a->{org}") or diag explain $v;
}

$t->done;
