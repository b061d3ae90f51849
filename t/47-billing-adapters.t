# Billing of every adapter against the README's one rule (issue 10,
# item 5).  The rule, for the estimate and the charge alike:
#
#   per_request + per_image x images + per_second x seconds
#   + input tokens x input_per_mtok / 10^6
#   + output tokens x output_per_mtok / 10^6      (each term rounded up)
#
# The estimate prices what the execution may use: images = input.n,
# input tokens = ceil(bytes of the encoded input / 4) + image_tokens per
# part of a message's content that is not text, output tokens = the
# output budget (input.max_tokens or the model's max_tokens) x input.n.
# A COMPLETED execution is charged the rule over what the provider
# reports it used (images: those in the answer; tokens: its usage,
# Anthropic's cache tokens included), the estimate when it leaves out a
# token count the model has a price for, never more than the hold.
#
# Each adapter against a fake provider (MR::Receiver): openai_chat (the
# budget is always sent, as max_tokens or max_completion_tokens; so is it
# to anthropic and in an asynchronous job),
# anthropic, openai_embeddings, openai_images (per image and per token),
# async (the callback's usage), and the simulator in each format.  The
# cases that main got wrong: chat sent no budget, images ignored the
# provider's token usage (cost 0.00, with or without usage), image parts
# were estimated as their bytes (a URL: a few tokens), Anthropic's cache
# tokens were not charged, a callback without output tokens was charged
# none, and the simulator ignored max_tokens and n.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver;

my $rc = MR::Receiver->new;
$rc->start;
my $RP = $rc->port;

# micro-dollars per unit (per million tokens for in/out), as configured
my %M = (
    bchat   => { per_request => 1000, in => 1_000_000, out => 2_000_000,
                 max_tokens => 500 },
    bchatc  => { in => 1_000_000, out => 2_000_000, max_tokens => 400 },
    banth   => { in => 3_000_000, out => 15_000_000, max_tokens => 300 },
    bemb    => { per_request => 100, in => 100_000 },
    bimg    => { per_image => 40_000 },
    bimgtok => { in => 5_000_000, out => 40_000_000, max_tokens => 5000 },
    bvision => { in => 10_000_000, out => 10_000_000, max_tokens => 10,
                 image_tokens => 1500 },
    bvdef   => { in => 10_000_000, max_tokens => 10 },
    basync  => { per_request => 10_000, in => 1_000_000, out => 2_000_000,
                 max_tokens => 1000 },
    bjobimg => { per_image => 30_000 },
    schat   => { per_request => 2000, in => 1_000_000, out => 2_000_000,
                 max_tokens => 200 },
    santh   => { in => 1_000_000, out => 2_000_000, max_tokens => 300 },
    semb    => { per_request => 1000, in => 1_000_000 },
    simg    => { per_image => 20_000 },
);

sub money { my ($u) = @_; return sprintf '%d.%06d', int($u / 1e6), $u % 1e6 }

my $models = join '', map {
    my $m = $M{$_};
    my @p;
    push @p, 'per_request=' . money($m->{per_request}) if $m->{per_request};
    push @p, 'per_image=' . money($m->{per_image}) if $m->{per_image};
    push @p, 'input_per_mtok=' . money($m->{in}) if $m->{in};
    push @p, 'output_per_mtok=' . money($m->{out}) if $m->{out};
    push @p, "max_tokens=$m->{max_tokens}" if $m->{max_tokens};
    push @p, "image_tokens=$m->{image_tokens}" if $m->{image_tokens};
    my $route = { bchat => 'f-chat', bchatc => 'f-chatc', banth => 'f-anth',
        bemb => 'f-emb', bimg => 'f-img', bimgtok => 'f-img',
        bvision => 'f-chat', bvdef => 'f-chat', basync => 'job',
        bjobimg => 'job',
        schat => 's-chat', santh => 's-anth', semb => 's-emb',
        simg => 's-img' }->{$_};
    "modelroute_model $_ @p routes=$route:prov-$_;\n";
} sort keys %M;

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_callback_url http://127.0.0.1:%%PORT%%/v1/callbacks;
modelroute_route f-chat  /p/chat  protocol=openai_chat;
modelroute_route f-chatc /p/chatc protocol=openai_chat
                 max_tokens_field=max_completion_tokens;
modelroute_route f-anth  /p/anth  protocol=anthropic;
modelroute_route f-emb   /p/emb   protocol=openai_embeddings;
modelroute_route f-img   /p/img   protocol=openai_images;
modelroute_route job     /p/job   protocol=async;
modelroute_route s-chat  /p/s-chat protocol=openai_chat;
modelroute_route s-anth  /p/s-anth protocol=anthropic;
modelroute_route s-emb   /p/s-emb  protocol=openai_embeddings;
modelroute_route s-img   /p/s-img  protocol=openai_images;
$models
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/chat  { internal; proxy_pass http://127.0.0.1:$RP/chat; }
    location /p/chatc { internal; proxy_pass http://127.0.0.1:$RP/chatc; }
    location /p/anth  { internal; proxy_pass http://127.0.0.1:$RP/anth; }
    location /p/emb   { internal; proxy_pass http://127.0.0.1:$RP/emb; }
    location /p/img   { internal; proxy_pass http://127.0.0.1:$RP/img; }
    location /p/job   { internal; proxy_pass http://127.0.0.1:$RP/job; }
    location /p/s-chat {
        internal; modelroute_simulator format=chat output_tokens=600;
    }
    location /p/s-anth {
        internal; modelroute_simulator format=anthropic output_tokens=600;
    }
    location /p/s-emb { internal; modelroute_simulator format=embeddings; }
    location /p/s-img { internal; modelroute_simulator format=images; }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;

my $acc = $t->new_account(credit => '100.00');
my $charged = 0;
my $mark = 0;
sub marker { sprintf 'bill-%d-%d', $$, ++$mark }

# ---------------------------------------------------------------- the rule

sub ceil_div { my ($a, $b) = @_; return int(($a + $b - 1) / $b) }

# The rule over quantities; undef: a token count the model has a price for
# is not known (then the estimate is charged).
sub rule {
    my ($m, %u) = @_;
    return undef if ($m->{in} && !defined $u{in})
        || ($m->{out} && !defined $u{out});
    return ($m->{per_request} // 0)
        + ($m->{per_image} // 0) * ($u{images} // 1)
        + ceil_div(($u{in} // 0) * ($m->{in} // 0), 1_000_000)
        + ceil_div(($u{out} // 0) * ($m->{out} // 0), 1_000_000);
}

# The parts of the input's messages that are not text (their content and
# a tool result's content)
sub nontext_parts {
    my ($input) = @_;
    my $n = 0;
    for my $msg (@{ $input->{messages} // [] }) {
        next unless ref $msg->{content} eq 'ARRAY';
        for my $part (@{ $msg->{content} }) {
            $n++ if ($part->{type} // '') ne 'text';
            next unless ref $part->{content} eq 'ARRAY';
            $n++ for grep { ($_->{type} // '') ne 'text' }
                @{ $part->{content} };
        }
    }
    return $n;
}

# The estimate the rule gives for an input (ASCII: the store's encoding,
# sorted keys and compact, is JSON::PP's canonical one).
sub estimate_of {
    my ($model, $input) = @_;
    my $m = $M{$model};
    my $n = $input->{n} // 1;
    my $bytes = length json_encode($input);
    return rule($m, images => $n,
        in => ceil_div($bytes, 4)
            + nontext_parts($input) * ($m->{image_tokens} // 4096),
        out => ($input->{max_tokens} // $m->{max_tokens} // 1024) * $n);
}

sub hold_of { my ($e) = @_; my $h = int(($e * 6 + 4) / 5); $h < 10000 ? 10000 : $h }

# ---------------------------------------------------------------- helpers

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub terminal {
    my ($id, $want) = @_;
    my $last = {};
    wait_for(sub {
        my $r = $t->get_exec($acc->{key}, $id);
        $last = $r->{json} if $r->{status} == 200 && ref $r->{json};
        return $want ? ($last->{status} // '') eq $want
                     : $TERMINAL{ $last->{status} // '' };
    }, 20);
    return $last;
}

# Creates an execution, waits for its end; returns (execution, the
# provider request whose body holds the marker, the input as sent).
sub run {
    my ($model, $path, $input, %o) = @_;
    my $r = $t->create_exec($acc->{key},
        $t->exec_body(model => $model, input => $input));
    is($r->{status}, 202, "$model: 202") or diag $r->{body};
    my $e = terminal($r->{json}{id} // 'exec_none', $o{until});
    my ($q) = grep { index($_->{body} // '', $o{marker} // "\0") >= 0 }
        $rc->requests_to($path);
    return ($e, $q // {});
}

# The estimate shown is the rule's, and the hold follows from it.
sub estimate_ok {
    my ($e, $model, $input, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $want = estimate_of($model, $input);
    is(micros($e->{estimated_cost} // '-1'), $want,
        "$name: estimated_cost is the rule's (" . money($want) . ')');
    is(micros($e->{hold_amount} // '-1'), hold_of($want),
        "$name: hold = max(estimate x 1.2, 0.01)");
}

# COMPLETED, charged exactly $want (micro-dollars), counted for the ledger.
sub charged_ok {
    my ($e, $want, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($e->{status}, 'COMPLETED', "$name: COMPLETED") or diag explain $e;
    is(micros($e->{cost} // '-1'), $want, "$name: charged " . money($want))
        or diag "cost $e->{cost}, estimate $e->{estimated_cost}, hold "
            . "$e->{hold_amount}; result " . explain($e->{result});
    $charged += micros($e->{cost} // '0');
}

# The charge the rule gives for the usage in the result (the estimate if
# a priced count is missing), never above the hold.
sub rule_charge {
    my ($model, $e, %u) = @_;
    my $c = rule($M{$model}, %u) // micros($e->{estimated_cost});
    my $hold = micros($e->{hold_amount});
    return $c < $hold ? $c : $hold;
}

sub chat_answer {
    my (%usage) = @_;
    return { id => 'c1', object => 'chat.completion',
        choices => [ { index => 0, finish_reason => 'stop',
            message => { role => 'assistant', content => 'answer' } } ],
        %usage ? (usage => \%usage) : () };
}

# ---------------------------------------------------------------- openai_chat

# (a) the budget the hold was computed for is always sent: the model's
# max_tokens when the client gives none
{
    $rc->set('/chat', json => chat_answer(prompt_tokens => 1000,
        completion_tokens => 400, total_tokens => 1400));
    my $m = marker();
    my $in = { prompt => "hello $m" };
    my ($e, $q) = run('bchat', '/chat', $in, marker => $m);
    estimate_ok($e, 'bchat', $in, 'chat');
    is(($q->{json} // {})->{max_tokens}, 500,
        'chat: max_tokens sent without the client\'s: the model\'s 500')
        or diag $q->{body};
    charged_ok($e, rule($M{bchat}, in => 1000, out => 400),
        'chat: usage 1000/400');

    $m = marker();
    $in = { prompt => "hello $m", max_tokens => 50 };
    ($e, $q) = run('bchat', '/chat', $in, marker => $m);
    estimate_ok($e, 'bchat', $in, 'chat, max_tokens 50');
    is(($q->{json} // {})->{max_tokens}, 50,
        'chat: the client\'s max_tokens is the budget sent');
    charged_ok($e, rule_charge('bchat', $e, in => 1000, out => 400),
        'chat: usage 1000/400 again');
}

# the route that names the budget max_completion_tokens
{
    $rc->set('/chatc', json => chat_answer(prompt_tokens => 10,
        completion_tokens => 20));
    my $m = marker();
    my ($e, $q) = run('bchatc', '/chatc', { prompt => $m }, marker => $m);
    my $j = $q->{json} // {};
    is($j->{max_completion_tokens}, 400,
        'max_tokens_field=max_completion_tokens: the budget sent as that');
    ok(!exists $j->{max_tokens}, '... and no max_tokens') or diag $q->{body};
    charged_ok($e, rule($M{bchatc}, in => 10, out => 20), 'chat (completion)');
}

# no usage: the estimate
{
    $rc->set('/chat', json => chat_answer());
    my $m = marker();
    my ($e) = run('bchat', '/chat', { prompt => $m }, marker => $m);
    charged_ok($e, micros($e->{estimated_cost}), 'chat without usage');
    # usage without completion_tokens, the model priced per output token
    $rc->set('/chat', json => chat_answer(prompt_tokens => 3));
    $m = marker();
    ($e) = run('bchat', '/chat', { prompt => $m }, marker => $m);
    charged_ok($e, micros($e->{estimated_cost}),
        'chat, usage without completion_tokens: the estimate');
}

# (c) image parts: each non-text part counts image_tokens in the estimate
{
    # three images by URL (a few bytes each) and a tool result holding one
    my $m = marker();
    my $in = { messages => [
        { role => 'user', content => [
            { type => 'text', text => "what is in these, $m?" },
            { type => 'image_url', image_url => { url => 'https://i.invalid/a.png' } },
            { type => 'image_url', image_url => { url => 'https://i.invalid/b.png' } },
            { type => 'image_url', image_url => { url => 'https://i.invalid/c.png',
                detail => 'high' } } ] },
        { role => 'user', content => [ { type => 'tool_result',
            tool_use_id => 't1', content => [
                { type => 'text', text => 'a picture' },
                { type => 'image', source => { type => 'url',
                    url => 'https://i.invalid/d.png' } } ] } ] } ] };
    is(nontext_parts($in), 5, 'the input has 5 parts that are not text '
        . '(the tool result and its image among them)');
    # what a provider bills for them: about 1,100 tokens each
    $rc->set('/chat', json => chat_answer(prompt_tokens => 4500,
        completion_tokens => 10));
    my ($e, $q) = run('bvision', '/chat', $in, marker => $m);
    estimate_ok($e, 'bvision', $in, 'image parts');
    ok(micros($e->{hold_amount}) >= rule($M{bvision}, in => 4500, out => 10),
        'image parts: the hold covers what the provider bills');
    charged_ok($e, rule($M{bvision}, in => 4500, out => 10),
        'image parts: 4500 tokens in, charged in full');

    # the default allowance (4096 tokens a part)
    $m = marker();
    $in = { messages => [ { role => 'user', content => [
        { type => 'text', text => $m },
        { type => 'input_audio', input_audio => { data => 'AAAA',
            format => 'wav' } } ] } ] };
    $rc->set('/chat', json => chat_answer(prompt_tokens => 4000,
        completion_tokens => 1));
    ($e) = run('bvdef', '/chat', $in, marker => $m);
    estimate_ok($e, 'bvdef', $in, 'a part that is not text, the default');
    charged_ok($e, rule($M{bvdef}, in => 4000, out => 1),
        'the default allowance: 4000 tokens in, charged in full');
}

# ---------------------------------------------------------------- anthropic

{
    $rc->set('/anth', json => { id => 'm1', type => 'message',
        role => 'assistant', stop_reason => 'end_turn',
        content => [ { type => 'text', text => 'hi' } ],
        usage => { input_tokens => 100, output_tokens => 50,
            cache_creation_input_tokens => 2000,
            cache_read_input_tokens => 5000 } });
    # a long prompt, mostly read from and written to the prompt cache
    my $m = marker();
    my $in = { messages => [ { role => 'user', content => [ { type => 'text',
        text => "cached $m " . ('x' x 28_000),
        cache_control => { type => 'ephemeral' } } ] } ],
        max_tokens => 200 };
    my ($e, $q) = run('banth', '/anth', $in, marker => $m);
    is(($q->{json} // {})->{max_tokens}, 200,
        'anthropic: the budget sent is the client\'s max_tokens');
    estimate_ok($e, 'banth', $in, 'anthropic');
    charged_ok($e, rule($M{banth}, in => 7100, out => 50),
        'anthropic: the cache\'s tokens are input tokens (100 + 2000 + 5000)');
    is(eval { $e->{result}{usage}{input_tokens} }, 7100,
        'anthropic: usage.input_tokens counts the cache');

    $rc->set('/anth', json => { id => 'm2', type => 'message',
        role => 'assistant', stop_reason => 'end_turn',
        content => [ { type => 'text', text => 'hi' } ],
        usage => { input_tokens => 10, output_tokens => 20 } });
    $m = marker();
    ($e, $q) = run('banth', '/anth', { prompt => $m }, marker => $m);
    is(($q->{json} // {})->{max_tokens}, 300,
        'anthropic: the model\'s max_tokens without the client\'s');
    charged_ok($e, rule($M{banth}, in => 10, out => 20),
        'anthropic: usage priced');

    # a cache count that is not a count: the input's count is not known,
    # the estimate is charged (it was taken as 0: 10 tokens charged)
    $rc->set('/anth', json => { id => 'm3', type => 'message',
        role => 'assistant', stop_reason => 'end_turn',
        content => [ { type => 'text', text => 'hi' } ],
        usage => { input_tokens => 10, output_tokens => 20,
            cache_read_input_tokens => -3 } });
    $m = marker();
    ($e) = run('banth', '/anth', { prompt => $m }, marker => $m);
    charged_ok($e, micros($e->{estimated_cost}),
        'anthropic: a cache count that is not one: the estimate');
}

# ---------------------------------------------------------------- embeddings

{
    $rc->set('/emb', json => { object => 'list', data => [
        { object => 'embedding', index => 0, embedding => [0.5] } ],
        usage => { prompt_tokens => 12345, total_tokens => 12345 } });
    my $m = marker();
    my ($e) = run('bemb', '/emb', { input => $m }, marker => $m);
    charged_ok($e, rule($M{bemb}, in => 12345, out => 0),
        'embeddings: 12345 tokens');
    $rc->set('/emb', json => { object => 'list', data => [
        { object => 'embedding', index => 0, embedding => [0.5] } ] });
    $m = marker();
    ($e) = run('bemb', '/emb', { input => $m }, marker => $m);
    charged_ok($e, micros($e->{estimated_cost}),
        'embeddings without usage: the estimate');
}

# ---------------------------------------------------------------- images

{
    # per image: the images in the answer
    $rc->set('/img', json => { created => 1, data => [
        { url => 'https://i.invalid/1.png' }, { url => 'https://i.invalid/2.png' } ] });
    my $m = marker();
    my ($e) = run('bimg', '/img', { prompt => $m, n => 2 }, marker => $m);
    charged_ok($e, rule($M{bimg}, images => 2), 'images: 2 x 0.04');

    # (b) per token: the provider's usage (main: 0.00)
    $rc->set('/img', json => { created => 1,
        data => [ { b64_json => 'aGVsbG8=' } ],
        usage => { input_tokens => 2000, output_tokens => 3500,
            total_tokens => 5500 } });
    $m = marker();
    my $in = { prompt => $m };
    ($e) = run('bimgtok', '/img', $in, marker => $m);
    estimate_ok($e, 'bimgtok', $in, 'images per token');
    charged_ok($e, 150_000, 'images per token: usage 2000/3500 = 0.15');
    is_deeply($e->{result}{usage}, { images => 1, input_tokens => 2000,
        output_tokens => 3500 }, 'images per token: the usage in the result');

    # n images: the budget is each one's
    $rc->set('/img', json => { created => 1,
        data => [ { b64_json => 'aGVsbG8=' }, { b64_json => 'aGVsbG8=' } ],
        usage => { input_tokens => 20, output_tokens => 9000 } });
    $m = marker();
    $in = { prompt => $m, n => 2 };
    ($e) = run('bimgtok', '/img', $in, marker => $m);
    estimate_ok($e, 'bimgtok', $in, 'images per token, n=2');
    charged_ok($e, rule($M{bimgtok}, in => 20, out => 9000),
        'images per token, n=2: 9000 tokens out, charged in full');

    # (b) no usage from a model priced per token: the estimate (main: 0.00)
    $rc->set('/img', json => { created => 1,
        data => [ { url => 'https://i.invalid/x.png' } ] });
    $m = marker();
    ($e) = run('bimgtok', '/img', { prompt => $m }, marker => $m);
    charged_ok($e, micros($e->{estimated_cost}),
        'images per token without usage: the estimate');
    ok(micros($e->{cost}) > 0, '... which is not 0.00');
}

# ---------------------------------------------------------------- async

# the provider of the job $q (the request it got) calls back with $body
sub call_back {
    my ($q, $body) = @_;
    my $j = $q->{json} // {};
    my ($path) = ($j->{callback_url} // '') =~ m{(/v1/callbacks/.*)$};
    return $t->req(POST => $path // '/v1/callbacks/none',
        { Authorization => 'Bearer ' . ($j->{callback_token} // '') }, $body);
}

{
    $rc->set('/job', status => 202, json => { job_id => 'j' });
    my @cases = (
        [ 'usage in and out', { input_tokens => 1000, output_tokens => 2000 },
          sub { rule($M{basync}, in => 1000, out => 2000) } ],
        [ 'no usage', undef, sub { micros($_[0]{estimated_cost}) } ],
        [ 'input tokens only (the model has an output price)',
          { input_tokens => 5 }, sub { micros($_[0]{estimated_cost}) } ],
        [ 'usage above the hold', { input_tokens => 10_000_000,
            output_tokens => 10_000_000 }, sub { micros($_[0]{hold_amount}) } ],
        # more than the gateway counts (1e9): that many, past the hold (it
        # was taken as no count, and the estimate charged)
        [ 'a count past 1,000,000,000', { input_tokens => 5,
            output_tokens => 1_500_000_000 },
          sub { micros($_[0]{hold_amount}) } ],
        [ 'a negative count', { input_tokens => 5, output_tokens => -3 },
          sub { micros($_[0]{estimated_cost}) } ],
    );
    for my $c (@cases) {
        my ($name, $usage, $want) = @$c;
        my $m = marker();
        my ($e, $q) = run('basync', '/job', { prompt => $m,
            max_tokens => 3000 }, marker => $m, until => 'AWAITING_WEBHOOK');
        my $j = $q->{json} // {};
        is($j->{max_tokens}, 3000, "async, $name: the job carries the budget");
        my $r = call_back($q, { status => 'succeeded',
            output => { text => 'done' }, $usage ? (usage => $usage) : () });
        is($r->{status}, 200, "async, $name: the callback is taken")
            or diag $r->{body};
        $e = terminal($e->{id} // 'exec_none');
        charged_ok($e, $want->($e), "async, $name");
    }
}

{
    # a status with a NUL in it is no status: the job failed (it was taken
    # as "succeeded", the text before the NUL)
    $rc->set('/job', status => 202, json => { job_id => 'j' });
    my $m = marker();
    my ($e, $q) = run('basync', '/job', { prompt => $m }, marker => $m,
        until => 'AWAITING_WEBHOOK');
    my $r = call_back($q, { status => "succeeded\x{0}x",
        output => { text => 'done' } });
    is($r->{status}, 200, 'async, a NUL in the status: the callback is taken')
        or diag $r->{body};
    $e = terminal($e->{id} // 'exec_none');
    is($e->{status}, 'FAILED', '... the execution failed') or diag explain $e;
    is(($e->{error} // {})->{code}, 'GENERATION_FAILED',
        '... GENERATION_FAILED');
    is(micros($e->{cost} // '-1'), 0, '... nothing charged');
}

{
    # per image, asynchronous: the images asked for (input.n), read from
    # the stored input where a long prompt is set aside (mr_input.c)
    my $m = marker();
    my ($e, $q) = run('bjobimg', '/job', { prompt => "$m " . ('p' x 100),
        n => 3 }, marker => $m, until => 'AWAITING_WEBHOOK');
    my $r = call_back($q, { status => 'succeeded',
        output => { text => 'done' } });
    is($r->{status}, 200, 'async per image: the callback is taken')
        or diag $r->{body};
    $e = terminal($e->{id} // 'exec_none');
    charged_ok($e, rule($M{bjobimg}, images => 3),
        'async per image, a long prompt: 3 x 0.03');
}

# ---------------------------------------------------------------- simulator

{
    # chat: the budget sent, the simulator keeps to it (600 configured)
    my ($e) = run('schat', '/none', { prompt => 'sim' });
    my $u = ($e->{result} // {})->{usage} // {};
    is($u->{output_tokens}, 200, 'simulator chat: 200 output tokens, the '
        . 'budget sent (output_tokens=600)');
    charged_ok($e, rule_charge('schat', $e, in => $u->{input_tokens},
        out => $u->{output_tokens}), 'simulator chat: the rule');
    ($e) = run('schat', '/none', { prompt => 'sim', max_tokens => 20 });
    $u = ($e->{result} // {})->{usage} // {};
    is($u->{output_tokens}, 20, 'simulator chat: max_tokens 20 kept');
    charged_ok($e, rule_charge('schat', $e, in => $u->{input_tokens},
        out => $u->{output_tokens}), 'simulator chat, 20: the rule');
    ok(micros($e->{cost}) < micros($e->{hold_amount}),
        '... within the hold');

    ($e) = run('santh', '/none', { prompt => 'sim' });
    $u = ($e->{result} // {})->{usage} // {};
    is($u->{output_tokens}, 300, 'simulator anthropic: 300 output tokens');
    charged_ok($e, rule_charge('santh', $e, in => $u->{input_tokens},
        out => $u->{output_tokens}), 'simulator anthropic: the rule');

    ($e) = run('semb', '/none', { input => 'sim' });
    $u = ($e->{result} // {})->{usage} // {};
    charged_ok($e, rule_charge('semb', $e, in => $u->{input_tokens}, out => 0),
        'simulator embeddings: the rule');

    ($e) = run('simg', '/none', { prompt => 'sim', n => 3 });
    is(scalar @{ ($e->{result} // {})->{images} // [] }, 3,
        'simulator images: n=3 images');
    charged_ok($e, rule($M{simg}, images => 3), 'simulator images: 3 x 0.02');
}

# ---------------------------------------------------------------- ledger

{
    my $b = $t->balance($acc->{key});
    is(micros($b->{balance}), 100_000_000 - $charged,
        'the balance is the credit less every charge') or diag explain $b;
    money_is($b->{held}, '0', 'nothing held');
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, 'the ledger verifies') or diag explain $v;
}

# ---------------------------------------------------------------- nginx -t

{
    my $base = "modelroute_store %%STORE%%;\n";
    my $srv = "server { listen 127.0.0.1:%%PORT%%; "
        . "location /v1/ { modelroute_api; } }\n"
        . "server { modelroute_dispatch; location /p { internal; "
        . "modelroute_simulator; } }\n";
    my @refused = (
        [ "modelroute_route r /p protocol=anthropic "
          . "max_tokens_field=max_completion_tokens;\n"
          . "modelroute_model m per_request=1 routes=r;\n",
          'max_tokens_field on an anthropic route', 'openai_chat only' ],
        [ "modelroute_route r /p protocol=openai_chat "
          . "max_tokens_field=budget;\n"
          . "modelroute_model m per_request=1 routes=r;\n",
          'max_tokens_field=budget', 'max_tokens_field=budget' ],
        [ "modelroute_model m per_request=1 image_tokens=0;\n",
          'image_tokens=0', 'invalid image_tokens' ],
        [ "modelroute_model m per_request=1 image_tokens=1000001;\n",
          'image_tokens past 1000000', 'invalid image_tokens' ],
    );
    for my $c (@refused) {
        my ($conf, $name, $word) = @$c;
        my ($rcode, $out) = MR::Test->new(http => $base . $conf . $srv)
            ->test_config;
        isnt($rcode, 0, "$name: nginx -t fails");
        like($out, qr/\Q$word\E/, "$name: the message says so") or diag $out;
    }
}

$rc->stop;
$t->done;
