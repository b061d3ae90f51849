# What attempts' outcomes become in the cases below (regressions):
#
# 1. A Retry-After that pauses every route of a model past an execution's
#    expires_at fails it at once with RATE_LIMITED (hold released), instead
#    of leaving it PENDING until it expires with GENERATION_TIMEOUT.
# 2. Valid JSON is accepted: a \u0000 in a string, an integer beyond 64
#    bits in a field the adapter does not read, usage as 7.0; JSON that
#    jansson cannot hold (a number beyond the double range, nesting past
#    its depth limit) fails the attempt without counting against the
#    route's circuit breaker.  Callbacks likewise.
# 3. A provider's error text never reaches the tenant (it may hold part of
#    the operator's credential): error.message is the normalized one, the
#    provider's text is in the error log with the execution id.
# 4. Callbacks: one that comes after expires_at (before the sweeper has
#    expired the execution) is dropped: its token has expired (401); one
#    that comes while the execution is PROCESSING between attempts is
#    accepted (the provider had the job); one for an execution that no
#    provider was sent (PENDING), with a token made with the real key for
#    the attempt that was not made, is a 401.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use Digest::SHA qw(hmac_sha256_hex);
use MR::Test qw(:all);
use MR::Receiver;

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

# the sweeper would expire executions past expires_at: here it does not
# run during the test, so that a callback can come after expires_at and
# before the sweep
my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_sweep_interval 1h;
modelroute_callback_url http://127.0.0.1:%%PORT%%/v1/callbacks;
modelroute_route ra  /p/ra  protocol=openai_chat timeout=5s;
modelroute_route rb  /p/rb  protocol=openai_chat timeout=5s;
modelroute_route j   /p/j   protocol=openai_chat timeout=5s;
modelroute_route jb  /p/jb  protocol=openai_chat timeout=5s breaker=1
                 breaker_reset=1h;
modelroute_route e   /p/e   protocol=openai_chat timeout=5s;
modelroute_route job  /p/job  protocol=async timeout=5s;
modelroute_route jobp /p/jobp protocol=async timeout=5s;
modelroute_route jobq /p/jobq protocol=async timeout=10s max_concurrency=1;
modelroute_model m-ra per_request=0.01 routes=ra:primer attempts=3;
modelroute_model m-ra1 per_request=0.01 routes=ra attempts=3;
modelroute_model m-rab per_request=0.01 routes=ra,rb attempts=3;
modelroute_model m-rb per_request=0.01 routes=rb:primer attempts=1;
modelroute_model m-nul per_request=0.01 routes=j:nul attempts=1;
modelroute_model m-bigint per_request=0.01 routes=j:bigint attempts=1;
modelroute_model m-realusage per_request=0.01 output_per_mtok=1000
                 routes=j:realusage attempts=1;
modelroute_model m-deep per_request=0.01 routes=jb:deep attempts=1;
modelroute_model m-hugereal per_request=0.01 routes=jb:hugereal attempts=1;
modelroute_model m-jb per_request=0.01 routes=jb:fine attempts=1;
modelroute_model m-e per_request=0.01 routes=e attempts=1;
modelroute_model m-job per_request=0.01 routes=job;
modelroute_model m-jobp per_request=0.01 routes=jobp attempts=3;
modelroute_model m-jobq per_request=0.01 routes=jobq attempts=1;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/ra   { internal; proxy_pass http://127.0.0.1:$RPORT/ra; }
    location /p/rb   { internal; proxy_pass http://127.0.0.1:$RPORT/rb; }
    location /p/j {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/j;
        subrequest_output_buffer_size 64k;
    }
    location /p/jb {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/jb;
        subrequest_output_buffer_size 64k;
    }
    location /p/e    { internal; proxy_pass http://127.0.0.1:$RPORT/e; }
    location /p/job  { internal; proxy_pass http://127.0.0.1:$RPORT/job; }
    location /p/jobp { internal; proxy_pass http://127.0.0.1:$RPORT/jobp; }
    location /p/jobq { internal; proxy_pass http://127.0.0.1:$RPORT/jobq; }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub exec_of {
    my ($key, $id) = @_;
    my $r = $t->get_exec($key, $id);
    return $r->{status} == 200 ? $r->{json} : undef;
}

sub create {
    my ($acc, $model, %over) = @_;
    my $r = $t->create_exec($acc->{key}, $t->exec_body(model => $model,
        input => { prompt => "for $model" }, %over));
    is($r->{status}, 202, "$model: created") or diag $r->{body};
    return $r->{json}{id} // 'exec_none';
}

sub wait_status {
    my ($key, $id, $cond, $timeout) = @_;
    my $last;
    wait_for(sub {
        $last = exec_of($key, $id) or return 0;
        ref $cond ? $cond->($last) : $last->{status} eq $cond;
    }, $timeout // 15);
    return $last // {};
}

sub terminal {
    my ($key, $id, $timeout) = @_;
    return wait_status($key, $id, sub { $TERMINAL{ $_[0]{status} } },
        $timeout);
}

sub routes_state {
    my $r = $t->admin(GET => '/routes');
    return {} unless $r->{status} == 200 && ref $r->{json}{data} eq 'ARRAY';
    return { map { $_->{name} => $_ } @{ $r->{json}{data} } };
}

sub chat_raw {
    my ($content, $usage) = @_;
    return '{"id":"c1","object":"chat.completion","choices":[{"index":0,'
        . '"finish_reason":"stop","message":{"role":"assistant","content":'
        . $content . '}}],"usage":' . ($usage
            // '{"prompt_tokens":5,"completion_tokens":7}') . '}';
}

my $RL = { status => 429, headers => { 'Retry-After' => 3600 },
    json => { error => { message => 'slow down', type => 'rate_limit_error' } } };

# ------------------------------------------- 1. Retry-After past expires_at

{
    my $acc = $t->new_account(credit => '10.00');
    $rc->set('/ra', json => { error => { message => 'unexpected' } },
        status => 500, cases => [ [ '"model":"primer"', $RL ] ]);
    $rc->set('/rb', json => { error => { message => 'unexpected' } },
        status => 500, cases => [ [ '"model":"primer"', $RL ] ]);

    # the primers' 429s pause ra and rb for an hour
    for my $m (qw(m-ra m-rb)) {
        my $p = terminal($acc->{key}, create($acc, $m), 10);
        is(eval { $p->{error}{code} }, 'RATE_LIMITED',
            "$m: RATE_LIMITED (the route is paused for an hour)")
            or diag explain $p;
    }
    my $rs = routes_state();
    ok(parse_rfc3339($rs->{ra}{paused_until} // '') // 0 > time + 3000,
        'ra is paused for an hour') or diag explain $rs->{ra};

    # executions that no route can take before they expire fail at once
    my @ids = (create($acc, 'm-ra1', timeout_seconds => 30),
        create($acc, 'm-ra1', timeout_seconds => 30),
        create($acc, 'm-rab', timeout_seconds => 30));
    for my $i (0 .. $#ids) {
        my $e = terminal($acc->{key}, $ids[$i], 40);
        is($e->{status}, 'FAILED', "paused $i: FAILED at once, not left "
            . "to expire") or diag explain $e;
        is(eval { $e->{error}{code} }, 'RATE_LIMITED',
            "paused $i: RATE_LIMITED");
        ok(eval { $e->{error}{retryable} }, "paused $i: retryable");
        is_deeply($e->{attempts}, [], "paused $i: no attempt was made");
        ok(defined $e->{completed_at}
            && parse_rfc3339($e->{completed_at})
                < parse_rfc3339($e->{expires_at}),
            "paused $i: ended before its expires_at");
    }
    is($rc->count(path => '/ra') + $rc->count(path => '/rb'), 2,
        'only the primers reached the providers');
    my $b = $t->balance($acc->{key});
    money_is($b->{held}, '0.00', 'paused: holds released');
    money_is($b->{balance}, '10.00', 'paused: nothing charged');
    ok($t->verify($acc->{org})->{ok}, 'paused: verify ok');
}

# ------------------------------------------------------ 2. valid JSON

{
    my $acc = $t->new_account(credit => '10.00');
    my $deep = ('[' x 3000) . (']' x 3000);
    $rc->set('/j', body => chat_raw('"unused"'),
        content_type => 'application/json', cases => [
        [ '"model":"nul"', { body => chat_raw('"a\u0000b"') } ],
        [ '"model":"bigint"', { body => '{"created":99999999999999999999999,'
            . substr(chat_raw('"big"'), 1) } ],
        [ '"model":"realusage"', { body => chat_raw('"real"',
            '{"prompt_tokens":5.0,"completion_tokens":7.0,'
            . '"total_tokens":12e0}') } ],
    ]);
    $rc->set('/jb', body => chat_raw('"fine"'),
        content_type => 'application/json', cases => [
        [ '"model":"deep"', { body => '{"extra":' . $deep . ','
            . substr(chat_raw('"deep"'), 1) } ],
        [ '"model":"hugereal"', { body => '{"created":1e400,'
            . substr(chat_raw('"huge"'), 1) } ],
    ]);

    my $e = terminal($acc->{key}, create($acc, 'm-nul'));
    is($e->{status}, 'COMPLETED', 'a \u0000 in the text: COMPLETED')
        or diag explain $e;
    is(eval { $e->{result}{text} }, "a\0b", '... the text with its NUL');
    my $r = $t->req(GET => "/v1/executions/$e->{id}/result",
        auth($acc->{key}));
    is($r->{status}, 200, '... GET result: 200') or diag $r->{body};
    is(eval { $r->{json}{result}{text} }, "a\0b", '... GET result: the text');

    $e = terminal($acc->{key}, create($acc, 'm-bigint'));
    is($e->{status}, 'COMPLETED', 'an integer beyond 64 bits in a field '
        . 'not read: COMPLETED') or diag explain $e;
    is(eval { $e->{result}{usage}{output_tokens} }, 7, '... usage read');

    $e = terminal($acc->{key}, create($acc, 'm-realusage'));
    is($e->{status}, 'COMPLETED', 'usage as 7.0: COMPLETED')
        or diag explain $e;
    is(eval { $e->{result}{usage}{output_tokens} }, 7,
        '... output_tokens 7');
    money_is($e->{cost}, '0.017', '... cost from that usage');

    # what jansson cannot hold fails the attempt, not the route; the
    # attempt is logged once (the answer has no words of the provider's)
    for my $m (qw(m-deep m-hugereal)) {
        my $id = create($acc, $m);
        $e = terminal($acc->{key}, $id);
        is($e->{status}, 'FAILED', "$m: FAILED") or diag explain $e;
        is(eval { $e->{error}{code} }, 'GENERATION_FAILED',
            "$m: GENERATION_FAILED");
        is(eval { $e->{attempts}[0]{status} }, 200, "$m: status 200");
        my @lines = grep { /\[error\].*\Q$id\E: route "jb" answered 200: /
                           && /cannot read/ } split /\n/, $t->read_log;
        is(scalar @lines, 1, "$m: logged once, with the execution id")
            or diag $t->read_log;
    }
    my $rs = routes_state()->{jb} // {};
    is($rs->{breaker}, 'closed', 'breaker=1 route: still closed')
        or diag explain $rs;
    is($rs->{consecutive_failures}, 0, '... no failure counted');
    $e = terminal($acc->{key}, create($acc, 'm-jb'));
    is($e->{status}, 'COMPLETED', '... and the next attempt is made')
        or diag explain $e;

    ok($t->verify($acc->{org})->{ok}, 'JSON: verify ok');
}

# ------------------------------------------- 3. the provider's error text

my $SECRET = 'sk-proj-abcdef0123456789';
{
    my $acc = $t->new_account(credit => '10.00');
    $rc->set('/e', status => 401, json => { error => {
        message => "Incorrect API key provided: $SECRET. You can find "
            . "your API key at https://example.invalid",
        type => 'invalid_request_error', code => 'invalid_api_key' } });
    my $id = create($acc, 'm-e');
    my $e = terminal($acc->{key}, $id);
    is($e->{status}, 'FAILED', '401: FAILED');
    is(eval { $e->{error}{code} }, 'GENERATION_FAILED', '401: its code');
    my $msg = eval { $e->{error}{message} } // '';
    ok(length $msg, "401: a message ($msg)");
    unlike($msg, qr/\Q$SECRET\E|Incorrect API key|sk-/,
        '401: none of the provider\'s text in error.message');
    my $r = $t->req(GET => "/v1/executions?limit=5", auth($acc->{key}));
    unlike($r->{body}, qr/\Q$SECRET\E/, '... nor in the list');
    my @lines = grep { /\Q$id\E/ } split /\n/, $t->read_log;
    is(scalar @lines, 1, 'the provider\'s text is logged once, with the '
        . 'execution id') or diag join "\n", @lines;
    like($lines[0] // '', qr/\[error\].*\Q$SECRET\E/, '... at error');

    # no text of the provider's (a load balancer's page): the status and
    # the gateway's words, once
    $rc->set('/e', status => 503, content_type => 'text/html',
        body => '<html><body>Service Unavailable</body></html>');
    $id = create($acc, 'm-e');
    $e = terminal($acc->{key}, $id);
    is(eval { $e->{error}{code} }, 'MODEL_OVERLOADED', 'a bare 503: its code')
        or diag explain $e;
    @lines = grep { /\Q$id\E/ } split /\n/, $t->read_log;
    is(scalar @lines, 1, 'a bare 503: logged once')
        or diag join "\n", @lines;
    like($lines[0] // '', qr/\[error\].*route "e" answered 503: \S/,
        '... at error, with the status and the gateway\'s words');

    # the tenant's input refused: not the provider's failure, at info
    # (this log is at notice: no line), whether it has words or not
    for my $case ([ 'a 400 with text', status => 400,
                    json => { error => { message => "bad input $SECRET" } } ],
                  [ 'a bare 422', status => 422, body => 'no' ]) {
        my ($name, %rule) = @$case;
        $rc->set('/e', %rule);
        $id = create($acc, 'm-e');
        $e = terminal($acc->{key}, $id);
        is(eval { $e->{error}{code} }, 'INPUT_VALIDATION_ERROR',
            "$name: INPUT_VALIDATION_ERROR") or diag explain $e;
        @lines = grep { /\Q$id\E/ } split /\n/, $t->read_log;
        is(scalar @lines, 0, "$name: no line at notice or above")
            or diag join "\n", @lines;
    }
    $rc->set('/e');
}

# ------------------------------------------------------ 4. callbacks

sub provider_request {
    my ($path, $id) = @_;
    my ($req) = $rc->wait_requests(1, path => $path, timeout => 15,
        where => sub { ($_[0]{json}{execution_id} // '') eq $id });
    return $req;
}

sub callback_of {
    my ($req) = @_;
    my $j = ($req // {})->{json} // {};
    my ($path) = ($j->{callback_url} // '') =~
        m{^http://127\.0\.0\.1:\d+(/v1/callbacks/exec_[0-9a-f]{44})$};
    my ($token) = ($j->{callback_token} // '') =~ m{^(\d+\.[0-9a-f]{64})$};
    return ($path // '/v1/callbacks/none', $token // '0.' . '0' x 64);
}

sub callback {
    my ($path, $token, $body) = @_;
    return $t->req(POST => $path, { 'Content-Type' => 'application/json',
            Authorization => "Bearer $token" },
        ref $body ? json_encode($body) : $body);
}

my $OK = { status => 'succeeded', output => { text => 'called back' } };

{
    my $acc = $t->new_account(credit => '10.00');
    $rc->set('/job', status => 202, json => { job_id => 'j1' });

    # a callback after expires_at, before the sweep: dropped (the token's
    # lifetime is the execution's)
    my $id = create($acc, 'm-job', timeout_seconds => 2);
    my $e = wait_status($acc->{key}, $id, 'AWAITING_WEBHOOK');
    is($e->{status}, 'AWAITING_WEBHOOK', 'late: the job was taken');
    my ($cp, $tok) = callback_of(provider_request('/job', $id));
    my $expires = parse_rfc3339($e->{expires_at}) // time;
    wait_for(sub { time > $expires + 0.3 }, 5);
    my $r = callback($cp, $tok, $OK);
    is_error($r, 401, 'UNAUTHORIZED', 'late: 401, the token has expired');
    like(($r->{json} // {})->{error}{message} // '', qr/expired/,
        'late: the message says the token has expired');
    $e = exec_of($acc->{key}, $id);
    isnt($e->{status}, 'COMPLETED', 'late: not COMPLETED');
    ok(!defined $e->{result}, 'late: no result');
    money_is($t->balance($acc->{key})->{balance}, '10.00',
        'late: nothing charged');

    # valid JSON in a callback: a \u0000 and an integer beyond 64 bits
    $id = create($acc, 'm-job');
    wait_status($acc->{key}, $id, 'AWAITING_WEBHOOK');
    ($cp, $tok) = callback_of(provider_request('/job', $id));
    $r = callback($cp, $tok, '{"status":"succeeded","output":{"text":'
        . '"x\u0000y","seed":123456789012345678901234567890}}');
    is($r->{status}, 200, 'callback with \u0000 and a big integer: 200')
        or diag $r->{body};
    $e = exec_of($acc->{key}, $id);
    is($e->{status}, 'COMPLETED', '... COMPLETED');
    is(eval { $e->{result}{text} }, "x\0y", '... the text with its NUL');

    # a failure reported by callback: its text is the operator's
    $id = create($acc, 'm-job');
    wait_status($acc->{key}, $id, 'AWAITING_WEBHOOK');
    ($cp, $tok) = callback_of(provider_request('/job', $id));
    $r = callback($cp, $tok, { status => 'failed', error => {
        code => 'internal', message => "worker crashed near $SECRET" } });
    is($r->{json}{status}, 'FAILED', 'failed callback: FAILED');
    $e = exec_of($acc->{key}, $id);
    unlike(eval { $e->{error}{message} } // '', qr/\Q$SECRET\E|crashed/,
        'failed callback: the provider\'s text is not the tenant\'s');
    ok(scalar(grep { /\Q$id\E/ && /\Q$SECRET\E/ }
        split /\n/, $t->read_log), '... it is logged with the id');

    # a callback while PROCESSING between attempts: accepted
    $rc->set('/jobp', sequence => [
        { status => 503, headers => { 'Retry-After' => 3 } },
        { status => 202, json => { id => 'p-2' } } ]);
    $id = create($acc, 'm-jobp');
    ($cp, $tok) = callback_of(provider_request('/jobp', $id));
    $e = wait_status($acc->{key}, $id, sub { @{ $_[0]{attempts} } == 1 });
    is($e->{status}, 'PROCESSING', 'between attempts: PROCESSING');
    $r = callback($cp, $tok, $OK);
    is($r->{status}, 200, 'between attempts: 200') or diag $r->{body};
    is_deeply($r->{json}, { received => JSON::PP::true,
        duplicate => JSON::PP::false, status => 'COMPLETED' },
        'between attempts: the callback is taken');
    $e = exec_of($acc->{key}, $id);
    is($e->{status}, 'COMPLETED', 'between attempts: COMPLETED');
    is(eval { $e->{result}{text} }, 'called back', '... with its output');
    is_deeply([ map { $_->{outcome} } @{ $e->{attempts} } ],
        [ 'failed', 'called_back' ], '... attempts failed, called_back');
    ok(!wait_for(sub { $rc->count(path => '/jobp') > 1 }, 4),
        '... and no other attempt is made after the pause');

    # a token, made with the real key, of an attempt that was not made
    # (the execution is PENDING: no provider was sent it): 401
  SKIP: {
        my $cbkey = $t->store_secret('cbkey');
        skip 'mdb_dump (lmdb-utils) not available', 3
            if !defined $cbkey && $t->backend eq 'lmdb'
               && !-x '/usr/bin/mdb_dump';
        $rc->set('/jobq', status => 202, json => { id => 'q' }, delay => 6);
        my $first = create($acc, 'm-jobq');
        ok(provider_request('/jobq', $first), 'cap: the first is at the '
            . 'provider');
        my $second = create($acc, 'm-jobq');
        is(exec_of($acc->{key}, $second)->{status}, 'PENDING',
            'cap: the second waits, PENDING');
        $r = callback("/v1/callbacks/$second", '0.' . hmac_sha256_hex(
            "modelroute-callback\0$second\0" . '0', pack 'H*', $cbkey // ''),
            $OK);
        is_error($r, 401, 'UNAUTHORIZED',
            'a callback for a PENDING execution: 401');
        is(exec_of($acc->{key}, $second)->{status}, 'PENDING',
            '... which stays PENDING');
        $t->req(POST => "/v1/executions/$_/cancel", auth($acc->{key}))
            for $first, $second;
    }

    ok($t->verify($acc->{org})->{ok}, 'callbacks: verify ok');
}

$t->done;
