# PostgreSQL: an execution's input is written once, by its create.  The
# claims, outcomes, cancels and expiries that change the execution
# afterwards lock it without its input and write it back as kept; the
# dispatch request still reads it whole for each attempt, the execution's
# use of its account counts it until it ends, and its end erases it.
#
# Each execution's input carries a marker of its own and 6,000 bytes
# more.  PostgreSQL logs every statement with its parameters
# (log_min_duration_statement 0): the marker is in the parameters of one
# statement per execution, its create (before: also in every later write
# of the execution, four for an execution that fails over once).  A
# provider that fails the first route's attempt shows that the second
# attempt's request carries the whole input; the rows show the input kept
# while the execution runs and erased when it ends (completed, cancelled,
# expired), and verify() that the account's use was counted right.  The
# dispatch's watch of an attempt in flight (every 200 ms) reads its
# execution without the input, result and attempts (mr_execs_state);
# the API's reads of an execution (GET, list) read no input.
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

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_sweep_interval 200ms;
modelroute_route bad /p/bad protocol=openai_chat breaker=100;
modelroute_route good /p/good protocol=openai_chat;
modelroute_route held /p/held protocol=openai_chat timeout=60s;
modelroute_model m-two per_request=0.01 routes=bad,good attempts=2;
modelroute_model m-held per_request=0.01 routes=held attempts=1;
modelroute_model m-none per_request=0.01 timeout=2s;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/bad { internal; proxy_pass http://127.0.0.1:$RPORT/bad; }
    location /p/good { internal; proxy_pass http://127.0.0.1:$RPORT/good; }
    location /p/held {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/held;
        proxy_read_timeout 60s;
    }
}
EOF

my $t = MR::Test->new(store => 'postgres', http => $http, workers => 1,
    timeout => 30);
my $db = $t->db;
$t->psql("ALTER DATABASE $db SET log_min_duration_statement = 0");
$t->start;

$rc->set('/bad', status => 503, json => { error => { message => 'busy' } });
$rc->set('/good', json => $CHAT);
$rc->set('/held', json => $CHAT, hold => 'held');

my $acc = $t->new_account(credit => '100.00');
my $key = $acc->{key};
my $from = MR::Test::pg_log_mark();

my %prompt;

sub create {
    my ($model) = @_;
    my $marker = 'mark' . random_hex(12);
    my $prompt = "$marker " . ('x' x 6000);
    my $r = $t->create_exec($key, $t->exec_body(model => $model,
        input => { prompt => $prompt }));
    is($r->{status}, 202, "$model: accepted") or return;
    $prompt{ $r->{json}{id} } = [ $marker, $prompt ];
    return $r->{json}{id};
}

sub status_of { $t->status_of($key, $_[0]) }

# the input's length in the execution's row
sub stored {
    my ($id) = @_;
    my $n = $t->psql("SELECT octet_length(input) FROM mr_executions "
        . "WHERE id = '$id'");
    $n =~ s/\s+//g;
    return $n;
}

# the statements executed since the log's offset $off with $text in
# their parameters (those of the prepared statement $name only, if given)
sub executed {
    my ($text, $off, $name) = @_;
    open my $fh, '<', MR::Test::pg_cluster()->{dir} . '/log' or return -1;
    seek $fh, $off, 0;
    my ($n, $execute) = (0, 0);
    while (my $l = <$fh>) {
        # each statement's parameters follow its bind and its execute
        if ($l =~ /LOG:\s+duration: [\d.]+ ms\s+(\w+)(?: ([^:]*))?:/) {
            $execute = $1 eq 'execute'
                && (!defined $name || ($2 // '') eq $name);
        } elsif ($execute && $l =~ /DETAIL:\s+parameters:/) {
            $n++ if index($l, $text) >= 0;
        }
    }
    return $n;
}

sub writes_of { executed($_[0], $from) }

# ---- one no route takes: its input stored by its create (the other
# executions' inputs have the same length)
my $none = create('m-none');
my $len = stored($none);
ok($len > 6000, "m-none: the create stored its input ($len bytes)");

# ---- one that fails over: two attempts, both with the whole input
my $two = create('m-two');
ok(wait_for(sub { status_of($two) eq 'COMPLETED' }, 30),
    'm-two: COMPLETED on its second route');
my $e = $t->get_exec($key, $two)->{json};
is(scalar @{ $e->{attempts} // [] }, 2, 'two attempts');
my ($good) = $rc->requests(path => '/good');
ok($good && index($good->{body}, $prompt{$two}[1]) >= 0,
    'the second attempt sent the whole input');
my ($bad) = $rc->requests(path => '/bad');
ok($bad && index($bad->{body}, $prompt{$two}[1]) >= 0,
    'and so did the first');
is(stored($two), 0, 'its input erased when it completed');

# ---- one in flight: kept by its claim; erased by its cancel
my $held = create('m-held');
ok($rc->wait_requests(1, path => '/held', timeout => 20),
    'm-held: its attempt is in flight');
ok(wait_for(sub { status_of($held) eq 'PROCESSING' }, 10),
    'm-held: PROCESSING');
is(stored($held), $len, 'its input kept by its claim');

# the dispatch watches its attempt in flight every 200 ms: it reads the
# execution's status and lease, not its input (before: the whole row)
my $mark = MR::Test::pg_log_mark();
ok(wait_for(sub { executed($held, $mark, 'mr_execs_state') >= 3 }, 20),
    'm-held: its attempt watched three times');
is(executed($held, $mark, 'mr_execs'), 0,
    'and its whole row read by none of them');
is(executed($held, $from, 'mr_execs'), 1,
    'its whole row read once, for its attempt');
my $v = $t->verify($acc->{org});
ok($v->{ok}, 'the use verified while it runs') or diag explain $v;
my $c = $t->req(POST => "/v1/executions/$held/cancel", auth($key));
is($c->{json}{status}, 'CANCELLED', 'cancelled');
is(stored($held), 0, 'its input erased by the cancel');
$rc->release('held');

# ---- the one no route takes: expired by the sweeper
ok(wait_for(sub { status_of($none) eq 'EXPIRED' }, 20), 'm-none: EXPIRED');
is(stored($none), 0, 'its input erased by the expiry');

# ---- the input came back for each attempt only: the dispatch request's
# read of the whole row (mr_execs); this test's GETs read none.  (m-held's
# is counted above, before its cancel: after the cancel, one run in three
# showed one more read of its whole row right after the watch's, as from
# a dispatch request made again, which finds it cancelled and makes no
# attempt; see the README's note on it.)
is(executed($two, $from, 'mr_execs'), 2, "$two: read whole for its 2 attempts");
is(executed($held, $from, 'mr_exec') + executed($two, $from, 'mr_exec'), 0,
    'and by no GET');
ok(executed($held, $from, 'mr_execs_shown')
    + executed($held, $from, 'mr_exec_shown') > 0,
    'the GETs read it without its input');
my $l = $t->req(GET => '/v1/executions?limit=10', auth($key));
is($l->{status}, 200, 'the list');
is(scalar @{ $l->{json}{data} // [] }, 3, 'shows the three executions');

# ---- the input went to PostgreSQL once, with its create (before: also
# with each claim and outcome of m-two and m-held; m-none's expiry
# erases its input, and always did)
for my $id ($two, $held, $none) {
    is(writes_of($prompt{$id}[0]), 1,
        "$id: one statement carried its input");
}

$v = $t->verify($acc->{org});
ok($v->{ok}, 'ledger and use verified') or diag explain $v;

$t->stop;
$t->check_log;
$rc->stop;
done_testing();
