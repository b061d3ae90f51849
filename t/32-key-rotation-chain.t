# The rotation chain, as an attacker who leaked a key would try it: once
# its owner rotated the key, the old key keeps working for its grace
# period but cannot rotate anything (403 FORBIDDEN), not itself again
# and not its successor, so it never gets a successor of its own; a key
# that was rotated cannot be rotated again, even by a good key; racing
# rotations of one key make one successor; the successor works and can
# rotate in turn; the old key ends with its grace; ended keys leave the
# store after the retention.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

my $t = MR::Test->new(extra_http => "modelroute_key_rotation_grace 3s;\n"
    . "modelroute_retention 2s;\nmodelroute_sweep_interval 200ms;\n");
$t->start;

my $acc = $t->new_account(credit => '10.00');
my ($k1, $id1) = ($acc->{key}, $acc->{key_id});

sub rotate {
    my ($id, $with) = @_;
    return $t->req(POST => "/v1/api-keys/$id/rotate", auth($with));
}

sub active_keys {
    my ($org) = @_;
    my $keys = $t->admin(GET => "/accounts/$org/keys")->{json}{data} // [];
    return grep { !$_->{revoked} && !defined $_->{valid_until} } @$keys;
}

# ---- the owner rotates the leaked key
my $r = rotate($id1, $k1);
is($r->{status}, 200, 'rotate: 200') or diag $r->{body};
my ($k2, $id2) = ($r->{json}{key} // '', $r->{json}{id} // 'key_none');
ok($r->{json}{previous_key_valid_until}, 'the old key has a grace period');

# ---- the old key in its grace period: its work, but no new key
is($t->req(GET => '/v1/balance', auth($k1))->{status}, 200,
    'grace: the old key still reads the balance');
is($t->create_exec($k1, $t->exec_body)->{status}, 202,
    'grace: the old key still creates executions');
is($t->req(GET => '/v1/webhooks/endpoints', auth($k1))->{status}, 200,
    'grace: the old key still manages webhooks (full permission)');

my $e = is_error(rotate($id1, $k1), 403, 'FORBIDDEN',
    'grace: the old key cannot rotate itself again');
like($e && $e->{message}, qr/rotat/, '... the message says why');
is_error(rotate($id2, $k1), 403, 'FORBIDDEN',
    'grace: the old key cannot rotate its successor');
is_error(rotate($id1, $k2), 403, 'FORBIDDEN',
    'a rotated key cannot be rotated again, even by its successor');

my @active = active_keys($acc->{org});
is(scalar @active, 1, 'one key without an end: the successor');
is($active[0]{id}, $id2, '... it is the successor');

# ---- the successor works, and rotates in turn
is($t->req(GET => '/v1/balance', auth($k2))->{status}, 200,
    'the successor works');
$r = rotate($id2, $k2);
is($r->{status}, 200, 'the successor rotates itself') or diag $r->{body};
my ($k3, $id3) = ($r->{json}{key} // '', $r->{json}{id} // 'key_none');
is_error(rotate($id3, $k2), 403, 'FORBIDDEN',
    'the successor, rotated, cannot rotate the next one');
is(scalar(active_keys($acc->{org})), 1, 'still one key without an end');

# ---- racing rotations of one key: one successor
{
    my $b = $t->new_account(credit => '1.00');
    my @res = $t->parallel(8, sub {
        return rotate($b->{key_id}, $b->{key})->{status};
    });
    my $ok = grep { $_ eq '200' } @res;
    my $no = grep { $_ eq '403' } @res;
    is($ok, 1, 'eight rotations at once: one succeeds') or diag "@res";
    is($ok + $no, 8, '... the others are 403') or diag "@res";
    is(scalar(active_keys($b->{org})), 1, '... one key without an end');
}

# ---- the grace ends: the old key stops, the newest goes on
ok(wait_for(sub { $t->req(GET => '/v1/balance', auth($k1))->{status} == 401 },
    10, 0.2), 'after its grace the old key is refused (401)');
is_error($t->req(GET => '/v1/balance', auth($k1)), 401, 'UNAUTHORIZED',
    '... with the error envelope');
is($t->req(GET => '/v1/balance', auth($k3))->{status}, 200,
    'the newest key works');

# ---- ended keys leave the store after the retention
my $gone = wait_for(sub {
    my $keys = $t->admin(GET => "/accounts/$acc->{org}/keys")->{json}{data};
    return $keys && @$keys == 1 ? $keys : undef;
}, 15, 0.2);
ok($gone, 'the ended keys are purged after the retention');
is($gone && $gone->[0]{id}, $id3, '... the newest key stays');
my $v = $t->verify($acc->{org});
ok($v->{ok}, 'the account\'s use is exact after the purge')
    or diag explain $v;
is($v->{usage}{keys}, 1, 'one active key counted');

$t->done;
