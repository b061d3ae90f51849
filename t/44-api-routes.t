# Every /v1/ path authenticates first (issue 9, item 12): without a key,
# or with a bad one, every route of the public API and of the webhook API
# answers 401 UNAUTHORIZED, whatever the method, the id or the path
# (unknown paths too). With a key: an unknown path is 404 "no such path";
# a method the route lacks, 405; a key without the permission the route
# needs, 403; and a well-formed route with an unknown or malformed id is
# the resource's 404 NOT_FOUND, never "no such path". (The callbacks of
# asynchronous providers carry a token instead of a key: t/19.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

my $t = MR::Test->new;
$t->start;

my $acc = $t->new_account(credit => '10.00');
my ($ekey) = $t->admin_create_key($acc->{org}, 'execution');
my $F = auth($acc->{key});
my $E = auth($ekey);

my $exec = $t->create_exec($acc->{key}, $t->exec_body)->{json}{id};
my $wh = $t->req(POST => '/v1/webhooks/endpoints', $F,
    { url => 'https://hooks.example.com/x' });
my $wh_id = $wh->{json}{id} // 'wh_' . ('0' x 24);
like($exec, qr/^exec_/, 'an execution');
is($wh->{status}, 201, 'an endpoint');

# ids: [well-formed and known, well-formed unknown, malformed...]
my %ids = (
    exec => [$exec, 'exec_' . random_hex(44), 'exec_123', 'exec_'
        . uc(random_hex(44)), 'wh_' . random_hex(24), 'nothing',
        'exec_' . ('a' x 10_000)],
    wh => [$wh_id, 'wh_' . random_hex(24), 'wh_1', 'WH_' . random_hex(24),
        'exec_' . random_hex(44), '-'],
    dlv => ['dlv_' . random_hex(44), 'dlv_x', 'dlv_' . random_hex(43)],
    key => [$acc->{key_id}, 'key_' . random_hex(24), 'key_1',
        'key_' . uc(random_hex(24)), 'sk_' . random_hex(24)],
);

# [method, path with {id}, id kind, permission, body?]
my @routes = (
    ['POST', '/v1/executions', undef, 'execution', {}],
    ['GET', '/v1/executions', undef, 'execution'],
    ['GET', '/v1/executions/{id}', 'exec', 'execution'],
    ['GET', '/v1/executions/{id}/result', 'exec', 'execution'],
    ['POST', '/v1/executions/{id}/cancel', 'exec', 'execution', {}],
    ['GET', '/v1/balance', undef, 'execution'],
    ['GET', '/v1/models', undef, 'execution'],
    ['POST', '/v1/api-keys/{id}/rotate', 'key', 'full', {}],
    ['POST', '/v1/webhooks/endpoints', undef, 'full',
        { url => 'https://hooks.example.com/y' }],
    ['GET', '/v1/webhooks/endpoints', undef, 'full'],
    ['GET', '/v1/webhooks/endpoints/{id}', 'wh', 'full'],
    ['PATCH', '/v1/webhooks/endpoints/{id}', 'wh', 'full',
        { description => 'd' }],
    ['DELETE', '/v1/webhooks/endpoints/{id}', 'wh', 'full'],
    ['POST', '/v1/webhooks/endpoints/{id}/test', 'wh', 'full', {}],
    ['GET', '/v1/webhooks/endpoints/{id}/deliveries', 'wh', 'full'],
    ['GET', "/v1/webhooks/deliveries?execution_id=$exec", undef, 'full'],
    ['POST', '/v1/webhooks/deliveries/{id}/retry', 'dlv', 'full', {}],
    ['GET', '/v1/webhooks/default/secret', undef, 'full'],
);

my @unknown = ('/v1/', '/v1/nothing', '/v1/executionsx',
    "/v1/executions/$exec/nothing", "/v1/executions/exec_1/result/x",
    '/v1/balance/x', '/v1/api-keys', "/v1/api-keys/$acc->{key_id}",
    '/v1/webhooks/nothing', "/v1/webhooks/endpoints/$wh_id/nothing",
    '/v1/webhooks/deliveries/dlv_1', '/v1/webhooks/default',
    '/v1/callbacks');

my $bad_key = auth(make_key_string(crc => 'bad'));
my $unknown_key = auth(make_key_string());

sub paths_of {
    my ($r) = @_;
    my ($m, $p, $kind) = @$r;
    return ([$m, $p]) unless $kind;
    return map { my $q = $p; $q =~ s/\{id\}/$_/; [$m, $q] } @{ $ids{$kind} };
}

sub short { my $p = shift; length $p > 90 ? substr($p, 0, 90) . '...' : $p }

# ---- no key, a malformed key, an unknown key: 401 everywhere
for my $h ([{}, 'no key'], [$bad_key, 'a bad checksum'],
    [$unknown_key, 'an unknown key'])
{
    my ($hdr, $what) = @$h;
    for my $r (@routes) {
        for my $mp (paths_of($r)) {
            my ($m, $p) = @$mp;
            for my $method ($m, $m eq 'GET' ? 'PUT' : 'GET') {
                is_error($t->req($method => $p, $hdr,
                    $method =~ /^(?:POST|PATCH|PUT)$/ ? ($r->[4] // {})
                                                      : undef),
                    401, 'UNAUTHORIZED',
                    "$what: $method " . short($p) . ': 401');
            }
        }
    }
    for my $p (@unknown) {
        is_error($t->req(GET => $p, $hdr), 401, 'UNAUTHORIZED',
            "$what: GET $p: 401");
    }
}

# ---- with a key
for my $r (@routes) {
    my ($m, $p, $kind, $perm, $body) = @$r;
    next unless $kind;
    my @all = @{ $ids{$kind} };
    # the known id first (kept for the end: DELETE would remove it)
    for my $id (@all[1 .. $#all]) {
        (my $q = $p) =~ s/\{id\}/$id/;
        my $res = $t->req($m => $q, $F, $body);
        my $e = is_error($res, 404, 'NOT_FOUND',
            "$m " . short($q) . ': 404');
        isnt($e && $e->{message}, 'no such path',
            '... the resource\'s 404, not "no such path"');
    }
}

# an execution key on a route that needs full permission: 403 first
for my $r (grep { $_->[3] eq 'full' } @routes) {
    for my $mp (paths_of($r)) {
        my ($m, $p) = @$mp;
        is_error($t->req($m => $p, $E, $r->[4]), 403, 'FORBIDDEN',
            "execution key: $m " . short($p) . ': 403');
    }
}

for my $p (@unknown) {
    my $e = is_error($t->req(GET => $p, $F), 404, 'NOT_FOUND',
        "GET $p with a key: 404");
    is($e && $e->{message}, 'no such path', '... "no such path"');
}

for my $c (['PUT', '/v1/executions'], ['DELETE', "/v1/executions/$exec"],
    ['GET', "/v1/executions/$exec/cancel"], ['POST', '/v1/balance'],
    ['PUT', "/v1/webhooks/endpoints/$wh_id"],
    ['GET', "/v1/webhooks/endpoints/$wh_id/test"],
    ['POST', '/v1/webhooks/default/secret'],
    ['GET', "/v1/api-keys/$acc->{key_id}/rotate"],
    ['PUT', '/v1/executions/exec_1'])
{
    is_error($t->req($c->[0] => $c->[1], $F, $c->[0] eq 'GET' ? undef : {}),
        405, 'METHOD_NOT_ALLOWED', "$c->[0] $c->[1] with a key: 405");
}

# the known ids still work
is($t->get_exec($acc->{key}, $exec)->{status}, 200, 'GET the execution');
is($t->req(GET => "/v1/webhooks/endpoints/$wh_id", $F)->{status}, 200,
    'GET the endpoint');
ok($t->verify($acc->{org})->{ok}, 'verify ok');

$t->done;
