# Validation of POST /v1/executions: every bad input is a 400 (413, 415)
# envelope and stores nothing; estimates and holds of valid inputs.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

# Two extra models whose prices need rounding up to the micro-dollar.
my $t = MR::Test->new(extra_http =>
    "modelroute_model round-hold per_request=0.010001;\n"
    . "modelroute_model round-tok input_per_mtok=0.5 output_per_mtok=0.5"
    . " max_tokens=3;\n");
$t->start;

my $acc = $t->new_account(credit => '10.00');
my $key = $acc->{key};
my $JSON_CT = { %{ auth($key) }, 'Content-Type' => 'application/json' };

# Nothing stored for the account: no execution, no hold.
sub nothing_stored {
    my ($name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $l = $t->req(GET => '/v1/executions', auth($key));
    my $b = $t->balance($key);
    ok($l->{status} == 200 && !@{ $l->{json}{data} }
        && MR::Test::micros($b->{held}) == 0, "$name: nothing stored")
        or diag "list: $l->{body}\nheld: $b->{held}";
}

# POSTs raw bytes as JSON; expects $status/$code and details for @fields.
sub bad_raw {
    my ($bytes, $name, @fields) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $r = $t->req(POST => '/v1/executions', $JSON_CT, $bytes);
    is_error($r, 400, 'INPUT_VALIDATION_ERROR', "$name: 400");
    ok(detail_for($r, $_), "$name: details name $_") or diag $r->{body}
        for @fields;
    nothing_stored($name);
    return $r;
}

sub bad_body {
    my ($body, $name, @fields) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    return bad_raw(json_encode($body), $name, @fields);
}

my %ok = (model => 'demo-chat', input => { prompt => 'hi' },
    idempotency_key => 'v-1');

# ---- not JSON objects
bad_raw('{"model":', 'truncated JSON');
bad_raw('{"model": "demo-chat",}', 'trailing comma');
bad_raw("{'model': 'demo-chat'}", 'single quotes');
bad_raw('', 'empty body');
bad_raw('   ', 'whitespace body');
bad_raw('[1,2]', 'JSON array');
bad_raw('"demo-chat"', 'JSON string');
bad_raw('42', 'JSON number');
bad_raw('null', 'JSON null');
bad_raw(json_encode(\%ok) . ' {}', 'two JSON values');
bad_raw('{"model":"demo-chat","idempotency_key":"deep","input":'
    . ('[' x 10000) . (']' x 10000) . '}', '10,000-deep arrays');
bad_raw('{"model":"demo-chat","idempotency_key":"deep","input":'
    . ('{"a":' x 10000) . '1' . ('}' x 10000) . '}', '10,000-deep objects');

# ---- wrong types, one at a time and all at once
my %wrong = (model => 1, input => 'x', idempotency_key => 5,
    metadata => [], webhook_url => 3, timeout_seconds => 'x');
for my $f (sort keys %wrong) {
    bad_body({ %ok, $f => $wrong{$f} }, "$f of the wrong type", $f);
}
bad_body({ %ok, %wrong }, 'every field of the wrong type', sort keys %wrong);
bad_body({ %ok, model => undef }, 'model null', 'model');
bad_body({ %ok, input => [] }, 'input an array', 'input');
bad_body({ %ok, metadata => 'x' }, 'metadata a string', 'metadata');

# ---- missing fields
for my $f (qw(model input idempotency_key)) {
    my %b = %ok;
    delete $b{$f};
    my $r = bad_body(\%b, "missing $f", $f);
    is(detail_for($r, $f) && detail_for($r, $f)->{code}, 'REQUIRED',
        "missing $f: detail code REQUIRED");
}

# ---- idempotency key rules
{
    my %b = %ok;
    my $r = $t->req(POST => '/v1/executions',
        { %$JSON_CT, 'Idempotency-Key' => 'other' }, json_encode(\%b));
    is_error($r, 400, 'INPUT_VALIDATION_ERROR', 'header and body keys differ');
    ok(detail_for($r, 'idempotency_key'), 'differing keys: details');
    nothing_stored('differing keys');
}
bad_body({ %ok, idempotency_key => 'k' x 300 }, '300-character key',
    'idempotency_key');
bad_body({ %ok, idempotency_key => 'k' x 256 }, '256-character key',
    'idempotency_key');
bad_body({ %ok, idempotency_key => '' }, 'empty key', 'idempotency_key');
{
    my %b = %ok;
    delete $b{idempotency_key};
    my $r = $t->req(POST => '/v1/executions',
        { %$JSON_CT, 'Idempotency-Key' => 'h' x 300 }, json_encode(\%b));
    is_error($r, 400, 'INPUT_VALIDATION_ERROR', '300-character header key');
    ok(detail_for($r, 'idempotency_key'), '300-character header key: details');
    nothing_stored('300-character header key');
}
bad_body({ %ok, idempotency_key => "a\x01b" }, 'key with a control char',
    'idempotency_key');
bad_body({ %ok, idempotency_key => "a\tb" }, 'key with a tab',
    'idempotency_key');
bad_body({ %ok, idempotency_key => "a\x7fb" }, 'key with DEL',
    'idempotency_key');
bad_body({ %ok, idempotency_key => "caf\x{e9}" }, 'key with non-ASCII',
    'idempotency_key');
# (\u0000 may be refused by the JSON parser, before any field is known.)
bad_raw('{"model":"demo-chat","input":{},"idempotency_key":"a\u0000b"}',
    'key with \u0000');

# ---- model
bad_body({ %ok, model => 'no-such-model' }, 'unknown model', 'model');
bad_body({ %ok, model => '' }, 'empty model', 'model');
bad_body({ %ok, model => 'DEMO-CHAT' }, 'model in the wrong case', 'model');
bad_raw('{"model":"demo-chat\u0000x","input":{},"idempotency_key":"n"}',
    'model with \u0000');

# ---- metadata
bad_body({ %ok, metadata => { map { ("k$_" => $_) } 1 .. 17 } },
    'metadata with 17 keys', 'metadata');
bad_body({ %ok, metadata => { big => 'x' x 5000 } }, 'metadata over 4 KiB',
    'metadata');

# ---- timeout_seconds
bad_body({ %ok, timeout_seconds => 301 }, 'timeout above the model\'s',
    'timeout_seconds');

# ---- input fields used by the estimate
bad_body({ %ok, model => 'demo-image', input => { n => '3' } },
    'input.n a string', 'input.n');
bad_body({ %ok, model => 'demo-image', input => { n => -1 } },
    'input.n negative', 'input.n');
bad_body({ %ok, model => 'demo-image', input => { n => 1.5 } },
    'input.n not an integer', 'input.n');
bad_body({ %ok, model => 'demo-video', input => { duration => 'x' } },
    'input.duration a string', 'input.duration');
bad_body({ %ok, model => 'demo-tokens', input => { max_tokens => 'x' } },
    'input.max_tokens a string', 'input.max_tokens');

# ---- numbers beyond the limits of the estimate (README: input.n 1-128,
# input.duration up to 86400 s, input.max_tokens up to 10,000,000): a 400
# naming the field, before any balance check, never a wrapped price
for my $c (['demo-image', { n => 129 }], ['demo-image', { n => 10**15 }],
    ['demo-image', { n => 2**62 }], ['demo-video', { duration => 86401 }],
    ['demo-video', { duration => 10**15 }],
    ['demo-tokens', { max_tokens => 10_000_001 }],
    ['demo-tokens', { max_tokens => 2**62 }]) {
    my ($model, $input) = @$c;
    my ($f) = keys %$input;
    bad_body({ model => $model, input => $input,
        idempotency_key => $t->fresh_key }, "$model $f=$input->{$f}",
        "input.$f");
}
bad_body({ %ok, timeout_seconds => 2**62 }, 'huge timeout_seconds',
    'timeout_seconds');
bad_body({ %ok, model => 'demo-video', input => { duration => 1e300 } },
    'duration 1e300', 'input.duration');

# ---- bytes that are not valid JSON text
bad_raw(qq({"model":"demo-chat","input":{"prompt":"a\xff\xfeb"},)
    . qq("idempotency_key":"u1"}), 'invalid UTF-8 in input');
bad_raw(qq({"model":"demo-chat","input":{"prompt":"\xc0\xaf"},)
    . qq("idempotency_key":"u2"}), 'overlong UTF-8 in input');
bad_raw(qq({"model":"demo-chat","input":{},"idempotency_key":"k\xe9"}),
    'invalid UTF-8 in the key');
bad_raw(qq({"model":"demo-chat","input":{"prompt":"a\0b"},)
    . qq("idempotency_key":"nul1"}), 'raw NUL byte in a string');
bad_raw(qq({"model":"demo-chat","input":{"prompt":"a\\u0000b"},)
    . qq("idempotency_key":"nul2"}), '\u0000 escape in a string');
bad_raw(qq({"model":"demo-chat","input":{"prompt":"\\ud800"},)
    . qq("idempotency_key":"sur"}), 'lone surrogate escape');

# ---- body too large, wrong media type
{
    my $big = json_encode({ %ok, input => { prompt => 'x' x 70_000 } });
    my $r = $t->req(POST => '/v1/executions', $JSON_CT, $big);
    is_error($r, 413, 'PAYLOAD_TOO_LARGE', 'body over 64k: 413 envelope');
    nothing_stored('body over 64k');

    my $msg = "POST /v1/executions HTTP/1.1\r\nHost: x\r\n"
        . "Authorization: Bearer $key\r\nContent-Type: application/json\r\n"
        . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    $msg .= sprintf("%x\r\n%s\r\n", 8192, 'x' x 8192) for 1 .. 10;
    $msg .= "0\r\n\r\n";
    my $c = $t->raw($msg);
    is_error($c, 413, 'PAYLOAD_TOO_LARGE', 'chunked body over 64k: 413');
    nothing_stored('chunked body over 64k');
}
for my $ct ('text/plain', 'application/x-www-form-urlencoded',
    'multipart/form-data; boundary=x') {
    my $r = $t->req(POST => '/v1/executions',
        { %{ auth($key) }, 'Content-Type' => $ct }, json_encode(\%ok));
    is_error($r, 415, 'UNSUPPORTED_MEDIA_TYPE', "Content-Type $ct: 415");
    nothing_stored("Content-Type $ct");
}

# Errors are checked before the balance: an account without money still
# gets the 400.
{
    my $poor = $t->new_account(credit => '0.01');
    my $r = $t->create_exec($poor->{key}, { %ok, model => 'nope' });
    is_error($r, 400, 'INPUT_VALIDATION_ERROR', 'poor account, bad model');
}

my $v = $t->verify($acc->{org});
ok($v->{ok}, 'verify ok');
is($v->{executions}, 0, 'verify: no execution stored');

# ---- valid inputs on a second account: boundaries and estimates
my $g = $t->new_account(credit => '10.00');

sub accepted {
    my ($body, $name, %want) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $body = { %$body };
    $body->{idempotency_key} = $t->fresh_key
        if ($body->{idempotency_key} // '') eq 'v-1';
    my $r = $t->create_exec($g->{key}, { idempotency_key => $t->fresh_key,
        %$body });
    is($r->{status}, 202, "$name: 202") or diag $r->{body};
    money_is($r->{json}{estimated_cost}, $want{estimate},
        "$name: estimated_cost $want{estimate}") if $want{estimate};
    money_is($r->{json}{hold_amount}, $want{hold}, "$name: hold $want{hold}")
        if $want{hold};
    return $r;
}

accepted({ %ok, idempotency_key => 'k' x 255 }, '255-character key');
accepted({ %ok, idempotency_key => join '', map { chr } 32 .. 126 },
    'every printable ASCII character in the key');
accepted({ %ok, metadata => { map { ("k$_" => $_) } 1 .. 16 } },
    'metadata with 16 keys');
accepted({ %ok, metadata => { big => 'x' x 3000 } }, 'metadata of 3 KB');
accepted({ %ok, input => { prompt => "caf\x{e9} \x{1F600}" } },
    'non-ASCII input');
accepted({ %ok, extra_field => [1, 2], input => { x => { y => [1] } } },
    'unknown fields ignored');
accepted({ %ok, input => { prompt => 'x' x 60_000 } },
    'a 60 KB body (buffered in a file by nginx)');
{
    my $r = $t->req(POST => '/v1/executions', { %{ auth($g->{key}) },
        'Content-Type' => 'application/json; charset=utf-8' },
        json_encode({ %ok, idempotency_key => 'charset' }));
    is($r->{status}, 202, 'Content-Type with charset: 202');
}

accepted({ model => 'demo-chat', input => {} }, 'demo-chat',
    estimate => '0.04', hold => '0.048');
accepted({ model => 'demo-image', input => { prompt => 'a' } },
    'demo-image, n defaults to 1', estimate => '0.02', hold => '0.024');
accepted({ model => 'demo-image', input => { prompt => 'a', n => 3 } },
    'demo-image n=3', estimate => '0.06', hold => '0.072');
accepted({ model => 'demo-image', input => { prompt => 'a', n => 128 } },
    'demo-image n=128 (the largest)', estimate => '2.56', hold => '3.072');
accepted({ model => 'demo-video', input => { prompt => 'a' } },
    'demo-video, duration defaults to 1', estimate => '0.05', hold => '0.06');
accepted({ model => 'demo-video', input => { duration => 10 } },
    'demo-video duration=10', estimate => '0.50', hold => '0.60');
# {"prompt":"hello"} = 18 bytes = 5 tokens in; 1000 (model default) out.
accepted({ model => 'demo-tokens', input => { prompt => 'hello' } },
    'demo-tokens, default max_tokens', estimate => '0.002005',
    hold => '0.01');
# {"max_tokens":500,"prompt":"x…"} = 4030 bytes = 1008 tokens in.
accepted({ model => 'demo-tokens',
    input => { max_tokens => 500, prompt => 'x' x 4000 } },
    'demo-tokens max_tokens=500', estimate => '0.002008', hold => '0.01');

# Each term is rounded up, then the hold: 0.010001 x 1.2 = 0.0120012.
accepted({ model => 'round-hold', input => {} }, 'hold rounded up',
    estimate => '0.010001', hold => '0.012002');
# "{}" = 1 token in at 0.5 micro; 3 tokens out at 0.5 micro: 1 + 2 micro.
accepted({ model => 'round-tok', input => {} }, 'token terms rounded up',
    estimate => '0.000003', hold => '0.01');

my $gv = $t->verify($g->{org});
ok($gv->{ok}, 'verify ok (valid inputs)');
my $held = 0;
$held += MR::Test::micros($_->{hold_amount})
    for $t->list_all($g->{key});
is(MR::Test::micros($t->balance($g->{key})->{held}), $held,
    'held = sum of the holds shown');

$t->done;
