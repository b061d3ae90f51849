# Rules of the contract (API.md, README) that no other file pins down:
# cancel of a COMPLETED or FAILED execution (409 EXECUTION_TERMINAL,
# nothing changes), the list's default limit, the default model timeout,
# the default rotation grace, a debit with a reference, the cap on a
# running balance, settling a per-second model from reported usage,
# limit_req and a broken chunked body answered with the envelope, and
# modelroute_thread_pool off.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $rc = MR::Receiver->new;
$rc->start;

my $http = <<'EOF';
modelroute_store %%STORE%%;
modelroute_webhook_allow_private on;
limit_req_zone $binary_remote_addr zone=one:1m rate=1r/m;

modelroute_route sim  /p/sim  protocol=openai_chat;
modelroute_route fail /p/fail protocol=openai_chat;
modelroute_model m-ok    per_request=0.01 routes=sim;
modelroute_model m-fail  per_request=0.01 routes=fail;
modelroute_model m-video per_second=0.01 input_per_mtok=1 output_per_mtok=2
                 routes=sim;
modelroute_model plain   per_request=0.01;

server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
    location /rl429/ { modelroute_api; limit_req zone=one;
                       limit_req_status 429; }
    location /rl503/ { modelroute_api; limit_req zone=one; }
}
server {
    modelroute_dispatch;
    location /p/sim  { internal; modelroute_simulator; }
    location /p/fail { internal;
                       modelroute_simulator failure_rate=1 failure_status=400; }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub terminal {
    my ($key, $id) = @_;
    my $e = {};
    wait_for(sub {
        my $r = $t->get_exec($key, $id);
        $e = $r->{json} if $r->{status} == 200;
        $TERMINAL{ $e->{status} // '' };
    }, 20);
    return $e;
}

# ---------------------------------------------------------------- cancel

# A terminal execution other than CANCELLED: cancel is 409
# EXECUTION_TERMINAL and changes nothing: not the object, not the
# balance, not the ledger, no new event.
for my $c ([ 'm-ok', 'COMPLETED' ], [ 'm-fail', 'FAILED' ]) {
    my ($model, $status) = @$c;
    my $acc = $t->new_account(credit => '1.00');
    my $wh = wh_create($t, $acc->{key}, { url => $rc->url("/c-$status") });
    is($wh->{status}, 201, "$status: an endpoint for every event");
    my $r = $t->create_exec($acc->{key}, $t->exec_body(model => $model,
        webhook_url => $rc->url("/u-$status")));
    is($r->{status}, 202, "$status: created");
    my $e = terminal($acc->{key}, $r->{json}{id} // 'exec_none');
    is($e->{status}, $status, "$status on its own") or diag explain $e;
    my $id = $e->{id} // 'exec_none';
    my $bal = $t->balance($acc->{key});
    my $acct = $t->admin(GET => "/accounts/$acc->{org}")->{json};
    my $events = sub {
        [ sort map { "$_->{event_type} $_->{id}" }
            @{ wh_exec_deliveries($t, $acc->{key}, $id) // [] } ];
    };
    my $dl = $events->();

    my $can = $t->req(POST => "/v1/executions/$id/cancel", auth($acc->{key}));
    is_error($can, 409, 'EXECUTION_TERMINAL', "cancel of a $status "
        . 'execution: 409 EXECUTION_TERMINAL');
    ok(JSON::PP::is_bool($can->{json}{error}{retryable})
        && !$can->{json}{error}{retryable}, '... not retryable');
    is_deeply($t->get_exec($acc->{key}, $id)->{json}, $e,
        "$status: the execution is unchanged");
    is_deeply($t->balance($acc->{key}), $bal, "$status: the balance is "
        . 'unchanged');
    # the account's stored bytes (usage) move with the webhook deliveries'
    # attempts, which go on meanwhile: the ledger must not move
    my $after = $t->admin(GET => "/accounts/$acc->{org}")->{json};
    delete $_->{usage} for $after, $acct;
    is_deeply($after, $acct, "$status: the account is unchanged");
    money_is($bal->{held}, '0', "$status: nothing held");
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, "$status: verify ok") or diag explain $v;
    is_deeply($events->(), $dl, "$status: no new delivery");
    ok(!grep({ /^execution\.cancelled / } @$dl),
        "$status: no execution.cancelled event") or diag explain $dl;
    # and again: the same
    is_error($t->req(POST => "/v1/executions/$id/cancel", auth($acc->{key})),
        409, 'EXECUTION_TERMINAL', "cancel of a $status execution again: 409");
}

# ---------------------------------------------------------------- list

{
    my $acc = $t->new_account(credit => '10.00');
    my @ids = map {
        $t->create_exec($acc->{key}, $t->exec_body(model => 'plain'))
            ->{json}{id}
    } 1 .. 25;
    is(scalar(grep { defined } @ids), 25, 'list: 25 executions');
    my $l = $t->req(GET => '/v1/executions', auth($acc->{key}));
    is($l->{status}, 200, 'list without limit: 200');
    is_deeply([ map { $_->{id} } @{ $l->{json}{data} // [] } ],
        [ (reverse @ids)[0 .. 19] ], 'list: 20 by default, newest first');
    ok(JSON::PP::is_bool($l->{json}{has_more}) && $l->{json}{has_more},
        'list: has_more true');
    my $rest = $t->req(GET => "/v1/executions?starting_after=$ids[5]",
        auth($acc->{key}))->{json};
    is_deeply([ map { $_->{id} } @{ $rest->{data} // [] } ],
        [ reverse @ids[0 .. 4] ], 'list: the rest after the 20th');
    ok(!$rest->{has_more}, 'list: then has_more false');
}

# ---------------------------------------------------------------- timeout

{
    my $acc = $t->new_account(credit => '1.00');
    my %m = map { $_->{id} => $_ } @{ $t->req(GET => '/v1/models',
        auth($acc->{key}))->{json}{data} // [] };
    is($m{plain}{timeout_seconds}, 300,
        'a model without timeout=: timeout_seconds 300 (5 minutes)');
    my $r = $t->create_exec($acc->{key}, $t->exec_body(model => 'plain'));
    my $d = (parse_rfc3339($r->{json}{expires_at} // '') // 0)
        - (parse_rfc3339($r->{json}{created_at} // '') // 0);
    ok(abs($d - 300) < 0.0005, 'expires_at = created_at + 5 minutes')
        or diag "$r->{json}{created_at} .. $r->{json}{expires_at}";
    is($t->create_exec($acc->{key}, $t->exec_body(model => 'plain',
        timeout_seconds => 300))->{status}, 202, 'timeout_seconds 300: 202');
    my $over = $t->create_exec($acc->{key}, $t->exec_body(model => 'plain',
        timeout_seconds => 301));
    is_error($over, 400, 'INPUT_VALIDATION_ERROR', 'timeout_seconds 301: 400');
    ok(detail_for($over, 'timeout_seconds'), '... naming timeout_seconds');
}

# ---------------------------------------------------------------- grace

{
    my $acc = $t->new_account(credit => '1.00');
    my $rot = $t->req(POST => "/v1/api-keys/$acc->{key_id}/rotate",
        auth($acc->{key}));
    is($rot->{status}, 200, 'rotate with the default grace: 200');
    my %keys = map { $_->{id} => $_ } @{ $t->admin(GET =>
        "/accounts/$acc->{org}/keys")->{json}{data} // [] };
    my $born = parse_rfc3339($keys{ $rot->{json}{id} // '' }{created_at}
        // '') // 0;
    my $until = parse_rfc3339($rot->{json}{previous_key_valid_until} // '')
        // 0;
    ok(abs($until - $born - 3600) < 0.0005,
        'the old key works for 1 hour after the rotation')
        or diag "new key created $keys{ $rot->{json}{id} // '' }{created_at},"
            . " old valid until $rot->{json}{previous_key_valid_until}";
    is($t->req(GET => '/v1/balance', auth($acc->{key}))->{status}, 200,
        'the old key works now');
}

# ---------------------------------------------------------------- debit

# A reference makes a debit idempotent as it does a credit; credits and
# debits of an account share one set of references.
{
    my $acc = $t->new_account(credit => '10.00');
    my $org = $acc->{org};
    my $d1 = $t->admin(POST => "/accounts/$org/debit",
        { amount => '1.25', reference => 'refund-7' });
    is($d1->{status}, 200, 'debit with a reference: 200');
    isnt($d1->{headers}{'idempotent-replayed'} // '', 'true',
        '... not a replay');
    money_is($d1->{json}{balance}, '8.75', '... balance 8.75');
    my $d2 = $t->admin(POST => "/accounts/$org/debit",
        { amount => '1.25', reference => 'refund-7' });
    is($d2->{status}, 200, 'the same debit again: 200');
    is($d2->{headers}{'idempotent-replayed'}, 'true',
        '... Idempotent-Replayed: true');
    money_is($d2->{json}{balance}, '8.75', '... debited once');
    is_error($t->admin(POST => "/accounts/$org/debit",
        { amount => '2.00', reference => 'refund-7' }), 409,
        'IDEMPOTENCY_KEY_REUSED', 'the reference with another amount: 409');
    is_error($t->admin(POST => "/accounts/$org/credit",
        { amount => '1.25', reference => 'refund-7' }), 409,
        'IDEMPOTENCY_KEY_REUSED', 'a credit with a debit\'s reference: 409');
    # a refused debit binds nothing
    is_error($t->admin(POST => "/accounts/$org/debit",
        { amount => '20.00', reference => 'big-1' }), 402,
        'INSUFFICIENT_BALANCE', 'a debit over the balance: 402');
    is($t->admin(POST => "/accounts/$org/credit", { amount => '20.00' })
        ->{status}, 200, 'credit 20.00');
    my $d3 = $t->admin(POST => "/accounts/$org/debit",
        { amount => '20.00', reference => 'big-1' });
    is($d3->{status}, 200, 'the refused debit\'s reference works later');
    isnt($d3->{headers}{'idempotent-replayed'} // '', 'true',
        '... as a new debit');
    my $v = $t->verify($org);
    ok($v->{ok}, 'debits: verify ok');
    money_is($v->{debited}, '21.25', 'debited 21.25 (1.25 once, 20.00)');
    money_is($v->{balance}, '8.75', 'balance 8.75');
}

# ---------------------------------------------------------------- cap

# Amounts are at most $1,000,000,000, and so is a balance: a credit that
# would take it above is a 400 and changes nothing.
{
    my $r = $t->admin(POST => '/accounts', { credit => '999999999.99' });
    is($r->{status}, 201, 'an account with $999,999,999.99');
    my $org = $r->{json}{id} // 'org_none';
    is($t->admin(POST => "/accounts/$org/credit", { amount => '0.01' })
        ->{status}, 200, 'credit up to $1,000,000,000 exactly: 200');
    is_error($t->admin(POST => "/accounts/$org/credit",
        { amount => '0.000001' }), 400, 'INPUT_VALIDATION_ERROR',
        'one micro-dollar more: 400');
    is_error($t->admin(POST => "/accounts/$org/credit",
        { amount => '600000000.00', reference => 'cap-1' }), 400,
        'INPUT_VALIDATION_ERROR', '$600,000,000 more: 400');
    my $a = $t->admin(GET => "/accounts/$org")->{json};
    money_is($a->{balance}, '1000000000.00', 'the balance is unchanged');
    money_is($a->{credited}, '1000000000.00', 'credited is unchanged');
    is($t->admin(POST => "/accounts/$org/debit", { amount => '600000000.00' })
        ->{status}, 200, 'a debit makes room');
    my $c = $t->admin(POST => "/accounts/$org/credit",
        { amount => '600000000.00', reference => 'cap-1' });
    is($c->{status}, 200, 'then the refused credit\'s reference works');
    money_is($c->{json}{balance}, '1000000000.00', 'balance at the cap');
    ok($t->verify($org)->{ok}, 'cap: verify ok');
}

# ---------------------------------------------------------------- per second

# A per-second model settles from the provider's reported usage: the
# input's duration (rounded up to whole seconds) is priced as in the
# estimate, the reported tokens at their prices.
{
    my $acc = $t->new_account(credit => '5.00');
    my $r = $t->create_exec($acc->{key}, $t->exec_body(model => 'm-video',
        input => { prompt => 'a clip', duration => 3.2 }));
    is($r->{status}, 202, 'per second: created');
    my $e = terminal($acc->{key}, $r->{json}{id} // 'exec_none');
    is($e->{status}, 'COMPLETED', 'per second: COMPLETED') or diag explain $e;
    my $u = eval { $e->{result}{usage} } // {};
    ok(($u->{input_tokens} // 0) > 0 && ($u->{output_tokens} // 0) > 0,
        'per second: the simulator reports usage') or diag explain $u;
    my $want = 4 * 10_000 + ($u->{input_tokens} // 0)
        + 2 * ($u->{output_tokens} // 0);
    is(micros($e->{cost} // '0'), $want, 'per second: cost = 4 s x 0.01 + '
        . 'the reported tokens') or diag "cost $e->{cost}";
    ok($want < micros($e->{hold_amount} // '0'), '... below the hold');
    my $b = $t->balance($acc->{key});
    is(micros($b->{balance}), 5_000_000 - $want, 'per second: charged that');
    money_is($b->{held}, '0', 'per second: nothing held');
    ok($t->verify($acc->{org})->{ok}, 'per second: verify ok');
}

# ---------------------------------------------------------------- refusals

# nginx's own refusals in a ModelRoute location come in the envelope:
# limit_req (429 with limit_req_status 429, else 503) and a chunked body
# that cannot be parsed (400).
{
    my $acc = $t->new_account(credit => '1.00');
    for my $c ([ '/rl429', 429, 'RATE_LIMITED' ],
        [ '/rl503', 503, 'SERVICE_UNAVAILABLE' ]) {
        my ($loc, $status, $code) = @$c;
        # one request a minute: the first goes through, the next is refused
        my @r = map { $t->req(GET => "$loc/v1/balance", auth($acc->{key})) }
            1 .. 2;
        my $e = is_error($r[1], $status, $code,
            "limit_req in a ModelRoute location: $status $code");
        ok($e && JSON::PP::is_bool($e->{retryable}) && $e->{retryable},
            "... retryable");
        like($r[1]{headers}{'retry-after'} // '', qr/^\d+$/,
            '... with Retry-After');
    }

    my $key = $acc->{key};
    my $head = "POST /v1/executions HTTP/1.1\r\nHost: x\r\n"
        . "Authorization: Bearer $key\r\nContent-Type: application/json\r\n"
        . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    my $body = json_encode($t->exec_body);
    for my $c ([ 'a chunk size that is not hex', "zz\r\n$body\r\n0\r\n\r\n" ],
        [ 'a chunk longer than its size',
          sprintf("%x\r\n%s\r\n0\r\n\r\n", 5, $body) ]) {
        my ($what, $chunks) = @$c;
        my $r = $t->raw($head . $chunks);
        is_error($r, 400, 'INPUT_VALIDATION_ERROR',
            "a broken chunked body ($what): 400 in the envelope");
    }
    is_deeply([ $t->list_all($key) ], [], 'broken bodies: nothing stored');
    money_is($t->balance($key)->{held}, '0', 'broken bodies: nothing held');
}

$t->stop;
$t->check_log;

# ---------------------------------------------------------------- no pool

# modelroute_thread_pool off: commits on the event loop, the same answers
{
    my $o = MR::Test->new(extra_http => "modelroute_thread_pool off;\n");
    $o->start;
    my $acc = $o->new_account(credit => '1.00');
    my $r = $o->create_exec($acc->{key}, $o->exec_body);
    is($r->{status}, 202, 'thread pool off: create 202');
    my $id = $r->{json}{id} // 'exec_none';
    is($o->get_exec($acc->{key}, $id)->{status}, 200,
        'thread pool off: read');
    is($o->admin(POST => "/accounts/$acc->{org}/credit",
        { amount => '1.00', reference => 'r1' })->{status}, 200,
        'thread pool off: credit');
    is($o->req(POST => "/v1/executions/$id/cancel", auth($acc->{key}))
        ->{json}{status}, 'CANCELLED', 'thread pool off: cancel');
    my $b = $o->balance($acc->{key});
    money_is($b->{balance}, '2.00', 'thread pool off: balance');
    money_is($b->{held}, '0', 'thread pool off: held');
    $o->restart;
    is($o->get_exec($acc->{key}, $id)->{json}{status}, 'CANCELLED',
        'thread pool off: kept across a restart');
    is($o->admin(POST => "/accounts/$acc->{org}/credit",
        { amount => '1.00', reference => 'r1' })->{headers}
        {'idempotent-replayed'}, 'true', 'thread pool off: the reference too');
    ok($o->verify($acc->{org})->{ok}, 'thread pool off: verify ok');
    $o->stop;
    $o->check_log;
}

$rc->stop;
done_testing();
