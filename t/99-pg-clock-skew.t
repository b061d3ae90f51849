# PostgreSQL: the store keeps its times on the server's clock, whatever
# the nodes' own clocks say.  The server here runs ten minutes behind the
# nodes (libfaketime in its processes), as a node ten minutes ahead of
# the others would: each node says so in its log, an execution created
# on either is created_at the server's time, and a lease made by node 0
# is not taken over by node 1 (which claims alone while node 0's worker
# is stopped) before it ends on the server's clock.  Before, each node
# wrote its own clock's times: a node ahead took over others' leases
# early (the attempt made twice) and expired executions early, one
# behind late; idempotency keys lived as long as the sweeping node's
# clock said.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(chat_completion);

my $FAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
my $SKEW = 600;    # s: the server behind the nodes

# never a skip: build.sh installs libfaketime
BAIL_OUT("$FAKETIME not found (apt-get install libfaketime)")
    unless -f $FAKETIME;
%MR::Test::PG_ENV = (LD_PRELOAD => $FAKETIME, FAKETIME => "-$SKEW");

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;
my $CHAT = chat_completion();

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_route held /p/held protocol=openai_chat timeout=30s;
modelroute_route up /p/up protocol=openai_chat;
modelroute_model m-held per_request=0.01 routes=held attempts=2;
modelroute_model m-up per_request=0.01 routes=up;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/held {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/held;
        proxy_read_timeout 60s;
    }
    location /p/up { internal; proxy_pass http://127.0.0.1:$RPORT/up; }
}
EOF

my $n0 = MR::Test->new(store => 'postgres', workers => 1, http => $http);
my $n1 = MR::Test->new(store => 'postgres', db => $n0->db, workers => 1,
    http => $http);

my $server = MR::Test::pg_sql($n0->db,
    'SELECT extract(epoch FROM clock_timestamp())::bigint');
ok(abs($server - (time - $SKEW)) < 60, 'the server runs ten minutes behind')
    or diag "server $server, here " . time;

$n0->start;
my $acct = $n0->new_account(credit => '10.00');
my $key = $acct->{key};

$rc->set('/held', json => $CHAT, hold => 'held');
$rc->set('/up', json => $CHAT);

# ---- node 0 sends the held execution: on the server's clock
my $r = $n0->create_exec($key, $n0->exec_body(model => 'm-held'));
is($r->{status}, 202, 'node 0: held execution accepted');
my $held = $r->{json}{id} // '-';
my $created = parse_rfc3339($r->{json}{created_at} // '') // 0;
ok(abs($created - (time - $SKEW)) < 60, 'its created_at: the server\'s time')
    or diag "created_at $r->{json}{created_at}, here " . time;
my $expires = parse_rfc3339($r->{json}{expires_at} // '') // 0;
ok(abs($expires - $created - 300) < 2, 'its expires_at: 5 minutes after');
ok($rc->wait_requests(1, path => '/held', timeout => 20),
    'node 0: the held attempt is out');
like($n0->read_log, qr/this machine's clock is \d+ ms ahead of the clock of/,
    'node 0 says its clock is ahead of the server\'s');

# ---- node 1, node 0's worker stopped: node 1 claims alone
$n1->start;
my ($w0) = $n0->worker_pids;
kill 'STOP', $w0;
$r = $n1->create_exec($key, $n1->exec_body(model => 'm-up'));
is($r->{status}, 202, 'node 1: an execution accepted');
my $up = $r->{json}{id} // '-';
$created = parse_rfc3339($r->{json}{created_at} // '') // 0;
ok(abs($created - (time - $SKEW)) < 60, 'its created_at: the server\'s time')
    or diag "created_at $r->{json}{created_at}, here " . time;
my ($e) = values %{ $n1->wait_terminal($key, [$up], 30) };
is($e && $e->{status}, 'COMPLETED', 'node 1 completed it');
like($n1->read_log, qr/this machine's clock is \d+ ms ahead of the clock of/,
    'node 1 says its clock is ahead of the server\'s');
is($rc->count(path => '/held'), 1,
    'the held attempt was not taken over by node 1');
my $h = $n1->get_exec($key, $held)->{json} // {};
is($h->{status}, 'PROCESSING', 'the held execution is still PROCESSING');
is(scalar @{ $h->{attempts} // [] }, 0, 'no attempt of it recorded');

# ---- node 0 goes on; the provider answers
kill 'CONT', $w0;
$rc->release('held');
($e) = values %{ $n0->wait_terminal($key, [$held], 30) };
is($e && $e->{status}, 'COMPLETED', 'the held execution completed');
is(scalar @{ $e->{attempts} // [] }, 1, 'with one attempt');
is($rc->count(path => '/held'), 1, 'one request to its provider');
my $done = parse_rfc3339($e->{completed_at} // '') // 0;
ok(abs($done - (time - $SKEW)) < 60, 'its completed_at: the server\'s time');

my $v = $n0->verify($acct->{org});
ok($v->{ok}, 'ledger verified') or diag explain $v;

$n1->stop;
$n0->stop;
$n1->check_log;
$n0->check_log;
$rc->stop;
done_testing();
