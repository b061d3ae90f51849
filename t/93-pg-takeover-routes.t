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
# flight any more.
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
modelroute_route held /p/held protocol=openai_chat timeout=4s
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
modelroute_route sim /p/sim protocol=openai_chat;
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
my $v = $b->verify($acc->{org});
ok($v->{ok}, 'verify exact') or diag explain $v;

$b->stop;
$b->check_log;
$a->check_log;
done_testing;
