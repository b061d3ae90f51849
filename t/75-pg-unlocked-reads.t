# PostgreSQL: what the dispatch batches read without a lock is checked
# again when they write.
#
# A dispatch claim, and a batch of creates and outcomes, made for the
# first time, read the routes without a lock and change them by deltas
# at the end (locked only for their last round trip and the COMMIT: every
# such batch of every worker changes the route it dispatches to).  Two
# workers and many clients at once, so that the batches of the two
# workers overlap:
#  - a route's counters (attempts, failures) lose no batch's increment,
#    and nothing stays in flight: a batch written as the values it read
#    plus its own would lose the other worker's (half of the attempts of
#    a flaky route fail: its breaker's count of failures in a row changes
#    in nearly every batch);
#  - claims that fail executions (the route's breaker is open: the hold
#    goes back) while creates and settles change the same account: the
#    holds released are exact (verify, the holds of the pending ones
#    only, the balance is the credit less the costs);
#  - a route's cap, and its breaker's one probe, are checked again at
#    the end: another transaction (psql, as another node) takes the
#    route's slots, or its probe, while a claim that read the route
#    unlocked waits for its row; the claim must then take none (and its
#    batch, rolled back and made again, counts no failed commit).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use MR::Test qw(:all);
use MR::Receiver qw(:all);
use MR::Metrics qw(:all);

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_sweep_interval 200ms;
# a claim takes 4 at most: the two workers' claims take different
# executions of one route's queue (each locks what it takes)
modelroute_dispatch_concurrency 4;
modelroute_route sim /p/sim protocol=openai_chat;
modelroute_route flaky /p/flaky protocol=openai_chat breaker=1000000;
modelroute_route down /p/down protocol=openai_chat breaker=1
                 breaker_reset=1h;
modelroute_route capped /p/capped protocol=openai_chat timeout=60s
                 max_concurrency=3;
modelroute_model m-sim per_request=0.01 routes=sim attempts=1;
modelroute_model m-flaky per_request=0.01 routes=flaky attempts=1;
modelroute_model m-down per_request=0.01 routes=down attempts=1;
modelroute_model m-capped per_request=0.01 routes=capped attempts=1;
modelroute_model m-held per_request=0.04;
modelroute_route brk /p/brk protocol=openai_chat timeout=60s breaker=1
                 breaker_reset=2s;
modelroute_model m-brk per_request=0.01 routes=brk attempts=1;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/sim { internal; modelroute_simulator; }
    location /p/flaky {
        internal;
        modelroute_simulator failure_rate=0.5 failure_status=503;
    }
    location /p/down {
        internal;
        modelroute_simulator failure_rate=1 failure_status=503;
    }
    location /p/brk {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/brk;
        proxy_read_timeout 90s;
    }
    location /p/capped {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/capped;
        proxy_read_timeout 90s;
    }
}
EOF

my $t = MR::Test->new(store => 'postgres', http => $http, workers => 2,
    timeout => 30);
$t->start;

my $CHAT = chat_completion();
my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub route { $t->route_state($_[0]) }

# another transaction (psql, as another node would) that runs $sql and
# keeps what it locked for $secs seconds: its pid, once it has begun
sub other_node {
    my ($sql, $secs, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        eval { $t->psql("BEGIN; $sql; SELECT pg_sleep($secs); COMMIT") };
        POSIX::_exit(0);
    }
    ok(wait_for(sub { $t->psql("SELECT count(*) FROM pg_stat_activity "
        . "WHERE query LIKE '%pg_sleep($secs)%' AND state = 'active' "
        . "AND pid <> pg_backend_pid()") > 0 }, 10, 0.05), $name);
    return $pid;
}

# a batch waits for a route's row (its delta at the end)
sub claim_waits {
    my ($name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    ok(wait_for(sub { $t->psql("SELECT count(*) FROM pg_stat_activity "
        . "WHERE wait_event_type = 'Lock' AND query LIKE "
        . "'%UPDATE mr_routes r SET inflight%'") > 0 }, 15, 0.05), $name);
}

# a sync point: four m-sim executions complete (both workers claimed)
sub dispatch_sync {
    my ($key) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @s = map {
        $t->create_exec($key, $t->exec_body(model => 'm-sim'))->{json}{id}
    } 1 .. 4;
    my $se = $t->wait_terminal($key, \@s, 30);
    is(scalar(grep { ($_->{status} // '') eq 'COMPLETED' } values %$se), 4,
        'the workers dispatch meanwhile');
}

# $clients clients at once, each creating $each executions of the models
# in turn: the ids by model
sub storm {
    my ($key, $clients, $each, @models) = @_;
    my @res = $t->parallel($clients, sub {
        my ($i) = @_;
        my @got;
        for my $k (1 .. $each) {
            my $m = $models[ ($i + $k) % @models ];
            my $r = $t->create_exec($key,
                $t->exec_body(model => $m, input => { prompt => "$i $k" }));
            push @got, [ $m, $r->{status}, $r->{json}{id} // $r->{body} ];
        }
        return \@got;
    }, timeout => 120);
    my (%ids, @bad);
    for my $c (@res) {
        if (ref $c ne 'ARRAY') {
            push @bad, 'a client died: '
                . (ref $c eq 'HASH' ? $c->{died} // '?' : '?');
            next;
        }
        for my $g (@$c) {
            if ($g->[1] == 202) {
                push @{ $ids{ $g->[0] } }, $g->[2];
            } else {
                push @bad, "$g->[0]: $g->[1] $g->[2]";
            }
        }
    }
    is(scalar @bad, 0, "$clients clients x $each creates: every one 202")
        or diag join "\n", @bad[0 .. ($#bad < 4 ? $#bad : 4)];
    return \%ids;
}

# --------------------------------------- 1: counters, and the breaker's count

{
    my $acc = $t->new_account(credit => '100.00');
    my $ids = storm($acc->{key}, 8, 40, qw(m-sim m-flaky));
    my @all = map { @$_ } values %$ids;
    my $e = $t->wait_terminal($acc->{key}, \@all, 90);
    is(scalar(grep { $TERMINAL{ $_->{status} // '' } } values %$e),
        scalar @all, 'every execution ended');

    my %n;
    for my $m (keys %$ids) {
        for my $id (@{ $ids->{$m} }) {
            $n{$m}{ $e->{$id}{status} // 'none' }++;
        }
    }
    is($n{'m-sim'}{COMPLETED}, scalar @{ $ids->{'m-sim'} },
        'm-sim: every execution COMPLETED');
    my $flaky_ok = $n{'m-flaky'}{COMPLETED} // 0;
    my $flaky_failed = $n{'m-flaky'}{FAILED} // 0;
    is($flaky_ok + $flaky_failed, scalar @{ $ids->{'m-flaky'} },
        'm-flaky: every execution COMPLETED or FAILED');
    ok($flaky_ok && $flaky_failed, "m-flaky: both ($flaky_ok completed, "
        . "$flaky_failed failed)");

    # one attempt each (attempts=1): the counters are the executions
    my $sim = route('sim');
    is($sim->{attempts}, scalar @{ $ids->{'m-sim'} },
        'route sim: one attempt counted per execution, none lost');
    is($sim->{failures}, 0, 'route sim: no failure');
    is($sim->{in_flight}, 0, 'route sim: nothing in flight');
    my $flaky = route('flaky');
    is($flaky->{attempts}, scalar @{ $ids->{'m-flaky'} },
        'route flaky: one attempt counted per execution, none lost');
    is($flaky->{failures}, $flaky_failed,
        'route flaky: one failure counted per FAILED execution');
    is($flaky->{in_flight}, 0, 'route flaky: nothing in flight');
    is($flaky->{breaker}, 'closed', 'route flaky: its breaker closed');

    my $v = $t->verify($acc->{org});
    ok($v->{ok}, 'verify ok') or diag explain $v;
    my $b = $t->balance($acc->{key});
    money_is($b->{held}, '0.00', 'nothing held');
    money_is($b->{balance}, sprintf('%.2f', 100 - 0.01
        * (@{ $ids->{'m-sim'} } + $flaky_ok)),
        'the balance is the credit less 0.01 per COMPLETED execution');
}

# ------------------------------ 2: claims that fail executions, at the same
# time as the creates and settles of the same account

{
    my $acc = $t->new_account(credit => '100.00');

    # the first one fails on the provider and opens the breaker for an
    # hour: the claims of the others fail them (no route), hold released
    my $first = $t->create_exec($acc->{key}, $t->exec_body(model => 'm-down'));
    is($first->{status}, 202, 'm-down: created');
    my $e1 = $t->wait_terminal($acc->{key}, [ $first->{json}{id} ], 30);
    is($e1->{ $first->{json}{id} }{status}, 'FAILED',
        'm-down: the first one FAILED (the provider)');
    ok(wait_for(sub { (route('down')->{breaker} // '') eq 'open' }, 10,
        0.1), "route down: its breaker opened");

    my $ids = storm($acc->{key}, 8, 40, qw(m-down m-sim m-down m-held));
    my @ended = (@{ $ids->{'m-down'} }, @{ $ids->{'m-sim'} });
    my $e = $t->wait_terminal($acc->{key}, \@ended, 90);
    my %st;
    $st{ $_->{status} // 'none' }++ for map { $e->{$_} } @{ $ids->{'m-down'} };
    is($st{FAILED}, scalar @{ $ids->{'m-down'} },
        'm-down: every execution FAILED');
    my $no_route = grep { ($_->{error}{code} // '') ne ''
        && !@{ $_->{attempts} // [] } } map { $e->{$_} } @{ $ids->{'m-down'} };
    is($no_route, scalar @{ $ids->{'m-down'} },
        'm-down: failed by the claim, no attempt made (breaker open)');
    is(scalar(grep { ($e->{$_}{status} // '') eq 'COMPLETED' }
        @{ $ids->{'m-sim'} }), scalar @{ $ids->{'m-sim'} },
        'm-sim: every execution COMPLETED');

    # m-held has no route: its executions stay PENDING, holding 0.048
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, 'verify ok') or diag explain $v;
    is($v->{executions}, 1 + scalar(map { @$_ } values %$ids),
        'one execution per create');
    my $b = $t->balance($acc->{key});
    money_is($b->{held}, sprintf('%.3f', 0.048 * @{ $ids->{'m-held'} }),
        'held: the pending executions\' holds only (0.048 each)');
    money_is($b->{balance}, sprintf('%.2f', 100 - 0.01 * @{ $ids->{'m-sim'} }),
        'the balance is the credit less 0.01 per COMPLETED execution');
}

# ------------------------------------------------ 3: a cap, checked again
# The route is paused (a 429 with Retry-After) while executions are made;
# when the pause ends its row is locked by another transaction (psql, as
# another node would) that takes its three slots.  A claim reads the row
# unlocked (three slots free), takes them, and waits for the row at its
# end: once the other commits, the route is full, so the claim must be
# made again (locked) and take none: no attempt reaches the provider
# until the slots are given back.

{
    my $acc = $t->new_account(credit => '100.00');
    $rc->set('/capped', sequence => [
        { status => 429, headers => { 'Retry-After' => 3 } },
        { json => $CHAT, hold => 'cap' } ]);
    my $first = $t->create_exec($acc->{key},
        $t->exec_body(model => 'm-capped'));
    is($first->{status}, 202, 'm-capped: the first one created');
    ok(wait_for(sub { defined route('capped')->{paused_until} }, 10, 0.05),
        'route capped: paused by the 429');
    my $ids = storm($acc->{key}, 8, 3, qw(m-capped));
    my @all = @{ $ids->{'m-capped'} };
    my $other = other_node("UPDATE mr_routes SET inflight = 3 WHERE name = "
        . "'capped'", 8, 'route capped: another transaction takes its slots');
    ok(defined route('capped')->{paused_until},
        'route capped: still paused then');
    claim_waits('route capped: the pause over, a claim waits for the row');
    waitpid($other, 0);
    dispatch_sync($acc->{key});
    is($rc->count(path => '/capped'), 1,
        'max_concurrency=3: the claim took no slot once the route was '
        . 'full (only the 429 at the provider)');
    is(route('capped')->{in_flight}, 3, 'route capped: in_flight 3');

    # the other's attempts end: three slots again
    $t->psql("UPDATE mr_routes SET inflight = 0 WHERE name = 'capped'");
    ok(scalar($rc->wait_requests(4, path => '/capped', timeout => 20)) >= 4,
        'max_concurrency=3: three attempts reach the provider once the '
        . 'slots are back');
    dispatch_sync($acc->{key});
    is($rc->count(path => '/capped'), 4,
        'max_concurrency=3: three in flight, no more');
    $rc->release('cap');
    $rc->set('/capped', json => $CHAT);
    my $e = $t->wait_terminal($acc->{key}, \@all, 90);
    is(scalar(grep { ($_->{status} // '') eq 'COMPLETED' } values %$e),
        scalar @all, 'm-capped: every execution made in the pause '
        . 'COMPLETED');
    is($rc->count(path => '/capped'), 1 + scalar @all,
        'm-capped: one provider request per execution');
    is(route('capped')->{in_flight}, 0, 'route capped: nothing in flight');
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, 'verify ok') or diag explain $v;
}

# ---------------------------------------- 4: the breaker's probe, the same
# The route's breaker is half-open; another transaction takes the probe
# (as another node's claim would) while a claim that read the route
# unlocked (no probe in flight) takes it too and waits for the row: it
# must be made again and find the probe taken: one probe, not two.

{
    my $acc = $t->new_account(credit => '100.00');
    $rc->set('/brk', status => 503);
    my $x = $t->create_exec($acc->{key}, $t->exec_body(model => 'm-brk'));
    my $e = $t->wait_terminal($acc->{key}, [ $x->{json}{id} ], 30);
    is($e->{ $x->{json}{id} }{status}, 'FAILED',
        'm-brk: the first one FAILED (the provider): the breaker opens');
    ok(wait_for(sub { (route('brk')->{breaker} // '') eq 'half_open' }, 10,
        0.05), 'route brk: half-open after breaker_reset');
    $rc->set('/brk', json => $CHAT, hold => 'brk');
    my $other = other_node("UPDATE mr_routes SET probe_until_ms = "
        . "(extract(epoch FROM clock_timestamp()) * 1000)::bigint + 60000, "
        . "probe_token = 12345 WHERE name = 'brk'", 5,
        'route brk: another transaction takes its probe');
    my $y = $t->create_exec($acc->{key}, $t->exec_body(model => 'm-brk'));
    is($y->{status}, 202, 'm-brk: one more created');
    claim_waits('route brk: its claim waits for the row');
    waitpid($other, 0);
    dispatch_sync($acc->{key});
    is($rc->count(path => '/brk'), 1,
        'route brk: no second probe (only the first 503 at the provider)');

    # the other's probe ends without an answer: the probe is free again
    $t->psql("UPDATE mr_routes SET probe_until_ms = 0, probe_token = 0 "
        . "WHERE name = 'brk'");
    ok(scalar($rc->wait_requests(2, path => '/brk', timeout => 20)) >= 2,
        'route brk: the probe is made once it is free');
    $rc->release('brk');
    $rc->set('/brk', json => $CHAT);
    $e = $t->wait_terminal($acc->{key}, [ $y->{json}{id} ], 30);
    is($e->{ $y->{json}{id} }{status}, 'COMPLETED',
        'm-brk: the probe COMPLETED');
    ok(wait_for(sub { (route('brk')->{breaker} // '') eq 'closed' }, 10,
        0.05), 'route brk: closed by the probe');
    is(route('brk')->{in_flight}, 0, 'route brk: nothing in flight');
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, 'verify ok') or diag explain $v;
}

# the batches made again above (3, 4) were rolled back, not failed
my $m = parse_metrics($t->req(GET => '/admin/metrics')->{body} // '');
cmp_ok(metric($m, 'modelroute_store_commits_total', result => 'ok'), '>',
    0, 'commits counted');
is(metric($m, 'modelroute_store_commits_total', result => 'failed'), 0,
    'no failed commit: a batch made again at once is not one');

$rc->stop;
$t->done;
