# Executions: create, read, result, list, cancel; balance and models.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);

my $t = MR::Test->new;
$t->start;

my $acc = $t->new_account(credit => '10.00');
my $oth = $t->new_account(credit => '10.00');
my $key = $acc->{key};

# ---- create
my $body = {
    model => 'demo-chat', input => { prompt => 'Hello' },
    idempotency_key => 'order-1-step-1',
    metadata => { customer => 'c-1', n => 3, tags => ['a', 'b'] },
};
my $before = time;
my $res = $t->create_exec($key, $body);
is($res->{status}, 202, 'create: 202') or diag $res->{body};
my $e = $res->{json} // {};
my $id = $e->{id} // '';
like($id, qr/^exec_[0-9a-f]{44}$/, 'id is exec_ + 44 hex');
is($res->{headers}{location}, "/v1/executions/$id", 'Location header');
like($res->{headers}{'x-request-id'} // '', qr/^req_[0-9a-f]{32}$/,
    'X-Request-Id on success');
like($res->{headers}{'content-type'} // '', qr{^application/json},
    'JSON content type');
is($e->{object}, 'execution', 'object');
is($e->{status}, 'PENDING', 'status PENDING');
is($e->{model}, 'demo-chat', 'model');
is($e->{idempotency_key}, 'order-1-step-1', 'idempotency_key');
is_deeply($e->{metadata}, $body->{metadata}, 'metadata echoed');
money_is($e->{estimated_cost}, '0.04', 'estimated_cost 0.04');
money_is($e->{hold_amount}, '0.048', 'hold_amount 0.048');
for my $f (qw(cost result error started_at completed_at latency_ms)) {
    ok(exists $e->{$f} && !defined $e->{$f}, "$f is null");
}
is_deeply($e->{attempts}, [], 'attempts is []');
ok(is_rfc3339($e->{created_at}), 'created_at RFC 3339 Z')
    or diag $e->{created_at};
ok(is_rfc3339($e->{expires_at}), 'expires_at RFC 3339 Z')
    or diag $e->{expires_at};
my $created = parse_rfc3339($e->{created_at} // '') // 0;
my $expires = parse_rfc3339($e->{expires_at} // '') // 0;
ok(abs($expires - $created - 300) < 0.002, 'expires_at = created_at + 5m')
    or diag "$e->{created_at} .. $e->{expires_at}";
ok($created >= int($before) - 1 && $created <= time + 1,
    'created_at is now');

# ---- read
my $got = $t->get_exec($key, $id);
is($got->{status}, 200, 'get: 200');
is_deeply($got->{json}, $e, 'get returns the same object');
like($got->{headers}{'x-request-id'} // '', qr/^req_[0-9a-f]{32}$/,
    'get: X-Request-Id');

my ($ek) = $t->admin_create_key($acc->{org}, 'execution');
is($t->get_exec($ek, $id)->{status}, 200,
    'execution key of the same account reads it');

is_error($t->get_exec($oth->{key}, $id), 404, 'NOT_FOUND',
    'another account cannot read it');
is_error($t->req(GET => "/v1/executions/$id/result", auth($oth->{key})),
    404, 'NOT_FOUND', 'another account cannot read its result');
is_error($t->req(POST => "/v1/executions/$id/cancel", auth($oth->{key})),
    404, 'NOT_FOUND', 'another account cannot cancel it');
is($t->get_exec($key, $id)->{json}{status}, 'PENDING',
    'still PENDING after the foreign cancel');
is_error($t->get_exec($key, 'exec_' . random_hex(44)), 404, 'NOT_FOUND',
    'unknown id');

# ---- result of a PENDING execution
is_error($t->req(GET => "/v1/executions/$id/result", auth($key)), 409,
    'EXECUTION_NOT_COMPLETED', 'result of a PENDING execution: 409');

# ---- webhook_url is stored and shown
my $wh = $t->create_exec($key, $t->exec_body(
    webhook_url => 'https://example.com/hook'));
is($wh->{status}, 202, 'create with webhook_url');
is($wh->{json}{webhook_url}, 'https://example.com/hook', 'webhook_url shown');
is_deeply($t->create_exec($key, $t->exec_body)->{json}{metadata}, {},
    'metadata defaults to {}');

# ---- timeout_seconds
my $short = $t->create_exec($key, $t->exec_body(timeout_seconds => 60));
is($short->{status}, 202, 'timeout_seconds 60: 202');
my $sc = parse_rfc3339($short->{json}{created_at} // '') // 0;
my $se = parse_rfc3339($short->{json}{expires_at} // '') // 0;
ok(abs($se - $sc - 60) < 0.002, 'timeout_seconds shortens expires_at');
my $max = $t->create_exec($key, $t->exec_body(timeout_seconds => 300));
is($max->{status}, 202, 'timeout_seconds = model timeout: 202');
for my $bad (301, 0, -5, 1.5) {
    my $r = $t->create_exec($key, $t->exec_body(timeout_seconds => $bad));
    is_error($r, 400, 'INPUT_VALIDATION_ERROR', "timeout_seconds $bad: 400");
    ok(detail_for($r, 'timeout_seconds'), "timeout_seconds $bad: details");
}

# ---- balance and cancel, on a fresh account
my $c = $t->new_account(credit => '10.00');
my $bal = $t->balance($c->{key});
money_is($bal->{balance}, '10.00', 'balance 10.00');
money_is($bal->{held}, '0', 'held 0');
money_is($bal->{available}, '10.00', 'available 10.00');
is($bal->{currency}, 'USD', 'currency USD');

my $ce = $t->create_exec($c->{key}, $t->exec_body)->{json};
$bal = $t->balance($c->{key});
money_is($bal->{balance}, '10.00', 'after create: balance unchanged');
money_is($bal->{held}, '0.048', 'after create: held 0.048');
money_is($bal->{available}, '9.952', 'after create: available 9.952');

my $can = $t->req(POST => "/v1/executions/$ce->{id}/cancel",
    auth($c->{key}));
is($can->{status}, 200, 'cancel: 200') or diag $can->{body};
is($can->{json}{id}, $ce->{id}, 'cancel: same id');
is($can->{json}{status}, 'CANCELLED', 'cancel: CANCELLED');
money_is($can->{json}{cost}, '0.00', 'cancel: cost 0.00');
ok(!defined $can->{json}{result}, 'cancel: result null');
$bal = $t->balance($c->{key});
money_is($bal->{held}, '0', 'after cancel: held 0');
money_is($bal->{available}, '10.00', 'after cancel: available restored');
money_is($bal->{balance}, '10.00', 'after cancel: nothing charged');
is($t->get_exec($c->{key}, $ce->{id})->{json}{status}, 'CANCELLED',
    'get after cancel: CANCELLED');

my $again = $t->req(POST => "/v1/executions/$ce->{id}/cancel",
    auth($c->{key}));
is($again->{status}, 200, 'cancel again: 200 no-op');
is($again->{json}{status}, 'CANCELLED', 'cancel again: CANCELLED');
is_deeply($again->{json}, $can->{json}, 'cancel again: object unchanged');
money_is($t->balance($c->{key})->{held}, '0', 'cancel again: held still 0');
is_error($t->req(GET => "/v1/executions/$ce->{id}/result", auth($c->{key})),
    409, 'EXECUTION_NOT_COMPLETED', 'result of a CANCELLED execution: 409');
my $v = $t->verify($c->{org});
ok($v->{ok}, 'verify ok after cancel');
is($v->{executions}, 1, 'verify: 1 execution');
is($v->{open_executions}, 0, 'verify: 0 open executions');

# ---- list, on a fresh account
my $l = $t->new_account(credit => '10.00');
my $lk = $l->{key};
my $empty = $t->req(GET => '/v1/executions', auth($lk));
is($empty->{status}, 200, 'list empty: 200');
is($empty->{json}{object}, 'list', 'list object');
is_deeply($empty->{json}{data}, [], 'list empty: data []');
ok(JSON::PP::is_bool($empty->{json}{has_more}) && !$empty->{json}{has_more},
    'list empty: has_more false');

my @ids;
for my $i (1 .. 5) {
    my $r = $t->create_exec($lk, $t->exec_body(metadata => { i => $i }));
    push @ids, $r->{json}{id};
}
my $img = $t->create_exec($lk, $t->exec_body(model => 'demo-image',
    input => { prompt => 'cat' }))->{json}{id};
push @ids, $img;
my @newest = reverse @ids;

my $all = $t->req(GET => '/v1/executions', auth($lk))->{json};
is_deeply([map { $_->{id} } @{ $all->{data} }], \@newest,
    'list: newest first');
ok(!$all->{has_more}, 'list: has_more false');
is($all->{data}[0]{object}, 'execution', 'list items are executions');

my $p1 = $t->req(GET => '/v1/executions?limit=2', auth($lk))->{json};
is_deeply([map { $_->{id} } @{ $p1->{data} }], [@newest[0, 1]],
    'limit=2: first page');
ok($p1->{has_more}, 'limit=2: has_more true');
my $p2 = $t->req(GET => "/v1/executions?limit=2&starting_after=$newest[1]",
    auth($lk))->{json};
is_deeply([map { $_->{id} } @{ $p2->{data} }], [@newest[2, 3]],
    'starting_after: second page');
ok($p2->{has_more}, 'second page: has_more true');
my $p3 = $t->req(GET => "/v1/executions?limit=2&starting_after=$newest[3]",
    auth($lk))->{json};
is_deeply([map { $_->{id} } @{ $p3->{data} }], [@newest[4, 5]],
    'starting_after: last page');
ok(!$p3->{has_more}, 'last page: has_more false');
my $p4 = $t->req(GET => "/v1/executions?starting_after=$newest[5]",
    auth($lk))->{json};
is_deeply($p4->{data}, [], 'after the oldest: empty');

my $l100 = $t->req(GET => '/v1/executions?limit=100', auth($lk));
is($l100->{status}, 200, 'limit=100: 200');
my $l1 = $t->req(GET => '/v1/executions?limit=1', auth($lk));
is(scalar @{ $l1->{json}{data} }, 1, 'limit=1: one item');

is($t->req(POST => "/v1/executions/$ids[1]/cancel", auth($lk))->{status},
    200, 'one of them cancelled');
my $byst = $t->req(GET => '/v1/executions?status=CANCELLED', auth($lk));
is_deeply([map { $_->{id} } @{ $byst->{json}{data} }], [$ids[1]],
    'status=CANCELLED filter');
my $pend = $t->req(GET => '/v1/executions?status=PENDING', auth($lk));
is_deeply([map { $_->{id} } @{ $pend->{json}{data} }],
    [grep { $_ ne $ids[1] } @newest], 'status=PENDING filter');
my $bym = $t->req(GET => '/v1/executions?model=demo-image', auth($lk));
is_deeply([map { $_->{id} } @{ $bym->{json}{data} }], [$img],
    'model=demo-image filter');
my $pm = $t->req(GET => '/v1/executions?model=demo-chat&status=PENDING'
    . '&limit=2', auth($lk))->{json};
is_deeply([map { $_->{id} } @{ $pm->{data} }],
    [ (grep { $_ ne $ids[1] && $_ ne $img } @newest)[0, 1] ],
    'model and status filters with limit');
ok($pm->{has_more}, 'filtered page: has_more true');
my $pa = $t->req(GET => "/v1/executions?status=PENDING&starting_after=$ids[1]",
    auth($lk))->{json};
is_deeply([map { $_->{id} } @{ $pa->{data} }], [$ids[0]],
    'status filter with starting_after an id outside the filter');
ok(!$pa->{has_more}, '... has_more false');
my $ma = $t->req(GET => "/v1/executions?model=demo-chat&starting_after=$img",
    auth($lk))->{json};
is_deeply([map { $_->{id} } @{ $ma->{data} }], [reverse @ids[0 .. 4]],
    'model filter with starting_after an id outside the filter');
my $mi = $t->req(GET => "/v1/executions?model=demo-image"
    . "&starting_after=$ids[3]", auth($lk))->{json};
is_deeply($mi->{data}, [], 'no older image: empty');
ok(!$mi->{has_more}, '... has_more false');

for my $q ('limit=0', 'limit=101', 'limit=x', 'limit=-1', 'limit=',
    'starting_after=exec_' . random_hex(32)) {
    my $r = $t->req(GET => "/v1/executions?$q", auth($lk));
    is_error($r, 400, 'INPUT_VALIDATION_ERROR', "list $q: 400");
}

# Another account's list does not show them.
my $ol = $t->req(GET => '/v1/executions', auth($oth->{key}))->{json};
is_deeply($ol->{data}, [], 'other account lists nothing');
is_error($t->req(GET => "/v1/executions?starting_after=$ids[0]",
    auth($oth->{key})), 400, 'INPUT_VALIDATION_ERROR',
    'starting_after with another account\'s id: 400');

# ---- models
my $m = $t->req(GET => '/v1/models', auth($key));
is($m->{status}, 200, 'models: 200');
is($m->{json}{object}, 'list', 'models: list');
my %models = map { $_->{id} => $_ } @{ $m->{json}{data} // [] };
is_deeply([sort keys %models],
    [qw(demo-chat demo-image demo-tokens demo-video)], 'models: all four');
is($models{'demo-chat'}{object}, 'model', 'model object');
is($models{'demo-chat'}{timeout_seconds}, 300, 'demo-chat timeout 300');
is($models{'demo-tokens'}{max_tokens}, 1000, 'demo-tokens max_tokens 1000');
is($models{'demo-image'}{max_tokens}, 1024, 'default max_tokens 1024');
is(ref $models{'demo-chat'}{pricing}, 'HASH', 'pricing object');
money_is($models{'demo-chat'}{pricing}{per_request}, '0.04',
    'demo-chat per_request');
money_is($models{'demo-tokens'}{pricing}{input_per_mtok}, '1.00',
    'demo-tokens input_per_mtok');
money_is($models{'demo-tokens'}{pricing}{output_per_mtok}, '2.00',
    'demo-tokens output_per_mtok');
money_is($models{'demo-image'}{pricing}{per_image}, '0.02',
    'demo-image per_image');
money_is($models{'demo-video'}{pricing}{per_second}, '0.05',
    'demo-video per_second');

ok($t->verify($acc->{org})->{ok}, 'verify ok');
ok($t->verify($l->{org})->{ok}, 'verify ok (list account)');

$t->done;
