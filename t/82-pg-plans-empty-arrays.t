# PostgreSQL: an empty array of ids never lets a partial index serve a
# lookup by ids.
#
# The accounts' snapshot of a batch finds the accounts of the executions,
# keys, endpoints and deliveries it names; most of those arrays are empty.
# Written "id = ANY($2)" and planned for its values (PostgreSQL's custom
# plans, which it kept choosing for that statement), "id = ANY('{}')"
# reads as "false", from which any partial index's condition follows: the
# plan scanned mr_exec_ended (the ended executions) whole to find nothing,
# on every claim; 1.9 ms a call with 12,000 ended in bench/pg.sh, and
# growing.  The arrays are now "= ANY (ARRAY(SELECT unnest($2)))".
#
# Here: autovacuum off for the tables; 20 executions completed one at a
# time, the tables analyzed, 3,000 executions added to each partial index
# of mr_executions (ended, open, due in a year), and once the worker's
# connections prepared their statements anew, 20 more, three webhook
# events, three credits with references and a page of the list: none of
# PostgreSQL's plans (auto_explain, with the rows each node removed) reads
# a thousand rows or more to keep none, nor is a bitmap scan (which never
# learns which index entries are dead).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $t = MR::Test->new(store => 'postgres',
    http => sim_http('modelroute_webhook_allow_private on;'), workers => 1,
    timeout => 30);

$t->pg_auto_explain('analyze');
$t->psql("ALTER TABLE $_ SET (autovacuum_enabled = false)")
    for qw(mr_executions mr_keys mr_deliveries);
$t->start;

my $acc = $t->new_account(credit => '1000.00');
my $key = $acc->{key};

is($t->one_by_one($key, 'm-sim', 20), 20, '20 executions completed');

$t->psql("ANALYZE");

# of an account nobody uses, in each partial index of mr_executions:
# ended long ago, open and not due, due in a year
my $year = time() * 1000 + 365 * 86400 * 1000;
for (['old', 4, 'NULL'], ['open', 0, 'NULL'], ['later', 0, $year]) {
    my ($name, $status, $next) = @$_;
    $t->psql("INSERT INTO mr_executions (id, org, status, estimate, hold, "
        . "cost, created_ms, expires_ms, completed_ms, ord, fingerprint, "
        . "model, next_ms) SELECT 'exec_$name' || g, 'org_$name', $status, "
        . "0, 0, 0, g, $year, g, g, '\\x00', 'm-sim', $next "
        . "FROM generate_series(1, 3000) g");
}

# the worker's connections prepare their statements anew (t/78)
ok($t->wait_planned_again('mr_executions'), 'both connections plan again')
    or diag $t->tail_log;

my $rc = MR::Receiver->new;
$rc->start;
my $ep = wh_create($t, $key, { url => $rc->url('/hook') });
is($ep->{status}, 201, 'an endpoint');

my $from = MR::Test::pg_log_mark();
is($t->one_by_one($key, 'm-sim', 20), 20, '20 more');

# the other kinds of work: webhook deliveries, credits with a reference
# (and their replays), a page of the list
for my $n (1 .. 3) {
    $t->req(POST => "/v1/webhooks/endpoints/$ep->{json}{id}/test",
        auth($key));
    ok(scalar($rc->wait_requests($n, path => '/hook', timeout => 20)) >= $n,
        "event $n delivered");
}
for my $ref ('inv-1', 'inv-2', 'inv-1') {
    is($t->admin(POST => "/accounts/$acc->{org}/credit",
        { amount => '1.00', reference => $ref })->{status}, 200,
        "a credit, reference $ref");
}
is($t->req(GET => '/v1/executions?limit=5', auth($key))->{status}, 200,
    'a page of the list');

my @plans = MR::Test::pg_plans_since($from);

my @snap = grep {
    /FROM mr_accounts WHERE org = ANY \(ARRAY\(SELECT unnest\(\$1\S* UNION/
} @plans;
ok(@plans >= 100 && @snap >= 20,
    scalar(@plans) . ' plans logged, ' . scalar(@snap)
    . ' of accounts\' snapshots');

ok((grep { /JOIN mr_credit_refs r/ } @plans)
    && (grep { /WITH RECURSIVE o1\(org, n\)/ } @plans)
    && (grep { /LEFT JOIN LATERAL \(SELECT \* FROM mr_executions x/ } @plans),
    '... the credits\' references, the deliveries\' claims, the list '
    . 'among them');

my @waste = grep {
    grep { $_ >= 1000 } /Rows Removed by Filter: (\d+)/g } @plans;
is(scalar @waste, 0, 'no plan reads a thousand rows to keep none')
    or diag $waste[0];

# a bitmap scan of a range (the due executions, say) reads every dead
# entry of the range again on each call; one of a primary key by ids (a
# planner's choice for two or three ids of a table without statistics,
# now and then) reads those of the rows it names only
my @bitmap = grep {
    grep { !/ on \w+_pkey\b/ } /Bitmap Index Scan[^\n]*/g } @plans;
is(scalar @bitmap, 0,
    'no plan is a bitmap scan of a range (dead entries read again)')
    or diag $bitmap[0];

my $v = $t->verify($acc->{org});
ok($v->{ok}, 'verify') or diag explain $v;

$rc->stop;
$t->done;
