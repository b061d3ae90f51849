# One attempt's failure never touches another attempt, and every request
# sent to a provider appears in its execution's attempts.
#
# 1. Oversized answers: attempts made side by side in one dispatch
#    request (the route is paused by a Retry-After while they are created,
#    so that one claim takes them all), one answering 10 KB with a
#    Content-Length, one answering 20 MB chunked, the others healthy: the
#    healthy ones complete with their results, the large ones fail their
#    own attempt ("too large"), nothing is buffered to a temporary file,
#    and the provider got exactly one request per recorded attempt.
# 2. An attempt in flight when its execution is cancelled or expires is
#    recorded (cancelled, abandoned), also after a failed attempt.
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
modelroute_route r /p/r protocol=openai_chat timeout=10s;
modelroute_route slow /p/slow protocol=openai_chat timeout=10s;
modelroute_route flaky /p/flaky protocol=openai_chat timeout=10s;
modelroute_route flaky2 /p/flaky2 protocol=openai_chat timeout=10s;
modelroute_model m-primer per_request=0.01 routes=r:primer attempts=1;
modelroute_model m-big per_request=0.01 routes=r:big attempts=1;
modelroute_model m-huge per_request=0.01 routes=r:huge attempts=1;
modelroute_model m-ok per_request=0.01 routes=r:ok attempts=1;
modelroute_model m-slow per_request=0.01 routes=slow attempts=1;
modelroute_model m-flaky per_request=0.01 routes=flaky attempts=3;
modelroute_model m-flaky2 per_request=0.01 routes=flaky2 attempts=3;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    # subrequest_output_buffer_size: nginx's default (a memory page)
    location /p/r {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/r;
        proxy_read_timeout 20s;
    }
    location /p/slow {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/slow;
        proxy_read_timeout 20s;
    }
    location /p/flaky {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/flaky;
        proxy_read_timeout 20s;
    }
    location /p/flaky2 {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/flaky2;
        proxy_read_timeout 20s;
    }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub chat_ok {
    my ($text) = @_;
    return { id => 'chatcmpl-1', object => 'chat.completion',
        choices => [ { index => 0, finish_reason => 'stop',
            message => { role => 'assistant', content => $text } } ],
        usage => { prompt_tokens => 5, completion_tokens => 7 } };
}

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

sub wait_terminal {
    my ($acc, $ids, $timeout) = @_;
    my %e;
    wait_for(sub {
        for my $id (@$ids) {
            next if $e{$id} && $TERMINAL{ $e{$id}{status} };
            $e{$id} = exec_of($acc->{key}, $id) or return 0;
            return 0 unless $TERMINAL{ $e{$id}{status} };
        }
        1;
    }, $timeout // 30, 0.1);
    return \%e;
}

# Provider requests whose body names the execution (the prompt carries
# the model, so the request is matched on it).
sub requests_for {
    my ($path, $model) = @_;
    return grep { index($_->{body} // '', "for $model\"") >= 0 }
        $rc->requests_to($path);
}

# ------------------------------------------------ 1. oversized answers

{
    my $acc = $t->new_account(credit => '10.00');
    $rc->set('/r', json => chat_ok('fine'), delay => 1.5, cases => [
        [ '"model":"primer"', { status => 429, delay => 0,
            headers => { 'Retry-After' => 4 },
            json => { error => { message => 'slow down',
                type => 'rate_limit_error' } } } ],
        [ '"model":"big"', { json => chat_ok('y' x 10_000), delay => 0.5 } ],
        [ '"model":"huge"', { body_bytes => 20_000_000, chunked => 1,
            delay => 0.5 } ],
    ]);

    # the primer's 429 pauses the route for 4 s: what is created
    # meanwhile waits, and is claimed at once when the pause ends
    my $primer = create($acc, 'm-primer');
    my $p = wait_terminal($acc, [$primer], 10)->{$primer} // {};
    is(eval { $p->{error}{code} }, 'RATE_LIMITED',
        'primer: RATE_LIMITED, the route is paused') or diag explain $p;

    my $big = create($acc, 'm-big');
    my $huge = create($acc, 'm-huge');
    my @ok = map { create($acc, 'm-ok', input => { prompt => "for m-ok-$_" }) }
        1 .. 5;
    my $e = wait_terminal($acc, [ $big, $huge, @ok ], 40);

    # the premise: all seven were at the provider at the same time
    my @reqs = grep { index($_->{body} // '', '"model":"primer"') < 0 }
        $rc->requests_to('/r');
    my ($last_in) = sort { $b <=> $a } map { $_->{arrived} } @reqs;
    my ($first_out) = sort { $a <=> $b }
        map { $_->{answered_at} // $_->{arrived} + 60 } @reqs;
    ok(@reqs == 7 && $last_in < $first_out,
        'the seven attempts were in flight together')
        or diag explain [ map { [ $_->{arrived}, $_->{answered_at} ] }
            @reqs ];

    for my $i (1 .. 5) {
        my $x = $e->{ $ok[ $i - 1 ] } // {};
        my @at = @{ $x->{attempts} // [] };
        is($x->{status}, 'COMPLETED', "healthy $i: COMPLETED")
            or diag explain $x;
        is(eval { $x->{result}{text} }, 'fine', "healthy $i: its result");
        is(scalar @at, 1, "healthy $i: one attempt") or diag explain \@at;
        is($at[0]{outcome}, 'succeeded', "healthy $i: the attempt succeeded");
        is($at[0]{status}, 200, "healthy $i: status 200");
    }

    for my $case ([ big => $big ], [ huge => $huge ]) {
        my ($n, $id) = @$case;
        my $x = $e->{$id} // {};
        my @at = @{ $x->{attempts} // [] };
        is($x->{status}, 'FAILED', "$n: FAILED") or diag explain $x;
        is(eval { $x->{error}{code} }, 'GENERATION_FAILED',
            "$n: GENERATION_FAILED");
        like(eval { $x->{error}{message} } // '', qr/too large/,
            "$n: the message says the answer was too large");
        is(scalar @at, 1, "$n: one attempt") or diag explain \@at;
        is($at[0]{outcome}, 'failed', "$n: the attempt failed");
        is($at[0]{status}, 200, "$n: the provider's status 200");
        is($at[0]{error_code}, 'GENERATION_FAILED', "$n: its error_code");
    }

    my $attempts = 0;
    $attempts += @{ $e->{$_}{attempts} // [] } for keys %$e;
    is(scalar @reqs, $attempts,
        "provider requests ($attempts) == recorded attempts");

    my $log = $t->read_log;
    unlike($log, qr/buffered to a temporary file/,
        'no answer was buffered to a temporary file');
    unlike($log, qr/too big subrequest response/,
        'no "too big subrequest response"');
    like($log, qr/\Q$huge\E.*too large/, 'the large answer is logged');
    opendir my $dh, $t->prefix . '/tmp/proxy';
    my @tmp = $dh ? grep { !/^\./ } readdir $dh : ();
    is(scalar @tmp, 0, 'nothing left in proxy_temp_path');

    my $b = $t->balance($acc->{key});
    money_is($b->{held}, '0.00', 'oversized: holds released');
    money_is($b->{balance}, '9.95', 'oversized: the five healthy charged');
    ok($t->verify($acc->{org})->{ok}, 'oversized: verify ok');
}

# ------------------------------------------------ 2. cancel and expiry

# every attempt the provider got is in the timeline
sub timeline_ok {
    my ($name, $x, $path, $model, @want) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @at = @{ $x->{attempts} // [] };
    is_deeply([ map { $_->{outcome} } @at ], \@want,
        "$name: attempts " . join(', ', @want)) or diag explain \@at;
    is(scalar(requests_for($path, $model)), scalar @at,
        "$name: provider requests == attempts listed");
    ok(!grep({ !is_rfc3339($_->{started_at}) || !is_rfc3339($_->{ended_at})
            || parse_rfc3339($_->{ended_at})
                < parse_rfc3339($_->{started_at}) } @at),
        "$name: each attempt has started_at <= ended_at");
}

{
    my $acc = $t->new_account(credit => '10.00');
    $rc->set('/slow', json => chat_ok('late'), delay => 3);
    $rc->set('/flaky', sequence => [
        { status => 500, json => { error => { message => 'once' } } },
        { json => chat_ok('late'), delay => 4 } ]);
    $rc->set('/flaky2', sequence => [
        { status => 500, json => { error => { message => 'once' } } },
        { json => chat_ok('late'), delay => 4 } ]);

    # cancelled while its only attempt is at the provider
    my $c1 = create($acc, 'm-slow');
    ok(scalar $rc->wait_requests(1, path => '/slow', timeout => 10),
        'cancel: the provider got the request');
    my $r = $t->req(POST => "/v1/executions/$c1/cancel", auth($acc->{key}));
    is($r->{json}{status}, "CANCELLED", "cancel: CANCELLED") or diag $r->{body};
    is(scalar @{ $r->{json}{attempts} // [] }, 1,
        'cancel: the answer to the cancel lists the attempt');

    # cancelled while its second attempt is at the provider
    my $c2 = create($acc, 'm-flaky');
    ok(scalar $rc->wait_requests(2, path => '/flaky', timeout => 10),
        'cancel after a retry: the provider got both requests');
    $r = $t->req(POST => "/v1/executions/$c2/cancel", auth($acc->{key}));
    is($r->{json}{status}, 'CANCELLED', 'cancel after a retry: CANCELLED');

    # expired while its only attempt (then its second) is at the provider
    my $x1 = create($acc, 'm-slow', timeout_seconds => 1,
        input => { prompt => 'for m-slow-x' });
    my $x2 = create($acc, 'm-flaky2', timeout_seconds => 2);

    my $e = wait_terminal($acc, [ $c1, $c2, $x1, $x2 ], 20);

    # the providers have answered meanwhile: the late answers change
    # nothing
    ok(wait_for(sub {
        !grep { !defined $_->{answered_at} }
            map { $rc->requests_to($_) } qw(/slow /flaky /flaky2) }, 15),
        'the providers have answered');
    $e->{$_} = exec_of($acc->{key}, $_) for keys %$e;

    is($e->{$c1}{status}, 'CANCELLED', 'cancel: stays CANCELLED');
    timeline_ok('cancel', $e->{$c1}, '/slow', 'm-slow', 'cancelled');
    is($e->{$c1}{attempts}[0]{route}, 'slow', 'cancel: the attempt\'s route');
    ok(!defined $e->{$c1}{attempts}[0]{status},
        'cancel: no provider status');

    is($e->{$c2}{status}, 'CANCELLED', 'cancel after a retry: CANCELLED');
    timeline_ok('cancel after a retry', $e->{$c2}, '/flaky', 'm-flaky',
        'failed', 'cancelled');

    is($e->{$x1}{status}, 'EXPIRED', 'expiry: EXPIRED');
    timeline_ok('expiry', $e->{$x1}, '/slow', 'm-slow-x', 'abandoned');
    is($e->{$x1}{attempts}[0]{error_code}, 'GENERATION_TIMEOUT',
        'expiry: the abandoned attempt\'s error_code');

    is($e->{$x2}{status}, 'EXPIRED', 'expiry after a retry: EXPIRED');
    timeline_ok('expiry after a retry', $e->{$x2}, '/flaky2', 'm-flaky2',
        'failed', 'abandoned');

    my $b = $t->balance($acc->{key});
    money_is($b->{held}, '0.00', 'cancel and expiry: holds released');
    money_is($b->{balance}, '10.00', 'cancel and expiry: nothing charged');
    ok($t->verify($acc->{org})->{ok}, 'cancel and expiry: verify ok');
}

$t->done;
