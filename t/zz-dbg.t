# Dispatch under faults: a cancel while the provider is still working
# aborts the upstream call; an answer after expiry is dropped; every
# worker killed with SIGKILL while attempts are in flight (the leases end,
# the attempts are recorded as abandoned and made again); nginx stopped and
# started with work in flight; a reload with 50 attempts in flight; the
# dispatch socket refuses requests without the secret of this start.
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
use MR::Receiver;

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_sweep_interval 200ms;
error_log %%PREFIX%%/logs/error.log info;
modelroute_route slow /p/slow protocol=openai_chat timeout=3s;
modelroute_route long /p/long protocol=openai_chat timeout=10s;
modelroute_model m-slow per_request=0.01 routes=slow attempts=3;
modelroute_model m-long per_request=0.01 routes=long attempts=1;
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
    location /p/long {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/long;
        proxy_read_timeout 20s;
    }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;

my $CHAT = { id => 'chatcmpl-1', object => 'chat.completion',
    choices => [ { index => 0, finish_reason => 'stop',
        message => { role => 'assistant', content => 'ok' } } ],
    usage => { prompt_tokens => 3, completion_tokens => 5,
        total_tokens => 8 } };

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub exec_of {
    my ($key, $id) = @_;
    my $r = $t->get_exec($key, $id);
    diag "get $id: $r->{status} " . substr($r->{body},0,120) if $ENV{DBG} && $r->{status} != 200;
    return $r->{status} == 200 ? $r->{json} : undef;
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
            diag sprintf("%.2f %s %s %s", time, $id, $e{$id}{status}, JSON::PP->new->canonical->encode($e{$id}{attempts})) if $ENV{DBG};
            return 0 unless $TERMINAL{ $e{$id}{status} };
        }
        1;
    }, $timeout // 30, 0.1);
    diag "returning " . join(",", map { "$_=" . ($e{$_} ? $e{$_}{status} : 'none') } keys %e) if $ENV{DBG};
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

# ------------------------------------------------ 3: kill -9 mid-flight

{
    my $acc = $t->new_account(credit => '5.00');
    $rc->set('/slow', json => $CHAT, delay => 2);
    my @ids = map { create($acc, 'm-slow', input => { prompt => "kill-$_" }) }
        1 .. 6;
    my @got = $rc->wait_requests(6, path => '/slow', timeout => 10);
    is(scalar @got, 6, 'kill: every attempt is in flight');
    $t->expect_log(qr/exited on signal 9/);
    my @old = $t->worker_pids;
    kill 'KILL', @old;
    my $killed = time;
    ok(time - ($got[-1]{arrived} // 0) < 1.5,
        'kill: every worker killed while the provider holds the requests');
    $rc->set('/slow', json => $CHAT);
    my %old = map { $_ => 1 } @old;
    ok(wait_for(sub {
        my @w = $t->worker_pids;
        @w == 2 && !grep { $old{$_} } @w;
    }, 20), 'kill: the master replaced the workers');

    my $execs = wait_terminal($acc->{key}, \@ids, 30);
    note sprintf 'kill: terminal %.1f s after the kill', time - $killed;
    my @done = grep { $execs->{$_}{status} eq 'COMPLETED' } @ids;
    is(scalar @done, 6, 'kill: every execution COMPLETED')
        or diag explain { map { $_ => $execs->{$_}{status} } @ids };
    for my $id (@ids) {
        my @at = @{ $execs->{$id}{attempts} // [] };
        my @outcomes = map { $_->{outcome} } @at;
        is_deeply(\@outcomes, [ 'abandoned', 'succeeded' ],
            "kill: $id attempts abandoned, succeeded")
            or diag explain \@at;
        money_is($execs->{$id}{cost}, '0.01', "kill: $id charged once");
    }
    my $first = (sort map { parse_rfc3339($_->{completed_at} // '') // 0 }
        values %$execs)[0];
    ok($first - $killed >= 3, sprintf('kill: made again only when the '
        . 'leases ended (%.1f s after the kill)', $first - $killed));
    is($rc->count(path => '/slow'), 12, 'kill: each attempt made twice');
    ledger_ok($acc, '5.00', $execs, 'kill');
    $rc->clear;
}

$t->done;
