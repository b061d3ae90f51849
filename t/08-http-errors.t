# HTTP-level errors of the public API: unknown paths, wrong methods, long
# and malicious ids, broken requests. Always the envelope, never a 500.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use MR::Test qw(:all);

my $t = MR::Test->new;
$t->start;

my $acc = $t->new_account(credit => '10.00');
my $key = $acc->{key};
my $A = auth($key);
my $id = $t->create_exec($key, $t->exec_body)->{json}{id};

sub http_msg { MR::Test::http_message(@_) }
like($id, qr/^exec_[0-9a-f]{44}$/, 'an execution to aim at');

# ---- unknown paths
for my $p ('/v1/', '/v1/nothing', '/v1/executionsx', '/v1/balance/x',
    "/v1/executions/$id/nothing", "/v1/executions/$id/result/x",
    '/v1/models/x/y', '/v1/api-keys', "/v1/api-keys/$acc->{key_id}") {
    is_error($t->req(GET => $p, $A), 404, 'NOT_FOUND', "GET $p: 404");
}

# ---- wrong methods
sub method_not_allowed {
    my ($m, $p, $allow) = @_;
    my $r = $t->req($m, $p, $A, $m eq 'POST' || $m eq 'PUT' ? {} : undef);
    is_error($r, 405, 'METHOD_NOT_ALLOWED', "$m $p: 405");
    my %got = map { uc($_) => 1 } split /\s*,\s*/,
        $r->{headers}{allow} // '';
    for my $want (@$allow) {
        ok($got{$want}, "$m $p: Allow names $want")
            or diag 'Allow: ' . ($r->{headers}{allow} // 'none');
    }
    ok(!$got{$m}, "$m $p: Allow does not name $m");
}
method_not_allowed(DELETE => '/v1/executions', [qw(GET POST)]);
method_not_allowed(PUT => '/v1/executions', [qw(GET POST)]);
method_not_allowed(PUT => '/v1/balance', ['GET']);
method_not_allowed(POST => '/v1/balance', ['GET']);
method_not_allowed(POST => '/v1/models', ['GET']);
method_not_allowed(DELETE => "/v1/executions/$id", ['GET']);
method_not_allowed(POST => "/v1/executions/$id", ['GET']);
method_not_allowed(GET => "/v1/executions/$id/cancel", ['POST']);
method_not_allowed(POST => "/v1/executions/$id/result", ['GET']);
method_not_allowed(GET => "/v1/api-keys/$acc->{key_id}/rotate", ['POST']);
is($t->get_exec($key, $id)->{json}{status}, 'PENDING',
    'DELETE did not touch the execution');

# ---- malformed and hostile ids
my @bad_ids = (
    'exec_' . ('a' x 10_000),
    'exec_' . random_hex(43), 'exec_' . random_hex(45),
    'EXEC_' . random_hex(44), 'exec_' . uc(random_hex(44)),
    'exe_' . random_hex(32), 'exec' . random_hex(32),
    'exec_' . ('g' x 44), 'exec_', 'x', uc($id),
    "$id%20", "$id;x", "$id..", "..$id",
);
for my $bad (@bad_ids) {
    my $name = length $bad > 60 ? substr($bad, 0, 40) . '...' : $bad;
    is_error($t->req(GET => "/v1/executions/$bad", $A), 404, 'NOT_FOUND',
        "GET id $name: 404");
    is_error($t->req(GET => "/v1/executions/$bad/result", $A), 404,
        'NOT_FOUND', "result of $name: 404");
    is_error($t->req(POST => "/v1/executions/$bad/cancel", $A), 404,
        'NOT_FOUND', "cancel $name: 404");
}
is_error($t->req(POST => '/v1/api-keys/' . ('k' x 10_000) . '/rotate', $A),
    404, 'NOT_FOUND', 'rotate a 10 KB key id: 404');
is_error($t->req(GET => '/v1/executions?starting_after=' . ('a' x 10_000),
    $A), 400, 'INPUT_VALIDATION_ERROR', '10 KB starting_after: 400');

# Path traversal, plain and percent-encoded, sent byte for byte.
# (nginx resolves the dot segments, decoded ones too, before the module.)
for my $p ('/v1/executions/exec_../../x', '/v1/executions/..',
    '/v1/executions/exec_%2e%2e%2f%2e%2e%2fx',
    '/v1/executions/%2e%2e%2fexecutions%2f' . substr($id, 0, -1) . 'g',
    "/v1/executions/$id%2f..%2f..%2fx", '/v1/executions/..%5c..%5cx') {
    my $r = $t->raw_request(GET => $p, $A);
    is_error($r, 404, 'NOT_FOUND', "GET $p: 404 envelope");
}

# ---- broken requests: nginx refuses them before any location is chosen
# (so with its own page, not the envelope), the server stays healthy
for my $c ([ 400, "GARBAGE\r\n\r\n" ],
    [ 505, "GET /v1/balance HTTP/9.9\r\n\r\n" ],
    [ 400, "GET /v1/executions/exec_\0abc HTTP/1.1\r\nHost: x\r\n\r\n" ],
    [ 400, "GET /v1/executions/exec_%00abc HTTP/1.1\r\nHost: x\r\n\r\n" ],
    [ 400, "GET /v1/executions/exec_%zz HTTP/1.1\r\nHost: x\r\n\r\n" ],
    [ 400, "GET /v1/balance HTTP/1.1\r\nHost: x\r\n"
        . "Authorization: Bearer \0\r\n\r\n" ]) {
    my ($want, $bytes) = @$c;
    (my $show = substr($bytes, 0, 40)) =~ s/[^ -~]/./g;
    my $r = $t->raw($bytes);
    is($r->{status}, $want, "broken request refused with $want: $show")
        or diag $r->{body};
}
is_error($t->raw_request(GET => '/v1/balance', { Authorization => "Bearer "
    . "\x7f" . ('a' x 75) }), 401, 'UNAUTHORIZED', 'DEL character in the key');
is_error($t->req(GET => '/v1/balance', { Authorization => 'Bearer '
    . ('a' x 20_000) }), 401, 'UNAUTHORIZED', '20 KB Authorization');

# ---- keep-alive: an error answer leaves the connection usable
# Each error below arrives with a body that the module must read or
# discard; the next request on the connection must still be understood.
{
    my $json = json_encode($t->exec_body);
    my $ct = { %$A, 'Content-Type' => 'application/json' };
    my ($ek, $ekid) = $t->admin_create_key($acc->{org}, 'execution');
    my @cases = (
        ['415', 415, http_msg(POST => '/v1/executions',
            { %$A, 'Content-Type' => 'text/plain' }, $json)],
        ['401', 401, http_msg(POST => '/v1/executions',
            { 'Content-Type' => 'application/json' }, $json)],
        ['404', 404, http_msg(POST => '/v1/nothing', $ct, $json)],
        ['405', 405, http_msg(PUT => '/v1/balance', $ct, $json)],
        ['400', 400, http_msg(POST => '/v1/executions', $ct, '{"model":')],
        ['403', 403, http_msg(POST => "/v1/api-keys/$ekid/rotate",
            { %{ auth($ek) }, 'Content-Type' => 'application/json' },
            '{"a":"b"}')],
        ['202', 202, http_msg(POST => '/v1/executions', $ct, $json)],
    );
    for my $c (@cases) {
        my ($name, $status, $first) = @$c;
        my @res = $t->raw_all($first,
            http_msg(GET => '/v1/balance', $A, undef, 1));
        is($res[0] && $res[0]{status}, $status, "$name: first answer");
        is(lc($res[0] && $res[0]{headers}{connection} // ''), 'keep-alive',
            "$name: the connection is kept");
        is(scalar @res, 2, "keep-alive after $name: two answers");
        is($res[1] && $res[1]{status}, 200,
            "keep-alive after $name: next request answered 200")
            or diag explain [map { "$_->{status} $_->{body}" } @res];
    }

    # Pipelined: three creates and a read, sent at once.
    my @bodies = map { json_encode($t->exec_body) } 1 .. 3;
    my @res = $t->raw_all(join('', map { http_msg(POST => '/v1/executions',
        $ct, $_) } @bodies), http_msg(GET => '/v1/balance', $A, undef, 1));
    is_deeply([map { $_->{status} } @res], [202, 202, 202, 200],
        'pipelined creates and a read');
    money_is($res[3]{json}{held}, '0.24',
        'pipelined: the read sees all five holds');

    # A body sent slowly, in pieces (the pauses play a slow client; they
    # wait for no condition).
    my $slow = json_encode($t->exec_body);
    my $half = int(length($slow) / 2);
    my $msg = http_msg(POST => '/v1/executions', $ct, $slow, 1);
    my $head = length($msg) - length($slow);
    my @slow = $t->raw_all(substr($msg, 0, $head),
        sub { Time::HiRes::sleep(0.2) }, substr($slow, 0, $half),
        sub { Time::HiRes::sleep(0.2) }, substr($slow, $half));
    is($slow[0] && $slow[0]{status}, 202, 'body sent in slow pieces: 202')
        or diag $slow[0] && $slow[0]{body};
}

# ---- request ids: unique per answer
my %seen;
for (1 .. 20) {
    my $r = $t->req(GET => '/v1/balance', $A);
    $seen{ $r->{headers}{'x-request-id'} // '' }++;
}
is(scalar(grep { /^req_[0-9a-f]{32}$/ } keys %seen), 20,
    '20 answers, 20 distinct request ids');

is($t->req(GET => '/v1/balance', $A)->{status}, 200, 'still serving');
ok($t->verify($acc->{org})->{ok}, 'verify ok');
is(scalar $t->list_all($key), 6,
    'six executions (one, keep-alive, three pipelined, slow), nothing else');

$t->done;
