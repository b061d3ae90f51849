# Admin API: accounts, keys, revoke, verify, errors.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);

my $t = MR::Test->new;
$t->start;

# ---- accounts
my $before = time;
my $r = $t->admin(POST => '/accounts', { name => 'acme', credit => '25.00' });
is($r->{status}, 201, 'create account: 201') or diag $r->{body};
like($r->{headers}{'x-request-id'} // '', qr/^req_[0-9a-f]{32}$/,
    'admin answers carry X-Request-Id');
my $acct = $r->{json} // {};
my $org = $acct->{id} // '';
like($org, qr/^org_[0-9a-f]{24}$/, 'account id');
is($acct->{object}, 'account', 'object account');
is($acct->{name}, 'acme', 'name');
money_is($acct->{balance}, '25.00', 'balance');
money_is($acct->{held}, '0', 'held');
money_is($acct->{available}, '25.00', 'available');
money_is($acct->{credited}, '25.00', 'credited');
money_is($acct->{debited}, '0', 'debited');
money_is($acct->{charged}, '0', 'charged');
is($acct->{currency}, 'USD', 'currency');
ok(is_rfc3339($acct->{created_at}), 'created_at RFC 3339');
my $ct = parse_rfc3339($acct->{created_at} // '') // 0;
ok($ct >= int($before) - 1 && $ct <= time + 1, 'created_at is now');

my $g = $t->admin(GET => "/accounts/$org");
is($g->{status}, 200, 'get account: 200');
is_deeply($g->{json}, $acct, 'get account: same object');

my $bare = $t->admin(POST => '/accounts', {});
is($bare->{status}, 201, 'account with no fields: 201');
money_is($bare->{json}{balance}, '0', 'no credit: balance 0');
isnt($bare->{json}{id}, $org, 'new id');

# ---- keys
my $k1 = $t->admin(POST => "/accounts/$org/keys",
    { permission => 'full', name => 'ci' });
is($k1->{status}, 201, 'create key: 201') or diag $k1->{body};
my $key = $k1->{json} // {};
like($key->{id} // '', qr/^key_[0-9a-f]{24}$/, 'key id');
like($key->{key} // '', qr/^sk_[0-9a-f]{64}_[0-9a-f]{8}$/, 'secret shown');
my ($hex) = ($key->{key} // '') =~ /^sk_([0-9a-f]{64})/;
is(make_key_string(hex => $hex // ''), $key->{key}, 'secret checksum');
is($key->{permission}, 'full', 'permission full');
is($key->{name}, 'ci', 'key name');
ok(!$key->{revoked}, 'not revoked');
my $k2 = $t->admin(POST => "/accounts/$org/keys",
    { permission => 'execution' });
is($k2->{status}, 201, 'create execution key: 201');
is($k2->{json}{permission}, 'execution', 'permission execution');
isnt($k2->{json}{key}, $key->{key}, 'secrets differ');

is($t->req(GET => '/v1/balance', auth($key->{key}))->{status}, 200,
    'the new key works');
money_is($t->balance($k2->{json}{key})->{balance}, '25.00',
    'the key belongs to the account');

my $l = $t->admin(GET => "/accounts/$org/keys");
is($l->{status}, 200, 'list keys: 200');
is($l->{json}{object}, 'list', 'list object');
is_deeply([sort map { $_->{id} } @{ $l->{json}{data} // [] }],
    [sort $key->{id}, $k2->{json}{id}], 'both keys listed');
unlike($l->{body}, qr/sk_[0-9a-f]{64}/, 'no secret in the list');
ok(index($l->{body}, $hex // 'x') < 0, 'not even the secret\'s hex');
ok(!grep({ exists $_->{key} && defined $_->{key} } @{ $l->{json}{data} }),
    'no key field with a value');

# The other account's list does not show them.
my $ol = $t->admin(GET => "/accounts/$bare->{json}{id}/keys");
is_deeply($ol->{json}{data}, [], 'other account: no keys');

# ---- revoke
my $rv = $t->admin(POST => "/keys/$k2->{json}{id}/revoke");
is($rv->{status}, 200, 'revoke: 200');
is($rv->{json}{id}, $k2->{json}{id}, 'revoke answers the key');
ok($rv->{json}{revoked}, 'revoked true');
ok(!defined $rv->{json}{key}, 'revoke does not show the secret');
is_error($t->req(GET => '/v1/balance', auth($k2->{json}{key})), 401,
    'UNAUTHORIZED', 'revoked key refused');
my $rv2 = $t->admin(POST => "/keys/$k2->{json}{id}/revoke");
is($rv2->{status}, 200, 'revoke again: 200');
my ($listed) = grep { $_->{id} eq $k2->{json}{id} }
    @{ $t->admin(GET => "/accounts/$org/keys")->{json}{data} };
ok($listed && $listed->{revoked}, 'list shows revoked');
is_error($t->admin(POST => '/keys/key_' . random_hex(24) . '/revoke'), 404,
    'NOT_FOUND', 'revoke an unknown key');

# ---- unknown accounts
my $unknown = 'org_' . random_hex(24);
is_error($t->admin(GET => "/accounts/$unknown"), 404, 'NOT_FOUND',
    'get unknown account');
is_error($t->admin(POST => "/accounts/$unknown/keys",
    { permission => 'full' }), 404, 'NOT_FOUND', 'key for unknown account');
is_error($t->admin(GET => "/accounts/$unknown/keys"), 404, 'NOT_FOUND',
    'keys of unknown account');
is_error($t->admin(POST => "/accounts/$unknown/credit", { amount => '1.00' }),
    404, 'NOT_FOUND', 'credit unknown account');
is_error($t->admin(POST => "/accounts/$unknown/debit", { amount => '1.00' }),
    404, 'NOT_FOUND', 'debit unknown account');
is_error($t->admin(GET => "/accounts/$unknown/verify"), 404, 'NOT_FOUND',
    'verify unknown account');
is_error($t->admin(GET => '/accounts/not-an-id'), 404, 'NOT_FOUND',
    'malformed account id');

# ---- bad input
for my $amount ('abc', '-1.00', '1.1234567', '', '1e3', ' 1.00', '1,00',
    '0x10', '99999999999999999999') {
    is_error($t->admin(POST => "/accounts/$org/credit",
        { amount => $amount }), 400, 'INPUT_VALIDATION_ERROR',
        "credit amount '$amount': 400");
    is_error($t->admin(POST => "/accounts/$org/debit",
        { amount => $amount }), 400, 'INPUT_VALIDATION_ERROR',
        "debit amount '$amount': 400");
}
is_error($t->admin(POST => "/accounts/$org/credit", { amount => 5 }), 400,
    'INPUT_VALIDATION_ERROR', 'amount as a JSON number: 400');
is_error($t->admin(POST => "/accounts/$org/credit", {}), 400,
    'INPUT_VALIDATION_ERROR', 'no amount: 400');
is_error($t->admin(POST => "/accounts/$org/credit",
    { amount => '1.00', reference => 7 }), 400, 'INPUT_VALIDATION_ERROR',
    'reference as a number: 400');
is_error($t->req(POST => "/admin/accounts/$org/credit",
    { 'Content-Type' => 'application/json' }, '{"amount":'), 400,
    'INPUT_VALIDATION_ERROR', 'malformed JSON: 400');
is_error($t->admin(POST => '/accounts', { credit => 'abc' }), 400,
    'INPUT_VALIDATION_ERROR', 'account with a bad credit: 400');
is_error($t->admin(POST => '/accounts', { name => 5 }), 400,
    'INPUT_VALIDATION_ERROR', 'account name a number: 400');
is_error($t->admin(POST => "/accounts/$org/keys", { permission => 'admin' }),
    400, 'INPUT_VALIDATION_ERROR', 'unknown permission: 400');
is_error($t->admin(POST => "/accounts/$org/keys", {}), 400,
    'INPUT_VALIDATION_ERROR', 'missing permission: 400');
my $after = $t->admin(GET => "/accounts/$org")->{json};
money_is($after->{balance}, '25.00', 'bad requests changed nothing');
is(scalar @{ $t->admin(GET => "/accounts/$org/keys")->{json}{data} }, 2,
    'no key created by the bad requests');

# ---- paths and methods
is_error($t->admin(GET => '/nothing'), 404, 'NOT_FOUND', 'unknown admin path');
is_error($t->admin(GET => "/accounts/$org/nothing"), 404, 'NOT_FOUND',
    'unknown account sub-path');
is_error($t->admin(POST => "/accounts/$org/keys/extra", {}), 404,
    'NOT_FOUND', 'path too long');
for my $m (['DELETE', "/accounts/$org"], ['PUT', "/accounts/$org"],
    ['GET', "/accounts/$org/credit"], ['GET', "/accounts/$org/debit"],
    ['DELETE', "/accounts/$org/keys"], ['GET', "/keys/$key->{id}/revoke"],
    ['POST', "/accounts/$org/verify"], ['PATCH', "/accounts/$org"]) {
    my $res = $t->admin($m->[0], $m->[1], $m->[0] eq 'GET' ? undef : {});
    is_error($res, 405, 'METHOD_NOT_ALLOWED', "$m->[0] $m->[1]: 405");
    ok(defined $res->{headers}{allow}, "$m->[0] $m->[1]: Allow header");
}

# ---- verify
my $v = $t->verify($org);
ok(JSON::PP::is_bool($v->{ok}) && $v->{ok}, 'verify ok (boolean true)');
money_is($v->{$_}, $after->{$_}, "verify $_") for qw(balance held credited
    debited charged);
money_is($v->{open_holds}, '0', 'verify open_holds');
is($v->{executions}, 0, 'verify executions');
is($v->{open_executions}, 0, 'verify open_executions');

$t->done;
