# A fleet (issue 12): three nginx nodes on loopback, one PostgreSQL (a
# private cluster, whatever MR_STORE says), each node with its own prefix,
# dispatch socket and secret:
#  - the same idempotency key sent to the three nodes at the same instant,
#    round after round: one execution and one hold per key, every answer
#    the same id; a route's max_concurrency holds across the fleet (a cap
#    of 4 is 4 attempts in flight, not 4 per node);
#  - a storm of creates spread over the nodes while one node is killed
#    (kill -9 of its master and workers at once): every 202 is readable
#    from the survivors, every execution completes, verify is exact, the
#    attempts the dead node held leases on are made again by the others
#    (an "abandoned" attempt, then a "succeeded" one), and the webhook
#    endpoint gets every event of every execution, in order per execution;
#  - a rolling restart of the three nodes (QUIT, then start, one at a
#    time) under a load whose clients retry a connection error on another
#    node with the same key: no 5xx, nothing lost, nothing doubled, events
#    in order.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use Time::HiRes qw(time sleep);
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_sweep_interval 200ms;
modelroute_webhook_allow_private on;
modelroute_webhook_retry 1s 1s 1s 1s 1s;
# the receiver forks a Perl process per connection: 4 at a time per
# worker (24 for the fleet), and time to answer on a loaded machine (10
# failures in a row would deactivate the endpoint)
modelroute_webhook_concurrency 64 4;
modelroute_webhook_timeout 10s;
modelroute_route sim /p/sim protocol=openai_chat timeout=3s;
modelroute_route held /p/held protocol=openai_chat timeout=60s
                 max_concurrency=4;
modelroute_model m-sim per_request=0.01 routes=sim attempts=3;
modelroute_model m-held per_request=0.01 routes=held attempts=1;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/sim { internal; modelroute_simulator latency=500ms; }
    location /p/held {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/held;
        proxy_read_timeout 90s;
    }
}
EOF

my @n = (MR::Test->new(store => 'postgres', http => $http, timeout => 30));
push @n, MR::Test->new(store => 'postgres', db => $n[0]->db,
    http => $http, timeout => 30) for 1, 2;
$_->start for @n;
my $t = $n[0];

my $CHAT = chat_completion();
my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

isnt($n[1]->store, $n[0]->store, 'each node has a directory of its own');
is($n[1]->db, $n[0]->db, '... and the three share one database');

# The ledger: verify exact, one execution per key, credit - balance is the
# sum of the costs, nothing held.
sub ledger_ok {
    my ($name, $acc, $credit, $execs, $nkeys) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $v = $n[1]->verify($acc->{org});
    ok($v->{ok}, "$name: verify ok") or diag explain $v;
    is($v->{executions}, $nkeys, "$name: one execution per key, none more");
    my $sum = 0;
    $sum += micros($_->{cost} // '0.00') for values %$execs;
    my $b = $n[0]->balance($acc->{key});
    is(micros($credit) - micros($b->{balance}), $sum,
        "$name: credit - balance = the sum of the costs");
    money_is($b->{held}, '0.00', "$name: nothing held");
}

# The deliveries to $path by execution: every event of every execution in
# $execs arrived (at least once), and in order: each arrival of an event
# comes after every arrival of the one before it.
sub events_ok {
    my ($name, $path, $execs) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my %want = map {
        $_ => [ 'execution.started', 'execution.' . lc $execs->{$_}{status} ]
    } keys %$execs;
    my %got;
    my $all = wait_for(sub {
        %got = ();
        for my $q ($rc->requests(path => $path)) {
            my $ev = $q->{event} // next;
            my $x = $ev->{execution_id} // next;
            next unless $want{$x};
            push @{ $got{$x}{ $ev->{event_type} } }, $q->{arrived};
        }
        !grep { my $x = $_; grep { !$got{$x}{$_} } @{ $want{$x} } }
            keys %want;
    }, 120, 0.5);
    my @missing = grep { my $x = $_; grep { !$got{$x}{$_} } @{ $want{$x} } }
        sort keys %want;
    ok($all, "$name: every event of every execution delivered ("
        . scalar(keys %want) . ' executions)')
        or diag scalar(@missing) . " incomplete, e.g. $missing[0]: ",
            explain($got{ $missing[0] } // {}),
            'deliveries (type|status|count): ' . join(', ', split /\n/,
                $t->psql('SELECT type, status, count(*) FROM mr_deliveries '
                    . 'GROUP BY 1, 2 ORDER BY 1, 2')),
            'endpoints (active|failures): ' . join(', ', split /\n/,
                $t->psql('SELECT active, failures FROM mr_endpoints')),
            'received: ' . scalar($rc->requests(path => $path));
    my @disorder = grep {
        my $x = $_;
        my ($first, $second) = map { $got{$x}{$_} // [] } @{ $want{$x} };
        my ($last1) = sort { $b <=> $a } @$first;
        my ($first2) = sort { $a <=> $b } @$second;
        defined $last1 && defined $first2 && $first2 < $last1;
    } sort keys %got;
    is(scalar @disorder, 0, "$name: in order per execution")
        or diag explain { map { $_ => $got{$_} } @disorder[0 .. 2] };
    my $dups = 0;
    for my $x (keys %got) {
        $dups += @{ $got{$x}{$_} } - 1 for keys %{ $got{$x} };
    }
    note "$name: $dups events delivered more than once";
}

# A load over the nodes: $clients clients, each creating m-sim executions
# with keys of its own until $stop exists, on the nodes in turn; a
# connection error (599) is tried again with the same key on the next
# node, until a 202.  Returns the ids by key, the count of each status,
# and the answers that were neither 202 nor a connection error.
sub load {
    my ($acc, $clients, $stop, $during) = @_;
    my @res = $t->parallel($clients, sub {
        my ($i) = @_;
        my (%ids, %codes, @bad);
        my $k = 0;
        my $at = $i;
        until (-e $stop) {
            my $key = "load-$i-" . $k++;
            my $body = { model => 'm-sim', input => { prompt => "$i $k" },
                idempotency_key => $key };
            my $try_end = time + 60;
            while (time < $try_end) {
                my $node = $n[ $at++ % 3 ];
                my $r = $node->create_exec($acc->{key}, $body);
                $codes{ $r->{status} }++;
                if ($r->{status} == 202) {
                    $ids{$key} = $r->{json}{id};
                    last;
                }
                last unless $r->{status} == 599;
            }
            push @bad, "$key: no 202 (last status " . join(',',
                sort keys %codes) . ')' unless $ids{$key};
            last if @bad > 10;
        }
        return { ids => \%ids, codes => \%codes, bad => \@bad };
    }, timeout => 240, during => $during);
    my (%ids, %codes, @bad);
    for my $r (@res) {
        if ($r->{died}) {
            push @bad, "a client died: $r->{died}";
            next;
        }
        %ids = (%ids, %{ $r->{ids} });
        $codes{$_} += $r->{codes}{$_} for keys %{ $r->{codes} };
        push @bad, @{ $r->{bad} };
    }
    return (\%ids, \%codes, \@bad);
}

# Every id answered 202 is readable from each node in @from, with its key.
sub readable_ok {
    my ($name, $acc, $ids, @from) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @lost;
    for my $k (sort keys %$ids) {
        for my $node (@from) {
            my $r = $node->get_exec($acc->{key}, $ids->{$k});
            push @lost, "$k on " . $node->port
                unless $r->{status} == 200
                    && ($r->{json}{id} // '') eq $ids->{$k}
                    && ($r->{json}{idempotency_key} // '') eq $k;
        }
    }
    is(scalar @lost, 0, "$name: every execution answered 202 is readable "
        . 'from ' . join(', ', map { $_->port } @from))
        or diag "lost: @lost[0 .. ($#lost < 9 ? $#lost : 9)]";
}

# ------------------------------------------ 1: one key, three nodes, at once

{
    my $acc = $t->new_account(credit => '100.00');
    my $rounds = 30;
    $rc->set('/held', json => $CHAT, hold => 'idem');
    my $t0 = time + 1;
    my @res = $t->parallel(3, sub {
        my ($i) = @_;
        my @got;
        for my $r (1 .. $rounds) {
            my $at = $t0 + $r * 0.2;
            sleep($at - time) if $at > time;
            my $x = $n[$i]->create_exec($acc->{key}, { model => 'm-held',
                input => { prompt => "round $r" },
                idempotency_key => "same-$r" });
            push @got, [ $x->{status}, $x->{json}{id} // $x->{body} ];
        }
        return \@got;
    }, timeout => 120);

    my (@bad, @split, %ids);
    for my $r (1 .. $rounds) {
        my %seen;
        for my $i (0 .. 2) {
            my ($status, $id) = @{ $res[$i][ $r - 1 ] // [ 0, 'none' ] };
            push @bad, "round $r node $i: $status $id"
                unless $status == 200 || $status == 202;
            $seen{$id}++;
        }
        push @split, "round $r: " . join(' ', sort keys %seen)
            if keys %seen != 1;
        $ids{"same-$r"} = (keys %seen)[0];
    }
    is(scalar @bad, 0, "same key at once: every answer a success "
        . "($rounds rounds x 3 nodes)") or diag join "\n", @bad[0 .. 4];
    is(scalar @split, 0, 'same key at once: every answer the same id')
        or diag join "\n", @split[0 .. 4];
    my $v = $n[2]->verify($acc->{org});
    ok($v->{ok}, 'same key at once: verify ok') or diag explain $v;
    is($v->{executions}, $rounds, 'same key at once: one execution per key');
    # nothing is answered by the provider yet: the holds are all there
    money_is($n[1]->balance($acc->{key})->{held},
        sprintf('%.3f', $rounds * 0.012), 'same key at once: one hold per '
        . 'key (0.012 each)');

    # the cap: 4 in flight for the whole fleet; a sync point on each
    # node (an m-sim execution completes) shows the dispatchers went on
    ok(scalar($rc->wait_requests(4, path => '/held', timeout => 20)) >= 4,
        'max_concurrency=4: four attempts reach the provider');
    my $sync = $t->new_account(credit => '10.00');
    my @s = map {
        $n[$_]->create_exec($sync->{key}, $t->exec_body(model => 'm-sim'))
            ->{json}{id}
    } 0 .. 2;
    my $se = $n[0]->wait_terminal($sync->{key}, \@s, 30);
    is(scalar(grep { ($_->{status} // '') eq 'COMPLETED' } values %$se), 3,
        'max_concurrency=4: the three nodes dispatch meanwhile');
    is($rc->count(path => '/held'), 4,
        'max_concurrency=4: still four in flight, across three nodes');
    for my $node (@n) {
        my ($rs) = grep { $_->{name} eq 'held' }
            @{ $node->admin(GET => '/routes')->{json}{data} // [] };
        is($rs && $rs->{in_flight}, 4, 'max_concurrency=4: node '
            . $node->port . ' sees in_flight 4 (fleet-wide)');
    }

    $rc->set('/held', json => $CHAT);
    $rc->release('idem');
    my $execs = $n[1]->wait_terminal($acc->{key}, [ values %ids ], 90);
    is(scalar(grep { ($_->{status} // '') eq 'COMPLETED' } values %$execs),
        $rounds, 'same key at once: every execution COMPLETED');
    is($rc->count(path => '/held'), $rounds,
        'same key at once: one provider request per key');
    ledger_ok('same key at once', $acc, '100.00', $execs, $rounds);
    $rc->clear;
}

# ------------------------------------------ 2: a node killed in a storm

my $storm = $t->new_account(credit => '1000.00');
my $ep = wh_create($t, $storm->{key}, { url => $rc->url('/events') });
is($ep->{status}, 201, 'kill: a webhook endpoint') or diag $ep->{body};

{
    my $dir = tempdir('mr-fleet-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my $stop = "$dir/stop";
    my ($victim, @leased, @killed) = ($n[2]);
    my ($ids, $codes, $bad) = load($storm, 6, $stop, sub {
        sleep 0.5;
        # attempts in flight on the victim: its leases
        wait_for(sub {
            $t->psql("SELECT count(*) FROM mr_executions WHERE "
                . "lease_owner <> 0 AND lease_node LIKE '%"
                . $victim->store . "'") >= 3 }, 20, 0.05);
        @killed = $victim->kill_node;
        @leased = split /\n/, $t->psql("SELECT id FROM mr_executions "
            . "WHERE lease_owner <> 0 AND lease_node LIKE '%"
            . $victim->store . "' ORDER BY id");
        sleep 3;
        open my $fh, '>', $stop or die "$stop: $!";
        close $fh;
    });
    note 'kill: ' . join ', ', map { "$_: $codes->{$_}" } sort keys %$codes;
    ok(@killed >= 3, 'kill: the master and its workers killed (kill -9)');
    is(scalar @$bad, 0, 'kill: every create got its 202 (connection '
        . 'errors tried again on another node)') or diag join "\n", @$bad;
    ok(!grep({ $_ != 202 && $_ != 599 } keys %$codes),
        'kill: only 202 answers and connection errors');
    my $nkeys = keys %$ids;
    ok($nkeys > 30, "kill: $nkeys executions answered 202");
    cmp_ok(scalar @leased, '>', 0,
        'kill: ' . scalar(@leased) . ' attempts leased by the dead node');
    readable_ok('kill', $storm, $ids, @n[0, 1]);

    my $execs = $n[0]->wait_terminal($storm->{key}, [ values %$ids ], 90);
    my @open = grep { !$TERMINAL{ $execs->{$_}{status} // '' } }
        values %$ids;
    is(scalar @open, 0, 'kill: every execution terminal')
        or diag scalar(@open) . " open, e.g. $open[0]";
    is(scalar(grep { ($_->{status} // '') eq 'COMPLETED' } values %$execs),
        $nkeys, 'kill: every execution COMPLETED');
    my @wrong = grep {
        my @o = map { $_->{outcome} } @{ $execs->{$_}{attempts} // [] };
        !(@o >= 2 && $o[0] eq 'abandoned' && $o[-1] eq 'succeeded');
    } @leased;
    is(scalar @wrong, 0, 'kill: each attempt the dead node held is '
        . 'abandoned, then made again by a survivor') or diag explain
        { map { $_ => $execs->{$_}{attempts} } @wrong[0 .. 2] };
    my @twice = grep {
        grep({ $_->{outcome} eq 'succeeded' }
            @{ $execs->{$_}{attempts} // [] }) != 1
    } keys %$execs;
    is(scalar @twice, 0, 'kill: one successful attempt per execution');
    ledger_ok('kill', $storm, '1000.00', $execs, $nkeys);
    events_ok('kill', '/events', $execs);
    my ($rs) = grep { $_->{name} eq 'sim' }
        @{ $n[0]->admin(GET => '/routes')->{json}{data} // [] };
    is($rs && $rs->{in_flight}, 0,
        "kill: the dead node's route slots came back");

    # the dead node comes back in its own prefix
    ok(eval { $victim->start; 1 }, 'kill: the node starts again')
        or diag $@;
}

# ------------------------------------------ 3: a rolling restart under load

{
    my $acc = $t->new_account(credit => '1000.00');
    my $wh = wh_create($t, $acc->{key}, { url => $rc->url('/rolling') });
    is($wh->{status}, 201, 'rolling: a webhook endpoint');
    my $dir = tempdir('mr-fleet-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my $stop = "$dir/stop";
    my $restarts = 0;
    my ($ids, $codes, $bad) = load($acc, 4, $stop, sub {
        sleep 1;
        for my $node (@n) {
            $node->stop;
            $node->start;
            $restarts++;
            sleep 1;
        }
        open my $fh, '>', $stop or die "$stop: $!";
        close $fh;
    });
    note 'rolling: ' . join ', ', map { "$_: $codes->{$_}" } sort keys %$codes;
    is($restarts, 3, 'rolling: each node stopped (QUIT) and started');
    is(scalar @$bad, 0, 'rolling: every create got its 202')
        or diag join "\n", @$bad;
    ok(!grep({ $_ >= 500 && $_ != 599 } keys %$codes),
        'rolling: no 5xx (connection errors tried again on another node)');
    my $nkeys = keys %$ids;
    ok($nkeys > 30, "rolling: $nkeys executions answered 202");
    readable_ok('rolling', $acc, $ids, @n);
    my $execs = $n[2]->wait_terminal($acc->{key}, [ values %$ids ], 90);
    is(scalar(grep { ($_->{status} // '') eq 'COMPLETED' } values %$execs),
        $nkeys, 'rolling: every execution COMPLETED');
    ledger_ok('rolling', $acc, '1000.00', $execs, $nkeys);
    events_ok('rolling', '/rolling', $execs);
}

for my $node (@n) {
    $node->stop;
    note 'node ' . $node->port;
    $node->check_log;
}
done_testing();
