# PostgreSQL: a claim locks the executions it chose by their ids, never by
# walking the executions that are due; a backlog is claimed without a
# read of the next due time before each claim; a claim that took all that
# was due is followed by no read of the next due time (the claim read it).
#
# A claim reads its candidates (mr_disp_due, in the order they are due),
# chooses some, and locks those (mr_lock_due_execs: their ids, still due,
# FOR UPDATE SKIP LOCKED).  Prepared, that lock's generic plan, made while
# few executions were due, walked the index of due executions and kept
# those of its ids: with a backlog, every claim read the whole backlog
# (27 ms a claim, the limit of completions at 256 connections in
# bench/pg.sh).  The locks of due executions, of due deliveries and of
# expired executions are now planned for their ids on every call.
#
# Here: autovacuum off for the table; 40 executions dispatched one at a
# time, the table analyzed (none is due), 10 more (the plans are made),
# 3,000
# executions added that are due but passed over by every claim (expired,
# for a sweeper that does not run here); once the worker's connections
# prepared their statements anew for the larger table, 20 more
# dispatched one at a time:
# PostgreSQL's plans of their locks (auto_explain) read executions by
# their primary key, never by the index of due ones.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);

my $http = <<"EOF2";
modelroute_store %%STORE%%;
modelroute_sweep_interval 1h;
modelroute_route sim /p/sim protocol=openai_chat;
modelroute_model m-sim per_request=0.01 routes=sim attempts=1;
modelroute_route slow /p/slow protocol=openai_chat;
modelroute_model m-slow per_request=0.01 routes=slow attempts=1;
modelroute_dispatch_concurrency 4;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/sim { internal; modelroute_simulator; }
    location /p/slow { internal; modelroute_simulator latency=20ms; }
}
EOF2

my $t = MR::Test->new(store => 'postgres', http => $http, workers => 1,
    timeout => 30);

# the module's statements and their plans, in PostgreSQL's log
my $db = $t->db;
$t->pg_auto_explain;
$t->psql("ALTER DATABASE $db SET log_min_duration_statement = 0");
$t->psql("ALTER TABLE mr_executions SET (autovacuum_enabled = false)");
$t->start;

my $acc = $t->new_account(credit => '1000.00');
my $key = $acc->{key};

sub held { MR::Test::micros($t->balance($key)->{held}) }

sub one_by_one {
    my ($n, $what) = @_;
    is($t->one_by_one($key, 'm-sim', $n), $n,
        "$n executions $what, one at a time");
}

# the plans logged since $from of the claims' locks
sub lock_plans {
    my ($from) = @_;
    return grep { /FOR UPDATE SKIP LOCKED/
            && /FROM mr_executions\s+WHERE id = ANY/ && /next_ms <=/ }
        MR::Test::pg_plans_since($from);
}

one_by_one(40, 'dispatched and completed');

# analyzed while none is due; then the plans are made
$t->psql("ANALYZE mr_executions");
one_by_one(10, 'dispatched after the ANALYZE');

# due, and passed over by the claims: the sweeper would expire them
$t->psql("INSERT INTO mr_executions (id, org, status, estimate, hold, cost, "
    . "created_ms, expires_ms, ord, fingerprint, model, next_ms) "
    . "SELECT 'exec_due' || g, 'org_due', 0, 0, 0, 0, 1, 1, g, "
    . "'\\x00', 'm-sim', 1 FROM generate_series(1, 3000) g");

# the worker's connections prepare their statements anew (t/78)
ok($t->wait_planned_again('mr_executions'), 'both connections plan again')
    or diag $t->tail_log;

my $from = MR::Test::pg_log_mark();
one_by_one(20, 'more');

my @plans = lock_plans($from);
ok(@plans >= 20, scalar(@plans) . ' plans of the claims\' locks logged');
my @walk = grep { /mr_exec_disp/ } @plans;
is(scalar @walk, 0, 'none reads the index of due executions')
    or diag $walk[0];
my @pkey = grep { /mr_executions_pkey/ } @plans;
is(scalar @pkey, scalar @plans, 'each reads executions by their ids')
    or diag((grep { !/mr_executions_pkey/ } @plans)[0]);

# The reads of the next due time (the dispatcher's, mr_disp_next, and
# the claim's, mr_disp_after) read the first entry of the index, never
# all of it: written min(next_ms), the dispatcher's generic plan, made
# while few were due, was an aggregate of every due execution (here the
# 3,000 waiting, at every read; 3-6 ms a call in bench/pg.sh).
my @next = grep { /Query\ Text:\ SELECT\ (?:min\(next_ms\)|next_ms)\ FROM
                  \s+mr_executions\s+WHERE\s+next_ms\s+(?:IS\ NOT\ NULL|>)/x }
    MR::Test::pg_plans_since($from);
my @first = grep { /WHERE\s+next_ms\s+IS NOT NULL/ } @next;
ok(@first >= 1, scalar(@first) . ' plans of the dispatcher\'s read logged');
my @all = grep { !/\bLimit\b/ } @next;
is(scalar @all, 0, 'each of the ' . scalar(@next) . ' reads of the next '
    . 'due time stops at its first entry') or diag $all[0];

# The claims' candidates (mr_disp_due), read in the index's order and up
# to their limit: never a sort of all that is due (a bitmap scan, or a
# scan of the table; with 3,000 due, as many rows read at every claim)
my @due = grep { /WHERE next_ms IS NOT NULL AND next_ms <= \$1\s+ORDER BY/ }
    MR::Test::pg_plans_since($from);
ok(@due >= 20, scalar(@due) . ' plans of the claims\' candidates logged');
ok(scalar(grep { /WITH TIES/ } @due) >= 1,
    '... looks past the head among them');
my @sorted = grep { /\b(?:Sort|Bitmap Heap Scan|Seq Scan)\b/ } @due;
is(scalar @sorted, 0, '... each reads the index of due executions in its '
    . 'order') or diag $sorted[0];

# ------------------------------------------- 2: the claims of a backlog

# A claim that stopped at its limit with more due is followed by another
# at once; the dispatcher reads when the next execution is due only when
# the last claim took all it found (before: a read before every claim).
# Four slots, a provider that answers in 20 ms and 200 executions
# submitted at once: each answer frees a slot, and a claim takes it.

sub statements {
    my ($from, $name) = @_;
    open my $fh, '<', MR::Test::pg_cluster()->{dir} . '/log' or return 0;
    seek $fh, $from, 0;
    my $n = 0;
    while (<$fh>) { $n++ if /duration: [\d.]+ ms\s+execute (?:$name):/ }
    return $n;
}

$from = MR::Test::pg_log_mark();
my @ok = $t->parallel(4, sub {
    my $n = 0;
    for (1 .. 50) {
        $n++ if $t->create_exec($key, $t->exec_body(model => 'm-slow'))
            ->{status} == 202;
    }
    return $n;
});
my $made = 0;
$made += $_ for @ok;
is($made, 200, '200 executions submitted at once');
ok(wait_for(sub { held() == 0 }, 60, 0.1), 'all of them completed');
# (mr_disp_due_past: a claim's look past a head of 2,048 waiting)
my $claims = statements($from, 'mr_disp_due(?:_past)?');
my $reads = statements($from, 'mr_disp_next');
ok($claims >= 20, "$claims claims");
ok($reads * 2 <= $claims,
    "$reads reads of the next due time for $claims claims");

# ---------------------------- 3: after a claim that took all that was due

# A claim reads, with its candidates, when the next execution is due
# after its time (mr_disp_after: the index entered at that time, past
# the entries of rows that were due and changed since the last VACUUM,
# which mr_disp_next reads through); a claim that took all that was due,
# none of it waiting, sets the dispatcher's timer from it and makes no
# read of its own.  The 3,000 passed over above are deleted: while
# executions wait at the head, the dispatcher looks again as before.

# A claim sends both of its statements at once, and PostgreSQL logs each
# as it ends: the log's window may begin between the two of a claim made
# before it (its read is not counted) and end between those of a claim
# made after the last execution ended (waited for, with a deadline).

sub claims_and_reads {
    my ($from) = @_;
    my ($claims, $reads);
    # [pid] ... duration: 0.1 ms  execute mr_disp_due: ...
    wait_for(sub {
        open my $fh, '<', MR::Test::pg_cluster()->{dir} . '/log' or return;
        seek $fh, $from, 0;
        my %open;
        ($claims, $reads) = (0, 0);
        while (<$fh>) {
            next unless /\[(\d+)\].*duration:\s[\d.]+\sms\s+execute\s
                         (mr_disp_due(?:_past)?|mr_disp_after):/x;
            if ($2 ne 'mr_disp_after') {
                $claims++;
                $open{$1}++;
            } elsif ($open{$1}) {
                $open{$1}--;
                $reads++;
            }
        }
        return !grep { $_ } values %open;
    }, 10);
    return ($claims, $reads);
}

$t->psql("DELETE FROM mr_executions WHERE org = 'org_due'");
$from = MR::Test::pg_log_mark();
my $t0 = time;
one_by_one(20, 'dispatched with none waiting');
my $secs = int(time - $t0) + 1;
my $after;
($claims, $after) = claims_and_reads($from);
$reads = statements($from, 'mr_disp_next');
is($after, $claims, "each of the $claims claims read the next due time");

# per execution, the dispatcher reads the next due time when it is made
# (a kick), and twice when its attempt ends (the outcome, the dispatch
# request's end); before, once more after the claim; and once a second
# when idle
ok($reads <= 3 * $claims + $secs + 2,
    "$reads reads of the next due time for $claims claims in ${secs}s "
    . '(none after a claim that took all that was due)');

my $v = $t->verify($acc->{org});
ok($v->{ok}, 'verify') or diag explain $v;

$t->done;
