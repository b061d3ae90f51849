# PostgreSQL: a node takes over an attempt on a route that it does not
# have, and gives the route's slot back.
#
# Route state (its slots in flight, its breaker) is a row per route,
# shared by the fleet.  A dispatch claim read only the routes of its own
# node's models; an attempt it took over (its lease ended: the node that
# made it died) on a route that only the dead node had (a node-only
# route, or one removed here in a rolling change of configuration) gave
# its slot back to a route state of zeros: in a first try, by a change of
# 0 (the slot never came back: "max_concurrency" such takeovers stop the
# route for good); made again locked, by writing the zeros over the
# fleet's row (its breaker and counters gone).  The claim now reads the
# routes its candidates name too.
#
# Node A has model m on route "held" (a receiver that holds the request,
# max_concurrency 4); node B has model m on route "sim" (the simulator)
# only.  An execution made on A is sent to "held" (one slot in flight);
# A is killed (kill -9 of its master and workers); B starts, takes the
# attempt over when its lease ends (the route's timeout + 2 s), records it
# abandoned, and completes the execution on "sim": "held" has no slot in
# flight any more.  ("held" times out after 8 s: the lease ends 10 s after
# the send, time for B to start, and for psql to take a row in part 2,
# under a sanitizer too.)
#
# Part 2: the claim's first try is made to lose, and made again locked
# it must lock the routes its candidates name, not only its own node's.
# A claim reads its routes without a lock and changes them at its end,
# if still as it read them; else (MR001) it is made again with its routes
# locked first.  Node A, started again, sends a second execution to
# "held" and is killed; psql holds the row of "sim" (max_concurrency=1);
# when B's claim waits for it, psql takes sim's one slot and commits: the
# claim's first try loses, and made again locked it records A's attempt
# abandoned and gives "held" its slot back, and waits for "sim".  psql
# gives sim's slot back: B completes the execution on "sim".  (B is
# stopped while A runs: it would take the execution itself.)
#
# Part 3: a claim's first try checks the breaker that let its attempts
# through.  psql holds sim's row; B's claim of a new execution read the
# breaker closed and waits for the row; psql opens the breaker and
# commits: the claim loses (MR001), made again locked it finds the
# breaker open: the execution fails (MODEL_UNAVAILABLE, its only route
# open), with no attempt.  Before, the first try checked
# only the breaker fields it changed, committed, and sent the attempt to
# the route another node had just opened.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $rc = MR::Receiver->new;
$rc->start;
$rc->set('/held', json => chat_completion(), hold => 'never');
my $RPORT = $rc->port;

my $api = <<'EOF';
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
EOF

my $a = MR::Test->new(store => 'postgres', workers => 1, timeout => 30,
    http => <<"EOF" . $api . <<"EOF2");
modelroute_store %%STORE%%;
modelroute_route held /p/held protocol=openai_chat timeout=8s
                 max_concurrency=4;
modelroute_model m per_request=0.01 routes=held attempts=2;
EOF
server {
    modelroute_dispatch;
    location /p/held {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/held;
        proxy_read_timeout 90s;
    }
}
EOF2
my $b = MR::Test->new(store => 'postgres', workers => 1, timeout => 30,
    db => $a->db, http => <<"EOF" . $api . <<'EOF2');
modelroute_store %%STORE%%;
modelroute_route sim /p/sim protocol=openai_chat max_concurrency=1;
modelroute_model m per_request=0.01 routes=sim attempts=2;
EOF
server {
    modelroute_dispatch;
    location /p/sim { internal; modelroute_simulator; }
}
EOF2

sub held_inflight {
    return $a->psql("SELECT inflight FROM mr_routes WHERE name = 'held'");
}

$a->start;
my $acc = $a->new_account(credit => '10.00');
my $x = $a->create_exec($acc->{key}, $a->exec_body(model => 'm'));
is($x->{status}, 202, 'an execution on node A') or diag $x->{body};
my $id = $x->{json}{id} // 'exec_none';

is(scalar $rc->wait_requests(1, path => '/held', timeout => 20), 1,
    'node A sent it to "held", which holds it');
is(held_inflight(), 1, '"held" has one slot in flight');
is($a->psql("SELECT attempts FROM mr_routes WHERE name = 'held'"), 1,
    '"held" counts one attempt');

my @killed = $a->kill_node;
ok(@killed >= 2, 'node A killed (kill -9 of its master and worker)');

$b->start;
my $e = $b->wait_terminal($acc->{key}, [ $id ], 60)->{$id} // {};
is($e->{status}, 'COMPLETED', 'node B completed it') or diag explain $e;
my @att = @{ $e->{attempts} // [] };
is(scalar @att, 2, 'two attempts');
is($att[0]{outcome}, 'abandoned', 'the first (node A, "held") abandoned')
    or diag explain \@att;
is($att[-1]{outcome}, 'succeeded', 'the second (node B) succeeded');
is(held_inflight(), 0, '"held" has its slot back');
is($a->psql("SELECT attempts FROM mr_routes WHERE name = 'held'"), 1,
    '"held" still counts its attempt (the fleet\'s row was not written '
    . 'over)');
is($a->psql("SELECT failures || ' ' || open_until_ms FROM mr_routes "
    . "WHERE name = 'held'"), '0 0', '... and its breaker closed, as it was');

sub route_row {
    my ($name) = @_;
    return $a->psql("SELECT inflight || ' ' || attempts || ' ' || failures "
        . "|| ' ' || open_until_ms FROM mr_routes WHERE name = '$name'");
}

my $PGLOG = MR::Test::pg_cluster()->{dir} . '/log';

sub pg_log_from {
    my ($off) = @_;
    open my $fh, '<', $PGLOG or return '';
    seek $fh, $off, 0;
    local $/;
    return <$fh> // '';
}

# ---- part 2: the claim made again, locked (B stopped meanwhile: it
# would take the execution itself)
$b->stop;
$a->start;
$x = $a->create_exec($acc->{key}, $a->exec_body(model => 'm'));
is($x->{status}, 202, 'part 2: an execution on node A') or diag $x->{body};
$id = $x->{json}{id} // 'exec_none';
is(scalar $rc->wait_requests(2, path => '/held', timeout => 20), 2,
    'node A sent it to "held", which holds it');
is(route_row('held'), '1 2 0 0', '"held": one slot in flight, two attempts');

@killed = $a->kill_node;
ok(@killed >= 2, 'node A killed again');
$b->start;

# psql holds a route's row (session "holder")
sub hold_row {
    return $a->psql_hold('holder',
        "SELECT 1 FROM mr_routes WHERE name = '$_[0]' FOR UPDATE");
}

# another session waits for a lock (watched from inside PostgreSQL)
sub claim_waits {
    return eval { $a->psql("DO \$\$ BEGIN FOR i IN 1 .. 3000 LOOP "
        . "IF EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity s "
        . "ON s.pid = l.pid WHERE NOT l.granted "
        . "AND s.application_name <> 'holder' "
        . "AND s.datname = current_database()) THEN RETURN; END IF; "
        . "PERFORM pg_sleep(0.01); END LOOP; "
        . "RAISE EXCEPTION 'no claim waited'; END \$\$"); 1 }
        || (diag($@), 0);
}

# psql holds sim's row until B's claim waits for it
my $h = hold_row('sim');
my $mark = -s $PGLOG // 0;
ok(claim_waits(),
    "node B's claim (after the lease of A's attempt) waits for sim's row");
MR::Test::psql_release($h,
    "UPDATE mr_routes SET inflight = 1 WHERE name = 'sim'; ");

ok(wait_for(sub { route_row('held') =~ /^0 / }, 20),
    '"held" has its slot back');
like(pg_log_from($mark), qr/lost a race/,
    "the claim's first try lost (MR001): it was made again, locked");
is(route_row('held'), '0 2 0 0',
    '"held" still counts its attempts, its breaker closed (its row was not '
    . 'written over)');
$e = $b->get_exec($acc->{key}, $id)->{json} // {};
isnt($e->{status}, 'COMPLETED', 'the execution waits for a slot of "sim"')
    or diag explain $e;
is(($e->{attempts} // [])->[0]{outcome}, 'abandoned',
    "A's attempt recorded abandoned") or diag explain $e;

$a->psql("UPDATE mr_routes SET inflight = 0 WHERE name = 'sim'");
$e = $b->wait_terminal($acc->{key}, [ $id ], 60)->{$id} // {};
is($e->{status}, 'COMPLETED', 'node B completed it on "sim"')
    or diag explain $e;
@att = @{ $e->{attempts} // [] };
is(join(',', map { "$_->{route}:$_->{outcome}" } @att),
    'held:abandoned,sim:succeeded', 'its attempts') or diag explain \@att;
is(route_row('sim'), '0 2 0 0', '"sim": its slot back, two attempts');
is(route_row('held'), '0 2 0 0', '"held" as it was');

# ---- part 3: a claim whose route another node opened meanwhile
$h = hold_row('sim');
$mark = -s $PGLOG // 0;
$x = $b->create_exec($acc->{key}, $b->exec_body(model => 'm'));
is($x->{status}, 202, 'part 3: an execution on node B') or diag $x->{body};
$id = $x->{json}{id} // 'exec_none';
ok(claim_waits(), "node B's claim waits for sim's row");
MR::Test::psql_release($h, "UPDATE mr_routes SET open_until_ms = "
    . "(extract(epoch FROM clock_timestamp()) * 1000)::bigint + 600000 "
    . "WHERE name = 'sim'; ");
ok(wait_for(sub { pg_log_from($mark) =~ /lost a race/ }, 20),
    "the claim, which read sim's breaker closed, lost (MR001): made again, "
    . 'locked');
# (the log line comes before B has the error: wait for the batch made again)
$e = $b->wait_terminal($acc->{key}, [ $id ], 20)->{$id} // {};
is($e->{status}, 'FAILED', '... it found the only route open: FAILED')
    or diag explain $e;
is(($e->{error} // {})->{code}, 'MODEL_UNAVAILABLE', '... MODEL_UNAVAILABLE');
is(scalar @{ $e->{attempts} // [ 1 ] }, 0, '... with no attempt')
    or diag explain $e;
is(route_row('sim') =~ /^0 2 0 /, 1, '"sim": no attempt, no slot taken')
    or diag route_row('sim');
$a->psql("UPDATE mr_routes SET open_until_ms = 0 WHERE name = 'sim'");
my $v = $b->verify($acc->{org});
ok($v->{ok}, 'verify exact') or diag explain $v;

$b->stop;
$b->check_log;
$a->check_log;
done_testing;
