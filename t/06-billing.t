# Holds and billing: 402 with nothing stored, admin credit/debit, credit
# references, and a storm of 1,000 creates against 500 holds of money.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

my $t = MR::Test->new;
$t->start;

# details of a 402: the entry for the field "balance" (code
# INSUFFICIENT_BALANCE) carries "required" and "available".
sub detail_money {
    my ($res, $name) = @_;
    my $e = detail_for($res, 'balance') or return;
    return unless ($e->{code} // '') eq 'INSUFFICIENT_BALANCE';
    return $e->{$name};
}

# ---- 402, nothing stored
my $poor = $t->new_account(credit => '0.04');
my $r = $t->create_exec($poor->{key}, $t->exec_body);
is_error($r, 402, 'INSUFFICIENT_BALANCE', 'hold 0.048 > available 0.04');
money_is(detail_money($r, 'required'), '0.048', '402 details: required');
money_is(detail_money($r, 'available'), '0.04', '402 details: available');
is_deeply([$t->list_all($poor->{key})], [], '402: nothing stored');
my $pb = $t->balance($poor->{key});
money_is($pb->{held}, '0', '402: held 0');
money_is($pb->{available}, '0.04', '402: available unchanged');
# The same idempotency key works once there is money.
my $k402 = $t->exec_body;
is($t->create_exec($poor->{key}, $k402)->{status}, 402, '402 again');
is($t->admin(POST => "/accounts/$poor->{org}/credit",
    { amount => '0.008' })->{status}, 200, 'credit 0.008');
my $ok = $t->create_exec($poor->{key}, $k402);
is($ok->{status}, 202, 'exactly enough (0.048): 202');
isnt($ok->{headers}{'idempotent-replayed'} // '', 'true',
    'the key of a 402 was not bound');
my $pb2 = $t->balance($poor->{key});
money_is($pb2->{available}, '0', 'available 0');
money_is($pb2->{held}, '0.048', 'held 0.048');
is_error($t->create_exec($poor->{key}, $t->exec_body), 402,
    'INSUFFICIENT_BALANCE', 'available 0: 402');
ok($t->verify($poor->{org})->{ok}, 'verify ok (poor)');

# ---- credit and debit
my $acc = $t->new_account(credit => '10.00');
my $org = $acc->{org};
my $c = $t->admin(POST => "/accounts/$org/credit", { amount => '5.25' });
is($c->{status}, 200, 'credit: 200') or diag $c->{body};
is($c->{json}{id}, $org, 'credit answers the account');
money_is($c->{json}{balance}, '15.25', 'credit: balance');
money_is($c->{json}{credited}, '15.25', 'credit: credited');
money_is($c->{json}{available}, '15.25', 'credit: available');

my $d = $t->admin(POST => "/accounts/$org/debit", { amount => '0.25' });
is($d->{status}, 200, 'debit: 200') or diag $d->{body};
money_is($d->{json}{balance}, '15.00', 'debit: balance');
money_is($d->{json}{debited}, '0.25', 'debit: debited');
money_is($t->balance($acc->{key})->{balance}, '15.00', 'public balance');

# Credit with a reference: replay and conflict.
my $c1 = $t->admin(POST => "/accounts/$org/credit",
    { amount => '1.00', reference => 'inv-1' });
is($c1->{status}, 200, 'credit with reference: 200');
isnt($c1->{headers}{'idempotent-replayed'} // '', 'true', 'first: not replay');
money_is($c1->{json}{balance}, '16.00', 'credit with reference: balance');
my $c2 = $t->admin(POST => "/accounts/$org/credit",
    { amount => '1.00', reference => 'inv-1' });
is($c2->{status}, 200, 'same reference: 200');
is($c2->{headers}{'idempotent-replayed'}, 'true',
    'same reference: Idempotent-Replayed: true');
money_is($t->balance($acc->{key})->{balance}, '16.00',
    'same reference: credited once');
is_error($t->admin(POST => "/accounts/$org/credit",
    { amount => '2.00', reference => 'inv-1' }), 409,
    'IDEMPOTENCY_KEY_REUSED', 'same reference, other amount: 409');
money_is($t->balance($acc->{key})->{balance}, '16.00',
    'conflicting reference: nothing credited');
my $oth = $t->new_account(credit => '1.00');
my $oc = $t->admin(POST => "/accounts/$oth->{org}/credit",
    { amount => '2.00', reference => 'inv-1' });
is($oc->{status}, 200, 'same reference on another account: 200');
money_is($oc->{json}{balance}, '3.00', 'references are per account');

# Debit against available, not balance.
my $e1 = $t->create_exec($acc->{key}, $t->exec_body);
is($e1->{status}, 202, 'hold 0.048 placed');
is_error($t->admin(POST => "/accounts/$org/debit", { amount => '16.00' }),
    402, 'INSUFFICIENT_BALANCE', 'debit of the balance with a hold: 402');
is_error($t->admin(POST => "/accounts/$org/debit", { amount => '15.952001' }),
    402, 'INSUFFICIENT_BALANCE', 'debit 1 micro-dollar over available: 402');
my $bal = $t->balance($acc->{key});
money_is($bal->{balance}, '16.00', '402 debit: balance unchanged');
money_is($bal->{available}, '15.952', '402 debit: available unchanged');
my $d2 = $t->admin(POST => "/accounts/$org/debit", { amount => '15.952' });
is($d2->{status}, 200, 'debit of exactly available: 200');
money_is($d2->{json}{available}, '0', 'available 0');
money_is($d2->{json}{held}, '0.048', 'held kept');

my $v = $t->verify($org);
ok($v->{ok}, 'verify ok');
is(micros($v->{balance}),
    micros($v->{credited}) - micros($v->{debited}) - micros($v->{charged}),
    'verify: balance = credited - debited - charged');
is(micros($v->{held}), micros($v->{open_holds}), 'verify: held = open_holds');
money_is($v->{credited}, '16.25', 'verify: credited');
money_is($v->{debited}, '16.202', 'verify: debited');
money_is($v->{charged}, '0', 'verify: charged');

# ---- the storm: 1,000 creates, money for 500 holds
my $s = $t->new_account(credit => '24.00');
my $poller = $t->background(sub {
    my ($stop) = @_;
    my ($min, $n, @bad) = (undef, 0);
    until ($stop->()) {
        my $r = $t->req(GET => '/v1/balance', auth($s->{key}));
        if ($r->{status} != 200) {
            push @bad, "$r->{status} $r->{body}";
            next;
        }
        my $av = micros($r->{json}{available});
        my $h = micros($r->{json}{held});
        my $bv = micros($r->{json}{balance});
        push @bad, "available != balance - held: $r->{body}"
            if $av != $bv - $h;
        $min = $av if !defined $min || $av < $min;
        $n++;
    }
    splice @bad, 10;
    return { min => $min, n => $n, bad => \@bad };
});
my @res = $t->parallel(50, sub {
    my ($i) = @_;
    my %n;
    for my $j (1 .. 20) {
        my $r = $t->create_exec($s->{key}, { model => 'demo-chat',
            input => { i => $i, j => $j }, idempotency_key => "storm-$i-$j" });
        my $code = $r->{json} && ref $r->{json}{error}
            ? $r->{json}{error}{code} : '';
        $n{"$r->{status} $code"}++;
    }
    return \%n;
}, timeout => 120);
my $poll = $t->stop_background($poller);

my %n;
for my $h (@res) {
    if ($h->{died}) { $n{died}++; diag "client died: $h->{died}"; next }
    $n{$_} += $h->{$_} for keys %$h;
}
is($n{'202 '} // 0, 500, 'exactly 500 accepted') or diag explain \%n;
is($n{'402 INSUFFICIENT_BALANCE'} // 0, 500, 'exactly 500 refused with 402');
is(scalar keys %n, 2, 'no other answer');
ok(!$poll->{died} && $poll->{n} > 0, "balance polled $poll->{n} times")
    or diag explain $poll;
ok(defined $poll->{min} && $poll->{min} >= 0,
    'available never negative during the storm');
is_deeply($poll->{bad}, [], 'every balance read consistent');
my $sb = $t->balance($s->{key});
money_is($sb->{held}, '24.00', 'held 24.00 = 500 holds');
money_is($sb->{available}, '0', 'available 0');
money_is($sb->{balance}, '24.00', 'balance 24.00');
my $sv = $t->verify($s->{org});
ok($sv->{ok}, 'verify ok after the storm') or diag explain $sv;
is(micros($sv->{held}), micros($sv->{open_holds}), 'held = open_holds');
is($sv->{executions}, 500, 'verify: 500 executions');
is($sv->{open_executions}, 500, 'verify: 500 open');
is(scalar $t->list_all($s->{key}), 500, 'list: 500 executions');
is(micros($sv->{balance}),
    micros($sv->{credited}) - micros($sv->{debited}) - micros($sv->{charged}),
    'balance = credited - debited - charged after the storm');

# ---- concurrent cancels of one execution: one release
my $cc = $t->new_account(credit => '1.00');
my $cid = $t->create_exec($cc->{key}, $t->exec_body)->{json}{id};
my $keep = $t->create_exec($cc->{key}, $t->exec_body)->{json}{id};
my @cres = $t->parallel(30, sub {
    my $r = $t->req(POST => "/v1/executions/$cid/cancel", auth($cc->{key}));
    return [$r->{status}, $r->{json} ? $r->{json}{status} // '' : ''];
});
is(scalar(grep { ref $_ eq 'ARRAY' && "@$_" eq '200 CANCELLED' } @cres), 30,
    '30 concurrent cancels: all 200 CANCELLED');
my $cb = $t->balance($cc->{key});
money_is($cb->{held}, '0.048', 'held = the other execution\'s hold only');
money_is($cb->{available}, '0.952', 'available: one release');
money_is($cb->{balance}, '1.00', 'nothing charged');
ok($t->verify($cc->{org})->{ok}, 'verify ok after concurrent cancels');

# ---- concurrent credits with one reference: credited once
my $cr = $t->new_account(credit => '1.00');
my @crres = $t->parallel(30, sub {
    my $r = $t->admin(POST => "/accounts/$cr->{org}/credit",
        { amount => '2.50', reference => 'wire-7' });
    return [$r->{status}, $r->{headers}{'idempotent-replayed'} // ''];
});
is(scalar(grep { ref $_ eq 'ARRAY' && $_->[0] == 200 } @crres), 30,
    '30 concurrent credits with one reference: all 200');
is(scalar(grep { ref $_ eq 'ARRAY' && $_->[1] ne 'true' } @crres), 1,
    'exactly one of them is not a replay');
money_is($t->balance($cr->{key})->{balance}, '3.50', 'credited once');
money_is($t->verify($cr->{org})->{credited}, '3.50', 'verify: credited once');

# ---- debits racing creates: available never below 0
my $dr = $t->new_account(credit => '5.00');
my @drres = $t->parallel(20, sub {
    my ($i) = @_;
    my %n;
    for my $j (1 .. 10) {
        my $r = $i % 2
            ? $t->admin(POST => "/accounts/$dr->{org}/debit",
                { amount => '0.05' })
            : $t->create_exec($dr->{key}, $t->exec_body);
        $n{($i % 2 ? 'debit ' : 'create ') . $r->{status}}++;
    }
    return \%n;
});
my %dn;
for my $h (grep { ref $_ eq 'HASH' && !$_->{died} } @drres) {
    $dn{$_} += $h->{$_} for keys %$h;
}
is(($dn{'debit 200'} // 0) + ($dn{'debit 402'} // 0), 100,
    'debits: 200 or 402 only') or diag explain \%dn;
is(($dn{'create 202'} // 0) + ($dn{'create 402'} // 0), 100,
    'creates: 202 or 402 only') or diag explain \%dn;
my $db = $t->balance($dr->{key});
ok(micros($db->{available}) >= 0, 'available not negative');
is(micros($db->{balance}), 5_000_000 - 50_000 * ($dn{'debit 200'} // 0),
    'balance = credit - accepted debits');
is(micros($db->{held}), 48_000 * ($dn{'create 202'} // 0),
    'held = accepted holds');
ok($t->verify($dr->{org})->{ok}, 'verify ok after debits racing creates');

$t->done;
