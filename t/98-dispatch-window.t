# A dispatch claim looks at the head of the due queue and, when more are
# due than that, as far again past it, from where its last such look
# stopped, round the queue (2,048 and 2,048 on both stores): 4,300
# executions that wait for a full capped route, more than one claim looks
# at, neither keep another model's executions due behind them from being
# dispatched, nor keep the capped route's slot taken when the worker that
# held it dies: its lease's end, due after all of them, is found, the
# attempt recorded abandoned, and the next capped execution goes.
# Before, a claim looked at the first 4,096 due only: the other model's
# executions, and the route itself, waited for the capped ones to expire.
#
# The capped route's provider holds its requests (MR::Receiver
# hold/release); no assertion depends on how fast anything is, as long
# as the executions are made within the first attempt's lease (40 s).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(chat_completion);

my $WAITING = 4300;

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $CHAT = chat_completion();

my $t = MR::Test->new(workers => 1, http => <<"EOF");
modelroute_store %%STORE%%;
modelroute_route up /p/up protocol=openai_chat;
modelroute_route capped /p/capped protocol=openai_chat max_concurrency=1
                 timeout=40s;
modelroute_model m-up per_request=0.001 routes=up;
modelroute_model m-capped per_request=0.001 routes=capped;
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
}
EOF
$t->start;
my $acct = $t->new_account(credit => '100.00');
my $key = $acct->{key};

sub create    { $t->create_id($key, $_[0]) }
sub status_of { $t->status_of($key, $_[0]) }

$rc->set('/up', json => $CHAT);
$rc->set('/capped', json => $CHAT, hold => 'capped');

# ---- the capped route's one slot taken, and $WAITING more wait for it
my $first = create('m-capped');
ok($rc->wait_requests(1, path => '/capped', timeout => 20),
    'capped: one attempt in flight');
# (by four clients: all of this must happen within the first attempt's
# lease, 40 s, which one client on PostgreSQL took half of under load)
my $n = 0;
for my $made ($t->parallel(4, sub {
    my ($i) = @_;
    my $m = 0;
    for (my $j = $i; $j < $WAITING; $j += 4) {
        $m++ if defined create('m-capped');
    }
    return $m;
})) {
    if (ref $made) { diag "a client died: $made->{died}" }
    else { $n += $made }
}
is($n, $WAITING, "$WAITING capped executions accepted");

# ---- another model's executions, due after all of them, complete
my @up = map { create('m-up') } 1 .. 5;
is(scalar(grep { defined } @up), 5, '5 m-up executions accepted');
my %done;
ok(wait_for(sub {
    for my $id (grep { !$done{$_} } @up) {
        my $s = status_of($id);
        $done{$id} = $s if $s =~ /^(?:COMPLETED|FAILED|CANCELLED|EXPIRED)$/;
    }
    keys %done == @up;
}, 30), "the m-up executions ended behind $WAITING waiting ones");
is(scalar(grep { $_ eq 'COMPLETED' } values %done), 5, 'all COMPLETED');
is($rc->count(path => '/capped'), 1, 'one request on the capped route');
is(status_of($first), 'PROCESSING', 'the capped one still in flight');

# ---- the worker holding the capped route's slot dies: when the lease
# ends (40 s + 2 s after its claim), a claim finds it behind the waiting
# ones, records the attempt abandoned, and the slot goes to the next
$t->kill_workers('KILL');
ok($rc->wait_requests(2, path => '/capped', timeout => 90),
    'the ended lease is found: the next capped execution is sent');
my @at = @{ $t->get_exec($key, $first)->{json}{attempts} // [] };
is_deeply([ map { $_->{outcome} } @at ], ['abandoned'],
    'the dead worker\'s attempt: abandoned') or diag explain \@at;

# ---- the provider answers: the next ones go, one at a time
$rc->release('capped');
ok($rc->wait_requests(4, path => '/capped', timeout => 30),
    'the next capped executions are sent, one at a time');

my $v = $t->verify($acct->{org});
ok($v->{ok}, 'ledger verified') or diag explain $v;

$t->stop;
$t->check_log;
$rc->stop;
done_testing();
