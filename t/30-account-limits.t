# One account tries to fill the store for everyone: open executions with
# large inputs, again and again.  It meets its own limit of stored bytes
# (403 ACCOUNT_LIMIT_EXCEEDED naming the limit, its value and the use)
# long before the store is full, while another account keeps working;
# the use is counted exactly (verify walks the account's records), and
# falls by the inputs when the executions end.  Then the other limits (live executions, webhook
# endpoints, API keys) with the admin API's overrides, the account
# object, the input size limit of a model (413), nginx -t refusals, and
# the retention giving an account its room back.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $http = MR::Test::default_http();
$http =~ s/client_max_body_size 64k;/client_max_body_size 256k;/;

# no modelroute_account_limits: the defaults (bytes: a quarter of the map)
my $t = MR::Test->new(http => "modelroute_store_map_size 16m;\n"
    . "modelroute_webhook_allow_private on;\n$http");
$t->start;

my $att = $t->new_account(credit => '1000.00');
my $vic = $t->new_account(credit => '1000.00');

sub limit_error {
    my ($r, $limit, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $e = is_error($r, 403, 'ACCOUNT_LIMIT_EXCEEDED', $name) or return;
    my ($d) = grep { ($_->{limit} // '') eq $limit } @{ $e->{details} // [] };
    ok($d, "$name: details name the $limit limit")
        or diag explain $e;
    return $d // {};
}

# ---------------------------------------------------------------- the fill
# Open executions with large inputs (a cancelled one keeps no input: the
# ended ones' turn comes with the retention, below).
my $big = 'x' x 60_000;
my ($refused, $n, $vic_ok, $vic_bad, $full) = (undef, 0, 0, 0, 0);
my @open;
for my $i (1 .. 2000) {
    my $r = $t->create_exec($att->{key}, $t->exec_body(
        input => { prompt => $big, i => $i }));
    if ($r->{status} == 202) {
        $n++;
        push @open, $r->{json}{id};
    } else {
        $refused = $r;
        last;
    }
    next if $i % 10;
    my $v = $t->create_exec($vic->{key}, $t->exec_body);
    $v->{status} == 202 ? $vic_ok++ : $vic_bad++;
    $full++ if $v->{status} == 507;
}
ok($n > 10, "$n large executions accepted");
my $d = limit_error($refused // {}, 'bytes',
    'the attacker meets its own limit of stored bytes');
is($d->{value}, 4 * 1024 * 1024, 'the default: a quarter of the map');
ok(($d->{current} // 0) > 3 * 1024 * 1024 && $d->{current} <= $d->{value},
    "the use when refused ($d->{current})");
ok($vic_ok > 0, "the other account created meanwhile ($vic_ok)");
is($vic_bad, 0, 'the other account was never refused');
is($full, 0, 'the store never got full');

for my $k (1 .. 3) {
    is($t->create_exec($vic->{key}, $t->exec_body)->{status}, 202,
        "the other account still creates ($k)");
}
limit_error($t->create_exec($att->{key}, $t->exec_body(
    input => { prompt => $big })), 'bytes',
    'the attacker\'s next one is refused too');

# the executions end: their inputs leave the store, and the use with them
my $used = $t->admin(GET => "/accounts/$att->{org}")->{json}{usage}{bytes};
my $cancelled = 0;
for my $id (@open) {
    $cancelled++ if $t->req(POST => "/v1/executions/$id/cancel",
        auth($att->{key}))->{status} == 200;
}
is($cancelled, scalar @open, 'every one of them cancelled');
my $left = $t->admin(GET => "/accounts/$att->{org}")->{json}{usage}{bytes};
cmp_ok($used - $left, '>=', 60_000 * @open,
    "their inputs are no longer counted ($used -> $left bytes)");

my $v = $t->verify($att->{org});
ok($v->{ok}, 'verify: the counted use is exact') or diag explain $v;
is($v->{usage}{bytes}, $v->{usage_counted}{bytes}, 'bytes as walked');
is($v->{usage}{executions}, 0, 'no live execution (all cancelled)');
ok($t->verify($vic->{org})->{ok}, 'verify: the other account');

# the account object shows the limits and the use
my $a = $t->admin(GET => "/accounts/$att->{org}")->{json};
is($a->{limits}{bytes}, 4 * 1024 * 1024, 'account: limits.bytes');
is($a->{limits}{executions}, 10000, 'account: limits.executions default');
is($a->{limits}{endpoints}, 16, 'account: limits.endpoints default');
is($a->{limits}{keys}, 16, 'account: limits.keys default');
is($a->{usage}{bytes}, $v->{usage}{bytes}, 'account: usage.bytes');
is($a->{usage}{keys}, 1, 'account: usage.keys');
ok(!defined $a->{limit_overrides}{bytes}, 'account: no override');

# an idempotent replay needs no room
{
    my $body = $t->exec_body;
    my $x = $t->create_exec($vic->{key}, $body);
    is($x->{status}, 202, 'a create before the limit is lowered');
    my $r = $t->admin(POST => "/accounts/$vic->{org}/limits", { bytes => 0 });
    is($r->{status}, 200, 'override: bytes 0');
    is($r->{json}{limits}{bytes}, 0, 'override shown in limits');
    is($r->{json}{limit_overrides}{bytes}, 0, '... and in limit_overrides');
    my $again = $t->create_exec($vic->{key}, $body);
    is($again->{status}, 202, 'its replay is still answered');
    is($again->{headers}{'idempotent-replayed'}, 'true', '... as a replay');
    limit_error($t->create_exec($vic->{key}, $t->exec_body), 'bytes',
        'a new one is refused');
    $r = $t->admin(POST => "/accounts/$vic->{org}/limits", { bytes => undef });
    is($r->{status}, 200, 'override reset with null');
    ok(!defined $r->{json}{limit_overrides}{bytes}, '... no override');
    is($t->create_exec($vic->{key}, $t->exec_body)->{status}, 202,
        '... creates again');
}

# ---------------------------------------------------------------- counts
{
    my $c = $t->admin(POST => '/accounts', { credit => '10.00',
        limits => { executions => 3, endpoints => 2, keys => 2 } });
    is($c->{status}, 201, 'an account created with limits');
    my $org = $c->{json}{id};
    is($c->{json}{limits}{executions}, 3, '... executions 3');
    is($c->{json}{limit_overrides}{endpoints}, 2, '... endpoints 2');
    my ($key, $kid) = $t->admin_create_key($org, 'full');

    # live executions
    my @x = map { $t->create_exec($key, $t->exec_body)->{json}{id} } 1 .. 3;
    is(scalar(grep { defined } @x), 3, 'three live executions');
    my $d = limit_error($t->create_exec($key, $t->exec_body), 'executions',
        'a fourth live one');
    is($d->{value}, 3, '... value 3');
    is($d->{current}, 3, '... current 3');
    $t->req(POST => "/v1/executions/$x[0]/cancel", auth($key));
    is($t->create_exec($key, $t->exec_body)->{status}, 202,
        'a cancel makes room for another');

    # webhook endpoints
    my $rc = MR::Receiver->new;
    my @e = map { wh_create($t, $key, { url => $rc->url("/e$_") }) } 1 .. 3;
    is($e[0]{status}, 201, 'endpoint 1');
    is($e[1]{status}, 201, 'endpoint 2');
    $d = limit_error($e[2], 'endpoints', 'endpoint 3');
    is($d->{value}, 2, '... value 2');
    is($t->req(DELETE => "/v1/webhooks/endpoints/$e[0]{json}{id}",
        auth($key))->{status}, 200, 'delete one');
    is(wh_create($t, $key, { url => $rc->url('/e4') })->{status}, 201,
        'then another can be made');

    # API keys (the operator's admin API); a rotation does not add one
    my $r = $t->admin(POST => "/accounts/$org/keys", { permission => 'full' });
    is($r->{status}, 201, 'a second key');
    limit_error($t->admin(POST => "/accounts/$org/keys",
        { permission => 'execution' }), 'keys', 'a third key');
    is($t->req(POST => "/v1/api-keys/$kid/rotate", auth($key))->{status},
        200, 'a rotation at the limit');
    is($t->admin(POST => "/keys/$r->{json}{id}/revoke")->{status}, 200,
        'revoke one');
    is($t->admin(POST => "/accounts/$org/keys", { permission => 'full' })
        ->{status}, 201, 'then another can be made');

    my $v = $t->verify($org);
    ok($v->{ok}, 'verify after the counts') or diag explain $v;
    is($v->{usage}{executions}, 3, 'usage: 3 live executions');
    is($v->{usage}{endpoints}, 2, 'usage: 2 endpoints');
    is($v->{usage}{keys}, 2, 'usage: 2 active keys');

    # bad overrides
    for my $bad ({ bytes => -1 }, { keys => 'many' }, { executions => 1.5 }) {
        my ($name) = keys %$bad;
        my $r = $t->admin(POST => "/accounts/$org/limits", $bad);
        is_error($r, 400, 'INPUT_VALIDATION_ERROR', "limits.$name invalid");
        ok(detail_for($r, "limits.$name"), "... the detail names it");
    }
    is_error($t->admin(POST => '/accounts/org_' . random_hex(24) . '/limits',
        { bytes => 1 }), 404, 'NOT_FOUND', 'limits of an unknown account');
}

$t->stop;
$t->check_log;

# ---------------------------------------------------------------- retention
# A purge gives the account its room back; max_input; nginx -t.
my $t2 = MR::Test->new(extra_http => "modelroute_retention 1s;\n"
    . "modelroute_sweep_interval 200ms;\n"
    . "modelroute_account_limits bytes=200k executions=100;\n"
    . "modelroute_model small per_request=0.01 max_input=1k;\n");
$t2->start;
{
    my $acc = $t2->new_account(credit => '100.00');
    my ($n, $r) = (0);
    # what an ended execution keeps: its metadata, not its input
    my %meta = map { ("k$_" => 'm' x 200) } 1 .. 16;
    for (1 .. 100) {
        $r = $t2->create_exec($acc->{key}, $t2->exec_body(
            input => { prompt => 'y' x 20000 }, metadata => \%meta));
        last unless $r->{status} == 202;
        $n++;
        $t2->req(POST => "/v1/executions/$r->{json}{id}/cancel",
            auth($acc->{key}));
    }
    my $d = limit_error($r, 'bytes', "the limit from nginx.conf ($n fitted)");
    is($d->{value}, 200 * 1024, '... bytes=200k');
    ok(wait_for(sub {
        $t2->create_exec($acc->{key}, $t2->exec_body)->{status} == 202
    }, 20, 0.2), 'the retention purges them: the account creates again');
    my $v = $t2->verify($acc->{org});
    ok($v->{ok}, 'verify after the purge') or diag explain $v;

    # the model's input limit: the encoded input, 413
    my $ok = $t2->create_exec($acc->{key}, $t2->exec_body(model => 'small',
        input => { prompt => 'z' x 900 }));
    is($ok->{status}, 202, 'small: an input under max_input');
    my $big = $t2->create_exec($acc->{key}, $t2->exec_body(model => 'small',
        input => { prompt => 'z' x 1100 }));
    is_error($big, 413, 'PAYLOAD_TOO_LARGE', 'small: an input over max_input');
    ok(detail_for($big, 'input'), '... the detail names input');
    is($t2->create_exec($acc->{key}, $t2->exec_body(
        input => { prompt => 'z' x 1100 }))->{status}, 202,
        'another model: the default max_input (1m)');
    my %models = map { $_->{id} => $_ }
        @{ $t2->req(GET => '/v1/models', auth($acc->{key}))->{json}{data} };
    is($models{small}{max_input_bytes}, 1024, '/v1/models: max_input_bytes');
    is($models{'demo-chat'}{max_input_bytes}, 1024 * 1024,
        '/v1/models: the default max_input_bytes');
}
$t2->stop;
$t2->check_log;

# ---------------------------------------------------------------- nginx -t
for my $case (
    [ "modelroute_account_limits bytes=lots;\n", 'bytes=lots' ],
    [ "modelroute_account_limits keys=-1;\n", 'keys=-1' ],
    [ "modelroute_account_limits widgets=3;\n", 'widgets=3' ],
    [ "modelroute_account_limits bytes=1m;\n"
      . "modelroute_account_limits keys=2;\n", 'duplicate' ],
    [ "modelroute_model m2 per_request=0.01 max_input=0;\n", 'max_input=0' ],
    [ "modelroute_model m2 per_request=0.01 max_input=big;\n",
      'max_input=big' ],
    [ "modelroute_webhook_concurrency 16 4 17;\n", 'per_account 17' ])
{
    my $c = MR::Test->new(extra_http => $case->[0]);
    my ($rc, $out) = $c->test_config;
    isnt($rc, 0, "nginx -t refuses $case->[1]");
    like($out, qr/modelroute_(account_limits|model|webhook_concurrency)/,
        "... naming the directive") or diag $out;
}

done_testing();
