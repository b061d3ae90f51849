# Authentication: key format, checksum, unknown, revoked and rotated keys,
# permission levels.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);

my $t = MR::Test->new(extra_http => "modelroute_key_rotation_grace 2s;\n");
$t->start;

my $acc = $t->new_account(credit => '10.00');
my $oth = $t->new_account(credit => '10.00');

sub balance_with {
    my ($headers) = @_;
    return $t->req(GET => '/v1/balance', $headers);
}

is(balance_with(auth($acc->{key}))->{status}, 200, 'valid key: 200');

is_error(balance_with({}), 401, 'UNAUTHORIZED', 'no Authorization');
is_error(balance_with({ Authorization => "Basic $acc->{key}" }), 401,
    'UNAUTHORIZED', 'Basic scheme');
is_error(balance_with({ Authorization => $acc->{key} }), 401,
    'UNAUTHORIZED', 'no scheme');
is_error(balance_with({ Authorization => 'Bearer ' }), 401,
    'UNAUTHORIZED', 'empty bearer');
is_error(balance_with(auth('sk_abc')), 401, 'UNAUTHORIZED', 'too short');

my $hex = random_hex(64);
is_error(balance_with(auth(make_key_string(hex => uc $hex))), 401,
    'UNAUTHORIZED', 'uppercase hex (crc of the uppercase text)');
my $good = make_key_string(hex => $hex);
is_error(balance_with(auth(uc $good)), 401, 'UNAUTHORIZED',
    'uppercase key');
is_error(balance_with(auth(make_key_string(hex => substr($hex, 1)))), 401,
    'UNAUTHORIZED', '63 hex chars');
is_error(balance_with(auth(make_key_string(hex => $hex . 'a'))), 401,
    'UNAUTHORIZED', '65 hex chars');
is_error(balance_with(auth("$good" . 'a')), 401, 'UNAUTHORIZED',
    'trailing character');
is_error(balance_with(auth('pk' . substr($good, 2))), 401, 'UNAUTHORIZED',
    'wrong prefix');
is_error(balance_with(auth(make_key_string(hex => 'g' . substr($hex, 1)))),
    401, 'UNAUTHORIZED', 'non-hex character');

# The real key with its checksum broken.
(my $real_hex) = $acc->{key} =~ /^sk_([0-9a-f]{64})_/;
is_error(balance_with(auth(make_key_string(hex => $real_hex, crc => 'bad'))),
    401, 'UNAUTHORIZED', 'real key, bad checksum');
is_error(balance_with(auth(make_key_string(crc => 'bad'))), 401,
    'UNAUTHORIZED', 'bad checksum');
is_error(balance_with(auth(make_key_string())), 401, 'UNAUTHORIZED',
    'unknown key with a valid checksum');

like($acc->{key}, qr/^sk_[0-9a-f]{64}_[0-9a-f]{8}$/, 'issued key format');
is(length $acc->{key}, 76, 'issued key is 76 characters');
is(make_key_string(hex => $real_hex), $acc->{key}, 'issued key crc is CRC-32');

# Revoked key.
my ($k2, $k2id) = $t->admin_create_key($acc->{org}, 'full');
is(balance_with(auth($k2))->{status}, 200, 'second key works');
my $rv = $t->admin(POST => "/keys/$k2id/revoke");
is($rv->{status}, 200, 'revoke: 200');
ok($rv->{json}{revoked}, 'revoke: revoked true');
is_error(balance_with(auth($k2)), 401, 'UNAUTHORIZED', 'revoked key');
is(balance_with(auth($acc->{key}))->{status}, 200, 'other key still works');

# Permission: an execution key cannot rotate, not even itself.
my ($ek, $ekid) = $t->admin_create_key($acc->{org}, 'execution');
is(balance_with(auth($ek))->{status}, 200, 'execution key reads balance');
my $ex = $t->create_exec($ek, $t->exec_body);
is($ex->{status}, 202, 'execution key creates an execution');
is($t->req(GET => '/v1/models', auth($ek))->{status}, 200,
    'execution key lists models');
is_error($t->req(POST => "/v1/api-keys/$ekid/rotate", auth($ek)), 403,
    'FORBIDDEN', 'execution key cannot rotate itself');
is_error($t->req(POST => "/v1/api-keys/$acc->{key_id}/rotate", auth($ek)),
    403, 'FORBIDDEN', 'execution key cannot rotate a full key');
is(balance_with(auth($ek))->{status}, 200, 'execution key unchanged');
is(balance_with(auth($acc->{key}))->{status}, 200, 'full key unchanged');

# Full key of another account, unknown key id.
is_error($t->req(POST => "/v1/api-keys/$acc->{key_id}/rotate",
    auth($oth->{key})), 404, 'NOT_FOUND', 'rotate another account\'s key');
is_error($t->req(POST => '/v1/api-keys/key_' . random_hex(24) . '/rotate',
    auth($acc->{key})), 404, 'NOT_FOUND', 'rotate an unknown key id');
is(balance_with(auth($acc->{key}))->{status}, 200,
    'key survives a foreign rotate attempt');

# Rotation with a 2 s grace.
my $rot = $t->req(POST => "/v1/api-keys/$acc->{key_id}/rotate",
    auth($acc->{key}));
is($rot->{status}, 200, 'rotate: 200') or diag $rot->{body};
my $r = $rot->{json} // {};
like($r->{id} // '', qr/^key_[0-9a-f]{24}$/, 'rotate: new key id');
isnt($r->{id}, $acc->{key_id}, 'rotate: id differs from the old one');
ok(defined $r->{object} && !ref $r->{object}, 'rotate: object');
like($r->{key} // '', qr/^sk_[0-9a-f]{64}_[0-9a-f]{8}$/, 'rotate: new secret');
my ($new_hex) = ($r->{key} // '') =~ /^sk_([0-9a-f]{64})_/;
is(make_key_string(hex => $new_hex // ''), $r->{key},
    'rotate: new secret has a valid checksum');
isnt($r->{key}, $acc->{key}, 'rotate: new secret differs');
is($r->{permission}, 'full', 'rotate: permission kept');
is($r->{previous_key_id}, $acc->{key_id}, 'rotate: previous_key_id');
ok(is_rfc3339($r->{previous_key_valid_until}),
    'rotate: previous_key_valid_until is RFC 3339');
my $until = parse_rfc3339($r->{previous_key_valid_until} // '') // 0;
my %keys = map { $_->{id} => $_ } @{ $t->admin(GET =>
    "/accounts/$acc->{org}/keys")->{json}{data} // [] };
my $born = parse_rfc3339($keys{ $r->{id} // '' }{created_at} // '') // 0;
ok(abs($until - $born - 2) < 0.0005,
    'rotate: previous key valid for the 2 s grace from the rotation')
    or diag "valid until $r->{previous_key_valid_until}, new key created "
        . ($keys{ $r->{id} // '' }{created_at} // 'undef');
is($keys{ $acc->{key_id} }{valid_until}, $r->{previous_key_valid_until},
    'rotate: the old key lists the same valid_until');

is(balance_with(auth($r->{key}))->{status}, 200, 'new key works');
my $grace = balance_with(auth($acc->{key}));
is($grace->{status}, 200, 'old key works within the grace period');

my $expired = wait_for(sub {
    balance_with(auth($acc->{key}))->{status} == 401;
}, 15);
ok($expired, 'old key refused after the grace period');
ok(time >= $until - 0.002, 'not refused before valid_until')
    if $expired;
is_error(balance_with(auth($acc->{key})), 401, 'UNAUTHORIZED',
    'old key: 401 envelope');
is(balance_with(auth($r->{key}))->{status}, 200,
    'new key still works after the grace');

# The new key is listed by the admin API and can be rotated again.
my $list = $t->admin(GET => "/accounts/$acc->{org}/keys");
ok((grep { $_->{id} eq $r->{id} } @{ $list->{json}{data} // [] }),
    'new key listed');
my $rot2 = $t->req(POST => "/v1/api-keys/$r->{id}/rotate", auth($r->{key}));
is($rot2->{status}, 200, 'the new key can be rotated in turn');

# Account B was not touched by any of this.
is(balance_with(auth($oth->{key}))->{status}, 200, 'other account unaffected');

$t->done;
