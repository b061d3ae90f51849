# Dispatch, the happy paths: executions go from PENDING to COMPLETED on
# their own through the simulator (chat, anthropic, embeddings, images)
# and through fake providers (an MR::Receiver behind proxy_pass) for each
# protocol; the request each provider gets, the normalized result, the
# attempt, the cost from reported usage (or the estimate, never more than
# the hold) and the ledger; execution.started then execution.completed to
# a webhook endpoint; an idempotent replay after completion; GET
# /admin/routes; a model without routes is never dispatched; 200
# executions at once; and nginx -t refusals of route configurations.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

# ---------------------------------------------------------------- setup

# the fake providers: one receiver, a path per protocol
my $rc = MR::Receiver->new;
$rc->start;
my $rp = $rc->port;

my %fake_path = (chat => '/chat', anth => '/messages',
    emb => '/embeddings', img => '/images');

sub fake_location {
    my ($name, $path) = @_;
    return "    location /providers/$name { internal; "
        . "proxy_pass http://127.0.0.1:$rp$path; "
        . "subrequest_output_buffer_size 64k; }\n";
}

my $http = <<'EOF'
modelroute_store %%STORE%%;
modelroute_webhook_allow_private on;

modelroute_route sim      /providers/sim      protocol=openai_chat;
modelroute_route sim-anth /providers/sim-anth protocol=anthropic;
modelroute_route sim-emb  /providers/sim-emb  protocol=openai_embeddings;
modelroute_route sim-img  /providers/sim-img  protocol=openai_images;
modelroute_route f-chat   /providers/f-chat   protocol=openai_chat
                 max_concurrency=50 timeout=5s breaker=7 breaker_reset=10s;
modelroute_route f-anth   /providers/f-anth   protocol=anthropic;
modelroute_route f-emb    /providers/f-emb    protocol=openai_embeddings;
modelroute_route f-img    /providers/f-img    protocol=openai_images;

modelroute_model chat  per_request=0.002 input_per_mtok=1 output_per_mtok=2
                 routes=sim:sim-small;
modelroute_model anth  per_request=0.002 input_per_mtok=1 output_per_mtok=2
                 routes=sim-anth:claude-sim;
modelroute_model emb   per_request=0.001 input_per_mtok=1
                 routes=sim-emb:emb-sim;
modelroute_model img   per_image=0.02 routes=sim-img:img-sim;

modelroute_model fchat per_request=0 input_per_mtok=1 output_per_mtok=2
                 routes=f-chat:gpt-x;
modelroute_model fanth per_request=0 input_per_mtok=1 output_per_mtok=2
                 max_tokens=777 routes=f-anth:claude-x;
modelroute_model femb  per_request=0 input_per_mtok=1
                 routes=f-emb:text-emb-x;
modelroute_model fimg  per_image=0.01 routes=f-img:dall-x;
modelroute_model fdefault input_per_mtok=1 output_per_mtok=2 routes=f-chat;

modelroute_model idle  per_request=0.01;

server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /providers/sim      { internal; modelroute_simulator; }
    location /providers/sim-anth { internal; modelroute_simulator format=anthropic; }
    location /providers/sim-emb  { internal; modelroute_simulator format=embeddings; }
    location /providers/sim-img  { internal; modelroute_simulator format=images; }
EOF
    . fake_location('f-chat', $fake_path{chat})
    . fake_location('f-anth', $fake_path{anth})
    . fake_location('f-emb', $fake_path{emb})
    . fake_location('f-img', $fake_path{img})
    . "}\n";

my $t = MR::Test->new(http => $http);

# nginx starts on a store directory that does not exist yet (README:
# "Created by the master"). If it cannot, that is reported here and the
# directory is made, so that the rest of the file still runs.
{
    ok(!-e $t->store, 'the store directory does not exist before the start');
    my $ok = eval { $t->start; 1 };
    my $err = $@;
    ok($ok, 'nginx with modelroute_dispatch starts on a fresh store')
        or diag $err;
    unless ($ok) {
        $t->expect_log(qr/bind\(\) to unix:.*dispatch\.sock failed/);
        mkdir $t->store or die "mkdir: $!";
        $t->start;
    }
}

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

# Polls an execution until it is terminal; returns the last object seen.
sub terminal {
    my ($key, $id, $timeout) = @_;
    my $last = {};
    wait_for(sub {
        my $r = $t->get_exec($key, $id);
        $last = $r->{json} if $r->{status} == 200 && ref $r->{json};
        return $TERMINAL{ $last->{status} // '' };
    }, $timeout // 15);
    return $last;
}

# Creates an execution and waits for its end: (202 answer, final object).
sub run_exec {
    my ($key, $model, $input, %more) = @_;
    my $r = $t->create_exec($key, $t->exec_body(model => $model,
        input => $input, %more));
    is($r->{status}, 202, "$model: 202") or diag $r->{body};
    my $id = $r->{json}{id} // 'exec_none';
    return ($r, terminal($key, $id));
}

# The one attempt of a completed execution, and its times, checked.
sub one_attempt_ok {
    my ($e, $route, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @why;
    my $at = $e->{attempts};
    if (ref $at ne 'ARRAY' || @$at != 1) {
        push @why, 'attempts is not one entry';
    } else {
        my $a = $at->[0];
        push @why, 'keys: ' . join(',', sort keys %$a)
            unless join(',', sort keys %$a) eq
                'ended_at,error_code,outcome,route,started_at,status';
        push @why, "route '" . ($a->{route} // 'undef') . "'"
            unless ($a->{route} // '') eq $route;
        push @why, "outcome '" . ($a->{outcome} // 'undef') . "'"
            unless ($a->{outcome} // '') eq 'succeeded';
        push @why, 'error_code not null' if defined $a->{error_code};
        push @why, 'status ' . ($a->{status} // 'null')
            unless ($a->{status} // 0) == 200;
        push @why, 'attempt times not RFC 3339'
            unless is_rfc3339($a->{started_at}) && is_rfc3339($a->{ended_at});
        if (!@why) {
            my @ts = map { parse_rfc3339($_) } $e->{created_at},
                $e->{started_at}, $a->{started_at}, $a->{ended_at},
                $e->{completed_at};
            push @why, "times out of order: created $e->{created_at}, "
                . "started $e->{started_at}, attempt $a->{started_at} .. "
                . "$a->{ended_at}, completed $e->{completed_at}"
                if grep { $ts[$_] < $ts[$_ - 1] } 1 .. $#ts;
        }
    }
    push @why, 'started_at not set' unless is_rfc3339($e->{started_at});
    push @why, 'completed_at not set' unless is_rfc3339($e->{completed_at});
    push @why, 'error not null' if defined $e->{error};
    ok(!@why, $name) or diag join("\n", @why) . "\n" . explain $e;
}

# cost ≤ hold, both money strings
sub cost_within_hold {
    my ($e, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok = defined $e->{cost} && $e->{cost} =~ /^\d+\.\d{2,6}$/
        && micros($e->{cost}) <= micros($e->{hold_amount} // '0');
    ok($ok, $name) or diag 'cost ' . ($e->{cost} // 'null') . ', hold '
        . ($e->{hold_amount} // 'null');
}

# balance = credit − Σ cost, held 0, and the ledger verifies
sub ledger_ok {
    my ($acc, $credit, $charged, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $b = $t->balance($acc->{key});
    is(micros($b->{balance}), micros($credit) - $charged,
        "$name: balance = credit - cost") or diag explain $b;
    money_is($b->{held}, '0', "$name: nothing held");
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, "$name: verify ok") or diag explain $v;
    is(micros($v->{charged}), $charged, "$name: verify charged = cost");
}

# The request a fake provider got whose body contains $marker.
sub provider_request {
    my ($path, $marker) = @_;
    my ($q) = grep { index($_->{body} // '', $marker) >= 0 }
        $rc->requests_to($path);
    return $q // {};
}

# A provider request: POST, JSON, and neither the dispatch secret's
# header nor the client's Authorization.
sub provider_request_ok {
    my ($q, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $h = $q->{headers} // {};
    my @why;
    push @why, 'no request' unless defined $q->{method};
    push @why, 'method ' . ($q->{method} // 'undef')
        unless ($q->{method} // '') eq 'POST';
    push @why, 'Content-Type ' . ($h->{'content-type'} // 'undef')
        unless ($h->{'content-type'} // '') =~ m{^application/json\b};
    push @why, 'body is not a JSON object' unless ref $q->{json} eq 'HASH';
    push @why, 'X-ModelRoute-Dispatch leaked'
        if exists $h->{'x-modelroute-dispatch'};
    push @why, "a modelroute header leaked: $_"
        for grep { /modelroute/i } keys %$h;
    push @why, "the client's Authorization leaked" if exists $h->{authorization};
    push @why, 'an API key appears in the request'
        if grep { /sk_[0-9a-f]{64}/ } values(%$h), $q->{body} // '';
    ok(!@why, $name) or diag join("\n", @why) . "\n"
        . explain($q->{header_list}) . ($q->{body} // '');
}

# ---------------------------------------------------------------- idle model

# created first, checked at the end: a model without routes= waits
my $idle_acc = $t->new_account(credit => '1.00');
my $idle = $t->create_exec($idle_acc->{key},
    $t->exec_body(model => 'idle', input => { prompt => 'wait' }));
is($idle->{status}, 202, 'idle model: 202') or diag $idle->{body};
my $idle_id = $idle->{json}{id} // 'exec_none';

# ---------------------------------------------------------------- simulator

sub routes_by_name {
    my $r = $t->admin(GET => '/routes');
    return { map { ($_->{name} // '') => $_ }
        @{ ref $r->{json} eq 'HASH' ? $r->{json}{data} // [] : [] } };
}

my $routes_before = routes_by_name();

# the usage-based cost of a simulator answer, in micro-dollars
my %sim = (
    chat => { route => 'sim', input => { prompt => 'hello simulator',
            system => 'be brief' },
        result => sub {
            my ($res) = @_;
            is_deeply([ sort keys %$res ], [qw(finish_reason text usage)],
                'chat: result keys text, finish_reason, usage');
            is($res->{text}, 'a simulated answer', 'chat: text');
            is($res->{finish_reason}, 'stop', 'chat: finish_reason');
            is($res->{usage}{output_tokens}, 16, 'chat: output_tokens 16');
            ok(($res->{usage}{input_tokens} // 0) > 0, 'chat: input_tokens');
            return 2000 + ($res->{usage}{input_tokens} // 0)
                + 2 * ($res->{usage}{output_tokens} // 0);
        } },
    anth => { route => 'sim-anth', input => { prompt => 'hello anthropic' },
        result => sub {
            my ($res) = @_;
            is_deeply([ sort keys %$res ], [qw(finish_reason text usage)],
                'anthropic: result keys text, finish_reason, usage');
            is($res->{text}, 'a simulated answer', 'anthropic: text');
            is($res->{finish_reason}, 'end_turn', 'anthropic: finish_reason');
            is($res->{usage}{output_tokens}, 16, 'anthropic: output_tokens');
            ok(($res->{usage}{input_tokens} // 0) > 0,
                'anthropic: input_tokens');
            return 2000 + ($res->{usage}{input_tokens} // 0)
                + 2 * ($res->{usage}{output_tokens} // 0);
        } },
    emb => { route => 'sim-emb', input => { input => 'embed this' },
        result => sub {
            my ($res) = @_;
            is_deeply($res->{embeddings}, [[0.125, -0.25, 0.5, 1]],
                'embeddings: embeddings');
            ok(ref $res->{usage} eq 'HASH'
                && ($res->{usage}{input_tokens} // 0) > 0,
                'embeddings: usage with input_tokens') or diag explain $res;
            return 1000 + ($res->{usage}{input_tokens} // 0);
        } },
    img => { route => 'sim-img', input => { prompt => 'a red square' },
        result => sub {
            my ($res) = @_;
            is_deeply($res->{images},
                [{ url => 'https://simulator.invalid/image-1.png' }],
                'images: images [{url}]');
            is_deeply($res->{usage}, { images => 1 }, 'images: usage');
            return 20000;
        } },
);

for my $model (qw(chat anth emb img)) {
    my $s = $sim{$model};
    my $acc = $t->new_account(credit => '5.00');
    my ($r, $e) = run_exec($acc->{key}, $model, $s->{input});
    is($r->{json}{status}, 'PENDING', "$model: created PENDING");
    is($e->{status}, 'COMPLETED', "$model: COMPLETED on its own")
        or diag explain $e;
    one_attempt_ok($e, $s->{route}, "$model: one succeeded attempt on "
        . "$s->{route}, times in order");
    my $want = $s->{result}->(ref $e->{result} eq 'HASH' ? $e->{result} : {});
    cost_within_hold($e, "$model: cost set, not above the hold");
    is(micros($e->{cost} // '0'), $want,
        "$model: cost priced from the reported usage");
    is($e->{latency_ms}, int(1000 * (parse_rfc3339($e->{completed_at} // '')
        // 0) - 1000 * (parse_rfc3339($e->{created_at} // '') // 0) + 0.5),
        "$model: latency_ms = completed_at - created_at");

    my $res = $t->req(GET => "/v1/executions/$e->{id}/result",
        auth($acc->{key}));
    is($res->{status}, 200, "$model: GET result 200");
    is_deeply($res->{json}{result}, $e->{result}, "$model: result endpoint");
    is($res->{json}{status}, 'COMPLETED', "$model: result status");
    money_is($res->{json}{cost}, $e->{cost} // '0', "$model: result cost");

    ledger_ok($acc, '5.00', micros($e->{cost} // '0'), $model);
}

# ---------------------------------------------------------------- fake providers

my $facc = $t->new_account(credit => '20.00');
my $fkey = $facc->{key};
my $fcharged = 0;
my $mark = 0;
sub marker { sprintf 'marker-%d-%d', $$, ++$mark }

sub chat_answer {
    my (%o) = @_;
    my $a = { id => 'chatcmpl-1', object => 'chat.completion',
        choices => [ { index => 0, finish_reason => $o{finish} // 'stop',
            message => { role => 'assistant', content => $o{text} } } ] };
    $a->{usage} = $o{usage} if $o{usage};
    return $a;
}

# -- openai_chat: prompt and system, parameters, usage 1000/2000 → 0.005
{
    $rc->set($fake_path{chat}, json => chat_answer(text => 'hi there',
        usage => { prompt_tokens => 1000, completion_tokens => 2000,
            total_tokens => 3000 }));
    my $m = marker();
    my ($r, $e) = run_exec($fkey, 'fchat', { prompt => "hello $m",
        system => 'be nice', temperature => 0.5, max_tokens => 300,
        top_p => 1, stop => ['END'], seed => 42 });
    is($e->{status}, 'COMPLETED', 'fake chat: COMPLETED') or diag explain $e;
    one_attempt_ok($e, 'f-chat', 'fake chat: one succeeded attempt');
    my $q = provider_request($fake_path{chat}, $m);
    provider_request_ok($q, 'fake chat: POST JSON, no secret, no key');
    my $j = $q->{json} // {};
    is($j->{model}, 'gpt-x', 'fake chat: model is the provider name');
    is_deeply($j->{messages}, [ { role => 'system', content => 'be nice' },
        { role => 'user', content => "hello $m" } ],
        'fake chat: messages from input.system and input.prompt');
    is($j->{temperature}, 0.5, 'fake chat: temperature passed');
    is($j->{max_tokens}, 300, 'fake chat: max_tokens passed');
    is($j->{top_p}, 1, 'fake chat: top_p passed');
    is_deeply($j->{stop}, ['END'], 'fake chat: stop passed');
    is($j->{seed}, 42, 'fake chat: seed passed');
    is_deeply($e->{result}, { text => 'hi there', finish_reason => 'stop',
        usage => { input_tokens => 1000, output_tokens => 2000 } },
        'fake chat: result normalized');
    is($e->{cost}, '0.005', 'fake chat: cost "0.005" from usage 1000/2000');
    $fcharged += micros($e->{cost} // '0');
}

# -- openai_chat: input.messages passed through
{
    $rc->set($fake_path{chat}, json => chat_answer(text => 'ok',
        finish => 'length',
        usage => { prompt_tokens => 10, completion_tokens => 20 }));
    my $m = marker();
    my @msgs = ({ role => 'system', content => 'sys' },
        { role => 'user', content => "first $m" },
        { role => 'assistant', content => 'reply' },
        { role => 'user', content => [ { type => 'text', text => 'second' } ] });
    my ($r, $e) = run_exec($fkey, 'fchat', { messages => \@msgs });
    is($e->{status}, 'COMPLETED', 'fake chat messages: COMPLETED');
    my $q = provider_request($fake_path{chat}, $m);
    provider_request_ok($q, 'fake chat messages: request');
    is_deeply($q->{json}{messages}, \@msgs,
        'fake chat messages: input.messages passed through');
    is_deeply($e->{result}, { text => 'ok', finish_reason => 'length',
        usage => { input_tokens => 10, output_tokens => 20 } },
        'fake chat messages: result');
    money_is($e->{cost}, '0.00005', 'fake chat messages: cost 10/20 tokens');
    $fcharged += micros($e->{cost} // '0');
}

# -- routes=f-chat without :name: the provider model is the slug
{
    $rc->set($fake_path{chat}, json => chat_answer(text => 'default'));
    my $m = marker();
    my ($r, $e) = run_exec($fkey, 'fdefault', { prompt => $m });
    is($e->{status}, 'COMPLETED', 'default name: COMPLETED');
    is(provider_request($fake_path{chat}, $m)->{json}{model}, 'fdefault',
        'default name: the model slug is sent');
    # no usage reported: the estimate is charged
    ok(defined $e->{cost}, 'no usage: cost set');
    money_is($e->{cost}, $e->{estimated_cost} // '-1',
        'no usage: cost = estimated_cost');
    $fcharged += micros($e->{cost} // '0');
}

# -- usage beyond the hold: the hold is charged, not more
{
    $rc->set($fake_path{chat}, json => chat_answer(text => 'expensive',
        usage => { prompt_tokens => 1_000_000,
            completion_tokens => 1_000_000 }));
    my ($r, $e) = run_exec($fkey, 'fchat', { prompt => marker() });
    is($e->{status}, 'COMPLETED', 'huge usage: COMPLETED');
    is_deeply($e->{result}{usage}, { input_tokens => 1_000_000,
        output_tokens => 1_000_000 }, 'huge usage: reported in the result');
    money_is($e->{cost}, $e->{hold_amount} // '-1',
        'huge usage ($3): cost capped at the hold');
    $fcharged += micros($e->{cost} // '0');
}

# -- anthropic: system split out, max_tokens the model's or the input's
{
    $rc->set($fake_path{anth}, json => { id => 'msg_1', type => 'message',
        role => 'assistant', stop_reason => 'end_turn',
        content => [ { type => 'text', text => 'Hello, ' },
            { type => 'text', text => 'world' } ],
        usage => { input_tokens => 11, output_tokens => 7 } });
    my $m = marker();
    my ($r, $e) = run_exec($fkey, 'fanth', { prompt => "hi $m",
        system => 'you are terse', temperature => 0.25 });
    is($e->{status}, 'COMPLETED', 'fake anthropic: COMPLETED')
        or diag explain $e;
    one_attempt_ok($e, 'f-anth', 'fake anthropic: one succeeded attempt');
    my $q = provider_request($fake_path{anth}, $m);
    provider_request_ok($q, 'fake anthropic: request');
    my $j = $q->{json} // {};
    is($j->{model}, 'claude-x', 'fake anthropic: model');
    is($j->{system}, 'you are terse', 'fake anthropic: system apart');
    is_deeply($j->{messages}, [ { role => 'user', content => "hi $m" } ],
        'fake anthropic: messages hold only the user prompt');
    is($j->{max_tokens}, 777, "fake anthropic: max_tokens is the model's");
    is($j->{temperature}, 0.25, 'fake anthropic: temperature passed');
    is_deeply($e->{result}, { text => 'Hello, world',
        finish_reason => 'end_turn',
        usage => { input_tokens => 11, output_tokens => 7 } },
        'fake anthropic: result normalized (text blocks joined)');
    is($e->{cost}, '0.000025', 'fake anthropic: cost from usage 11/7');
    $fcharged += micros($e->{cost} // '0');

    $m = marker();
    ($r, $e) = run_exec($fkey, 'fanth', { max_tokens => 50, messages => [
        { role => 'system', content => 'sys prompt' },
        { role => 'user', content => "q $m" },
        { role => 'assistant', content => 'a' },
        { role => 'user', content => 'q2' } ] });
    is($e->{status}, 'COMPLETED', 'fake anthropic messages: COMPLETED');
    $q = provider_request($fake_path{anth}, $m);
    provider_request_ok($q, 'fake anthropic messages: request');
    $j = $q->{json} // {};
    is($j->{max_tokens}, 50, "fake anthropic: max_tokens is the input's");
    is($j->{system}, 'sys prompt', 'fake anthropic: system message split out');
    is_deeply($j->{messages}, [ { role => 'user', content => "q $m" },
        { role => 'assistant', content => 'a' },
        { role => 'user', content => 'q2' } ],
        'fake anthropic: the other messages in order');
    $fcharged += micros($e->{cost} // '0');
}

# -- openai_embeddings: input from input.input, input.text, input.prompt
{
    $rc->set($fake_path{emb}, json => { object => 'list', data => [
            { object => 'embedding', index => 0, embedding => [0.5, -1] },
            { object => 'embedding', index => 1, embedding => [0.25, 2] } ],
        usage => { prompt_tokens => 8, total_tokens => 8 } });
    my $m = marker();
    my ($r, $e) = run_exec($fkey, 'femb', { input => [ "a $m", 'b' ] });
    is($e->{status}, 'COMPLETED', 'fake embeddings: COMPLETED')
        or diag explain $e;
    one_attempt_ok($e, 'f-emb', 'fake embeddings: one succeeded attempt');
    my $q = provider_request($fake_path{emb}, $m);
    provider_request_ok($q, 'fake embeddings: request');
    is($q->{json}{model}, 'text-emb-x', 'fake embeddings: model');
    is_deeply($q->{json}{input}, [ "a $m", 'b' ],
        'fake embeddings: input from input.input');
    is_deeply($e->{result}{embeddings}, [ [0.5, -1], [0.25, 2] ],
        'fake embeddings: result embeddings');
    is($e->{result}{usage}{input_tokens}, 8, 'fake embeddings: usage');
    is($e->{cost}, '0.000008', 'fake embeddings: cost from 8 tokens');
    $fcharged += micros($e->{cost} // '0');

    for my $field (qw(text prompt)) {
        $m = marker();
        ($r, $e) = run_exec($fkey, 'femb', { $field => "t $m" });
        is($e->{status}, 'COMPLETED', "fake embeddings input.$field: done");
        is(provider_request($fake_path{emb}, $m)->{json}{input}, "t $m",
            "fake embeddings: input from input.$field");
        $fcharged += micros($e->{cost} // '0');
    }
}

# -- openai_images: prompt, n, size...; urls and b64_json
{
    $rc->set($fake_path{img}, json => { created => 1, data => [
        { url => 'https://img.invalid/1.png', revised_prompt => 'x' },
        { b64_json => 'aGVsbG8=' } ] });
    my $m = marker();
    my ($r, $e) = run_exec($fkey, 'fimg', { prompt => "a cat $m", n => 2,
        size => '512x512', quality => 'hd', style => 'vivid',
        response_format => 'url' });
    is($e->{status}, 'COMPLETED', 'fake images: COMPLETED') or diag explain $e;
    one_attempt_ok($e, 'f-img', 'fake images: one succeeded attempt');
    my $q = provider_request($fake_path{img}, $m);
    provider_request_ok($q, 'fake images: request');
    is_deeply($q->{json}, { model => 'dall-x', prompt => "a cat $m", n => 2,
        size => '512x512', quality => 'hd', style => 'vivid',
        response_format => 'url' }, 'fake images: request body');
    is_deeply($e->{result}, { images => [
            { url => 'https://img.invalid/1.png' },
            { b64_json => 'aGVsbG8=' } ],
        usage => { images => 2 } }, 'fake images: result normalized');
    is($e->{cost}, '0.02', 'fake images: cost 2 images x 0.01');
    $fcharged += micros($e->{cost} // '0');
}

ledger_ok($facc, '20.00', $fcharged, 'fake providers');

# ---------------------------------------------------------------- events

# execution.started, then execution.completed, for each of 10 executions
# (one at a time: the two events of one often fall in the same
# millisecond, which is what the order has to survive)
{
    my $acc = $t->new_account(credit => '1.00');
    my $r = wh_create($t, $acc->{key}, { url => $rc->url('/events') });
    is($r->{status}, 201, 'events: endpoint created') or diag $r->{body};
    my $secret = $r->{json}{secret} // 'whsec_';
    my (@misordered, @unsigned, @missing, $first);
    for my $i (1 .. 10) {
        my ($c, $e) = run_exec($acc->{key}, 'chat', { prompt => "events $i" });
        my $id = $e->{id} // 'exec_none';
        my @q = $rc->wait_requests(2, path => '/events', where => sub {
            ((event_of($_[0]) // {})->{execution_id} // '') eq $id });
        my @ev = map { event_of($_) // {} } @q;
        my %by = map { ($_->{event_type} // '') => $_ } @ev;
        $first //= { exec => $e, by => \%by };
        push @missing, $id
            unless @ev == 2 && $by{'execution.started'}
                && $by{'execution.completed'};
        push @unsigned, $id if grep { signature_problems($_, $secret) } @q;
        next if ($ev[0]{event_type} // '') eq 'execution.started';
        my $d = wh_exec_deliveries($t, $acc->{key}, $id) // [];
        push @misordered, "$id: arrived "
            . join(', ', map { $_->{event_type} // '?' } @ev)
            . "; deliveries: " . join(', ', map { sprintf '%s %s created %s '
                . 'sent %s', $_->{event_type} // '?', $_->{id} // '?',
                $_->{created_at} // '?', $_->{attempts}[0]{at} // '-' }
                sort { ($a->{id} // '') cmp ($b->{id} // '') } @$d);
    }
    is(scalar @missing, 0, 'events: each execution got started and '
        . 'completed, once each') or diag "@missing";
    is(scalar @misordered, 0, 'events: execution.started arrives before '
        . 'execution.completed (10 executions)')
        or diag join "\n", @misordered;
    is(scalar @unsigned, 0, 'events: every delivery signed');

    my ($e, $by) = @{$first}{qw(exec by)};
    my $st = $by->{'execution.started'} // {};
    my $co = $by->{'execution.completed'} // {};
    is($st->{data}{status}, 'PROCESSING',
        'events: started carries the PROCESSING object');
    is($st->{data}{started_at}, $e->{started_at},
        'events: started carries started_at');
    is($co->{data}{status}, 'COMPLETED',
        'events: completed carries the COMPLETED object');
    is_deeply($co->{data}{result}, $e->{result},
        'events: completed carries the result');
    is_deeply($co->{data}{attempts}, $e->{attempts},
        'events: completed carries the attempts');
}

# ---------------------------------------------------------------- idempotency

{
    $rc->set($fake_path{chat}, json => chat_answer(text => 'once',
        usage => { prompt_tokens => 5, completion_tokens => 5 }));
    my $acc = $t->new_account(credit => '1.00');
    my $m = marker();
    my $body = $t->exec_body(model => 'fchat', input => { prompt => $m });
    my $r = $t->create_exec($acc->{key}, $body);
    my $e = terminal($acc->{key}, $r->{json}{id} // 'exec_none');
    is($e->{status}, 'COMPLETED', 'replay: first execution COMPLETED');
    my $bal = $t->balance($acc->{key});

    my $again = $t->create_exec($acc->{key}, $body);
    is($again->{status}, 202, 'replay: 202');
    is($again->{headers}{'idempotent-replayed'}, 'true',
        'replay: Idempotent-Replayed: true');
    is($again->{json}{id}, $e->{id}, 'replay: the same execution');
    is($again->{json}{status}, 'COMPLETED', 'replay: the COMPLETED object');
    is_deeply($again->{json}{result}, $e->{result}, 'replay: its result');
    is_deeply($again->{json}{attempts}, $e->{attempts}, 'replay: its attempts');
    is_deeply($t->balance($acc->{key}), $bal, 'replay: no new hold or charge');

    # a later execution on the same route completes: by then a second
    # request for the replayed one would have been made
    my ($c2, $e2) = run_exec($acc->{key}, 'fchat', { prompt => marker() });
    is($e2->{status}, 'COMPLETED', 'replay: a later execution completes');
    is(scalar(grep { index($_->{body} // '', $m) >= 0 }
        $rc->requests_to($fake_path{chat})), 1,
        'replay: the provider got one request, not two');
    is(scalar @{ terminal($acc->{key}, $e->{id})->{attempts} // [] }, 1,
        'replay: still one attempt');
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, 'replay: verify ok');
    is($v->{executions}, 2, 'replay: two executions in all');
}

# ---------------------------------------------------------------- routes

{
    my $now = routes_by_name();
    is_deeply([ sort keys %$now ], [ sort qw(sim sim-anth sim-emb sim-img
        f-chat f-anth f-emb f-img) ], 'GET /admin/routes lists every route');
    my %proto = (sim => 'openai_chat', 'sim-anth' => 'anthropic',
        'sim-emb' => 'openai_embeddings', 'sim-img' => 'openai_images',
        'f-chat' => 'openai_chat', 'f-anth' => 'anthropic',
        'f-emb' => 'openai_embeddings', 'f-img' => 'openai_images');
    for my $n (sort keys %proto) {
        my $s = $now->{$n} // {};
        my @why;
        push @why, 'location' unless ($s->{location} // '') eq "/providers/$n";
        push @why, 'protocol' unless ($s->{protocol} // '') eq $proto{$n};
        push @why, 'breaker' unless ($s->{breaker} // '') eq 'closed';
        push @why, 'consecutive_failures'
            unless defined $s->{consecutive_failures}
                && $s->{consecutive_failures} == 0;
        push @why, 'failures'
            unless defined $s->{failures} && $s->{failures} == 0;
        push @why, 'in_flight'
            unless defined $s->{in_flight} && $s->{in_flight} == 0;
        push @why, 'open_until' if defined $s->{open_until};
        push @why, 'paused_until' if defined $s->{paused_until};
        push @why, 'attempts did not increase'
            unless ($s->{attempts} // 0)
                > (($routes_before->{$n} // {})->{attempts} // 0);
        ok(!@why, "route $n: closed, no failures, attempts counted")
            or diag join(', ', @why) . "\n" . explain $s;
    }
    is($now->{'f-chat'}{timeout_ms}, 5000, 'route f-chat: timeout=5s');
    is($now->{'f-chat'}{max_concurrency}, 50, 'route f-chat: max_concurrency');
    is($now->{sim}{timeout_ms}, 60000, 'route sim: default timeout 60s');

    # one more execution: exactly one more attempt on its route
    my $acc = $t->new_account(credit => '1.00');
    my $before = $now->{'sim-anth'}{attempts} // 0;
    my ($c, $e) = run_exec($acc->{key}, 'anth', { prompt => 'count me' });
    is($e->{status}, 'COMPLETED', 'routes: one more execution');
    is(routes_by_name()->{'sim-anth'}{attempts}, $before + 1,
        'routes: sim-anth attempts + 1');
}

# ---------------------------------------------------------------- 200 at once

{
    my $acc = $t->new_account(credit => '10.00');
    my $before = routes_by_name()->{sim}{attempts} // 0;
    my @res = $t->parallel(20, sub {
        my ($i) = @_;
        my @out;
        for my $j (1 .. 10) {
            my $r = $t->create_exec($acc->{key}, $t->exec_body(model => 'chat',
                input => { prompt => "load $i.$j" }));
            push @out, [ $r->{status}, $r->{json}{id} ];
        }
        return \@out;
    });
    my @all = map { ref $_ eq 'ARRAY' ? @$_ : () } @res;
    is(scalar(grep { $_->[0] == 202 } @all), 200, '200 creates: all 202')
        or diag explain [ grep { ref $_ ne 'ARRAY' } @res ];
    my %ids = map { ($_->[1] // '') => 1 } @all;
    is(scalar keys %ids, 200, '200 distinct executions');

    my @done;
    wait_for(sub {
        @done = $t->list_all($acc->{key}, 'status=COMPLETED');
        return @done >= 200;
    }, 60, 0.2);
    is(scalar @done, 200, '200 executions: all COMPLETED on their own')
        or diag scalar(@done) . ' completed; statuses: '
            . join(' ', map { $_->{status} } $t->list_all($acc->{key}));
    my @bad = grep {
        ref $_->{attempts} ne 'ARRAY' || @{ $_->{attempts} } != 1
            || ($_->{attempts}[0]{outcome} // '') ne 'succeeded'
            || ($_->{attempts}[0]{route} // '') ne 'sim'
    } @done;
    is(scalar @bad, 0, '200 executions: each exactly one succeeded attempt')
        or diag explain $bad[0];
    my $charged = 0;
    $charged += micros($_->{cost} // '0') for @done;
    ok(!grep({ !defined $_->{cost}
        || micros($_->{cost}) > micros($_->{hold_amount}) } @done),
        '200 executions: cost set, within the hold');
    ledger_ok($acc, '10.00', $charged, '200 executions');
    is(routes_by_name()->{sim}{attempts} - $before, 200,
        'route sim: 200 more attempts');
}

# ---------------------------------------------------------------- idle model

{
    my $e = $t->get_exec($idle_acc->{key}, $idle_id)->{json} // {};
    is($e->{status}, 'PENDING', 'model without routes: still PENDING '
        . 'after every other execution completed');
    is_deeply($e->{attempts}, [], 'model without routes: no attempt');
    ok(!defined $e->{started_at}, 'model without routes: started_at null');
    my $b = $t->balance($idle_acc->{key});
    money_is($b->{held}, $e->{hold_amount} // '-1',
        'model without routes: its hold stays');
    my $r = $t->req(POST => "/v1/executions/$idle_id/cancel",
        auth($idle_acc->{key}));
    is($r->{json}{status}, 'CANCELLED', 'model without routes: cancel');
    money_is($t->balance($idle_acc->{key})->{held}, '0',
        'model without routes: hold released');
    ok($t->verify($idle_acc->{org})->{ok}, 'model without routes: verify ok');
}

# ---------------------------------------------------------------- nginx -t

my $store = "modelroute_store %%STORE%%;\n";
my $api = <<'EOF';
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
}
EOF
my $disp = <<'EOF';
server {
    modelroute_dispatch;
    location /providers/sim { internal; modelroute_simulator; }
}
EOF

sub conf_ok {
    my ($conf, $name) = @_;
    my ($rcode, $out) = MR::Test->new(http => $conf)->test_config;
    is($rcode, 0, "$name: nginx -t passes") or diag $out;
}

sub conf_refused {
    my ($conf, $name, @words) = @_;
    my ($rcode, $out) = MR::Test->new(http => $conf)->test_config;
    isnt($rcode, 0, "$name: nginx -t fails");
    for my $w (@words) {
        like($out, ref $w ? $w : qr/\Q$w\E/, "$name: message names $w")
            or diag $out;
    }
}

my $sim_route = "modelroute_route sim /providers/sim protocol=openai_chat;\n";

conf_ok($store . $sim_route
    . "modelroute_model m1 per_request=0.01 routes=sim:x attempts=2;\n"
    . $api . $disp, 'a route, a model on it, a dispatch server');

conf_refused($store . $sim_route
    . "modelroute_model m1 per_request=0.01 routes=sim,nosuch;\n"
    . $api . $disp, 'routes= naming an unknown route',
    'modelroute_model', 'nosuch', 'unknown route');

conf_refused($store . $sim_route
    . "modelroute_model m1 per_request=0.01 routes=sim;\n" . $api,
    'a model with routes and no dispatch server', 'modelroute_dispatch');

conf_refused($store . $sim_route
    . "modelroute_route cb /providers/cb protocol=async;\n"
    . "modelroute_model m1 per_request=0.01 routes=cb;\n" . $api . $disp,
    'protocol=async without modelroute_callback_url',
    'modelroute_callback_url');

conf_refused($store
    . "modelroute_route sim /providers/sim protocol=grpc;\n"
    . "modelroute_model m1 per_request=0.01 routes=sim;\n" . $api . $disp,
    'a bad protocol', 'modelroute_route', 'protocol=grpc');

conf_refused($store . $sim_route
    . "modelroute_route sim /providers/other protocol=anthropic;\n"
    . "modelroute_model m1 per_request=0.01 routes=sim;\n" . $api . $disp,
    'a duplicate route name', 'modelroute_route', '"sim"');

$t->done;
