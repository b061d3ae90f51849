# Durability: restart keeps everything; a worker killed with SIGKILL in a
# create storm loses no answered execution; a reload under a storm fails
# no request.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp ();
use MR::Test qw(:all);

my $t = MR::Test->new;
$t->start;

# ---- restart
my $acc = $t->new_account(credit => '10.00');
my ($ek, $ekid) = $t->admin_create_key($acc->{org}, 'execution');
my ($rk, $rkid) = $t->admin_create_key($acc->{org}, 'full');
is($t->admin(POST => "/keys/$rkid/revoke")->{status}, 200, 'a key revoked');
is($t->admin(POST => "/accounts/$acc->{org}/credit",
    { amount => '1.50', reference => 'ref-dur' })->{status}, 200,
    'a credit with a reference');
my $oth = $t->new_account(credit => '3.00');

my %body;
my @ids;
for my $i (1 .. 5) {
    my $b = $t->exec_body(metadata => { i => $i });
    my $r = $t->create_exec($acc->{key}, $b);
    push @ids, $r->{json}{id};
    $body{ $r->{json}{id} } = $b;
}
is($t->req(POST => "/v1/executions/$ids[2]/cancel", auth($acc->{key}))
    ->{status}, 200, 'one of them cancelled');
my $oid = $t->create_exec($oth->{key}, $t->exec_body)->{json}{id};

my %before = map { $_ => $t->get_exec($acc->{key}, $_)->{json} } @ids;
my $acct_before = $t->admin(GET => "/accounts/$acc->{org}")->{json};
my $keys_before = $t->admin(GET => "/accounts/$acc->{org}/keys")->{json};

$t->restart;

for my $id (@ids) {
    my $r = $t->get_exec($acc->{key}, $id);
    is($r->{status}, 200, "after restart: $id exists");
    is_deeply($r->{json}, $before{$id}, "after restart: $id unchanged");
}
is_deeply($t->admin(GET => "/accounts/$acc->{org}")->{json}, $acct_before,
    'after restart: account unchanged');
is_deeply($t->admin(GET => "/accounts/$acc->{org}/keys")->{json},
    $keys_before, 'after restart: keys unchanged');
money_is($t->balance($acc->{key})->{held}, '0.192',
    'after restart: four holds');
is($t->balance($ek)->{currency}, 'USD', 'after restart: execution key works');
is_error($t->req(GET => '/v1/balance', auth($rk)), 401, 'UNAUTHORIZED',
    'after restart: revoked key still refused');
my $replay = $t->create_exec($acc->{key}, $body{ $ids[0] });
is($replay->{json}{id}, $ids[0], 'after restart: idempotency key replays');
is($replay->{headers}{'idempotent-replayed'}, 'true', '... marked replayed');
my $cr = $t->admin(POST => "/accounts/$acc->{org}/credit",
    { amount => '1.50', reference => 'ref-dur' });
is($cr->{headers}{'idempotent-replayed'}, 'true',
    'after restart: credit reference replays');
is($t->get_exec($oth->{key}, $oid)->{status}, 200,
    'after restart: other account\'s execution');
ok($t->verify($acc->{org})->{ok}, 'after restart: verify ok');
ok($t->verify($oth->{org})->{ok}, 'after restart: verify ok (other)');

# A storm of creates: $clients clients, each creating until $during has
# returned (at most 300 each) and recording every answer: [status, the id
# (or the body), the request body].
sub storm {
    my ($acct, $tag, $clients, $during) = @_;
    my $stop = File::Temp::tempdir('mr-stop-XXXXXX', TMPDIR => 1,
        CLEANUP => 1) . '/stop';
    my @res = $t->parallel($clients, sub {
        my ($i) = @_;
        my @out;
        for my $j (1 .. 300) {
            last if -e $stop;
            my $b = { model => 'demo-chat', input => { i => $i, j => $j },
                idempotency_key => "$tag-$i-$j" };
            my $r = $t->create_exec($acct->{key}, $b);
            push @out, [$r->{status}, $r->{status} == 202
                ? $r->{json}{id} : substr($r->{body}, 0, 200), $b];
        }
        return \@out;
    }, during => sub {
        $during->();
        open my $fh, '>', $stop or die "$stop: $!";
        close $fh;
    });
    my @all;
    for my $r (@res) {
        if (ref $r eq 'HASH') { push @all, [0, "client died: $r->{died}"] }
        else { push @all, @$r }
    }
    return @all;
}

# Waits until the account holds more than $n holds.
sub holds_above {
    my ($acct, $n) = @_;
    return wait_for(sub {
        MR::Test::micros($t->balance($acct->{key})->{held}) > $n * 48_000;
    }, 30);
}

# ---- kill -9 of a worker during a storm
my $k = $t->new_account(credit => '1000.00');
my @killed;
my @answers = storm($k, 'kill', 20, sub {
    # Once creates are landing, kill a worker, let creates go on, kill the
    # other one, and go on a little after.
    holds_above($k, 20) or die "no execution was created\n";
    my @orig = $t->worker_pids;
    for my $victim (@orig) {
        push @killed, $t->kill_workers('KILL', $victim);
        wait_for(sub { $t->worker_pids == 2 }, 20)
            or die "the master did not replace worker $victim\n";
        my $n = MR::Test::micros($t->balance($k->{key})->{held}) / 48_000;
        holds_above($k, $n + 50)
            or die "no creates after worker $victim was killed\n";
    }
});
is(scalar @killed, 2, "workers @killed killed during the storm");
ok(wait_for(sub { $t->worker_pids == 2 }, 20), 'the master replaced it');
my @ok = grep { $_->[0] == 202 } @answers;
my @other = grep { $_->[0] != 202 && $_->[0] != 599 } @answers;
ok(@ok > 0, scalar(@ok) . ' creates answered 202 in the kill storm');
is(scalar @other, 0, 'no answer other than 202 or a dropped connection')
    or diag explain [@other[0 .. ($#other < 4 ? $#other : 4)]];
my @lost = grep { $t->get_exec($k->{key}, $_->[1])->{status} != 200 } @ok;
is(scalar @lost, 0, 'every execution answered 202 exists')
    or diag explain [map { $_->[1] } @lost];
# a client whose connection dropped sends the same request again: 202,
# whether the first one was stored (a replay) or not (a new execution)
my @dropped = grep { $_->[0] == 599 } @answers;
my @again = map { [ $_, $t->create_exec($k->{key}, $_->[2]) ] } @dropped;
my @bad_again = grep { $_->[1]{status} != 202 } @again;
is(scalar @bad_again, 0, scalar(@dropped) . ' dropped creates sent again: '
    . 'each 202') or diag explain [ map { "$_->[1]{status} $_->[1]{body}" }
        @bad_again[0 .. ($#bad_again < 4 ? $#bad_again : 4)] ];
push @ok, map { [ 202, $_->[1]{json}{id} ] } @again;
my %listed = map { $_->{id} => 1 } $t->list_all($k->{key});
ok(!grep({ !$listed{ $_->[1] } } @ok), 'every answered execution is listed');
my %okid = map { $_->[1] => 1 } @ok;
is(scalar(grep { !$okid{$_} } keys %listed), 0,
    'every stored execution was answered (first or on the second try)');
my $kv = $t->verify($k->{org});
ok($kv->{ok}, 'verify ok after the kill') or diag explain $kv;
is(MR::Test::micros($kv->{held}), 48_000 * keys %listed,
    'held = one hold per stored execution');
is($kv->{executions}, scalar keys %listed, 'verify counts every execution');
my $after = $t->create_exec($k->{key}, $t->exec_body);
is($after->{status}, 202, 'creates work after the kill');

# ---- reload under a storm
my $h = $t->new_account(credit => '1000.00');
my $reloads = 0;
my @rl = storm($h, 'hup', 10, sub {
    holds_above($h, 20) or die "no execution was created\n";
    for (1 .. 2) {
        $t->reload;
        $reloads++;
    }
    my $n = MR::Test::micros($t->balance($h->{key})->{held}) / 48_000;
    holds_above($h, $n + 50) or die "no creates after the reloads\n";
});
is($reloads, 2, 'two reloads during the storm');
ok(@rl > 100, scalar(@rl) . ' answers in the reload storm');
my @bad = grep { $_->[0] != 202 } @rl;
is(scalar @bad, 0, 'every create during the reloads: 202')
    or diag explain [@bad[0 .. ($#bad < 4 ? $#bad : 4)]];
my %rids = map { $_->[1] => 1 } grep { $_->[0] == 202 } @rl;
my @stored = $t->list_all($h->{key});
is(scalar @stored, scalar keys %rids, 'stored = answered');
ok(!grep({ !$rids{ $_->{id} } } @stored), 'no unanswered execution stored');
my $hv = $t->verify($h->{org});
ok($hv->{ok}, 'verify ok after the reloads') or diag explain $hv;
is(MR::Test::micros($hv->{held}), 48_000 * keys %rids, 'held matches');

# ---- and once more after a restart
$t->restart;
is(scalar $t->list_all($k->{key}), scalar(keys %listed) + 1,
    'kill storm executions survive a restart');
is(scalar $t->list_all($h->{key}), scalar @stored,
    'reload storm executions survive a restart');
ok($t->verify($k->{org})->{ok}, 'verify ok after restart (kill)');
ok($t->verify($h->{org})->{ok}, 'verify ok after restart (reload)');

# ---- graceful stop under a storm: whatever was stored was answered
my $q = $t->new_account(credit => '1000.00');
my @qa = storm($q, 'quit', 10, sub {
    holds_above($q, 20) or die "no execution was created\n";
    $t->stop;
});
$t->start;
my %qids = map { $_->[1] => 1 } grep { $_->[0] == 202 } @qa;
my @qother = grep { $_->[0] != 202 && $_->[0] != 599 } @qa;
is(scalar @qother, 0, 'stop: every answer a 202 or a refused connection')
    or diag explain [ map { "$_->[0] $_->[1]" }
        @qother[0 .. ($#qother < 4 ? $#qother : 4)] ];
my @qstored = $t->list_all($q->{key});
ok(keys %qids > 0, scalar(keys %qids) . ' creates answered before the stop');
my @qlost = grep { $t->get_exec($q->{key}, $_)->{status} != 200 } keys %qids;
is(scalar @qlost, 0, 'stop: every answered execution exists');
my @qsilent = grep { !$qids{ $_->{id} } } @qstored;
is(scalar @qsilent, 0, 'stop: no execution stored without its answer')
    or diag explain [map { $_->{id} } @qsilent];
ok($t->verify($q->{org})->{ok}, 'stop: verify ok');

# ---- a reload picks up a new model; the store is kept
$t->write_config(extra_http =>
    "modelroute_model demo-new per_request=0.10;\n");
$t->reload;
my %models = map { $_->{id} => 1 }
    @{ $t->req(GET => '/v1/models', auth($h->{key}))->{json}{data} // [] };
ok($models{'demo-new'}, 'reload: the new model is listed');
my $nm = $t->create_exec($h->{key}, $t->exec_body(model => 'demo-new'));
is($nm->{status}, 202, 'reload: the new model takes executions');
money_is($nm->{json}{hold_amount}, '0.12', 'reload: its hold');
is(scalar $t->list_all($h->{key}), scalar(@stored) + 1,
    'reload: executions kept');

# ---- relaxed durability: a worker crash loses nothing either
$t->write_config(extra_http => "modelroute_durability relaxed;\n");
$t->restart;
my $x = $t->new_account(credit => '10.00');
my @xids = map { $t->create_exec($x->{key}, $t->exec_body)->{json}{id} }
    1 .. 20;
is(scalar(grep { defined } @xids), 20, 'relaxed: 20 creates');
my %xold = map { $_ => 1 } $t->kill_workers('KILL');
ok(wait_for(sub { my @w = $t->worker_pids;
    @w == 2 && !grep { $xold{$_} } @w }, 20), 'relaxed: workers replaced');
is(scalar(grep { $t->get_exec($x->{key}, $_)->{status} == 200 } @xids), 20,
    'relaxed: all there after SIGKILL of every worker');
$t->restart;
is(scalar(grep { $t->get_exec($x->{key}, $_)->{status} == 200 } @xids), 20,
    'relaxed: all there after a restart');
ok($t->verify($x->{org})->{ok}, 'relaxed: verify ok');

$t->done;
