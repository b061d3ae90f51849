# Dispatch under provider faults: every way a provider can answer badly
# (garbage, HTML, cut short, too large, reset, hang, trickle, 4xx/5xx,
# wrong shape, nobody listening), the non-retryable answers, retries and
# failover, Retry-After, the circuit breaker (what counts towards it, a
# failed half-open probe) and the concurrency cap.
# Each execution must end in the status and error the spec names, with
# its attempts recorded, its hold released and the ledger consistent.
#
# A fake provider (MR::Receiver) answers on one path per scenario; each
# scenario has its own route, model and account, and they all run side by
# side: everything is created first, then waited for.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use MR::Test qw(:all);
use MR::Receiver;

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;
my $DEAD = MR::Test::free_port();

# A chat completion as an OpenAI-compatible provider answers it.
sub chat_ok {
    my ($text) = @_;
    return { id => 'chatcmpl-1', object => 'chat.completion',
        choices => [ { index => 0, finish_reason => 'stop',
            message => { role => 'assistant', content => $text // 'hi' } } ],
        usage => { prompt_tokens => 5, completion_tokens => 7,
            total_tokens => 12 } };
}

sub err_body {
    my ($msg, %e) = @_;
    return { error => { message => $msg, type => 'server_error', %e } };
}

my $BIG_TEXT = 'y' x 10_000;    # a valid answer well over 4k

# ---------------------------------------------------------------- scenarios
#
# name: route, location /p/<name>, receiver path /<name>, model m-<name>.
# rule: the receiver's rule; route/model/loc: extra directive parameters;
# want: status, code, retryable, outcome(s) and provider status(es) of
# the attempts, requests: provider requests expected; counted: whether
# its failures count towards the route's breaker (README: no answer,
# timeout, 5xx, unusable answer, 401/403/404; not 429, input errors,
# moderation) - the routes of those that do not have breaker=1, so that a
# failure counted by mistake would open it.

my @S = (
    # -- 1. one attempt, a bad answer
    { name => 'garbage', rule => { body => "this is not json at all\n" },
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => ['failed'], statuses => [200], counted => 1 },
    { name => 'html',
      rule => { content_type => 'text/html',
          body => "<html><body><h1>502 Bad Gateway</h1></body></html>\n" },
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => ['failed'], statuses => [200] },
    { name => 'trunc', rule => { json => chat_ok('cut short'), truncate => 40 },
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => ['failed'], statuses => [ [200, undef] ] },
    # cut short right after a complete JSON object (the announced length
    # is longer: padding follows): still an answer cut short
    { name => 'truncvalid',
      rule => { content_type => 'application/json',
          body => json_encode(chat_ok('half')) . (' ' x 200),
          truncate => length json_encode(chat_ok('half')) },
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => ['failed'], statuses => [ [200, undef] ] },
    { name => 'big', rule => { json => chat_ok($BIG_TEXT) },
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => ['failed'], statuses => [ [200, undef] ] },
    { name => 'bigbytes', rule => { body_bytes => 20_000 },
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => ['failed'], statuses => [ [200, undef] ] },
    # the same large answer where the buffer holds it: completed
    { name => 'bigok', rule => { json => chat_ok($BIG_TEXT) },
      loc => 'subrequest_output_buffer_size 64k;',
      want => 'COMPLETED', text => $BIG_TEXT,
      outcomes => ['succeeded'], statuses => [200] },
    { name => 'reset', rule => { reset => 1 },
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => ['failed'], statuses => [undef], counted => 1 },
    { name => 'hang', rule => { delay => 4, json => chat_ok('late') },
      route => 'timeout=1s',
      want => 'FAILED', code => 'GENERATION_TIMEOUT', retryable => 1,
      outcomes => ['timed_out'], statuses => [undef], counted => 1 },
    # the location's proxy_read_timeout fires before the route's timeout:
    # a timeout too, and nginx's own 504 is not the provider's status
    { name => 'proxyto', rule => { delay => 3, json => chat_ok('late') },
      route => 'timeout=5s', loc => 'proxy_read_timeout 1s;',
      want => 'FAILED', code => 'GENERATION_TIMEOUT', retryable => 1,
      outcomes => [ [qw(timed_out failed)] ], statuses => [undef] },
    { name => 'r429', rule => { status => 429, headers => { 'Retry-After' => 1 },
          json => err_body('slow down', type => 'rate_limit_error') },
      route => 'breaker=1',
      want => 'FAILED', code => 'RATE_LIMITED', retryable => 1,
      outcomes => ['failed'], statuses => [429], counted => 0 },
    { name => 's500', rule => { status => 500, json => err_body('boom') },
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => ['failed'], statuses => [500], counted => 1 },
    { name => 's502', rule => { status => 502, body => "bad gateway\n" },
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => ['failed'], statuses => [502], counted => 1 },
    { name => 's503', rule => { status => 503, json => err_body('try later') },
      want => 'FAILED', code => 'MODEL_OVERLOADED', retryable => 1,
      outcomes => ['failed'], statuses => [503], counted => 1 },
    { name => 's504', rule => { status => 504, body => "gateway timeout\n" },
      want => 'FAILED', code => 'GENERATION_TIMEOUT', retryable => 1,
      outcomes => ['failed'], statuses => [504], counted => 1 },
    { name => 's529', rule => { status => 529, json => err_body('busy') },
      want => 'FAILED', code => 'MODEL_OVERLOADED', retryable => 1,
      outcomes => ['failed'], statuses => [529], counted => 1 },
    # other 4xx are the provider's failures: retried, counted
    map({ my $st = $_;
      { name => "s$st", model => 'attempts=2',
        rule => { status => $st, json => err_body("refused $st",
            type => 'invalid_request_error') },
        want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
        outcomes => [qw(failed failed)], statuses => [$st, $st],
        counted => 2 } } 401, 403, 404),
    { name => 's408', model => 'attempts=2',
      rule => { status => 408, json => err_body('request timeout') },
      want => 'FAILED', code => 'GENERATION_TIMEOUT', retryable => 1,
      outcomes => [qw(failed failed)], statuses => [408, 408], counted => 2 },
    # "overloaded" in the error body, whatever the status
    { name => 'overl', model => 'attempts=2',
      rule => { status => 500, json => { type => 'error', error => {
          type => 'overloaded_error', message => 'Overloaded' } } },
      want => 'FAILED', code => 'MODEL_OVERLOADED', retryable => 1,
      outcomes => [qw(failed failed)], statuses => [500, 500],
      counted => 2 },
    # ~30 pieces of 8 bytes, 30 ms apart: about 1 s, within 3 s
    { name => 'trickleok', rule => { json => chat_ok('slowly'), trickle => 0.03 },
      route => 'timeout=3s',
      want => 'COMPLETED', text => 'slowly',
      outcomes => ['succeeded'], statuses => [200] },
    # 200 ms apart: about 6 s, each piece within proxy_read_timeout, the
    # whole past the route's 1.5 s
    { name => 'trickleslow', rule => { json => chat_ok('too slowly'),
          trickle => 0.2 },
      route => 'timeout=1500ms',
      want => 'FAILED', code => 'GENERATION_TIMEOUT', retryable => 1,
      outcomes => ['timed_out'], statuses => [ [200, undef] ] },
    { name => 'shape', rule => { json => { object => 'list', data => [] } },
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => ['failed'], statuses => [200] },
    { name => 'dead', port => $DEAD, rule => undef, requests => 0,
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => ['failed'], statuses => [undef], counted => 1 },

    # -- 2. not retried, not counted
    map({ my $st = $_;
      { name => "s$st", model => 'attempts=3', route => 'breaker=1',
        rule => { status => $st, json => err_body("input refused $st",
            type => 'invalid_request_error') },
        want => 'FAILED', code => 'INPUT_VALIDATION_ERROR', retryable => 0,
        outcomes => ['failed'], statuses => [$st], counted => 0 } }
      400, 413, 415, 422),
    { name => 'moder', model => 'attempts=3', route => 'breaker=1',
      rule => { status => 400, json => { error => {
          code => 'content_policy_violation', type => 'invalid_request_error',
          message => 'refused by the safety system' } } },
      want => 'FAILED', code => 'CONTENT_MODERATION_REJECTED', retryable => 0,
      outcomes => ['failed'], statuses => [400], counted => 0 },
    # a chat answer the provider's content filter stopped
    { name => 'cfilter', model => 'attempts=3', route => 'breaker=1',
      rule => { json => { id => 'c', object => 'chat.completion',
          choices => [ { index => 0, finish_reason => 'content_filter',
              message => { role => 'assistant', content => '' } } ] } },
      want => 'FAILED', code => 'CONTENT_MODERATION_REJECTED', retryable => 0,
      outcomes => ['failed'], statuses => [200], counted => 0 },
    { name => 'img', model => 'attempts=3', protocol => 'openai_images',
      price => 'per_image=0.01', input => { size => '256x256' },
      rule => { json => { created => 1, data => [ { url => 'http://x/1.png' } ] } },
      requests => 0,
      want => 'FAILED', code => 'INPUT_VALIDATION_ERROR', retryable => 0 },

    # -- 3. retries and failover
    { name => 'fa', routes => 'fa,fb', model => 'attempts=2',
      rule => { status => 500, json => err_body('a is down') },
      want => 'COMPLETED', text => 'from b',
      attempt_routes => [qw(fa fb)],
      outcomes => [qw(failed succeeded)], statuses => [500, 200] },
    { name => 'fb', rule => { json => chat_ok('from b') }, nomodel => 1 },
    { name => 'seq', model => 'attempts=3',
      rule => { sequence => [ { status => 500, json => err_body('once') },
          { json => chat_ok('second time') } ] },
      want => 'COMPLETED', text => 'second time',
      outcomes => [qw(failed succeeded)], statuses => [500, 200] },
    { name => 'always', model => 'attempts=3',
      rule => { status => 500, json => err_body('always') },
      want => 'FAILED', code => 'GENERATION_FAILED', retryable => 1,
      outcomes => [qw(failed failed failed)], statuses => [500, 500, 500] },

    # -- 4. Retry-After on the only route
    { name => 'ra', model => 'attempts=2',
      rule => { sequence => [
          { status => 429, headers => { 'Retry-After' => 2 },
            json => err_body('later', type => 'rate_limit_error') },
          { json => chat_ok('after the pause') } ] },
      want => 'COMPLETED', text => 'after the pause',
      outcomes => [qw(failed succeeded)], statuses => [429, 200] },
);

# -- 5. and 6. are driven by hand below; their routes are configured here
my %BRK = (name => 'brk', route => 'breaker=2 breaker_reset=4s', nomodel => 1,
    rule => { status => 500, json => err_body('broken') });
my %CAP = (name => 'cap', route => 'max_concurrency=1 timeout=20s',
    loc => 'proxy_read_timeout 30s;', nomodel => 1, rule => { json => chat_ok('capped'), sequence => [
        { hold => 'cap1' }, { hold => 'cap2' }, { hold => 'cap3' } ] });
# an execution that completes at once: when it has, the dispatcher has
# claimed since it was created
my %SYNC = (name => 'sync', nomodel => 1, rule => { json => chat_ok('sync') });

my $routes = '';
my $models = '';
my $locs = '';
for my $s (@S, \%BRK, \%CAP, \%SYNC) {
    my $n = $s->{name};
    my $proto = $s->{protocol} // 'openai_chat';
    my $rt = $s->{route} // 'timeout=2s';
    $rt = "timeout=2s $rt" unless $rt =~ /timeout=/;
    $routes .= "modelroute_route $n /p/$n protocol=$proto $rt;\n";
    unless ($s->{nomodel}) {
        my $price = $s->{price} // 'per_request=0.01';
        my $m = $s->{model} // 'attempts=1';
        $models .= "modelroute_model m-$n $price routes="
            . ($s->{routes} // $n) . " $m;\n";
    }
    my $port = $s->{port} // $RPORT;
    my $extra = $s->{loc} // '';
    $extra = "proxy_read_timeout 5s; $extra"
        unless $extra =~ /proxy_read_timeout/;
    $extra = "subrequest_output_buffer_size 4k; $extra"
        unless $extra =~ /subrequest_output_buffer_size/;
    $locs .= "    location /p/$n { internal; "
        . "proxy_pass http://127.0.0.1:$port/$n; $extra }\n";
    $rc->set("/$n", %{ $s->{rule} }) if $s->{rule};
}
$models .= "modelroute_model m-brk per_request=0.01 routes=brk attempts=1;\n";
$models .= "modelroute_model m-cap per_request=0.01 routes=cap attempts=1;\n";
$models .= "modelroute_model m-sync per_request=0.01 routes=sync;\n";

my $http = <<EOF;
modelroute_store %%STORE%%;
$routes$models
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
$locs}
EOF

my $t = MR::Test->new(http => $http, timeout => 15);
$t->start;

# ---------------------------------------------------------------- helpers

my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub is_true  { JSON::PP::is_bool($_[0]) && $_[0] }
sub is_false { JSON::PP::is_bool($_[0]) && !$_[0] }

sub create {
    my ($acc, $model, $input) = @_;
    my $r = $t->create_exec($acc->{key}, { model => $model,
        input => $input // { prompt => 'hello' },
        idempotency_key => $t->fresh_key });
    is($r->{status}, 202, "$model: created") or diag $r->{body};
    return $r->{json}{id} // 'exec_none';
}

sub get {
    my ($acc, $id) = @_;
    my $r = $t->get_exec($acc->{key}, $id);
    return $r->{status} == 200 ? $r->{json} : undef;
}

# Polls until the execution is terminal; returns it (or the last seen).
sub wait_terminal {
    my ($acc, $id, $timeout) = @_;
    my $last;
    wait_for(sub {
        my $e = get($acc, $id) or return 0;
        $last = $e;
        return $TERMINAL{ $e->{status} // '' };
    }, $timeout // 20);
    return $last // {};
}

sub routes_state {
    my $r = $t->admin(GET => '/routes');
    return {} unless $r->{status} == 200 && ref $r->{json}{data} eq 'ARRAY';
    return { map { $_->{name} => $_ } @{ $r->{json}{data} } };
}

sub one_of {
    my ($got, $want) = @_;
    my @w = ref $want eq 'ARRAY' ? @$want : ($want);
    for my $w (@w) {
        return 1 if !defined $w && !defined $got;
        return 1 if defined $w && defined $got && $got eq $w;
    }
    return 0;
}

sub show { defined $_[0] ? $_[0] : 'null' }

sub wanted {
    my ($w) = @_;
    return join ' or ', map { show($_) } ref $w eq 'ARRAY' ? @$w : ($w);
}

# The checks every scenario shares: status, error, attempts, hold, ledger.
sub check_exec {
    my ($name, $acc, $e, %w) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($e->{status}, $w{want}, "$name: $w{want}") or diag explain $e;
    if ($w{want} eq 'COMPLETED') {
        ok(!defined $e->{error}, "$name: no error");
        is(eval { $e->{result}{text} } // '', $w{text},
            "$name: the provider's text in result");
        is(eval { $e->{result}{usage}{output_tokens} }, 7,
            "$name: the provider's usage in result");
    } else {
        my $err = $e->{error} // {};
        is($err->{code}, $w{code}, "$name: error.code $w{code}");
        ok($w{retryable} ? is_true($err->{retryable})
            : is_false($err->{retryable}),
            "$name: error.retryable " . ($w{retryable} ? 'true' : 'false'))
            or diag explain $err;
        ok(defined $err->{message} && length $err->{message},
            "$name: error.message");
        ok(!defined $e->{result}, "$name: no result");
    }
    my @at = @{ $e->{attempts} // [] };
    ok(!grep({ defined $_->{status} || ($_->{outcome} // '') eq 'succeeded' }
            @at), "$name: no attempt reached the provider")
        or diag explain \@at
        if defined $w{requests} && $w{requests} == 0 && !$w{outcomes};
    if ($w{outcomes}) {
        my $n = @{ $w{outcomes} };
        is(scalar @at, $n, "$name: $n attempt(s)") or diag explain \@at;
        for my $i (0 .. $n - 1) {
            my $a = $at[$i] // {};
            my $route = $w{attempt_routes} ? $w{attempt_routes}[$i]
                : $w{name};
            is($a->{route}, $route, "$name: attempts[$i].route $route");
            ok(one_of($a->{outcome}, $w{outcomes}[$i]),
                "$name: attempts[$i].outcome " . wanted($w{outcomes}[$i]))
                or diag explain $a;
            ok(one_of($a->{status}, $w{statuses}[$i]),
                "$name: attempts[$i].status " . wanted($w{statuses}[$i]))
                or diag explain $a;
            if (($a->{outcome} // '') eq 'succeeded') {
                ok(!defined $a->{error_code},
                    "$name: attempts[$i] without error_code");
            } else {
                my $want_code = $i == $n - 1 && $w{want} ne 'COMPLETED'
                    ? $w{code} : undef;
                ok(defined $a->{error_code} && (!defined $want_code
                        || $a->{error_code} eq $want_code),
                    "$name: attempts[$i].error_code "
                    . show($a->{error_code}))
                    or diag explain $a;
            }
            ok(is_rfc3339($a->{started_at}) && is_rfc3339($a->{ended_at})
                && parse_rfc3339($a->{ended_at})
                    >= parse_rfc3339($a->{started_at}),
                "$name: attempts[$i] started_at <= ended_at");
        }
    }
    my $b = $t->balance($acc->{key});
    money_is($b->{held}, '0.00', "$name: hold released");
    money_is($b->{balance}, $w{want} eq 'COMPLETED' ? '9.99' : '10.00',
        "$name: " . ($w{want} eq 'COMPLETED' ? 'charged the price'
            : 'nothing charged'));
    my $v = $t->verify($acc->{org});
    ok(is_true($v->{ok}), "$name: verify ok") or diag explain $v;
}

# ---------------------------------------------------------------- create

my %ACC;
my %ID;
for my $s (grep { !$_->{nomodel} } @S) {
    my $n = $s->{name};
    $ACC{$n} = $t->new_account(credit => '10.00');
    $ID{$n} = create($ACC{$n}, "m-$n", $s->{input});
}

# 6. the cap: three at once
my $cap_acc = $t->new_account(credit => '10.00');
my @cap_ids = map { create($cap_acc, 'm-cap') } 1 .. 3;

# 5. the breaker: two failures
my $brk_acc = $t->new_account(credit => '10.00');
my @brk_ids = map { create($brk_acc, 'm-brk') } 1 .. 2;

# A point after which the dispatcher has claimed again: an execution of
# m-sync completes.
sub dispatch_sync {
    my $acc = $ACC{_sync} //= $t->new_account(credit => '10.00');
    my $e = wait_terminal($acc, create($acc, 'm-sync'), 20);
    return ($e->{status} // '') eq 'COMPLETED';
}

# ---------------------------------------------------------------- 6. cap

# the provider holds each answer until the test lets it go: one request
# at a time reaches it, the others wait PENDING
{
    for my $k (1 .. 3) {
        my @r = $rc->wait_requests($k, path => '/cap', timeout => 20);
        is(scalar @r, $k, "cap: request $k reached the provider");
        ok(dispatch_sync(), "cap: the dispatcher claimed since request $k");
        is($rc->count(path => '/cap'), $k,
            "cap: no other request while request $k is unanswered");
        my @st = map { (get($cap_acc, $_) // {})->{status} // '?' } @cap_ids;
        is(scalar(grep { $_ eq 'PENDING' } @st), 3 - $k,
            "cap: the others wait PENDING (@st)");
        my $rs = routes_state()->{cap} // {};
        is($rs->{in_flight}, 1, 'cap: /admin/routes in_flight 1')
            or diag explain $rs;
        is($rs->{max_concurrency}, 1, 'cap: /admin/routes max_concurrency 1');
        $rc->release("cap$k");
    }
}

# ---------------------------------------------------------------- 5. breaker

# Within breaker_reset (4 s) of an opening, the executions fail at once:
# their completed_at is before open_until (server times), which they
# need; the test waits for open_until to pass only when it wants the probe.
sub breaker_open_ok {
    my ($what, $until) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $n = $rc->count(path => '/brk');
    my $e = wait_terminal($brk_acc, create($brk_acc, 'm-brk'), 10);
    is($e->{status}, 'FAILED', "$what: FAILED");
    is(eval { $e->{error}{code} }, 'MODEL_UNAVAILABLE',
        "$what: MODEL_UNAVAILABLE") or diag explain $e;
    ok(is_true(eval { $e->{error}{retryable} }), "$what: retryable true");
    ok((parse_rfc3339($e->{completed_at} // '') // 9e9) < $until,
        "$what: failed while the breaker was open")
        or diag "completed_at $e->{completed_at}, open_until $until";
    ok(!grep({ defined $_->{status} } @{ $e->{attempts} // [] }),
        "$what: no attempt reached the provider")
        or diag explain $e->{attempts};
    is($rc->count(path => '/brk'), $n, "$what: no provider request");
}

{
    my @e = map { wait_terminal($brk_acc, $_, 10) } @brk_ids;
    for my $i (0, 1) {
        is($e[$i]{status}, 'FAILED', "breaker: failure " . ($i + 1));
        is(eval { $e[$i]{error}{code} }, 'GENERATION_FAILED',
            "breaker: failure " . ($i + 1) . " GENERATION_FAILED");
    }
    is($rc->count(path => '/brk'), 2, 'breaker: two provider requests');
    my $rs = routes_state()->{brk} // {};
    is($rs->{breaker}, 'open', 'breaker: open after 2 failures')
        or diag explain $rs;
    is($rs->{consecutive_failures}, 2, 'breaker: consecutive_failures 2');
    ok(is_rfc3339($rs->{open_until}), 'breaker: open_until')
        or diag explain $rs;
    my $open_until = parse_rfc3339($rs->{open_until} // '') // time + 4;

    # open: fails at once, nothing sent
    breaker_open_ok('breaker open', $open_until);

    # after breaker_reset: a probe goes through; it fails, and the breaker
    # opens again at once (one failure, not breaker=2 of them)
    wait_for(sub { time > $open_until + 0.01 }, 10);
    my $e = wait_terminal($brk_acc, create($brk_acc, 'm-brk'), 10);
    is($e->{status}, 'FAILED', 'breaker half-open: the probe fails');
    is(eval { $e->{error}{code} }, 'GENERATION_FAILED',
        'breaker half-open: the probe reached the provider and failed');
    is($rc->count(path => '/brk'), 3, 'breaker: the probe was sent');
    $rs = routes_state()->{brk} // {};
    is($rs->{breaker}, 'open', 'breaker: a failed probe opens it again')
        or diag explain $rs;
    my $reopened = parse_rfc3339($rs->{open_until} // '') // 0;
    ok($reopened > $open_until, 'breaker: open_until moved on');
    breaker_open_ok('breaker open again', $reopened);

    # a probe that succeeds closes it
    $rc->set('/brk', json => chat_ok('probe'));
    wait_for(sub { time > $reopened + 0.01 }, 10);
    $e = wait_terminal($brk_acc, create($brk_acc, 'm-brk'), 10);
    is($e->{status}, 'COMPLETED', 'breaker half-open: the probe completes')
        or diag explain $e;
    is(eval { $e->{result}{text} }, 'probe', 'breaker: the probe result');
    is($rc->count(path => '/brk'), 4, 'breaker: the probe reached the provider');
    $rs = routes_state()->{brk} // {};
    is($rs->{breaker}, 'closed', 'breaker: closed after the probe')
        or diag explain $rs;
    is($rs->{consecutive_failures}, 0, 'breaker: failures reset');

    my $b = $t->balance($brk_acc->{key});
    money_is($b->{held}, '0.00', 'breaker: holds released');
    money_is($b->{balance}, '9.99', 'breaker: only the probe charged');
    ok(is_true($t->verify($brk_acc->{org})->{ok}), 'breaker: verify ok');
}

# ---------------------------------------------------------------- 1-4

my %E;
for my $s (grep { !$_->{nomodel} } @S) {
    $E{ $s->{name} } = wait_terminal($ACC{ $s->{name} }, $ID{ $s->{name} }, 30);
}
my $rstate = routes_state();
for my $s (grep { !$_->{nomodel} } @S) {
    my $n = $s->{name};
    check_exec($n, $ACC{$n}, $E{$n}, %$s);
    my $want = $s->{requests} // scalar @{ $s->{outcomes} // [] };
    my $got = $rc->count(path => "/$n");
    $got += $rc->count(path => '/fb') if $n eq 'fa';
    is($got, $want, "$n: $want provider request(s)");
    next unless defined $s->{counted};
    my $rs = $rstate->{$n} // {};
    is($rs->{consecutive_failures}, $s->{counted},
        "$n: counts $s->{counted} towards the breaker") or diag explain $rs;
    is($rs->{breaker}, 'closed', "$n: breaker closed")
        if !$s->{counted} || ($s->{route} // '') !~ /breaker=/;
}

# the failover went a then b, in that order
{
    my ($ra) = $rc->requests_to('/fa');
    my ($rb) = $rc->requests_to('/fb');
    ok($ra && $rb && $rb->{arrived} >= $ra->{arrived},
        'failover: b was asked after a');
    is(eval { $ra->{json}{model} }, 'm-fa', 'failover: the model name sent');
}

# a retry on the only route waits a backoff: 250 ms x 2^(k-1) +-50 % for
# the k-th, so at least 125 ms x 2^(k-1) between an attempt's end and the
# next one's start; the retry after a 429 waits its Retry-After
for my $n (qw(seq always)) {
    my @at = @{ $E{$n}{attempts} // [] };
    my @gap = map {
        (parse_rfc3339($at[$_]{started_at} // '') // 0)
            - (parse_rfc3339($at[$_ - 1]{ended_at} // '') // 9e9)
    } 1 .. $#at;
    my @short = grep { $gap[$_ - 1] < 0.125 * 2**($_ - 1) - 0.002 } 1 .. $#at;
    ok(@at > 1 && !@short, "$n: retries waited the backoff ("
        . join(', ', map { sprintf '%.3f s', $_ } @gap) . ')');
}
{
    my @r = $rc->requests_to('/seq');
    ok(@r == 2 && $r[1]{arrived} > $r[0]{arrived},
        'seq: retried after the 500');
    # the retry starts no sooner than Retry-After after the 429 was
    # recorded (server times)
    my @at = @{ $E{ra}{attempts} // [] };
    my $gap = @at == 2 ? (parse_rfc3339($at[1]{started_at} // '') // 0)
        - (parse_rfc3339($at[0]{ended_at} // '') // 0) : 0;
    ok($gap >= 2 - 0.0005, sprintf 'Retry-After: 2 honoured (%.3f s)', $gap)
        or diag explain \@at;
}

# ---------------------------------------------------------------- 6. cap end

{
    my @e = map { wait_terminal($cap_acc, $_, 20) } @cap_ids;
    is(scalar(grep { ($_->{status} // '') eq 'COMPLETED' } @e), 3,
        'cap: all three COMPLETED') or diag explain \@e;
    is($rc->count(path => '/cap'), 3, 'cap: three provider requests');
    my $b = $t->balance($cap_acc->{key});
    money_is($b->{held}, '0.00', 'cap: holds released');
    money_is($b->{balance}, '9.97', 'cap: three charged');
    ok(is_true($t->verify($cap_acc->{org})->{ok}), 'cap: verify ok');
}

# ---------------------------------------------------------------- 7. ledger

for my $n (sort keys %ACC) {
    my $v = $t->verify($ACC{$n}{org});
    ok(is_true($v->{ok}), "$n: verify ok at the end") or diag explain $v;
}

$t->done;
