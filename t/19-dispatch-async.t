# Asynchronous providers (protocol=async): a provider that takes the job
# (2xx) leaves the execution AWAITING_WEBHOOK with the hold still held;
# its callback, authenticated by the attempt's token (Bearer; t/49 has
# the token's rules),
# completes or fails it; repeated and late callbacks are duplicates that
# change nothing; no failover once a job was taken; cancel and expiry while
# waiting; bad tokens, ids and bodies; a callback before the answer that
# took the job; a retry after a Retry-After (t/23 has the callbacks that
# come between attempts, after expires_at, and for PENDING executions).
# The test plays the provider: MR::Receiver takes the job, the test posts
# the callback.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);
use MR::Receiver;

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_sweep_interval 200ms;
error_log %%PREFIX%%/logs/error.log info;
modelroute_callback_url http://127.0.0.1:%%PORT%%/v1/callbacks;
modelroute_route job   /p/job   protocol=async timeout=3s;
modelroute_route job2  /p/job2  protocol=async timeout=3s;
modelroute_route jobp  /p/jobp  protocol=async timeout=3s;
modelroute_model m-async per_request=0.01 input_per_mtok=1 output_per_mtok=2
                 routes=job;
modelroute_model m-async2 per_request=0.01 routes=job,job2 attempts=4;
modelroute_model m-paused per_request=0.01 routes=jobp:prov-model attempts=3;
modelroute_model m-none per_request=0.01;
modelroute_route sync  /p/sync  protocol=openai_chat;
modelroute_model m-sync per_request=0.01 routes=sync;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/job  { internal; proxy_pass http://127.0.0.1:$RPORT/job; }
    location /p/job2 { internal; proxy_pass http://127.0.0.1:$RPORT/job2; }
    location /p/jobp { internal; proxy_pass http://127.0.0.1:$RPORT/jobp; }
    location /p/sync { internal; proxy_pass http://127.0.0.1:$RPORT/sync; }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;

$rc->set('/job', status => 202, json => { job_id => 'j1' });
$rc->set('/job2', status => 202, json => { job_id => 'j2' });
$rc->set('/sync', json => { id => 's', object => 'chat.completion',
    choices => [ { index => 0, finish_reason => 'stop',
        message => { role => 'assistant', content => 'sync' } } ] });

# A point after which the dispatcher has claimed again: an execution of
# m-sync, created now, completes.
my $sync_acc;
sub dispatch_sync {
    $sync_acc //= $t->new_account(credit => '10.00');
    my $r = $t->create_exec($sync_acc->{key},
        $t->exec_body(model => 'm-sync'));
    return 0 unless $r->{status} == 202;
    my $e = wait_status($sync_acc->{key}, $r->{json}{id}, 'COMPLETED', 20);
    return ($e->{status} // '') eq 'COMPLETED';
}

sub exec_of {
    my ($key, $id) = @_;
    my $r = $t->get_exec($key, $id);
    return $r->{status} == 200 ? $r->{json} : undef;
}

# Polls the execution until its status is $want; returns it (or the last
# one seen).
sub wait_status {
    my ($key, $id, $want, $timeout) = @_;
    my $last;
    wait_for(sub {
        $last = exec_of($key, $id);
        $last && $last->{status} eq $want;
    }, $timeout // 15);
    return $last // {};
}

# The provider request for an execution (waits for it).
sub provider_request {
    my ($path, $id, $timeout) = @_;
    my ($req) = $rc->wait_requests(1, path => $path, timeout => $timeout // 15,
        where => sub { ($_[0]{json}{execution_id} // '') eq $id });
    return $req;
}

# The callback_url (no secret in it) and callback_token of a provider
# request: (path, token).
sub callback_parts {
    my ($j) = @_;
    my ($path) = (($j // {})->{callback_url} // '') =~
        m{^http://127\.0\.0\.1:\d+(/v1/callbacks/exec_[0-9a-f]{44})$}
        or return;
    my ($token) = (($j // {})->{callback_token} // '') =~
        m{^(\d+\.[0-9a-f]{64})$} or return;
    return ($path, $token);
}

# A callback with the token as "Authorization: Bearer" (query => 1: in the
# URL's query instead, which is refused).
sub callback {
    my ($path, $token, $body, %o) = @_;
    my $target = $o{query} && defined $token ? "$path?token=$token" : $path;
    my %h;
    $h{Authorization} = "Bearer $token" if defined $token && !$o{query};
    $h{'Content-Type'} = 'application/json' unless ref $body;
    return $t->req(POST => $target, \%h, $body);
}

# Creates an execution and waits until the provider took it; returns
# (execution, callback path, token, provider request).
sub accepted_exec {
    my ($acc, $model, $path, %over) = @_;
    my $r = $t->create_exec($acc->{key},
        $t->exec_body(model => $model, input => { prompt => 'hi' }, %over));
    is($r->{status}, 202, "$model: created") or diag $r->{body};
    my $id = $r->{json}{id} // 'exec_none';
    my $e = wait_status($acc->{key}, $id, 'AWAITING_WEBHOOK');
    is($e->{status}, 'AWAITING_WEBHOOK', "$model: AWAITING_WEBHOOK")
        or diag explain $e;
    my $req = provider_request($path, $id);
    my ($cp, $token) = callback_parts($req && $req->{json});
    ok($cp, "$model: the provider got a callback_url and a token")
        or diag explain $req;
    return ($e, $cp // "/v1/callbacks/$id", $token // '0' x 64, $req);
}

my $OK_BODY = { status => 'succeeded', output => { text => 'hi' },
    usage => { input_tokens => 1000, output_tokens => 2000 } };

# ------------------------------------------------- 1, 2, 3: accepted, done

my ($id1, $cp1, $tok1);
my $acc = $t->new_account(credit => '10.00');
{
    my $r = $t->create_exec($acc->{key}, $t->exec_body(model => 'm-async',
        input => { prompt => 'hi', max_tokens => 2000 }));
    is($r->{status}, 202, 'async: created');
    $id1 = $r->{json}{id};
    my $hold = $r->{json}{hold_amount};
    ok(micros($hold) >= 15_000, "the hold ($hold) covers 0.015");

    my $e = wait_status($acc->{key}, $id1, 'AWAITING_WEBHOOK');
    is($e->{status}, 'AWAITING_WEBHOOK', 'a 202 from the provider: '
        . 'AWAITING_WEBHOOK');
    is(scalar @{ $e->{attempts} // [] }, 1, 'one attempt');
    my $a = $e->{attempts}[0] // {};
    is($a->{outcome}, 'accepted', 'attempt outcome accepted');
    is($a->{job_id}, 'j1', 'attempt keeps the job_id');
    is($a->{route}, 'job', 'attempt route');
    is($a->{status}, 202, 'attempt status 202');
    ok(!defined $a->{error_code}, 'attempt error_code null');
    ok(is_rfc3339($a->{started_at}) && is_rfc3339($a->{ended_at}),
        'attempt times');
    ok(is_rfc3339($e->{started_at}), 'started_at set');
    ok(!defined $e->{cost} && !defined $e->{result}
        && !defined $e->{completed_at}, 'no cost, result, completed_at yet');
    my $b = $t->balance($acc->{key});
    money_is($b->{held}, $hold, 'the hold is still held');
    money_is($b->{balance}, '10.00', 'nothing charged yet');

    my $req = provider_request('/job', $id1);
    ok($req, 'the provider got the request');
    my $j = $req->{json} // {};
    is($req->{method}, 'POST', 'provider: POST');
    is($j->{model}, 'm-async', 'provider: model (the slug by default)');
    is_deeply($j->{input}, { prompt => 'hi', max_tokens => 2000 },
        'provider: input');
    is($j->{execution_id}, $id1, 'provider: execution_id');
    ($cp1, $tok1) = callback_parts($j);
    ok($cp1, 'provider: callback_url <base>/<id>, callback_token '
        . '<attempt>.<64 hex>') or diag explain $j;
    like($tok1, qr/^0\./, 'the token is the first attempt\'s');
    is($cp1, "/v1/callbacks/$id1", 'callback_url names the execution');
    is($rc->count(path => '/job'), 1, 'one provider request');

    # 2: the callback
    $r = callback($cp1, $tok1, $OK_BODY);
    is($r->{status}, 200, 'callback: 200') or diag $r->{body};
    is_deeply($r->{json}, { received => JSON::PP::true,
        duplicate => JSON::PP::false, status => 'COMPLETED' },
        'callback: {received: true, duplicate: false, status: COMPLETED}');
    $e = exec_of($acc->{key}, $id1);
    is($e->{status}, 'COMPLETED', 'COMPLETED');
    is($e->{result}{text}, 'hi', 'result has the output text');
    is_deeply($e->{result}{usage}, { input_tokens => 1000,
        output_tokens => 2000 }, 'result has the usage');
    money_is($e->{cost}, '0.015', 'cost from the usage: 0.01 + 0.001 + 0.004');
    ok(is_rfc3339($e->{completed_at}), 'completed_at');
    ok(defined $e->{latency_ms} && $e->{latency_ms} >= 0, 'latency_ms');
    ok(!defined $e->{error}, 'no error');
    my @at = @{ $e->{attempts} // [] };
    is($at[0]{outcome}, 'accepted', 'first attempt still accepted');
    is(scalar @at, 2, 'the callback adds an attempt entry')
        or diag explain \@at;
    is($at[1]{outcome}, 'called_back', 'the callback is recorded as '
        . 'called_back');
    ok(!defined $at[1]{error_code}, 'called_back: no error_code');
    my $res = $t->req(GET => "/v1/executions/$id1/result", auth($acc->{key}));
    is($res->{status}, 200, 'result endpoint 200');
    is($res->{json}{result}{text}, 'hi', 'result endpoint: text');
    $b = $t->balance($acc->{key});
    money_is($b->{balance}, '9.985', 'balance = 10 - 0.015');
    money_is($b->{held}, '0.00', 'held 0');
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, 'verify ok') or diag explain $v;

    # 3: the same callback again
    my $before = exec_of($acc->{key}, $id1);
    $r = callback($cp1, $tok1, $OK_BODY);
    is($r->{status}, 200, "repeated callback: 200") or diag $r->{body};
    is_deeply($r->{json}, { received => JSON::PP::true,
        duplicate => JSON::PP::true, status => 'COMPLETED' },
        "repeated callback: duplicate true");
    # a repeat with another outcome changes nothing either
    $r = callback($cp1, $tok1, { status => 'failed',
        error => { code => 'x', message => 'late' } });
    is($r->{json}{duplicate}, JSON::PP::true,
        'a repeated callback saying failed: duplicate');
    is_deeply(exec_of($acc->{key}, $id1), $before,
        'the execution is unchanged by the repeats');
    $b = $t->balance($acc->{key});
    money_is($b->{balance}, '9.985', 'balance unchanged by the repeats');
    money_is($b->{held}, '0.00', 'held unchanged by the repeats');
    is($rc->count(path => '/job'), 1, 'still one provider request');
}

# ------------------------------------------------------ no usage reported

{
    my ($e, $cp, $tok) = accepted_exec($acc, 'm-async', '/job');
    my $r = callback($cp, $tok, { status => 'succeeded',
        output => { text => 'bearer' } });
    is($r->{status}, 200, 'no usage: 200') or diag $r->{body};
    is($r->{json}{duplicate}, JSON::PP::false, 'no usage: not duplicate');
    my $x = exec_of($acc->{key}, $e->{id});
    is($x->{status}, 'COMPLETED', 'no usage: COMPLETED');
    is($x->{result}{text}, 'bearer', 'no usage: result');
    money_is($x->{cost}, $x->{estimated_cost},
        'no usage: the estimate is charged');
    ok(!exists $x->{result}{usage} || !defined $x->{result}{usage},
        'no usage reported, none in the result');
}

# ------------------------------------------------------ usage above the hold

{
    my ($e, $cp, $tok) = accepted_exec($acc, 'm-async', '/job');
    my $r = callback($cp, $tok, { status => 'succeeded', output => { a => 1 },
        usage => { input_tokens => 1_000_000, output_tokens => 1_000_000 } });
    is($r->{json}{status}, 'COMPLETED', 'large usage: COMPLETED');
    my $x = exec_of($acc->{key}, $e->{id});
    money_is($x->{cost}, $x->{hold_amount},
        'large usage: the cost is capped at the hold');
    ok($t->verify($acc->{org})->{ok}, 'large usage: verify ok');
}

# -------------------------------------------------------------- 4: tokens

{
    my ($e, $cp, $tok) = accepted_exec($acc, 'm-async', '/job');
    my ($e2, $cp2, $tok2) = accepted_exec($acc, 'm-async', '/job');
    my $bad = substr($tok, 0, -1) . (substr($tok, -1) eq '0' ? '1' : '0');
    my %cases = (
        'wrong token'                   => [ $cp, $bad ],
        'missing token'                 => [ $cp, undef ],
        'short token'                   => [ $cp, substr($tok, 0, 32) ],
        'token of another execution'    => [ $cp, $tok2 ],
        'empty token'                   => [ $cp, '' ],
        'the right token in the query'  => [ $cp, $tok, query => 1 ],
    );
    for my $name (sort keys %cases) {
        my ($p, $tk, @o) = @{ $cases{$name} };
        my $r = callback($p, $tk, $OK_BODY, @o);
        is_error($r, 401, 'UNAUTHORIZED', "$name: 401 UNAUTHORIZED");
    }
    my $r = $t->req(POST => "$cp?token=$tok", { Authorization => 'Basic xx' },
        $OK_BODY);
    is_error($r, 401, 'UNAUTHORIZED',
        'the right token in the query, another Authorization: 401');
    # an API key is not a callback token
    $r = callback($cp2, $acc->{key}, $OK_BODY);
    is_error($r, 401, 'UNAUTHORIZED', 'an API key as Bearer: 401');
    is(exec_of($acc->{key}, $e->{id})->{status}, 'AWAITING_WEBHOOK',
        'refused callbacks change nothing');

    is_error(callback('/v1/callbacks/exec_123', $tok, $OK_BODY), 404,
        'NOT_FOUND', 'malformed execution id: 404');
    is_error(callback('/v1/callbacks/nope', $tok, $OK_BODY), 404,
        'NOT_FOUND', 'not an execution id: 404');
    is_error(callback('/v1/callbacks/' . uc(substr($e2->{id}, 0, 5))
        . substr($e2->{id}, 5), $tok2, $OK_BODY), 404, 'NOT_FOUND',
        'EXEC_ prefix: 404');
    $r = $t->req(GET => $cp2, { Authorization => "Bearer $tok2" });
    is_error($r, 405, 'METHOD_NOT_ALLOWED', 'GET on a callback: 405');
    is(exec_of($acc->{key}, $e2->{id})->{status}, 'AWAITING_WEBHOOK',
        'refused callbacks change nothing');
    $r = callback($cp2, $tok2, $OK_BODY);
    is($r->{json}{status}, 'COMPLETED', 'the right token still works');
    ok($t->verify($acc->{org})->{ok}, 'tokens: verify ok');
}

# ------------------------------------------- 5: failed, no failover, no retry

{
    my $a5 = $t->new_account(credit => '5.00');
    my ($e, $cp, $tok) = accepted_exec($a5, 'm-async2', '/job');
    money_is($t->balance($a5->{key})->{held}, $e->{hold_amount},
        'failed: the hold is held while waiting');
    my $r = callback($cp, $tok, { status => 'failed',
        error => { code => 'x', message => 'boom' } });
    is($r->{status}, 200, 'failed callback: 200') or diag $r->{body};
    is_deeply($r->{json}, { received => JSON::PP::true,
        duplicate => JSON::PP::false, status => 'FAILED' },
        'failed callback: status FAILED');
    my $x = exec_of($a5->{key}, $e->{id});
    is($x->{status}, 'FAILED', 'FAILED');
    is($x->{error}{code}, 'GENERATION_FAILED', 'error GENERATION_FAILED');
    ok(length($x->{error}{message} // ''), 'error message');
    money_is($x->{cost}, '0.00', 'cost 0.00');
    ok(!defined $x->{result}, 'no result');
    my @at = @{ $x->{attempts} // [] };
    is($at[0]{outcome}, 'accepted', 'failed: the first attempt was accepted');
    ok(!grep({ ($_->{route} // '') ne 'job' } @at),
        'failed: every attempt entry is on the first route')
        or diag explain \@at;
    my $b = $t->balance($a5->{key});
    money_is($b->{held}, '0.00', 'failed: hold released');
    money_is($b->{balance}, '5.00', 'failed: nothing charged');
    ok(dispatch_sync(), 'the dispatcher has claimed since the failure');
    is($rc->count(path => '/job2'), 0,
        'no failover to the second route after the job was taken');
    is(scalar(grep { ($_->{json}{execution_id} // '') eq $e->{id} }
        $rc->requests_to('/job')), 1, 'and no retry on the first route');
    is(exec_of($a5->{key}, $e->{id})->{status}, 'FAILED', 'still FAILED');
    ok($t->verify($a5->{org})->{ok}, 'failed: verify ok');

    $r = callback($cp, $tok, $OK_BODY);
    is_deeply($r->{json}, { received => JSON::PP::true,
        duplicate => JSON::PP::true, status => 'FAILED' },
        'a success after the failure: duplicate, stays FAILED');
    money_is($t->balance($a5->{key})->{balance}, '5.00',
        '... and charges nothing');
}

# --------------------------------------------- 6: cancel while waiting

{
    my $a6 = $t->new_account(credit => '5.00');
    my ($e, $cp, $tok) = accepted_exec($a6, 'm-async', '/job');
    my $r = $t->req(POST => "/v1/executions/$e->{id}/cancel", auth($a6->{key}));
    is($r->{status}, 200, 'cancel while AWAITING_WEBHOOK: 200')
        or diag $r->{body};
    is($r->{json}{status}, 'CANCELLED', 'cancel: CANCELLED');
    my $b = $t->balance($a6->{key});
    money_is($b->{held}, '0.00', 'cancel: hold released');
    money_is($b->{balance}, '5.00', 'cancel: nothing charged');
    $r = callback($cp, $tok, $OK_BODY);
    is($r->{status}, 200, 'callback after a cancel: 200') or diag $r->{body};
    is_deeply($r->{json}, { received => JSON::PP::true,
        duplicate => JSON::PP::true, status => 'CANCELLED' },
        'callback after a cancel: duplicate, CANCELLED');
    my $x = exec_of($a6->{key}, $e->{id});
    is($x->{status}, 'CANCELLED', 'stays CANCELLED');
    ok(!defined $x->{result}, 'no result');
    money_is($x->{cost} // '0.00', '0.00', 'no cost');
    $b = $t->balance($a6->{key});
    money_is($b->{balance}, '5.00', 'callback after a cancel: no charge');
    money_is($b->{held}, '0.00', 'callback after a cancel: held 0');
    ok($t->verify($a6->{org})->{ok}, 'cancel: verify ok');
}

# --------------------------------------------- 7: expiry while waiting

{
    my $a7 = $t->new_account(credit => '5.00');
    my ($e, $cp, $tok) = accepted_exec($a7, 'm-async', '/job',
        timeout_seconds => 2);
    my $x = wait_status($a7->{key}, $e->{id}, 'EXPIRED', 10);
    is($x->{status}, 'EXPIRED', 'AWAITING_WEBHOOK past expires_at: EXPIRED');
    ok((parse_rfc3339($x->{completed_at} // '') // 0)
        >= (parse_rfc3339($x->{expires_at} // '') // 9e9),
        'expired, not before expires_at')
        or diag "completed_at $x->{completed_at}, expires_at $x->{expires_at}";
    is($x->{error}{code}, 'GENERATION_TIMEOUT', 'EXPIRED: GENERATION_TIMEOUT');
    my $b = $t->balance($a7->{key});
    money_is($b->{held}, '0.00', 'expiry: hold released');
    # the token's lifetime is the execution's: past expires_at, refused
    my $r = callback($cp, $tok, $OK_BODY);
    is_error($r, 401, 'UNAUTHORIZED', 'callback after expiry: 401');
    like(($r->{json} // {})->{error}{message} // '', qr/expired/,
        'callback after expiry: the token has expired');
    $x = exec_of($a7->{key}, $e->{id});
    is($x->{status}, 'EXPIRED', 'stays EXPIRED');
    ok(!defined $x->{result}, 'no result');
    $b = $t->balance($a7->{key});
    money_is($b->{balance}, '5.00', 'expiry: no charge');
    money_is($b->{held}, '0.00', 'expiry: held 0');
    ok($t->verify($a7->{org})->{ok}, 'expiry: verify ok');
}

# --------------------------------------------- 8: bad callback bodies

{
    my $a8 = $t->new_account(credit => '5.00');
    my ($e, $cp, $tok) = accepted_exec($a8, 'm-async', '/job');
    is_error(callback($cp, $tok, 'not json'), 400, 'INPUT_VALIDATION_ERROR',
        'a body that is not JSON: 400');
    is_error(callback($cp, $tok, '[1,2]'), 400, 'INPUT_VALIDATION_ERROR',
        'a JSON array: 400');
    is_error(callback($cp, $tok, '"succeeded"'), 400,
        'INPUT_VALIDATION_ERROR', 'a JSON string: 400');
    is_error(callback($cp, $tok, '{"status": "succeeded", '), 400,
        'INPUT_VALIDATION_ERROR', 'truncated JSON: 400');
    is(exec_of($a8->{key}, $e->{id})->{status}, 'AWAITING_WEBHOOK',
        'bad bodies change nothing');
    money_is($t->balance($a8->{key})->{held}, $e->{hold_amount},
        'bad bodies: still held');

    # README: a success without an output is a failure GENERATION_FAILED
    my $r = callback($cp, $tok, { status => 'succeeded' });
    is($r->{status}, 200, 'succeeded without output: 200') or diag $r->{body};
    is($r->{json}{status}, 'FAILED', 'succeeded without output: FAILED');
    my $x = exec_of($a8->{key}, $e->{id});
    is($x->{status}, 'FAILED', 'succeeded without output: FAILED');
    is($x->{error}{code}, 'GENERATION_FAILED',
        'succeeded without output: GENERATION_FAILED');
    my $b = $t->balance($a8->{key});
    money_is($b->{held}, '0.00', 'no output: hold released');
    money_is($b->{balance}, '5.00', 'no output: nothing charged');

    # an unknown status is a failure too (never a success)
    my ($e2, $cp2, $tok2) = accepted_exec($a8, 'm-async', '/job');
    $r = callback($cp2, $tok2, { status => 'weird', output => { text => 'x' } });
    is($r->{status}, 200, 'unknown status: 200') or diag $r->{body};
    is(exec_of($a8->{key}, $e2->{id})->{status}, 'FAILED',
        'unknown status: FAILED, not COMPLETED');
    money_is($t->balance($a8->{key})->{balance}, '5.00',
        'unknown status: nothing charged');
    ok($t->verify($a8->{org})->{ok}, 'bad bodies: verify ok');
}

# ---------------------- a callback before the answer that took the job

{
    my $a9 = $t->new_account(credit => '5.00');
    $rc->set('/job', status => 202, json => { job_id => 'slow' },
        hold => 'early');
    my $r = $t->create_exec($a9->{key}, $t->exec_body(model => 'm-async',
        input => { prompt => 'early' }));
    my $id = $r->{json}{id} // 'exec_none';
    my $req = provider_request('/job', $id);
    my ($cp, $tok) = callback_parts($req && $req->{json});
    is(exec_of($a9->{key}, $id)->{status}, 'PROCESSING',
        'early: PROCESSING while the provider has not answered');
    $r = callback($cp, $tok, { status => 'succeeded',
        output => { text => 'early' } });
    is($r->{status}, 200, 'early callback: 200') or diag $r->{body};
    is_deeply($r->{json}, { received => JSON::PP::true,
        duplicate => JSON::PP::false, status => 'COMPLETED' },
        'early callback: accepted, COMPLETED');
    # the worker gives the attempt up (and aborts it) once it sees the
    # execution COMPLETED; then the provider answers 202
    my $gone = qr/\Q$id\E is COMPLETED: its attempt is given up/;
    ok(wait_for(sub { $t->read_log =~ $gone }, 10),
        'the attempt is given up (logged)') or diag $t->tail_log;
    $rc->release('early');
    my @answered = $rc->wait_requests(1, path => '/job', timeout => 10,
        where => sub { ($_[0]{json}{execution_id} // '') eq $id
            && $_[0]{released_at} });
    ok(@answered, 'the provider then answers 202');
    ok(dispatch_sync(), 'the dispatcher has claimed since');
    my $x = exec_of($a9->{key}, $id);
    is($x->{status}, 'COMPLETED', 'early: stays COMPLETED after the late 202');
    is($x->{result}{text}, 'early', 'early: the result is the callback\'s');
    ok(!grep({ $_->{outcome} eq 'accepted' } @{ $x->{attempts} // [] }),
        'early: the late 202 is dropped (no accepted attempt)')
        or diag explain $x->{attempts};
    money_is($t->balance($a9->{key})->{held}, '0.00', 'early: held 0');
    ok($t->verify($a9->{org})->{ok}, 'early: verify ok');
    $rc->set('/job', status => 202, json => { job_id => 'j1' });
}

# ------------------ a retry of an asynchronous job after Retry-After

{
    my $a10 = $t->new_account(credit => '5.00');
    # the first attempt is refused with Retry-After: the single route is
    # paused, the execution waits (PROCESSING, no attempt in flight)
    $rc->set('/jobp', sequence => [
        { status => 503, headers => { 'Retry-After' => 2 } },
        { status => 202, json => { id => 'p-2' } } ]);
    my $r = $t->create_exec($a10->{key}, $t->exec_body(model => 'm-paused',
        input => { prompt => 'paused' }));
    my $id = $r->{json}{id} // 'exec_none';
    my $req = provider_request('/jobp', $id);
    ok($req, 'paused: first provider request');
    is($req && $req->{json}{model}, 'prov-model',
        'the provider gets the route\'s model name');
    my ($cp, $tok) = callback_parts($req && $req->{json});
    my $x = wait_for(sub {
        my $e = exec_of($a10->{key}, $id);
        $e && @{ $e->{attempts} } == 1 ? $e : undef }, 10) // {};
    is($x->{status}, 'PROCESSING', 'paused: PROCESSING between attempts');
    is($x->{attempts}[0]{outcome}, 'failed', 'paused: attempt 1 failed');
    is($x->{attempts}[0]{status}, 503, 'paused: attempt 1 status 503');
    is($x->{attempts}[0]{error_code}, 'MODEL_OVERLOADED',
        'paused: attempt 1 MODEL_OVERLOADED');
    $x = wait_status($a10->{key}, $id, 'AWAITING_WEBHOOK', 10);
    is($x->{status}, 'AWAITING_WEBHOOK', 'paused: the retry is accepted');
    is($x->{attempts}[1]{job_id}, 'p-2', 'job id from "id"');
    my @reqs = grep { ($_->{json}{execution_id} // '') eq $id }
        $rc->requests_to('/jobp');
    is(scalar @reqs, 2, 'paused: two provider requests');
    my @at = @{ $x->{attempts} // [] };
    ok(@at == 2 && (parse_rfc3339($at[1]{started_at} // '') // 0)
        >= (parse_rfc3339($at[0]{ended_at} // '') // 9e9) + 2 - 0.0005,
        'the retry waited for Retry-After (server times)')
        or diag explain \@at;
    $r = callback($cp, $tok, $OK_BODY);
    is($r->{json}{status}, 'COMPLETED', 'paused: then the callback completes');
    ok($t->verify($a10->{org})->{ok}, 'paused: verify ok');
}

# --------------------- a model without routes is never dispatched

{
    my $a11 = $t->new_account(credit => '5.00');
    my $r = $t->create_exec($a11->{key}, $t->exec_body(model => 'm-none'));
    my $id = $r->{json}{id} // 'exec_none';
    ok(dispatch_sync(), 'no routes: the dispatcher has claimed since');
    is(exec_of($a11->{key}, $id)->{status}, 'PENDING',
        'no routes: stays PENDING');
    is_error(callback("/v1/callbacks/$id", '0' x 64, $OK_BODY), 401,
        'UNAUTHORIZED', 'no routes: a guessed token is refused');
}

ok($t->verify($acc->{org})->{ok}, 'verify ok at the end');
$t->done;
