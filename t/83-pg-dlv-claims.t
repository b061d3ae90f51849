# PostgreSQL: a claim of deliveries takes each account's due ones from its
# targets in turn, and reads each target's queue only as far as it is due.
#
# The claim used to take each account's 64 earliest due deliveries,
# whatever their target, through the index (org, target, due_ms): it read
# every queued delivery of each account it visited, due or not (11 ms a
# claim for an account with 200,000 retries queued for later, paid by
# every claim of every account), and deliveries parked behind a
# deactivated endpoint (due, waiting for it to be activated again) filled
# the account's share: its other endpoints got nothing claimed.
#
# 1. 50,000 deliveries of another account queued for an hour from now,
#    to one target; five events of an account delivered one at a time:
#    PostgreSQL's plans of the claims (auto_explain, with their buffers)
#    read a few pages each.
# 2. An endpoint that answers 410 (deactivated), 80 events parked behind
#    it; the same account's other endpoint gets its three events.
# 3. 100 accounts that sort first with deliveries queued for later only:
#    an event of the account behind them is delivered (the claims move
#    past accounts with nothing due).
# 4. A backlog to one target beside 15 targets with deliveries queued
#    for later only: a claim takes more than 20 of the backlog at once
#    (the targets with nothing due do not share the account's 64).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);
use JSON::PP ();

sub is_false { JSON::PP::is_bool($_[0]) && !$_[0] }

my $t = MR::Test->new(store => 'postgres', workers => 1,
    extra_http => "modelroute_webhook_allow_private on;\n");

$t->pg_auto_explain('analyze', 'buffers');
$t->psql("ALTER TABLE mr_deliveries SET (autovacuum_enabled = false)");
$t->start;

# ------------------------------------------- 1: the claims' reads

my $later = time() * 1000 + 3600 * 1000;
$t->psql("INSERT INTO mr_deliveries (id, event_id, org, target, status, "
    . "created_ms, due_ms, type) SELECT 'dlv_later' || lpad(g::text, 8, '0'), "
    . "'evt_later', 'org_" . ('e' x 24) . "', 'wu_" . ('e' x 24) . "', 1, g, "
    . "$later + g, 'test' "
    . "FROM generate_series(1, 50000) g");
$t->psql('ANALYZE mr_deliveries');

# the worker's connections prepare their statements anew (t/78)
ok($t->wait_planned_again('mr_deliveries'), 'both connections plan again')
    or diag $t->tail_log;

my $rc = MR::Receiver->new;
$rc->start;
my $acc = $t->new_account(credit => '10.00');
my $ep = wh_create($t, $acc->{key}, { url => $rc->url('/hook') });
is($ep->{status}, 201, 'an endpoint');

my $from = MR::Test::pg_log_mark();
for my $n (1 .. 5) {
    $t->req(POST => "/v1/webhooks/endpoints/$ep->{json}{id}/test",
        auth($acc->{key}));
    ok(scalar($rc->wait_requests($n, path => '/hook', timeout => 20)) >= $n,
        "event $n delivered");
}

# the plans of the claims logged since $from
my @claims = grep { /WITH RECURSIVE o1\(org, n\)/ }
    MR::Test::pg_plans_since($from);
ok(@claims >= 5, scalar(@claims) . ' plans of claims');

# the pages each read: its top node's buffers, hit and read
my @pages = map {
    my ($b) = /\n\s*Buffers: ([^\n]*)/;
    my $n = 0;
    $n += $1 while ($b // '') =~ /(?:hit|read)=(\d+)/g;
    $n } @claims;
my ($most) = sort { $b <=> $a } @pages;
ok($most < 100, "each reads a few pages (most: $most)")
    or diag((grep { /Buffers/ } @claims)[0]);

# ------------------------------------------- 2: parked deliveries

$rc->set('/gone', status => 410);
my $gone = wh_create($t, $acc->{key}, { url => $rc->url('/gone') });
is($gone->{status}, 201, 'an endpoint that answers 410');
$t->req(POST => "/v1/webhooks/endpoints/$gone->{json}{id}/test",
    auth($acc->{key}));
ok(scalar $rc->wait_requests(1, path => '/gone', timeout => 20),
    '... its first event: 410');
ok(wait_for(sub {
    my $g = wh_get($t, $acc->{key}, $gone->{json}{id});
    $g && is_false($g->{is_active}) }, 20, 0.1),
    '... and it is deactivated');

my $parked = 0;
for (1 .. 80) {
    $parked++ if $t->req(POST =>
        "/v1/webhooks/endpoints/$gone->{json}{id}/test",
        auth($acc->{key}))->{status} == 202;
}
is($parked, 80, '80 more events for it: parked');

my $before = scalar $rc->requests(path => '/hook');
for (1 .. 3) {
    $t->req(POST => "/v1/webhooks/endpoints/$ep->{json}{id}/test",
        auth($acc->{key}));
}
ok(scalar($rc->wait_requests($before + 3, path => '/hook', timeout => 20))
    >= $before + 3, 'the other endpoint gets its three events');
is(scalar $rc->requests(path => '/gone'), 1,
    '... and the parked ones were not sent');

$t->stop;
$t->check_log;

# ------------------------------------------- 3: accounts with nothing due

# A new node and database: 100 accounts that sort first, each with a
# delivery queued for an hour from now; a claim visits 64 of them and
# finds nothing due; the next starts after them (it used to visit the
# same 64 again: the accounts after them waited for one of them to come
# due)
my $u = MR::Test->new(store => 'postgres', workers => 1,
    extra_http => "modelroute_webhook_allow_private on;\n");
$u->start;
$u->psql("INSERT INTO mr_deliveries (id, event_id, org, target, status, "
    . "created_ms, due_ms, type) SELECT 'dlv_wait' || g, 'evt_wait', "
    . "'org_' || lpad(g::text, 24, '0'), 'wu_' || lpad(g::text, 24, '0'), "
    . "1, g, $later + g, 'test' FROM generate_series(1, 100) g");
my $acc3 = $u->new_account(credit => '10.00');
my $ep3 = wh_create($u, $acc3->{key}, { url => $rc->url('/three') });
is($ep3->{status}, 201, 'another account, an endpoint');
$u->req(POST => "/v1/webhooks/endpoints/$ep3->{json}{id}/test",
    auth($acc3->{key}));
ok(scalar $rc->wait_requests(1, path => '/three', timeout => 20),
    'behind 100 accounts with nothing due: delivered');
$u->stop;
$u->check_log;

# ------------------------------------------- 4: the share of due targets

# An account's claim looks at up to 16 of its targets, and those with
# something due share its 64 places (LIMIT (64 + nt - 1) / nt each).
# Here one target has a backlog of 150 and 15 others only deliveries
# queued for an hour from now: the backlog's target has the 64 to itself
# (counted among all 16, it would get 4 a claim).  A node and database
# of its own: no other account's deliveries in the claims' rows.
my $v = MR::Test->new(store => 'postgres', workers => 1,
    extra_http => "modelroute_webhook_allow_private on;\n");
$v->pg_auto_explain('analyze');
$v->start;
my $acc4 = $v->new_account(credit => '10.00');
my $ep4 = wh_create($v, $acc4->{key}, { url => $rc->url('/four') });
is($ep4->{status}, 201, 'a fourth endpoint');
$v->psql("INSERT INTO mr_deliveries (id, event_id, org, target, status, "
    . "created_ms, due_ms, type) SELECT 'dlv_four' || g, 'evt_four', "
    . "'$acc4->{org}', 'wh_' || lpad(g::text, 24, '0'), 1, g, $later + g, "
    . "'test' FROM generate_series(1, 15) g");
is($v->req(PATCH => "/v1/webhooks/endpoints/$ep4->{json}{id}",
    auth($acc4->{key}), { is_active => JSON::PP::false })->{status}, 200,
    '... disabled');
my $queued = 0;
for (1 .. 150) {
    $queued++ if $v->req(POST =>
        "/v1/webhooks/endpoints/$ep4->{json}{id}/test",
        auth($acc4->{key}))->{status} == 202;
}
is($queued, 150, '150 events for it, held');
my $from4 = MR::Test::pg_log_mark();
is($v->req(PATCH => "/v1/webhooks/endpoints/$ep4->{json}{id}",
    auth($acc4->{key}), { is_active => JSON::PP::true })->{status}, 200,
    '... enabled again');
ok(scalar($rc->wait_requests(150, path => '/four', timeout => 30)) >= 150,
    'the backlog delivered');

# the rows each claim took (its top node's: this account's, and the row
# that carries the cursor)
my @took = map { /\(actual time=[\d.]+\.\.[\d.]+ rows=(\d+)/ ? $1 : 0 }
    grep { /WITH RECURSIVE o1\(org, n\)/ } MR::Test::pg_plans_since($from4);
my ($best) = sort { $b <=> $a } @took;
ok(($best // 0) > 20, 'a claim took ' . ($best // 0) . ' at once (of '
    . scalar(@took) . ' claims)');

$v->done;
$rc->stop;
