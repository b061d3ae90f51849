# A dispatch claim looks past the executions that wait for a capped route
# at the head of the queue, however many more of them there are than
# it may take.  On PostgreSQL a claim reads as many due executions as
# it may take and as many as waited at the head last time; when more
# wait there than it read, it claims again at once, reading twice as
# many: this test has 120 waiting in front of another model's executions
# with modelroute_dispatch_concurrency 3, all three slots taken while
# they are created (no claim runs), so that when two free the look has to
# grow (2, then 6, 14, 30, 62, 126) before it reaches them.  On LMDB a claim
# walks the queue until it has taken what it may (past 2,048 waiting at
# the head, a claim's look past the head: t/98).  Either way the other
# model's executions complete, the waiting ones stay PENDING and the
# capped route sees one request.
#
# The capped route's provider holds its one request (MR::Receiver
# hold/release); no assertion depends on how fast anything is.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(chat_completion);

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $CHAT = chat_completion();

my $t = MR::Test->new(workers => 1, http => <<"EOF");
modelroute_store %%STORE%%;
modelroute_dispatch_concurrency 3;
modelroute_route up /p/up protocol=openai_chat;
modelroute_route capped /p/capped protocol=openai_chat max_concurrency=1
                 timeout=60s;
modelroute_route slow /p/slow protocol=openai_chat timeout=60s;
modelroute_model m-up per_request=0.01 routes=up;
modelroute_model m-slow per_request=0.01 routes=slow attempts=1;
modelroute_model m-capped per_request=0.01 routes=capped;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/up { internal; proxy_pass http://127.0.0.1:$RPORT/up; }
    location /p/capped {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/capped;
        proxy_read_timeout 60s;
    }
    location /p/slow {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/slow;
        proxy_read_timeout 60s;
    }
}
EOF
$t->start;
my $acct = $t->new_account(credit => '100.00');
my $key = $acct->{key};

sub create    { $t->create_id($key, $_[0]) }
sub status_of { $t->status_of($key, $_[0]) }

$rc->set('/up', json => $CHAT);
$rc->set('/capped', json => $CHAT, hold => 'capped');
$rc->set('/slow', json => $CHAT, hold => 'slow');

# ---- the worker's three dispatch slots taken: one capped execution and
# two slow ones in flight; meanwhile 120 capped executions and 10 of
# another model are created, and no claim runs (no slot is free)
my @capped = (create('m-capped'));
ok($rc->wait_requests(1, path => '/capped', timeout => 20),
    'capped: one attempt in flight');
my @slow = map { create('m-slow') } 1 .. 2;
ok($rc->wait_requests(2, path => '/slow', timeout => 20),
    'slow: two attempts in flight');
push @capped, create('m-capped') for 1 .. 120;
is(scalar(grep { defined } @capped), 121, '121 capped executions accepted');
my @up = map { create('m-up') } 1 .. 10;
is(scalar(grep { defined } @up), 10, '10 m-up executions accepted');

# ---- two slots free: the claims find 120 waiting at the head, and the
# m-up executions behind them
$rc->release('slow');
# ---- another model's executions, due after all of those, complete
my %done;
ok(wait_for(sub {
    for my $id (grep { !$done{$_} } @up) {
        my $s = status_of($id);
        $done{$id} = $s if $s =~ /^(?:COMPLETED|FAILED|CANCELLED|EXPIRED)$/;
    }
    keys %done == @up;
}, 30), 'the m-up executions ended behind 120 waiting ones');
is(scalar(grep { $_ eq 'COMPLETED' } values %done), 10, 'all COMPLETED');
is($rc->count(path => '/up'), 10, 'one provider request each');

is(scalar(grep { status_of($_) eq 'PENDING' } @capped[1 .. $#capped]), 120,
    'the 120 capped executions still wait (PENDING)');
is(status_of($capped[0]), 'PROCESSING', 'the capped one in flight');
is($rc->count(path => '/capped'), 1, 'one request on the capped route');
ok(wait_for(sub { !grep { status_of($_) ne 'COMPLETED' } @slow }, 30),
    'the slow ones COMPLETED');

# ---- fewer wait: the look shrinks back, and still sees past them
for my $id (@capped[1 .. 100]) {
    $t->req(POST => "/v1/executions/$id/cancel", auth($key));
}
my $id = create('m-up');
ok(wait_for(sub { status_of($id) eq 'COMPLETED' }, 30),
    'an m-up execution completes behind 20 waiting ones');

# ---- the capped route frees (its provider answers from now on): the
# ones still waiting go
$rc->release('capped');
ok(wait_for(sub { status_of($capped[0]) eq 'COMPLETED' }, 30),
    'the first capped execution COMPLETED');
ok($rc->wait_requests(2, path => '/capped', timeout => 20),
    'the next capped execution is sent');

for my $cid (@capped[101 .. $#capped]) {
    $t->req(POST => "/v1/executions/$cid/cancel", auth($key));
}
ok(wait_for(sub {
    !grep { status_of($_) !~ /^(?:CANCELLED|COMPLETED)$/ } @capped
}, 30), 'every capped execution ended');

my $v = $t->verify($acct->{org});
ok($v->{ok}, 'ledger verified') or diag explain $v;

$t->stop;
$t->check_log;
$rc->stop;
done_testing();
