# Dispatch under faults: a cancel while the provider is still working
# aborts the upstream call; an answer after expiry is dropped; every
# worker killed with SIGKILL while attempts are in flight (the leases end,
# the attempts are recorded as abandoned and made again, and the breaker
# does not count them); nginx stopped and started with work in flight; a
# reload with 50 attempts in flight; the dispatch socket refuses requests
# without the secret of this start.
# Every execution is charged at most once and the ledger verifies.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use Time::HiRes qw(time);
use MR::Test qw(:all);
use MR::Receiver qw(chat_completion);

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_sweep_interval 200ms;
error_log %%PREFIX%%/logs/error.log info;
modelroute_route slow /p/slow protocol=openai_chat timeout=3s;
modelroute_route long /p/long protocol=openai_chat timeout=10s;
# the reload's: an answer a second late on a loaded machine is no timeout
modelroute_route hup /p/hup protocol=openai_chat timeout=15s;
modelroute_route kslow /p/kslow protocol=openai_chat timeout=3s breaker=1
                 breaker_reset=60s;
modelroute_route sync /p/sync protocol=openai_chat;
modelroute_model m-slow per_request=0.01 routes=slow attempts=3;
modelroute_model m-kslow per_request=0.01 routes=kslow attempts=3;
modelroute_model m-long per_request=0.01 routes=long attempts=1;
modelroute_model m-hup per_request=0.01 routes=hup attempts=3;
modelroute_model m-sync per_request=0.01 routes=sync;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/slow {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/slow;
        proxy_read_timeout 10s;
    }
    location /p/hup {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/hup;
        proxy_read_timeout 20s;
    }
    location /p/long {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/long;
        proxy_read_timeout 20s;
    }
    location /p/kslow {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/kslow;
        proxy_read_timeout 10s;
    }
    location /p/sync { internal; proxy_pass http://127.0.0.1:$RPORT/sync; }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;

my $CHAT = chat_completion();

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);
$rc->set('/sync', json => $CHAT);

# The execution object; if the answer is a 200 that is not valid JSON, a
# stand-in with its status, cost and attempt outcomes read from the text
# and {_invalid} set to the body, so that the waits and the other checks go
# on and all_valid_json says what is wrong.
sub exec_of {
    my ($key, $id) = @_;
    my $r = $t->get_exec($key, $id);
    return undef unless $r->{status} == 200;
    return $r->{json} if ref $r->{json} eq 'HASH';
    my ($status) = $r->{body} =~ /"status":"([A-Z_]+)"/;
    my ($cost) = $r->{body} =~ /"cost":"([0-9.]+)"/;
    my @outcomes = $r->{body} =~ /"outcome":"([a-z_]+)"/g;
    return { id => $id, status => $status // 'UNKNOWN', cost => $cost,
        attempts => [ map { { outcome => $_ } } @outcomes ],
        _invalid => $r->{body} };
}

# Fails unless every execution object was valid JSON.
sub all_valid_json {
    my ($execs, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @bad = grep { $_->{_invalid} } values %$execs;
    ok(!@bad, "$name: every execution object is valid JSON")
        or diag scalar(@bad) . ' invalid, e.g.: '
            . join '', map { $_ =~ /[ -~]/ ? $_ : sprintf '\\x%02x', ord }
                split //, $bad[0]{_invalid};
}

sub wait_status {
    my ($key, $id, $want, $timeout) = @_;
    my $last;
    wait_for(sub {
        $last = exec_of($key, $id);
        $last && $last->{status} eq $want;
    }, $timeout // 15);
    return $last // {};
}

sub create {
    my ($acc, $model, %over) = @_;
    my $r = $t->create_exec($acc->{key}, $t->exec_body(model => $model,
        input => { prompt => 'hello' }, %over));
    die "create: $r->{status} $r->{body}\n" unless $r->{status} == 202;
    return $r->{json}{id};
}

# Waits until every execution is terminal; returns them by id.
sub wait_terminal {
    my ($key, $ids, $timeout) = @_;
    my %e;
    wait_for(sub {
        for my $id (@$ids) {
            next if $e{$id} && $TERMINAL{ $e{$id}{status} };
            $e{$id} = exec_of($key, $id) or return 0;
            return 0 unless $TERMINAL{ $e{$id}{status} };
        }
        1;
    }, $timeout // 30, 0.1);
    return \%e;
}

# Receiver-side sockets of provider connections: remote port => state
# ('01' established, '08' close-wait), from /proc/net/tcp.
sub provider_sockets {
    my %s;
    open my $fh, '<', '/proc/net/tcp' or return;
    <$fh>;
    while (<$fh>) {
        my (undef, $local, $remote, $st) = split ' ';
        my ($lport) = $local =~ /:([0-9A-F]{4})$/ or next;
        my ($rport) = $remote =~ /:([0-9A-F]{4})$/ or next;
        next unless hex($lport) == $RPORT && hex($rport) != 0;
        $s{ hex $rport } = $st;
    }
    return \%s;
}

# A point after which the dispatcher has claimed again: an execution of
# m-sync, created now, completes.
my $sync_acc;
sub dispatch_sync {
    $sync_acc //= $t->new_account(credit => '10.00');
    my $id = create($sync_acc, 'm-sync');
    return (wait_status($sync_acc->{key}, $id, 'COMPLETED', 20)->{status}
        // '') eq 'COMPLETED';
}

sub ledger_ok {
    my ($acc, $credit, $execs, $name) = @_;
    my $sum = 0;
    $sum += micros($_->{cost} // '0.00') for values %$execs;
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, "$name: verify ok") or diag explain $v;
    my $b = $t->balance($acc->{key});
    is(micros($credit) - micros($b->{balance}), $sum,
        "$name: credit - balance = the sum of the costs");
    money_is($b->{held}, '0.00', "$name: held 0");
}

# ------------------------------------------------ 1: cancel mid-flight

{
    my $acc = $t->new_account(credit => '5.00');
    $rc->set('/long', json => $CHAT, hold => 'cancel');
    my $id = create($acc, 'm-long', input => { prompt => 'cancel-1' });
    my ($req) = $rc->wait_requests(1, path => '/long', timeout => 10);
    ok($req, 'cancel: the provider got the request');
    my $e = exec_of($acc->{key}, $id);
    is($e->{status}, 'PROCESSING', 'cancel: PROCESSING while it works');
    my $before = provider_sockets() // {};
    my @conn = grep { $before->{$_} eq '01' } keys %$before;
    is(scalar @conn, 1, 'cancel: one provider connection open (/proc/net/tcp)')
        or diag explain $before;

    # the provider holds its answer: the cancel is answered before it
    my $r = $t->req(POST => "/v1/executions/$id/cancel", auth($acc->{key}));
    is($r->{status}, 200, 'cancel mid-flight: 200') or diag $r->{body};
    is($r->{json}{status}, 'CANCELLED', 'cancel mid-flight: CANCELLED');
    my $b = $t->balance($acc->{key});
    money_is($b->{held}, '0.00', 'cancel: hold released at once');
    money_is($b->{balance}, '5.00', 'cancel: nothing charged');

    # nginx closes the upstream connection while the provider still holds
    # its answer (and before the route's timeout, 10 s, would: the wait is
    # shorter than that)
    my $closed = @conn && wait_for(sub {
        my $s = provider_sockets() // {};
        !grep { ($s->{$_} // '') eq '01' } @conn;
    }, 8, 0.02);
    ok($closed, 'cancel: nginx closed the provider connection')
        or diag explain provider_sockets();
    ok(!defined(($rc->requests(path => '/long'))[0]{answered_at}),
        '... while the provider had not answered');
    ok(wait_for(sub { $t->read_log =~
        /\Q$id\E is CANCELLED: its attempt is given up/ }, 5),
        'cancel: logged "its attempt is given up"');
    like($t->read_log, qr/aborting 1 attempts no longer wanted/,
        'cancel: logged "aborting"');

    # after the provider answered: nothing changes
    $rc->release('cancel');
    ok($rc->wait_requests(1, path => '/long', timeout => 10,
        where => sub { $_[0]{released_at} }),
        'cancel: the provider has finished');
    ok(dispatch_sync(), 'cancel: the dispatcher has claimed since');
    $e = exec_of($acc->{key}, $id);
    is($e->{status}, 'CANCELLED', 'cancel: stays CANCELLED');
    money_is($e->{cost} // '0.00', '0.00', 'cancel: cost 0');
    ok(!defined $e->{result}, 'cancel: no result');
    is($rc->count(path => '/long'), 1, 'cancel: no other attempt');
    ledger_ok($acc, '5.00', { $id => $e }, 'cancel');
    $rc->clear;
}

# ------------------------------------------------ 2: late answer after expiry

{
    my $acc = $t->new_account(credit => '5.00');
    $rc->set('/long', json => $CHAT, hold => 'expire');
    my $id = create($acc, 'm-long', input => { prompt => 'expire-2' },
        timeout_seconds => 2);
    ok($rc->wait_requests(1, path => '/long', timeout => 10),
        'expiry: the provider got the request');
    my $e = wait_status($acc->{key}, $id, 'EXPIRED', 10);
    is($e->{status}, 'EXPIRED', 'expiry: EXPIRED while the provider works');
    is($e->{error}{code}, 'GENERATION_TIMEOUT', 'expiry: GENERATION_TIMEOUT');
    money_is($t->balance($acc->{key})->{held}, '0.00',
        'expiry: hold released');
    # the worker gives the attempt up once it sees the execution EXPIRED;
    # then the provider answers, too late
    ok(wait_for(sub { $t->read_log =~
        /\Q$id\E is EXPIRED: its attempt is given up/ }, 10),
        'expiry: the attempt is given up (logged)');
    $rc->release('expire');
    ok($rc->wait_requests(1, path => '/long', timeout => 10,
        where => sub { $_[0]{released_at} }),
        'expiry: the provider answered (late)');
    ok(dispatch_sync(), 'expiry: the dispatcher has claimed since');
    $e = exec_of($acc->{key}, $id);
    is($e->{status}, 'EXPIRED', 'expiry: stays EXPIRED');
    money_is($e->{cost} // '0.00', '0.00', 'expiry: cost 0');
    ok(!defined $e->{result}, 'expiry: no result');
    ledger_ok($acc, '5.00', { $id => $e }, 'expiry');
    $rc->clear;
}

# ------------------------------------------------ 3: kill -9 mid-flight

{
    # on a route with breaker=1: an abandoned attempt counting as a
    # failure would open it (for 60 s), and the next attempt would fail
    my $acc = $t->new_account(credit => '5.00');
    $rc->set('/kslow', json => $CHAT, hold => 'kill');
    my @ids = map { create($acc, 'm-kslow', input => { prompt => "kill-$_" }) }
        1 .. 6;
    my @got = $rc->wait_requests(6, path => '/kslow', timeout => 10);
    is(scalar @got, 6, 'kill: every attempt is in flight');
    my @old = $t->kill_workers('KILL');
    my $killed = time;
    ok(!grep({ defined $_->{answered_at} } $rc->requests(path => '/kslow')),
        'kill: every worker killed while the provider holds the requests');
    $rc->set('/kslow', json => $CHAT);
    $rc->release('kill');
    my %old = map { $_ => 1 } @old;
    ok(wait_for(sub {
        my @w = $t->worker_pids;
        @w == 2 && !grep { $old{$_} } @w;
    }, 20), 'kill: the master replaced the workers');

    my $execs = wait_terminal($acc->{key}, \@ids, 30);
    note sprintf 'kill: terminal %.1f s after the kill', time - $killed;
    all_valid_json($execs, 'kill');
    my @done = grep { $execs->{$_}{status} eq 'COMPLETED' } @ids;
    is(scalar @done, 6, 'kill: every execution COMPLETED')
        or diag explain { map { $_ => $execs->{$_}{status} } @ids };
    for my $id (@ids) {
        my @at = @{ $execs->{$id}{attempts} // [] };
        my @outcomes = map { $_->{outcome} } @at;
        is_deeply(\@outcomes, [ 'abandoned', 'succeeded' ],
            "kill: $id attempts abandoned, succeeded")
            or diag explain \@at;
        # the lease: the route's timeout (3 s) + 2 s from the claim
        my @ts = map { parse_rfc3339($_ // '') // 0 } $at[0]{started_at},
            $at[0]{ended_at}, $at[1]{started_at};
        ok($ts[1] >= $ts[0] + 5 - 0.0005 && $ts[2] >= $ts[1] - 0.0005,
            "kill: $id made again only when its lease ended")
            or diag explain \@at;
        money_is($execs->{$id}{cost}, '0.01', "kill: $id charged once");
    }
    my @reqs = $rc->requests_to('/kslow');
    is(scalar @reqs, 12, 'kill: each attempt made twice');
    my $rs = (grep { $_->{name} eq 'kslow' }
        @{ $t->admin(GET => '/routes')->{json}{data} // [] })[0] // {};
    is($rs->{breaker}, 'closed', 'kill: abandoned attempts do not open '
        . 'the breaker (breaker=1)') or diag explain $rs;
    is($rs->{consecutive_failures}, 0, 'kill: ... nor count towards it');
    ledger_ok($acc, '5.00', $execs, 'kill');
    $rc->clear;
}

# ------------------------------------------------ 4: stop and start

{
    my $acc = $t->new_account(credit => '5.00');
    $rc->set('/slow', json => $CHAT, delay => 1.5);
    my @ids = map { create($acc, 'm-slow', input => { prompt => "stop-$_" }) }
        1 .. 6;
    my @got = $rc->wait_requests(6, path => '/slow', timeout => 10);
    is(scalar @got, 6, 'stop: every attempt is in flight');
    my $t0 = time;
    $t->stop;
    note sprintf 'stop: nginx quit in %.1f s', time - $t0;
    $t->start;
    my $execs = wait_terminal($acc->{key}, \@ids, 30);
    all_valid_json($execs, 'stop');
    my @term = grep { $TERMINAL{ $execs->{$_}{status} } } @ids;
    is(scalar @term, 6, 'stop: every execution is terminal')
        or diag explain { map { $_ => $execs->{$_}{status} } @ids };
    my @done = grep { $execs->{$_}{status} eq 'COMPLETED' } @ids;
    is(scalar @done, 6, 'stop: every execution COMPLETED');
    # README: a worker that shuts down gracefully waits for the answers
    for my $id (@ids) {
        my @outcomes = map { $_->{outcome} } @{ $execs->{$id}{attempts} };
        is_deeply(\@outcomes, ['succeeded'],
            "stop: $id answered before nginx quit: one attempt")
            or diag explain $execs->{$id}{attempts};
    }
    is($rc->count(path => '/slow'), 6, 'stop: no attempt made twice');
    ledger_ok($acc, '5.00', $execs, 'stop');
    $rc->clear;
}

# ------------------------------------------------ 5: reload with 50 in flight

{
    my $acc = $t->new_account(credit => '5.00');
    $rc->set('/hup', json => $CHAT, delay => 1);
    my @ids = map { create($acc, 'm-hup', input => { prompt => "hup-$_" }) }
        1 .. 50;
    my @got = $rc->wait_requests(20, path => '/hup', timeout => 10);
    ok(@got >= 20, 'reload: attempts are in flight (' . scalar(@got) . ')');
    my $t0 = time;
    ok(eval { $t->reload; 1 }, 'reload while attempts are in flight')
        or diag $@;
    note sprintf 'reload took %.1f s', time - $t0;
    my $execs = wait_terminal($acc->{key}, \@ids, 40);
    all_valid_json($execs, 'reload');
    my @done = grep { ($execs->{$_}{status} // '') eq 'COMPLETED' } @ids;
    is(scalar @done, 50, 'reload: all 50 COMPLETED')
        or diag explain { map { $_ => $execs->{$_}{status} } @ids };
    my @twice = grep {
        my $id = $_;
        (grep { $_->{outcome} eq 'succeeded' } @{ $execs->{$id}{attempts} })
            != 1
    } @ids;
    is(scalar @twice, 0, 'reload: exactly one succeeded attempt each')
        or diag explain { map { $_ => $execs->{$_}{attempts} } @twice };
    my @cost = grep { micros($execs->{$_}{cost} // '0') != 10_000 } @ids;
    is(scalar @cost, 0, 'reload: each charged 0.01 once');
    my @extra = grep { @{ $execs->{$_}{attempts} } != 1 } @ids;
    note scalar(@extra) . ' executions needed more than one attempt'
        if @extra;
    ledger_ok($acc, '5.00', $execs, 'reload');
    money_is($t->balance($acc->{key})->{balance}, '4.50',
        'reload: balance 5.00 - 50 x 0.01');
    $rc->clear;
}

# ------------------------------------------------ 6: the dispatch socket

{
    my $sock = $t->store . '/dispatch.sock';
    ok(-S $sock, 'the dispatch socket exists');

    my $raw = sub {
        my ($headers, $body) = @_;
        my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $sock)
            or return { status => 599, body => "connect: $!" };
        my $msg = http_message('POST', '/dispatch', $headers, $body, 1);
        syswrite $s, $msg;
        my $in = '';
        my $deadline = time + 10;
        while (time < $deadline) {
            my $rin = '';
            vec($rin, fileno($s), 1) = 1;
            next unless select(my $rout = $rin, undef, undef, 0.5) > 0;
            my $n = sysread($s, my $buf, 65536);
            last unless $n;
            $in .= $buf;
        }
        close $s;
        return MR::Test::parse_http($in);
    };

    # a line as the dispatcher would send it, for an execution that exists
    my $acc = $t->new_account(credit => '1.00');
    $rc->set('/slow', json => $CHAT);
    my $id = create($acc, 'm-slow', input => { prompt => 'sock' });
    is(wait_status($acc->{key}, $id, 'COMPLETED', 10)->{status}, 'COMPLETED',
        'socket: an execution completed');
    my $n = $rc->count(path => '/slow');
    my $line = "$id " . ('0' x 15) . "1 3000\n";

    is($raw->({}, $line)->{status}, 403, 'no X-ModelRoute-Dispatch: 403');
    is($raw->({ 'X-ModelRoute-Dispatch' => random_hex(64) }, $line)->{status},
        403, 'a wrong secret: 403');
    is($raw->({ 'X-ModelRoute-Dispatch' => '' }, $line)->{status},
        403, 'an empty secret: 403');
    is($raw->({ 'X-ModelRoute-Dispatch' => random_hex(32) }, $line)->{status},
        403, 'a short secret: 403');
    is($raw->({ 'X-ModelRoute-Dispatch' => random_hex(64) . 'aa' },
        $line)->{status}, 403, 'a long secret: 403');
    ok(dispatch_sync(), 'the dispatcher has claimed since');
    is($rc->count(path => '/slow'), $n,
        'refused requests make no provider call');
    like($t->read_log, qr/\[warn\].*refused a request without the secret/,
        'refusals are logged');
    ok($t->verify($acc->{org})->{ok}, 'socket: verify ok');
}

$t->done;
