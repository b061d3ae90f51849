# Undefined behaviour found with ASan + UBSan (./build.sh test-sanitize),
# each reproducer checked for its answer in any build: a huge
# timeout_seconds with a missing or unknown model (multiplied before its
# range check: a signed overflow), and empty strings copied from NULL (an
# account and a key without a name, an execution without webhook_url and
# metadata and its replay, an empty body, a webhook endpoint without
# description and headers and its deliveries, an execution's webhook_url
# delivery, the dispatch endpoint's body).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $rc = MR::Receiver->new;
$rc->start;

my $http = MR::Test::default_http();
$http .= <<'EOF';
modelroute_webhook_allow_private on;
modelroute_route sim /sim protocol=openai_chat;
modelroute_model demo-sim per_request=0.01 routes=sim;
server {
    modelroute_dispatch;
    location /sim { internal; modelroute_simulator; }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;

# ---- an account and a key without a name
my $r = $t->admin(POST => '/accounts', {});
is($r->{status}, 201, 'account without a name: 201') or diag $r->{body};
my $org = $r->{json}{id} // '';
ok(exists $r->{json}{name} && !defined $r->{json}{name}, '... name null');
$r = $t->admin(GET => "/accounts/$org");
is($r->{status}, 200, 'read back from the store');
ok(exists $r->{json}{name} && !defined $r->{json}{name}, '... name null');
is($t->admin(POST => "/accounts/$org/credit", { amount => '10.00' })
    ->{status}, 200, 'credited');

$r = $t->admin(POST => "/accounts/$org/keys", { permission => 'full' });
is($r->{status}, 201, 'key without a name: 201') or diag $r->{body};
my $key = $r->{json}{key} // '';
ok(exists $r->{json}{name} && !defined $r->{json}{name}, '... name null');
$r = $t->admin(GET => "/accounts/$org/keys");
is(scalar @{ $r->{json}{data} // [] }, 1, 'listed');
$r = $t->req(GET => '/v1/balance', auth($key));
is($r->{status}, 200, 'the key authenticates');
money_is($r->{json}{balance}, '10.00', '... and sees the balance');

# ---- timeout_seconds at the ends of 64 bits, without a (known) model
for my $model ('"model":"no-such-model",', '', '"model":7,') {
    for my $tmo ('9223372036854775807', '-9223372036854775808',
        '9223372036854776')
    {
        my $body = "{$model\"input\":{},\"idempotency_key\":\"k1\","
            . "\"timeout_seconds\":$tmo}";
        $r = $t->req(POST => '/v1/executions',
            { %{ auth($key) }, 'Content-Type' => 'application/json' },
            $body);
        my $what = ($model || 'no model') . " timeout_seconds $tmo";
        is_error($r, 400, 'INPUT_VALIDATION_ERROR', $what);
        ok(detail_for($r, 'model'), "... the model is named");
    }
}
money_is($t->balance($key)->{held}, '0.00', 'nothing held');
$r = $t->req(GET => '/v1/executions', auth($key));
is_deeply($r->{json}{data}, [], 'nothing stored');

# ---- an empty body
for my $te (0, 1) {
    my %h = (%{ auth($key) }, 'Content-Type' => 'application/json');
    my $msg = http_message(POST => '/v1/executions', \%h,
        $te ? undef : '', 1);
    $msg =~ s/\r\n\r\n$/\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n/
        if $te;
    my ($res) = $t->raw($msg);
    is_error($res, 400, 'INPUT_VALIDATION_ERROR',
        $te ? 'an empty chunked body: 400' : 'Content-Length: 0: 400');
}
{
    my ($res) = $t->raw(http_message(POST => '/admin/accounts',
        { 'Content-Type' => 'application/json' }, '', 1));
    is($res->{status}, 201, 'admin: an empty body is no fields: 201');
}

# ---- an execution without webhook_url and metadata, and its replay
my %body = (model => 'demo-chat', input => { prompt => 'x' },
    idempotency_key => 'bare-1');
$r = $t->create_exec($key, \%body);
is($r->{status}, 202, 'no webhook_url, no metadata: 202') or diag $r->{body};
my $id = $r->{json}{id} // '';
is_deeply($r->{json}{metadata}, {}, '... metadata {}');
ok(exists $r->{json}{webhook_url} && !defined $r->{json}{webhook_url},
    '... webhook_url null');
$r = $t->create_exec($key, \%body);
is($r->{json}{id}, $id, 'the same request again: the same execution');
is($r->{headers}{'idempotent-replayed'}, 'true', '... replayed');
$r = $t->create_exec($key, { %body, input => { prompt => 'y' } });
is_error($r, 409, undef, 'another input under the key: 409');
is($t->get_exec($key, $id)->{json}{id}, $id, 'read back from the store');

# ---- a webhook endpoint without description and headers, its delivery
$r = wh_create($t, $key, { url => $rc->url('/bare') });
is($r->{status}, 201, 'endpoint without description, headers: 201')
    or diag $r->{body};
my $ep = $r->{json}{id} // '';
my $secret = $r->{json}{secret} // '';
ok(exists $r->{json}{description} && !defined $r->{json}{description},
    '... description null');
is_deeply($r->{json}{headers}, {}, '... headers {}');
$r = $t->req(POST => "/v1/webhooks/endpoints/$ep/test", auth($key));
is($r->{status}, 202, 'test event: 202');
my ($q) = $rc->wait_requests(1, path => '/bare');
ok($q, 'the endpoint got the test event');
is_deeply([ signature_problems($q // {}, $secret) ], [], '... signed');
my $d = wait_delivery($t, $key, $ep, $r->{json}{delivery_id} // '',
    sub { $_[0]{status} ne 'pending' });
is($d->{status}, 'succeeded', '... and the delivery succeeded');

# ---- an execution's webhook_url (a delivery of no endpoint)
$r = $t->create_exec($key, $t->exec_body(model => 'demo-image',
    webhook_url => $rc->url('/exec')));
is($r->{status}, 202, 'with webhook_url: 202') or diag $r->{body};
$id = $r->{json}{id} // '';
$t->req(POST => "/v1/executions/$id/cancel", auth($key));
($q) = $rc->wait_requests(1, path => '/exec');
is(eval { event_of($q)->{event_type} }, 'execution.cancelled',
    'the webhook_url got execution.cancelled');
$r = $t->req(GET => '/v1/webhooks/default/secret', auth($key));
is_deeply([ signature_problems($q // {}, $r->{json}{secret} // '') ], [],
    '... signed with the default secret');

# ---- dispatch: an execution dispatched, the endpoint's empty body
$r = $t->create_exec($key, $t->exec_body(model => 'demo-sim'));
is($r->{status}, 202, 'a dispatched model: 202') or diag $r->{body};
$id = $r->{json}{id} // '';
my $e;
wait_for(sub {
    $e = $t->get_exec($key, $id)->{json};
    $e && $e->{status} =~ /^(?:COMPLETED|FAILED)$/;
}, 15);
is($e->{status}, 'COMPLETED', '... completed by the simulator');

SKIP: {
    my $ds = $t->store_secret('dsecret');
    skip 'mdb_dump (lmdb-utils) not available', 2
        if !defined $ds && $t->backend eq 'lmdb'
           && !-x '/usr/bin/mdb_dump';
    ok(defined $ds, 'the store has a dispatch secret');
    my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM,
        Peer => $t->store . '/dispatch.sock');
    print $s "POST /dispatch HTTP/1.1\r\nHost: x\r\n"
        . "X-ModelRoute-Dispatch: " . ($ds // '') . "\r\n"
        . "Connection: close\r\nContent-Length: 0\r\n\r\n" if $s;
    local $/;
    my $resp = $s ? <$s> // '' : '';
    like($resp, qr{^HTTP/1\.1 400 }, 'dispatch endpoint, empty body: 400');
}

my $v = $t->verify($org);
ok($v->{ok}, 'ledger verifies') or diag explain $v;

$t->done;
