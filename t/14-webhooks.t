# Webhooks: endpoint CRUD and validation, permissions, the default secret,
# webhook.test, execution.cancelled and execution.expired to endpoints and
# to an execution's webhook_url, both signatures, the deliveries lists,
# retry of a delivery, no redirects; and, on a second nginx without
# modelroute_webhook_allow_private, the URL rules (https only, no private
# or loopback address at registration, names resolved by nginx's resolver
# from a fake DNS server, and the address actually connected to checked on
# every attempt); then modelroute_webhook_max_age,
# modelroute_webhook_concurrency and fairness between endpoints.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);
use MR::Receiver qw(:all);
use MR::DNS;

my $t = MR::Test->new(extra_http => "modelroute_webhook_allow_private on;\n"
    . "modelroute_webhook_retry 1s 1s 1s;\n"
    . "modelroute_webhook_timeout 10s;\n"
    . "modelroute_sweep_interval 200ms;\n");
$t->start;
my $rc = MR::Receiver->new;
$rc->start;

my $acc = $t->new_account(credit => '10.00');
my $key = $acc->{key};
my $oth = $t->new_account(credit => '10.00');
my ($ek) = $t->admin_create_key($acc->{org}, 'execution');

sub is_true  { JSON::PP::is_bool($_[0]) && $_[0] }
sub is_false { JSON::PP::is_bool($_[0]) && !$_[0] }

sub details_for_prefix {
    my ($res, $prefix) = @_;
    my $d = eval { $res->{json}{error}{details} };
    return unless ref $d eq 'ARRAY';
    return grep { ref $_ eq 'HASH' && ($_->{field} // '') =~ /^\Q$prefix\E/ }
        @$d;
}

# Checks the fields of an endpoint object.
sub endpoint_ok {
    my ($e, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @why;
    $e = {} unless ref $e eq 'HASH';
    push @why, "id '" . ($e->{id} // 'undef') . "'"
        unless ($e->{id} // '') =~ /^wh_[A-Za-z0-9]+$/;
    push @why, 'object' unless ($e->{object} // '') eq 'webhook_endpoint';
    push @why, 'url' unless defined $e->{url} && !ref $e->{url};
    push @why, 'description' unless exists $e->{description};
    push @why, 'events not an array' unless ref $e->{events} eq 'ARRAY';
    push @why, 'headers not an object'
        unless !defined $e->{headers} || ref $e->{headers} eq 'HASH';
    push @why, 'is_active not a boolean'
        unless JSON::PP::is_bool($e->{is_active});
    push @why, 'failure_count not an integer'
        unless defined $e->{failure_count} && $e->{failure_count} =~ /^\d+$/;
    push @why, 'last_success missing' unless exists $e->{last_success};
    push @why, 'last_success not RFC 3339'
        if defined $e->{last_success} && !is_rfc3339($e->{last_success});
    push @why, 'created_at not RFC 3339' unless is_rfc3339($e->{created_at});
    ok(!@why, $name) or diag join("\n", @why) . "\n" . explain $e;
}

sub delivery_ok {
    my ($d, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @why;
    $d = {} unless ref $d eq 'HASH';
    push @why, 'id' unless ($d->{id} // '') =~ /^dlv_[A-Za-z0-9]+$/;
    push @why, 'object' unless ($d->{object} // '') eq 'webhook_delivery';
    push @why, 'event_id' unless ($d->{event_id} // '') =~ /^evt_/;
    push @why, 'event_type' unless defined $d->{event_type};
    push @why, 'endpoint_id' unless exists $d->{endpoint_id};
    push @why, 'url' unless defined $d->{url};
    push @why, 'execution_id' unless exists $d->{execution_id};
    push @why, "status '" . ($d->{status} // 'undef') . "'"
        unless ($d->{status} // '') =~ /^(?:pending|succeeded|failed)$/;
    push @why, 'attempts not an array' unless ref $d->{attempts} eq 'ARRAY';
    for my $at (@{ ref $d->{attempts} eq 'ARRAY' ? $d->{attempts} : [] }) {
        push @why, 'attempt.at' unless is_rfc3339($at->{at});
        push @why, 'attempt.status_code'
            unless !defined $at->{status_code} || $at->{status_code} =~ /^\d+$/;
        push @why, 'attempt.latency_ms'
            unless defined $at->{latency_ms} && $at->{latency_ms} =~ /^\d+$/;
        push @why, 'attempt.error' unless exists $at->{error};
    }
    push @why, 'next_attempt_at' unless exists $d->{next_attempt_at};
    push @why, 'next_attempt_at not RFC 3339'
        if defined $d->{next_attempt_at}
            && !is_rfc3339($d->{next_attempt_at});
    push @why, 'created_at' unless is_rfc3339($d->{created_at});
    ok(!@why, $name) or diag join("\n", @why) . "\n" . explain $d;
}

# Checks a received webhook.test / execution event against what it should
# be; returns the event.
sub check_delivery_request {
    my ($req, $secret, $name, %want) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @why;
    my $h = $req->{headers} // {};
    push @why, 'method ' . ($req->{method} // 'none (no request)')
        unless ($req->{method} // '') eq 'POST';
    push @why, 'Content-Type ' . ($h->{'content-type'} // 'undef')
        unless ($h->{'content-type'} // '') =~ m{^application/json\b};
    push @why, 'User-Agent ' . ($h->{'user-agent'} // 'undef')
        unless ($h->{'user-agent'} // '') eq 'ModelRoute-Webhooks/1.0';
    push @why, signature_problems($req, $secret);
    my $ev = event_of($req);
    if (ref $ev ne 'HASH') {
        push @why, "body is not a JSON object: $req->{body}";
    } else {
        push @why, "id '" . ($ev->{id} // 'undef') . "'"
            unless ($ev->{id} // '') =~ /^evt_[A-Za-z0-9]{21,}$/;
        push @why, 'webhook-id ' . ($h->{'webhook-id'} // 'undef')
            . ' is not the event id'
            unless ($h->{'webhook-id'} // '') eq ($ev->{id} // '-');
        push @why, 'timestamp not RFC 3339' unless is_rfc3339($ev->{timestamp});
        push @why, 'version ' . ($ev->{version} // 'undef')
            unless ($ev->{version} // '') eq '1.0';
        push @why, 'execution_id missing' unless exists $ev->{execution_id};
        push @why, 'data missing' unless ref $ev->{data} eq 'HASH';
        for my $f (sort keys %want) {
            my $got = $ev->{$f};
            push @why, "$f: " . (defined $got ? "'$got'" : 'undef')
                . ", want " . (defined $want{$f} ? "'$want{$f}'" : 'undef')
                unless (defined $got ? $got : "\0undef")
                    eq (defined $want{$f} ? $want{$f} : "\0undef");
        }
    }
    ok(!@why, $name) or diag join("\n", @why);
    return ref $ev eq 'HASH' ? $ev : {};
}

# Polls the deliveries of an execution until the one $pick chooses
# satisfies $cond; returns it (or the last seen).
sub wait_exec_delivery {
    my ($t, $key, $exec, $pick, $cond, $timeout) = @_;
    my $last;
    wait_for(sub {
        my ($d) = grep { $pick->($_) }
            @{ wh_exec_deliveries($t, $key, $exec) // [] };
        $last = $d if $d;
        return $d && $cond->($d);
    }, $timeout // 15, 0.05);
    return $last // {};
}

sub by_event {
    my ($field, $value) = @_;
    return sub {
        my $ev = event_of($_[0]);
        return ref $ev eq 'HASH' && ($ev->{$field} // '') eq $value;
    };
}

my %A = %{ auth($key) };

# ---------------------------------------------------------------- create

my $r = wh_create($t, $key, { url => $rc->url('/all'),
    description => 'every event',
    headers => { 'X-Custom' => 'abc', 'X-Tenant' => 't-1' } });
is($r->{status}, 201, 'create endpoint: 201') or diag $r->{body};
like($r->{headers}{'x-request-id'} // '', qr/^req_[0-9a-f]{32}$/,
    'create endpoint: X-Request-Id');
my $all = $r->{json} // {};
endpoint_ok($all, 'create: endpoint object');
is($all->{url}, $rc->url('/all'), 'create: url');
is($all->{description}, 'every event', 'create: description');
is_deeply($all->{events}, [], 'create: events default to [] (all)');
is_deeply($all->{headers}, { 'X-Custom' => 'abc', 'X-Tenant' => 't-1' },
    'create: headers');
ok(is_true($all->{is_active}), 'create: is_active true');
is($all->{failure_count}, 0, 'create: failure_count 0');
ok(!defined $all->{last_success}, 'create: last_success null');
ok(secret_ok($all->{secret}), 'create: secret is whsec_ + base64 of 32 bytes')
    or diag $all->{secret};
my $all_secret = $all->{secret} // 'whsec_';
my $all_id = $all->{id} // 'wh_none';

$r = wh_create($t, $key, { url => $rc->url('/exp'),
    events => ['execution.expired'] });
is($r->{status}, 201, 'create endpoint for execution.expired only: 201')
    or diag $r->{body};
my $exp = $r->{json} // {};
is_deeply($exp->{events}, ['execution.expired'], 'events stored');
ok(!defined $exp->{headers} || ref $exp->{headers} eq 'HASH'
    && !%{ $exp->{headers} }, 'headers default to none');
ok(secret_ok($exp->{secret}), 'second secret well formed');
isnt($exp->{secret}, $all_secret, 'each endpoint has its own secret');
isnt($exp->{id}, $all_id, 'each endpoint has its own id');
my $exp_secret = $exp->{secret} // 'whsec_';
my $exp_id = $exp->{id} // 'wh_none';

# ---------------------------------------------------------------- read

$r = $t->req(GET => "/v1/webhooks/endpoints/$all_id", \%A);
is($r->{status}, 200, 'get endpoint: 200');
endpoint_ok($r->{json}, 'get: endpoint object');
ok(!defined $r->{json}{secret}, 'get: no secret');
unlike($r->{body}, qr/whsec_/, 'get: the secret appears nowhere');
{
    my %c = %$all;
    my %g = %{ $r->{json} // {} };
    delete @c{qw(secret)};
    delete @g{qw(secret)};
    is_deeply(\%g, \%c, 'get: the created endpoint');
}

$r = $t->req(GET => '/v1/webhooks/endpoints', \%A);
is($r->{status}, 200, 'list endpoints: 200');
is($r->{json}{object}, 'list', 'list: object list');
my %listed = map { ($_->{id} // '') => $_ } @{ $r->{json}{data} // [] };
ok($listed{$all_id} && $listed{$exp_id}, 'list: both endpoints');
is(scalar keys %listed, 2, 'list: only this account\'s two');
unlike($r->{body}, qr/whsec_/, 'list: no secret');
endpoint_ok($listed{$all_id}, 'list: endpoint objects');

$r = $t->req(GET => '/v1/webhooks/endpoints', auth($oth->{key}));
is($r->{status}, 200, 'other account lists: 200');
is_deeply($r->{json}{data}, [], 'other account lists none of them');

# ---------------------------------------------------------------- validation

my @bad = (
    [ 'missing url', {}, 'url' ],
    [ 'url not a string', { url => 123 }, 'url' ],
    [ 'url null', { url => undef }, 'url' ],
    [ 'url not a URL', { url => 'not a url' }, 'url' ],
    [ 'url ftp', { url => 'ftp://127.0.0.1/x' }, 'url' ],
    [ 'url empty', { url => '' }, 'url' ],
    [ 'events a string', { events => 'execution.cancelled' }, 'events' ],
    [ 'events with a number', { events => [1] }, 'events' ],
    [ 'events an object', { events => {} }, 'events' ],
    [ 'unknown event type', { events => ['execution.bogus'] }, 'events' ],
    [ 'unknown among known',
        { events => ['execution.cancelled', 'nope'] }, 'events' ],
    [ 'headers an array', { headers => ['X-A'] }, 'headers' ],
    [ 'headers a string', { headers => 'X-A: 1' }, 'headers' ],
    [ 'header value a number', { headers => { 'X-A' => 1 } }, 'headers' ],
    [ 'header value an object', { headers => { 'X-A' => {} } }, 'headers' ],
    [ 'header value null', { headers => { 'X-A' => undef } }, 'headers' ],
    [ 'description a number', { description => 5 }, 'description' ],
);
for my $bad (@bad) {
    my ($what, $body, $field) = @$bad;
    my %body = (url => $rc->url('/bad'), %$body);
    delete $body{url} if $what eq 'missing url';
    my $res = wh_create($t, $key, \%body);
    is_error($res, 400, 'INPUT_VALIDATION_ERROR', "create, $what: 400");
    ok(details_for_prefix($res, $field), "create, $what: details name $field")
        or diag $res->{body};
}
for my $raw ('{"url": ', '[]', '"x"', 'null') {
    my $res = $t->req(POST => '/v1/webhooks/endpoints',
        { %A, 'Content-Type' => 'application/json' }, $raw);
    is_error($res, 400, 'INPUT_VALIDATION_ERROR', "create, body '$raw': 400");
}
$r = $t->req(GET => '/v1/webhooks/endpoints', \%A);
is(scalar @{ $r->{json}{data} // [] }, 2, 'no refused create stored anything');

# headers (README: names of letters, digits, - and _; values of at most
# 1,024 bytes without control characters; not the headers ModelRoute sets
# itself): a value that would inject another header, a signature header,
# a framing header and a value over 1,024 bytes are refused
for my $h ([ 'a CRLF in a value', { 'X-Evil' => "a\r\nX-Injected: 1" } ],
    [ 'a tab in a value', { 'X-Tab' => "a\tb" } ],
    [ 'X-Signature', { 'X-Signature' => 'forged' } ],
    [ 'webhook-id', { 'webhook-id' => 'evt_forged' } ],
    [ 'Webhook-Signature (any case)', { 'Webhook-Signature' => 'v1,x' } ],
    [ 'Content-Length', { 'Content-Length' => '5' } ],
    [ 'Transfer-Encoding', { 'Transfer-Encoding' => 'chunked' } ],
    [ 'Host', { Host => 'elsewhere' } ],
    [ 'a name with a space', { 'X A' => 'v' } ],
    [ 'a name with a colon', { 'X:A' => 'v' } ],
    [ 'a value of 1,025 bytes', { 'X-Long' => 'v' x 1025 } ],
    [ '21 headers', { map { ("X-H$_" => 'v') } 1 .. 21 } ]) {
    my ($what, $hdrs) = @$h;
    my $res = wh_create($t, $key, { url => $rc->url('/hdr'),
        headers => $hdrs });
    is_error($res, 400, 'INPUT_VALIDATION_ERROR', "headers, $what: 400");
    ok(details_for_prefix($res, 'headers'), "headers, $what: details")
        or diag $res->{body};
}
is($t->req(PATCH => "/v1/webhooks/endpoints/$all_id", \%A,
    { headers => { 'X-Signature' => 'forged' } })->{status}, 400,
    'patch headers with X-Signature: 400');

# the longest: a long name, a 1,024-byte value, 20 headers: sent whole
{
    my ($hn, $hv) = ('X-' . ('n' x 1500), 'v' x 1024);
    my %h = ($hn => $hv, map { ("X-H$_" => "v$_") } 1 .. 19);
    $r = wh_create($t, $key, { url => $rc->url('/longhdr'), headers => \%h });
    is($r->{status}, 201, 'a 1502-byte name, a 1,024-byte value, 20 headers: '
        . '201') or diag $r->{body};
    my $tr = $t->req(POST => "/v1/webhooks/endpoints/$r->{json}{id}/test",
        \%A);
    is($tr->{status}, 202, 'long headers: test event');
    my ($q) = $rc->wait_requests(1, path => '/longhdr');
    is_deeply({ map { ($_ => $q && $q->{headers}{lc $_}) } keys %h }, \%h,
        'long headers: each sent whole')
        or diag $q ? explain([ map { [ substr($_->[0], 0, 20),
            length $_->[1] ] } @{ $q->{header_list} } ]) : 'no request';
    is($t->req(DELETE => "/v1/webhooks/endpoints/$r->{json}{id}", \%A)
        ->{status}, 200, 'long headers: endpoint deleted');
}

# a url with a CRLF or a space is not a URL
for my $u ($rc->url("/x\r\nX-Injected: 1"), $rc->url('/a b')) {
    (my $show = $u) =~ s/\r\n/\\r\\n/;
    is_error(wh_create($t, $key, { url => $u }), 400,
        'INPUT_VALIDATION_ERROR', "url '$show' refused");
}

# ---------------------------------------------------------------- patch, delete

$r = wh_create($t, $key, { url => $rc->url('/tmp1'), description => 'tmp' });
is($r->{status}, 201, 'create a third endpoint') or diag $r->{body};
my $tmp = $r->{json} // {};
my $tmp_id = $tmp->{id} // 'wh_none';
my $tmp_secret = $tmp->{secret} // 'whsec_';

$r = $t->req(PATCH => "/v1/webhooks/endpoints/$tmp_id", \%A, {
    url => $rc->url('/tmp2'), description => 'changed',
    events => ['execution.cancelled', 'execution.expired'],
    headers => { 'X-New' => 'v' } });
is($r->{status}, 200, 'patch url, description, events, headers: 200')
    or diag $r->{body};
endpoint_ok($r->{json}, 'patch: endpoint object');
is($r->{json}{url}, $rc->url('/tmp2'), 'patch: url');
is($r->{json}{description}, 'changed', 'patch: description');
is_deeply([sort @{ $r->{json}{events} // [] }],
    ['execution.cancelled', 'execution.expired'], 'patch: events');
is_deeply($r->{json}{headers}, { 'X-New' => 'v' }, 'patch: headers replaced');
unlike($r->{body}, qr/whsec_/, 'patch: no secret');
is($r->{json}{created_at}, $tmp->{created_at}, 'patch: created_at kept');
is_deeply(wh_get($t, $key, $tmp_id), $r->{json}, 'get after patch');

$r = $t->req(PATCH => "/v1/webhooks/endpoints/$tmp_id", \%A,
    { description => 'only this' });
is($r->{status}, 200, 'patch description only');
is($r->{json}{url}, $rc->url('/tmp2'), '... url kept');
is_deeply($r->{json}{headers}, { 'X-New' => 'v' }, '... headers kept');

$r = $t->req(PATCH => "/v1/webhooks/endpoints/$tmp_id", \%A,
    { is_active => JSON::PP::false });
is($r->{status}, 200, 'patch is_active false');
ok(is_false($r->{json}{is_active}), '... inactive');
$r = $t->req(PATCH => "/v1/webhooks/endpoints/$tmp_id", \%A,
    { is_active => JSON::PP::true });
is($r->{status}, 200, 'patch is_active true');
ok(is_true($r->{json}{is_active}), '... active');
is($r->{json}{failure_count}, 0, '... failure_count 0');

my $before = wh_get($t, $key, $tmp_id);
for my $pb ([ 'url ftp', { url => 'ftp://x/y' }, 'url' ],
    [ 'url a number', { url => 5 }, 'url' ],
    [ 'events unknown', { events => ['execution.nope'] }, 'events' ],
    [ 'events a string', { events => 'execution.expired' }, 'events' ],
    [ 'headers an array', { headers => [1] }, 'headers' ],
    [ 'header value a number', { headers => { A => 2 } }, 'headers' ],
    [ 'is_active a string', { is_active => 'yes' }, 'is_active' ],
    [ 'description a number', { description => [] }, 'description' ]) {
    my $res = $t->req(PATCH => "/v1/webhooks/endpoints/$tmp_id", \%A, $pb->[1]);
    is_error($res, 400, 'INPUT_VALIDATION_ERROR', "patch, $pb->[0]: 400");
    ok(details_for_prefix($res, $pb->[2]), "patch, $pb->[0]: details")
        or diag $res->{body};
}
is_deeply(wh_get($t, $key, $tmp_id), $before, 'refused patches changed nothing');

# the secret survives a patch: a test event to the new url, signed with it
$r = $t->req(POST => "/v1/webhooks/endpoints/$tmp_id/test", \%A);
is($r->{status}, 202, 'test after patch: 202');
{
    my ($q) = $rc->wait_requests(1, path => '/tmp2');
    ok($q, 'test after patch arrives at the new url');
    check_delivery_request($q // {}, $tmp_secret,
        'test after patch: signed with the original secret',
        event_type => 'webhook.test');
    is($q && $q->{headers}{'x-new'}, 'v', 'test after patch: new header');
    is($rc->count(path => '/tmp1'), 0, 'nothing to the old url');
}

$r = $t->req(DELETE => "/v1/webhooks/endpoints/$tmp_id", \%A);
is($r->{status}, 200, 'delete: 200') or diag $r->{body};
is($r->{json}{id}, $tmp_id, 'delete: id');
is($r->{json}{object}, 'webhook_endpoint', 'delete: object');
ok(is_true($r->{json}{deleted}), 'delete: deleted true');
is_error($t->req(GET => "/v1/webhooks/endpoints/$tmp_id", \%A), 404,
    'NOT_FOUND', 'get after delete: 404');
is_error($t->req(DELETE => "/v1/webhooks/endpoints/$tmp_id", \%A), 404,
    'NOT_FOUND', 'delete again: 404');
is_error($t->req(PATCH => "/v1/webhooks/endpoints/$tmp_id", \%A,
    { description => 'x' }), 404, 'NOT_FOUND', 'patch after delete: 404');
is_error($t->req(POST => "/v1/webhooks/endpoints/$tmp_id/test", \%A), 404,
    'NOT_FOUND', 'test after delete: 404');
is_error($t->req(GET => "/v1/webhooks/endpoints/$tmp_id/deliveries", \%A),
    404, 'NOT_FOUND', 'deliveries after delete: 404');
ok(!grep({ ($_->{id} // '') eq $tmp_id }
    @{ $t->req(GET => '/v1/webhooks/endpoints', \%A)->{json}{data} // [] }),
    'list after delete: gone');
for my $m (qw(GET PATCH DELETE)) {
    is_error($t->req($m => '/v1/webhooks/endpoints/wh_0000000000000000', \%A,
        $m eq 'PATCH' ? { description => 'x' } : undef), 404, 'NOT_FOUND',
        "$m unknown endpoint: 404");
}

# ---------------------------------------------------------------- default secret

$r = $t->req(GET => '/v1/webhooks/default/secret', \%A);
is($r->{status}, 200, 'default secret: 200') or diag $r->{body};
my $default_secret = $r->{json}{secret} // 'whsec_';
ok(secret_ok($default_secret), 'default secret well formed')
    or diag $r->{body};
is($t->req(GET => '/v1/webhooks/default/secret', \%A)->{json}{secret},
    $default_secret, 'default secret stable across calls');
my $oth_default = $t->req(GET => '/v1/webhooks/default/secret',
    auth($oth->{key}))->{json}{secret} // '';
ok(secret_ok($oth_default), 'other account: default secret');
isnt($oth_default, $default_secret, 'default secrets differ per account');
ok($default_secret ne $all_secret && $default_secret ne $exp_secret,
    'default secret is not an endpoint secret');

# a fresh account asked from many connections at once: one secret
{
    my $fresh = $t->new_account(credit => '1.00');
    my @s = $t->parallel(12, sub {
        $t->req(GET => '/v1/webhooks/default/secret',
            auth($fresh->{key}))->{json}{secret};
    }, timeout => 30);
    my %distinct = map { ($_ // 'undef') => 1 } @s;
    is(scalar keys %distinct, 1, 'concurrent first reads: one default secret')
        or diag explain \@s;
    ok(secret_ok($s[0]), '... well formed');
}

# ---------------------------------------------------------------- test event

$r = $t->req(POST => "/v1/webhooks/endpoints/$all_id/test", \%A);
is($r->{status}, 202, 'test event: 202') or diag $r->{body};
my $t1 = $r->{json} // {};
like($t1->{event_id} // '', qr/^evt_/, 'test: event_id');
like($t1->{delivery_id} // '', qr/^dlv_/, 'test: delivery_id');
my ($tq) = $rc->wait_requests(1, path => '/all',
    where => by_event(id => $t1->{event_id} // '-'));
ok($tq, 'test event arrives') or diag explain [$rc->connections];
my $tev = check_delivery_request($tq // {}, $all_secret,
    'test event: headers, both signatures, body',
    id => $t1->{event_id}, event_type => 'webhook.test',
    organization_id => $acc->{org}, execution_id => undef);
is_deeply($tev->{data}, { endpoint_id => $all_id }, 'test event: data');
is($tq && $tq->{headers}{'x-custom'}, 'abc', 'custom header X-Custom sent');
is($tq && $tq->{headers}{'x-tenant'}, 't-1', 'custom header X-Tenant sent');
ok(abs((parse_rfc3339($tev->{timestamp} // '') // 0) - time) < 60,
    'test event: timestamp is now');

my $d1 = wait_delivery($t, $key, $all_id, $t1->{delivery_id} // '-',
    sub { $_[0]{status} eq 'succeeded' });
delivery_ok($d1, 'test delivery: object');
is($d1->{status}, 'succeeded', 'test delivery: succeeded');
is($d1->{event_id}, $t1->{event_id}, 'test delivery: event_id');
is($d1->{event_type}, 'webhook.test', 'test delivery: event_type');
is($d1->{endpoint_id}, $all_id, 'test delivery: endpoint_id');
is($d1->{url}, $rc->url('/all'), 'test delivery: url');
ok(!defined $d1->{execution_id}, 'test delivery: execution_id null');
is(scalar @{ $d1->{attempts} // [] }, 1, 'test delivery: one attempt');
my $a1 = $d1->{attempts}[0] // {};
is($a1->{status_code}, 200, 'attempt: status_code 200');
ok(!defined $a1->{error}, 'attempt: error null');
# a success comes within modelroute_webhook_timeout (10 s)
ok(defined $a1->{latency_ms} && $a1->{latency_ms} =~ /^\d+$/
    && $a1->{latency_ms} <= 10_000, 'attempt: latency_ms within the timeout');
ok(!defined $d1->{next_attempt_at}, 'succeeded: next_attempt_at null');

my $ge = wh_get($t, $key, $all_id);
ok(is_rfc3339($ge->{last_success}), 'endpoint: last_success set');
is($ge->{failure_count}, 0, 'endpoint: failure_count 0');

# retry of a succeeded delivery sends it again, same event id
$r = $t->req(POST => "/v1/webhooks/deliveries/$t1->{delivery_id}/retry", \%A);
is($r->{status}, 202, 'retry a succeeded delivery: 202') or diag $r->{body};
is($r->{json}{id}, $t1->{delivery_id}, 'retry: the delivery');
is($r->{json}{object}, 'webhook_delivery', 'retry: delivery object');
my @again = $rc->wait_requests(2, path => '/all',
    where => by_event(id => $t1->{event_id} // '-'));
is(scalar @again, 2, 'retry: sent again');
check_delivery_request($again[1] // {}, $all_secret,
    'retry: same event id, signed', id => $t1->{event_id});
is($again[1] && $again[1]{headers}{'webhook-id'}, $t1->{event_id},
    'retry: webhook-id is the same event id');
is_deeply([ resign_problems(@again) ], [], 'retry: signed at its own time');
$d1 = wait_delivery($t, $key, $all_id, $t1->{delivery_id} // '-',
    sub { @{ $_[0]{attempts} } >= 2 && $_[0]{status} eq 'succeeded' });
is(scalar @{ $d1->{attempts} // [] }, 2, 'retry: second attempt recorded');

is_error($t->req(POST => '/v1/webhooks/deliveries/dlv_0000000000000000/retry',
    \%A), 404, 'NOT_FOUND', 'retry an unknown delivery: 404');

# newest first, limit
$r = $t->req(POST => "/v1/webhooks/endpoints/$all_id/test", \%A);
my $t2 = $r->{json} // {};
ok($rc->wait_requests(1, path => '/all',
    where => by_event(id => $t2->{event_id} // '-')), 'a second test event');
my $list = wh_deliveries($t, $key, $all_id) // [];
is_deeply([map { $_->{id} } @$list],
    [$t2->{delivery_id}, $t1->{delivery_id}], 'deliveries: newest first');
$list = wh_deliveries($t, $key, $all_id, 1) // [];
is_deeply([map { $_->{id} } @$list], [$t2->{delivery_id}], 'limit=1');
for my $q ('limit=0', 'limit=abc') {
    is_error($t->req(GET => "/v1/webhooks/endpoints/$all_id/deliveries?$q",
        \%A), 400, 'INPUT_VALIDATION_ERROR', "deliveries $q: 400");
}
is(scalar @{ wh_deliveries($t, $key, $exp_id) // [1] }, 0,
    'the other endpoint has no delivery');

# test events asked at once (several in one commit, in one millisecond):
# each answer names its own delivery (LMDB named the endpoint's last
# delivery, a sibling made in the same millisecond when its id sorted
# after)
{
    my @tests = $t->parallel(24, sub {
        $t->req(POST => "/v1/webhooks/endpoints/$all_id/test", \%A)->{json};
    }, timeout => 30);
    my $all = wh_deliveries($t, $key, $all_id, 100) // [];
    my %event_of = map { $_->{id} => $_->{event_id} } @$all;
    my @wrong = grep {
        !ref $_ || ($event_of{ $_->{delivery_id} // '' } // '')
                   ne ($_->{event_id} // '-')
    } @tests;
    my %ids = map { (ref $_ ? $_->{delivery_id} // '' : '') => 1 } @tests;
    is(scalar keys %ids, 24, 'tests at once: 24 deliveries named');
    is(scalar @wrong, 0, 'tests at once: each names its own delivery')
        or diag explain \@wrong;
}

# any 2xx is a success
$r = wh_create($t, $key, { url => $rc->url('/nocontent') });
my $nc_id = $r->{json}{id} // 'wh_none';
$rc->set('/nocontent', status => 204);
my $nt = $t->req(POST => "/v1/webhooks/endpoints/$nc_id/test", \%A)->{json};
my $nd = wait_delivery($t, $key, $nc_id, $nt->{delivery_id} // '-',
    sub { $_[0]{status} ne 'pending' });
is($nd->{status}, 'succeeded', '204 is a success');
is($nd->{attempts}[0]{status_code}, 204, '... status_code 204');
$t->req(DELETE => "/v1/webhooks/endpoints/$nc_id", \%A);

# no redirects are followed
$r = wh_create($t, $key, { url => $rc->url('/redir') });
my $rd_id = $r->{json}{id} // 'wh_none';
$rc->set('/redir', status => 302,
    headers => { Location => $rc->url('/redir-target') });
my $rt = $t->req(POST => "/v1/webhooks/endpoints/$rd_id/test", \%A)->{json};
my $rdd = wait_delivery($t, $key, $rd_id, $rt->{delivery_id} // '-',
    sub { @{ $_[0]{attempts} } >= 1 });
is($rdd->{attempts}[0]{status_code}, 302, 'a 302 is recorded as such');
is($rdd->{status}, 'pending', 'a 302 is a failure: retried');
is($rc->count(path => '/redir-target'), 0, 'the redirect is not followed');
$t->req(DELETE => "/v1/webhooks/endpoints/$rd_id", \%A);

# ---------------------------------------------------------------- permissions

my %E = %{ auth($ek) };
my $pe = $t->create_exec($key, $t->exec_body)->{json}{id} // 'exec_none';
my @routes = (
    [ POST => '/v1/webhooks/endpoints', { url => $rc->url('/x') } ],
    [ GET => '/v1/webhooks/endpoints' ],
    [ GET => "/v1/webhooks/endpoints/$all_id" ],
    [ PATCH => "/v1/webhooks/endpoints/$all_id", { description => 'x' } ],
    [ DELETE => "/v1/webhooks/endpoints/$all_id" ],
    [ POST => "/v1/webhooks/endpoints/$all_id/test" ],
    [ GET => "/v1/webhooks/endpoints/$all_id/deliveries" ],
    [ GET => "/v1/webhooks/deliveries?execution_id=$pe" ],
    [ POST => "/v1/webhooks/deliveries/$t1->{delivery_id}/retry" ],
    [ GET => '/v1/webhooks/default/secret' ],
);
my $nreq = $rc->count(path => '/all');
for my $rt (@routes) {
    my ($m, $p, $body) = @$rt;
    is_error($t->req($m => $p, \%E, $body), 403, 'FORBIDDEN',
        "execution key: $m $p: 403");
    is_error($t->req($m => $p, {}, $body), 401, 'UNAUTHORIZED',
        "no key: $m $p: 401");
}
my $still = wh_get($t, $key, $all_id);
ok($still && $still->{description} eq 'every event',
    'the endpoint is untouched by the refused calls');
is(scalar @{ $t->req(GET => '/v1/webhooks/endpoints', \%A)->{json}{data} // [] },
    2, 'no endpoint created by the execution key');

# another account's endpoint and delivery: 404
my %O = %{ auth($oth->{key}) };
for my $rt (
    [ GET => "/v1/webhooks/endpoints/$all_id" ],
    [ PATCH => "/v1/webhooks/endpoints/$all_id", { description => 'x' } ],
    [ DELETE => "/v1/webhooks/endpoints/$all_id" ],
    [ POST => "/v1/webhooks/endpoints/$all_id/test" ],
    [ GET => "/v1/webhooks/endpoints/$all_id/deliveries" ],
    [ POST => "/v1/webhooks/deliveries/$t1->{delivery_id}/retry" ]) {
    my ($m, $p, $body) = @$rt;
    is_error($t->req($m => $p, \%O, $body), 404, 'NOT_FOUND',
        "another account: $m $p: 404");
}
is_error($t->req(GET => "/v1/webhooks/deliveries?execution_id=$pe", \%O),
    404, 'NOT_FOUND', 'another account: deliveries of my execution: 404');
$still = wh_get($t, $key, $all_id);
ok($still && $still->{description} eq 'every event',
    'the endpoint is untouched by the other account');
is($rc->count(path => '/all'), $nreq, 'no refused call sent anything');

# ---------------------------------------------------------------- executions

# cancelled: to the all-events endpoint and to the execution's webhook_url
my $c1 = $t->create_exec($key, $t->exec_body(
    webhook_url => $rc->url('/exec-hook')))->{json};
my $c1_id = $c1->{id} // 'exec_none';
$r = $t->req(POST => "/v1/executions/$c1_id/cancel", \%A);
is($r->{status}, 200, 'cancel: 200');
my $c1_obj = $t->get_exec($key, $c1_id)->{json};

my $dl = wh_exec_deliveries($t, $key, $c1_id);
ok($dl, 'deliveries of an execution: 200');
$dl //= [];
is(scalar @$dl, 2, 'cancel: one delivery per destination, committed with '
    . 'the cancel') or diag explain $dl;
my ($dl_ep) = grep { ($_->{endpoint_id} // '') eq $all_id } @$dl;
my ($dl_wu) = grep { !defined $_->{endpoint_id} } @$dl;
ok($dl_ep, 'a delivery to the all-events endpoint');
ok($dl_wu, 'a delivery to the webhook_url (endpoint_id null)');
ok(!grep({ ($_->{endpoint_id} // '') eq $exp_id } @$dl),
    'none to the execution.expired endpoint');
delivery_ok($dl_wu, 'webhook_url delivery: object');
is($dl_wu && $dl_wu->{url}, $rc->url('/exec-hook'), 'webhook_url delivery: url');
is($dl_wu && $dl_wu->{execution_id}, $c1_id, '... execution_id');
is($dl_wu && $dl_wu->{event_type}, 'execution.cancelled', '... event_type');
ok($dl_ep && $dl_wu && $dl_ep->{event_id} eq $dl_wu->{event_id},
    'one event, two deliveries');
my $c1_evt = $dl_ep ? $dl_ep->{event_id} : 'evt_none';

my ($cq) = $rc->wait_requests(1, path => '/all',
    where => by_event(execution_id => $c1_id));
ok($cq, 'execution.cancelled reaches the endpoint');
my $cev = check_delivery_request($cq // {}, $all_secret,
    'execution.cancelled to the endpoint: headers, signatures, body',
    id => $c1_evt, event_type => 'execution.cancelled',
    organization_id => $acc->{org}, execution_id => $c1_id);
is_deeply($cev->{data}, $c1_obj, 'data is the execution object');
is($cev->{data}{status}, 'CANCELLED', 'data.status CANCELLED');
is($cq && $cq->{headers}{'x-custom'}, 'abc', 'endpoint headers sent');

my ($wq) = $rc->wait_requests(1, path => '/exec-hook');
ok($wq, 'execution.cancelled reaches the webhook_url');
my $wev = check_delivery_request($wq // {}, $default_secret,
    'webhook_url: signed with the default secret',
    id => $c1_evt, event_type => 'execution.cancelled',
    organization_id => $acc->{org}, execution_id => $c1_id);
is_deeply($wev->{data}, $c1_obj, 'webhook_url: data is the execution object');
ok($wq && !exists $wq->{headers}{'x-custom'},
    'webhook_url: no endpoint headers');
ok($wq && signature_problems($wq, $all_secret),
    'webhook_url: not signed with an endpoint secret');

for my $pick ([ $all_id => sub { ($_[0]{endpoint_id} // '') eq $all_id } ],
    [ webhook_url => sub { !defined $_[0]{endpoint_id} } ]) {
    my $dd = wait_exec_delivery($t, $key, $c1_id, $pick->[1],
        sub { $_[0]{status} eq 'succeeded' });
    is($dd->{status}, 'succeeded', "cancel delivery to $pick->[0] succeeded");
    is(scalar @{ $dd->{attempts} // [] }, 1, '... in one attempt');
}

# expired: to the all-events endpoint, the execution.expired endpoint and
# the webhook_url
my $x1 = $t->create_exec($key, $t->exec_body(timeout_seconds => 1,
    webhook_url => $rc->url('/exec-hook-x')))->{json};
my $x1_id = $x1->{id} // 'exec_none';
my $xobj = wait_for(sub {
    my $g = $t->get_exec($key, $x1_id)->{json};
    return $g && ($g->{status} // '') eq 'EXPIRED' ? $g : undef;
}, 20, 0.1);
ok($xobj, 'execution expired by the sweeper');
my ($xq) = $rc->wait_requests(1, path => '/all',
    where => by_event(execution_id => $x1_id));
my $xev = check_delivery_request($xq // {}, $all_secret,
    'execution.expired to the all-events endpoint',
    event_type => 'execution.expired', organization_id => $acc->{org},
    execution_id => $x1_id);
is_deeply($xev->{data}, $xobj, 'expired: data is the execution object');
is($xev->{data}{status}, 'EXPIRED', 'expired: data.status EXPIRED');
is($xev->{data}{error}{code}, 'GENERATION_TIMEOUT', 'expired: data.error');
my ($eq) = $rc->wait_requests(1, path => '/exp');
my $eev = check_delivery_request($eq // {}, $exp_secret,
    'execution.expired to the execution.expired endpoint',
    event_type => 'execution.expired', execution_id => $x1_id,
    id => $xev->{id});
my ($xw) = $rc->wait_requests(1, path => '/exec-hook-x');
check_delivery_request($xw // {}, $default_secret,
    'execution.expired to the webhook_url, default secret',
    event_type => 'execution.expired', execution_id => $x1_id,
    id => $xev->{id});
$dl = wh_exec_deliveries($t, $key, $x1_id) // [];
is(scalar @$dl, 3, 'expired: three deliveries')
    or diag explain $dl;
is_deeply([sort map { $_->{endpoint_id} // 'null' } @$dl],
    [sort($all_id, $exp_id, 'null')], '... to the two endpoints and the url');
ok(!grep({ ($_->{event}{event_type} // '') ne 'execution.expired' }
    $rc->requests(path => '/exp')),
    'the execution.expired endpoint got nothing else');

# an account that never read its default secret: the delivery to a
# webhook_url is signed with the secret it reads afterwards
{
    my $nv = $t->new_account(credit => '1.00');
    my $x = $t->create_exec($nv->{key}, $t->exec_body(
        webhook_url => $rc->url('/never-read')))->{json}{id} // 'exec_none';
    $t->req(POST => "/v1/executions/$x/cancel", auth($nv->{key}));
    my ($q) = $rc->wait_requests(1, path => '/never-read');
    ok($q, 'webhook_url of an account that never read its secret: sent');
    my $sec = $t->req(GET => '/v1/webhooks/default/secret',
        auth($nv->{key}))->{json}{secret} // 'whsec_';
    check_delivery_request($q // {}, $sec,
        '... signed with the default secret read afterwards',
        execution_id => $x, organization_id => $nv->{org});
}

# another account's events never reach this account's endpoints
my $oe = $t->create_exec($oth->{key}, $t->exec_body(
    webhook_url => $rc->url('/oth-hook')))->{json}{id} // 'exec_none';
$t->req(POST => "/v1/executions/$oe/cancel", \%O);
my ($oq) = $rc->wait_requests(1, path => '/oth-hook');
check_delivery_request($oq // {}, $oth_default,
    'other account: its webhook_url, its default secret',
    organization_id => $oth->{org}, execution_id => $oe,
    event_type => 'execution.cancelled');
$dl = wh_exec_deliveries($t, $oth->{key}, $oe) // [];
is(scalar @$dl, 1, 'other account: one delivery (no endpoint of mine)');

# a repeated cancel, or a cancel of an expired execution, makes no event
is($t->req(POST => "/v1/executions/$c1_id/cancel", \%A)->{status}, 200,
    'cancel again: 200');
is(scalar @{ wh_exec_deliveries($t, $key, $c1_id) // [] }, 2,
    'cancel again: no new delivery');
is_error($t->req(POST => "/v1/executions/$x1_id/cancel", \%A), 409,
    'EXECUTION_TERMINAL', 'cancel an expired execution: 409');
is(scalar @{ wh_exec_deliveries($t, $key, $x1_id) // [] }, 3,
    'cancel of an expired execution: no new delivery');

# the signature covers the exact bytes: escapes and non-ASCII metadata
my $u = $t->create_exec($key, $t->exec_body(
    webhook_url => $rc->url('/uni'),
    metadata => { text => "h\x{e9}llo \x{2713} \"q\" \\ / \x{1F600}\n\t<&>",
        n => -1.5e3, list => [JSON::PP::true, undef, {}] },
    input => { prompt => "\x{4f60}\x{597d}" }))->{json}{id} // 'exec_none';
$t->req(POST => "/v1/executions/$u/cancel", \%A);
my $uobj = $t->get_exec($key, $u)->{json};
my ($uq) = $rc->wait_requests(1, path => '/uni');
my $uev = check_delivery_request($uq // {}, $default_secret,
    'non-ASCII metadata: signatures over the exact body',
    execution_id => $u, event_type => 'execution.cancelled');
is_deeply($uev->{data}, $uobj, 'non-ASCII metadata: data is the execution');
($uq) = $rc->wait_requests(1, path => '/all',
    where => by_event(execution_id => $u));
check_delivery_request($uq // {}, $all_secret,
    'non-ASCII metadata: the endpoint too', execution_id => $u);

# many executions, cancelled and expired: every event delivered once to
# each destination
my @cancel = map {
    $t->create_exec($key, $t->exec_body(metadata => { n => $_ }))->{json}{id}
} 1 .. 40;
my @expire = map {
    $t->create_exec($key, $t->exec_body(timeout_seconds => 1,
        metadata => { n => $_ }))->{json}{id}
} 1 .. 60;
is(scalar(grep { defined } @cancel, @expire), 100, '100 executions');
$t->req(POST => "/v1/executions/$_/cancel", \%A) for @cancel;
my %is_c = map { $_ => 1 } @cancel;
my %is_x = map { $_ => 1 } @expire;
my (%at_all, %at_exp);
my $complete = wait_for(sub {
    %at_all = %at_exp = ();
    for my $q ($rc->requests(path => '/all')) {
        my $ev = $q->{event} // {};
        my $x = $ev->{execution_id} // next;
        push @{ $at_all{$x} }, $q if $is_c{$x} || $is_x{$x};
    }
    for my $q ($rc->requests(path => '/exp')) {
        my $x = $q->{event}{execution_id} // next;
        push @{ $at_exp{$x} }, $q if $is_x{$x};
    }
    return keys(%at_all) == 100 && keys(%at_exp) == 60;
}, 40, 0.25);
ok($complete, 'every event reached its endpoints ('
    . scalar(keys %at_all) . '/100 at the all-events endpoint, '
    . scalar(keys %at_exp) . '/60 at the execution.expired endpoint)');
my @dup = grep { @{ $at_all{$_} } > 1 } keys %at_all;
push @dup, grep { @{ $at_exp{$_} } > 1 } keys %at_exp;
is(scalar @dup, 0, '... each once (healthy receiver: no duplicates)');
ok(!grep({ $is_c{$_} && $at_all{$_}[0]{event}{event_type} ne
    'execution.cancelled' or $is_x{$_} && $at_all{$_}[0]{event}{event_type}
    ne 'execution.expired' } keys %at_all), '... with the right event types');
ok(!grep({ signature_problems($_->[0], $all_secret) } values %at_all),
    '... signed (all-events endpoint)');
ok(!grep({ signature_problems($_->[0], $exp_secret) } values %at_exp),
    '... signed (execution.expired endpoint)');
my %ids;
$ids{ $_->{headers}{'webhook-id'} // '' }++ for $rc->requests(path => '/all');
ok(!grep({ $_ > 1 } map { $ids{$_} } grep { $_ ne ($t1->{event_id} // '') }
    keys %ids), 'distinct event ids (only the retried test repeats)');

# a patch of events changes what is sent next
$r = $t->req(PATCH => "/v1/webhooks/endpoints/$exp_id", \%A,
    { events => ['execution.cancelled'] });
is($r->{status}, 200, 'patch events to execution.cancelled');
my $pc = $t->create_exec($key, $t->exec_body)->{json}{id} // 'exec_none';
$t->req(POST => "/v1/executions/$pc/cancel", \%A);
my ($pq) = $rc->wait_requests(1, path => '/exp',
    where => by_event(execution_id => $pc));
check_delivery_request($pq // {}, $exp_secret,
    'after the patch the endpoint gets execution.cancelled',
    event_type => 'execution.cancelled', execution_id => $pc);

# an event named twice in events is accepted, and still one delivery
$r = wh_create($t, $key, { url => $rc->url('/twice'),
    events => ['execution.cancelled', 'execution.cancelled'] });
is($r->{status}, 201, 'events listed twice: 201') or diag $r->{body};
{
    my $tw = $r->{json}{id} // 'wh_none';
    my $x = $t->create_exec($key, $t->exec_body)->{json}{id} // 'exec_none';
    is($t->req(POST => "/v1/executions/$x/cancel", \%A)->{status}, 200,
        'events listed twice: an execution cancelled');
    my @d = grep { ($_->{endpoint_id} // '') eq $tw }
        @{ wh_exec_deliveries($t, $key, $x) // [] };
    is(scalar @d, 1, 'events listed twice: one delivery');
    my @q = $rc->wait_requests(1, path => '/twice');
    ok(@q, '... delivered');
    ok(wh_sync($t, $rc), 'the sender has gone past it');
    is($rc->count(path => '/twice'), 1, '... once');
    is($t->req(DELETE => "/v1/webhooks/endpoints/$tw", \%A)->{status}, 200,
        'events listed twice: endpoint deleted');
}

# methods the routes do not have
for my $rt ([ PUT => "/v1/webhooks/endpoints/$all_id" ],
    [ DELETE => '/v1/webhooks/endpoints' ],
    [ GET => "/v1/webhooks/endpoints/$all_id/test" ],
    [ GET => "/v1/webhooks/deliveries/$t1->{delivery_id}/retry" ],
    [ POST => '/v1/webhooks/default/secret' ]) {
    is_error($t->req($rt->[0] => $rt->[1], \%A, $rt->[0] eq 'GET' ? undef
        : {}), 405, 'METHOD_NOT_ALLOWED', "$rt->[0] $rt->[1]: 405");
}

ok(wh_get($t, $key, $all_id)->{failure_count} == 0,
    'the endpoint never failed');

$rc->stop;
$t->stop;
$t->check_log;
unlike($t->read_log, qr/whsec_/, 'no secret in the error log');

# ---------------------------------------------------------------- URL rules
# A second nginx without modelroute_webhook_allow_private; its webhook
# names are resolved by a fake DNS server.

my $dns = MR::DNS->new;
$dns->add('loop.test', a => ['127.0.0.1']);
$dns->add('loop6.test', aaaa => ['::1']);
$dns->add('mapped.test', aaaa => ['::ffff:127.0.0.1']);
$dns->add('lan.test', a => ['127.0.0.1', '10.0.0.7']);
$dns->start;
my $s = MR::Test->new(extra_http => "modelroute_webhook_retry 1s;\n"
    . "modelroute_webhook_timeout 2s;\n"
    . "modelroute_webhook_resolver " . $dns->address . ";\n");
$s->start;
$rc->clear;
$rc->start;
my $port = $rc->port;
my $bacc = $s->new_account(credit => '10.00');
my %B = %{ auth($bacc->{key}) };

$r = wh_create($s, $bacc->{key}, { url => 'https://example.com/hook' });
is($r->{status}, 201, 'strict: a public https url is accepted')
    or diag $r->{body};
my $pub_id = $r->{json}{id} // 'wh_none';

for my $u ('http://example.com/hook', "http://127.0.0.1:$port/x",
    'https://127.0.0.1/x', "https://127.0.0.1:$port/x", 'https://localhost/x',
    "https://localhost:$port/x", 'https://10.0.0.1/x',
    'https://169.254.169.254/x', 'https://169.254.169.254/latest/meta-data/',
    'https://192.168.1.10/x', 'https://172.16.5.4/x', 'https://100.64.0.1/x',
    'https://224.0.0.1/x', 'https://[::1]/x', "https://[::1]:$port/x",
    'https://[fe80::1]/x', 'https://[fd00::1]/x', "https://127.0.0.2:$port/x",
    'https://127.255.255.254/x') {
    my $res = wh_create($s, $bacc->{key}, { url => $u });
    is_error($res, 400, 'INPUT_VALIDATION_ERROR', "strict: $u refused");
    ok(details_for_prefix($res, 'url'), "strict: $u: details name url");
}
for my $u ('https://127.0.0.1/x', 'http://example.com/x',
    'https://10.1.2.3/x') {
    is_error($s->req(PATCH => "/v1/webhooks/endpoints/$pub_id", \%B,
        { url => $u }), 400, 'INPUT_VALIDATION_ERROR',
        "strict: patch to $u refused");
}
is(wh_get($s, $bacc->{key}, $pub_id)->{url}, 'https://example.com/hook',
    'strict: the url is unchanged');

# Addresses that are loopback in disguise, and names that resolve to it:
# refused at registration, or the attempt fails with the reason of any
# unreachable address, and nothing reaches the receiver.
my @loop = map { [ $_, 0 ] } ("https://127.1:$port/s1",
    "https://0x7f000001:$port/s2", "https://2130706433:$port/s3",
    "https://0.0.0.0:$port/s4", "https://[::ffff:127.0.0.1]:$port/s5",
    "https://[::ffff:7f00:1]:$port/s7", "https://017700000001:$port/s8",
    "https://localhost.:$port/s6");
push @loop, map { [ "https://$_:$port/n-$_", 1 ] }
    qw(loop.test loop6.test mapped.test lan.test LOOP.test loop.test.);
my $checked = 0;
for my $l (@loop) {
    my ($u, $is_name) = @$l;
    my $res = wh_create($s, $bacc->{key}, { url => $u });
    if ($res->{status} != 201) {
        if ($is_name) {
            is($res->{status}, 201, "strict: $u (a name) passes registration")
                or diag $res->{body};
        } else {
            is_error($res, 400, 'INPUT_VALIDATION_ERROR',
                "strict: $u refused at registration");
        }
        next;
    }
    pass("strict: $u passes registration");
    my $id = $res->{json}{id};
    my $tr = $s->req(POST => "/v1/webhooks/endpoints/$id/test", \%B);
    is($tr->{status}, 202, "strict: $u: test 202");
    my $d = wait_delivery($s, $bacc->{key}, $id, $tr->{json}{delivery_id} // '-',
        sub { @{ $_[0]{attempts} } >= 1 }, 15);
    my $att = $d->{attempts}[0] // {};
    is($att->{error}, 'could not connect',
        "strict: $u: the attempt fails with 'could not connect'")
        or diag explain $d;
    ok(!$att->{status_code}, "strict: $u: no status code");
    $checked++;
}
ok($checked >= 6, "the address check on delivery was exercised ($checked "
    . 'urls)');
ok(scalar $dns->queries(name => 'loop.test'),
    'the names were asked of the DNS server');

# an execution's webhook_url follows the same rules
my $bx = $s->create_exec($bacc->{key}, $s->exec_body(
    webhook_url => "https://127.0.0.1:$port/b-exec"));
is_error($bx, 400, 'INPUT_VALIDATION_ERROR',
    'strict: a loopback webhook_url is refused');
$bx = $s->create_exec($bacc->{key}, $s->exec_body(
    webhook_url => "https://loop.test:$port/b-exec"));
is($bx->{status}, 202, 'strict: a webhook_url with a name is accepted')
    or diag $bx->{body};
{
    my $bid = $bx->{json}{id} // 'exec_none';
    $s->req(POST => "/v1/executions/$bid/cancel", \%B);
    my $d = wait_for(sub {
        my ($x) = @{ wh_exec_deliveries($s, $bacc->{key}, $bid) // [] };
        return $x && @{ $x->{attempts} // [] } ? $x : undef;
    }, 15, 0.1);
    is($d && $d->{attempts}[0]{error}, 'could not connect',
        'strict: a webhook_url whose name resolves to loopback fails with '
        . 'could not connect') or diag explain $d;
}

my @conn = $rc->connections;
is(scalar(grep { defined $_->{method} || $_->{raw_length} } @conn), 0,
    'strict: nothing reached the receiver') or diag explain \@conn;
note 'strict: ' . scalar(@conn) . ' bare TCP connection(s) to the receiver'
    if @conn;

$s->stop;
$s->check_log;
unlike($s->read_log, qr/whsec_/, 'strict: no secret in the error log');
$dns->stop;

# ---------------------------------------------------------------- schedules
# max age, concurrency per endpoint, fairness between endpoints

# A fresh account with one endpoint on $path: (key, endpoint id, secret).
sub setup {
    my ($t, $path, %body) = @_;
    my $acc = $t->new_account(credit => '10.00');
    my $r = wh_create($t, $acc->{key}, { url => $rc->url($path), %body });
    is($r->{status}, 201, "endpoint on $path") or diag $r->{body};
    return ($acc->{key}, $r->{json}{id} // 'wh_none',
        $r->{json}{secret} // 'whsec_', $acc);
}

sub send_test {
    my ($t, $key, $id) = @_;
    my $r = $t->req(POST => "/v1/webhooks/endpoints/$id/test", auth($key));
    is($r->{status}, 202, "test event to $id: 202") or diag $r->{body};
    return $r->{json} // {};
}

# one worker: its concurrency per endpoint is the whole of it
my $t3 = MR::Test->new(workers => 1,
    extra_http => "modelroute_webhook_allow_private on;\n"
    . "modelroute_webhook_timeout 30s;\n"
    . "modelroute_webhook_retry 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s;\n"
    . "modelroute_webhook_max_age 3s;\n"
    . "modelroute_webhook_concurrency 64 2;\n");
$t3->start;
{
    my ($key, $id, $secret) = setup($t3, '/old');
    $rc->set('/old', status => 500);
    my $ev = send_test($t3, $key, $id);
    my $d = wait_delivery($t3, $key, $id, $ev->{delivery_id} // '-',
        sub { $_[0]{status} ne 'pending' }, 15);
    is($d->{status}, 'failed', 'max_age: failed once older than 3 s');
    # a failure is recorded at `at` + latency_ms; it is retried only while
    # the delivery is younger than max_age (3 s), never after
    my @at = @{ $d->{attempts} // [] };
    my $born = parse_rfc3339($d->{created_at} // '') // 0;
    my @age = map { (parse_rfc3339($_->{at} // '') // 0)
        + ($_->{latency_ms} // 0) / 1000 - $born } @at;
    ok(@at >= 2 && !grep({ $_ >= 3 } @age[0 .. $#age - 1]),
        'max_age: each retry followed a failure younger than 3 s')
        or diag explain \@age;
    ok(@at && $age[-1] >= 2.9995, 'max_age: not retried after a failure at '
        . sprintf('%.3f s', $age[-1] // 0));
    my $c = $rc->count(path => '/old');
    is($c, scalar @at, 'max_age: every attempt recorded');
    ok(wh_sync($t3, $rc), 'max_age: the sender has gone past its next step');
    is($rc->count(path => '/old'), $c, 'max_age: no retry after it');
    $rc->set('/old');
    my $r = $t3->req(POST => "/v1/webhooks/deliveries/$ev->{delivery_id}/retry",
        auth($key));
    is($r->{status}, 202, 'max_age: a manual retry is still accepted');
    $d = wait_delivery($t3, $key, $id, $ev->{delivery_id} // '-',
        sub { $_[0]{status} eq 'succeeded' }, 10);
    is($d->{status}, 'succeeded', 'max_age: the manual retry is delivered');

    # the receiver holds every request: two are in flight, the others wait
    ($key, $id, $secret) = setup($t3, '/conc');
    $rc->set('/conc', hold => 'conc');
    my @ev = map { send_test($t3, $key, $id) } 1 .. 12;
    ok($rc->wait_requests(2, path => '/conc', timeout => 20),
        'concurrency: two attempts in flight');
    ok(wh_sync($t3, $rc), 'concurrency: the sender claimed again since');
    is($rc->count(path => '/conc'), 2,
        'concurrency: no third while two are unanswered (per endpoint 2)');
    $rc->release('conc');
    my @got = $rc->wait_requests(12, path => '/conc', timeout => 20);
    is(scalar @got, 12, 'concurrency: every event sent once released');
    my @done = grep { $_->{status} eq 'succeeded' } map {
        wait_delivery($t3, $key, $id, $_->{delivery_id} // '-',
            sub { $_[0]{status} eq 'succeeded' }, 10) } @ev;
    is(scalar @done, 12, 'concurrency: every delivery succeeded');
    is($rc->count(path => '/conc'), 12, 'concurrency: each sent once');
}
$t3->stop;
$t3->check_log;

# A slow endpoint with a backlog does not hold up the others: with 4
# attempts in flight per worker, 1 per endpoint, a slow endpoint has 2 in
# flight and the rest of the workers' capacity is free.  The slow one
# answers nothing until the other endpoint has its event.
my $t4 = MR::Test->new(extra_http => "modelroute_webhook_allow_private on;\n"
    . "modelroute_webhook_timeout 60s;\n"
    . "modelroute_webhook_retry 1s;\n"
    . "modelroute_webhook_concurrency 4 1;\n");
$t4->start;
{
    my ($skey, $sid) = setup($t4, '/slow-ep');
    $rc->set('/slow-ep', hold => 'slow-ep');
    my $n = 40;
    my $sent = 0;
    for (1 .. $n) {
        my $r = $t4->req(POST => "/v1/webhooks/endpoints/$sid/test",
            auth($skey));
        $sent++ if $r->{status} == 202;
    }
    is($sent, $n, "a backlog of $n deliveries to a slow endpoint");
    ok($rc->wait_requests(1, path => '/slow-ep', timeout => 10),
        'the slow endpoint is being served');
    my ($fkey, $fid) = setup($t4, '/fast-ep');
    my $ev = send_test($t4, $fkey, $fid);
    my ($q) = $rc->wait_requests(1, path => '/fast-ep', timeout => 30);
    ok($q, 'another endpoint is served while the slow one has a backlog');
    ok($rc->count(path => '/slow-ep') <= 2,
        'the slow endpoint has at most 2 attempts in flight (1 per worker)')
        or diag $rc->count(path => '/slow-ep');
    is(scalar(grep { defined $_->{answered_at} }
        $rc->requests(path => '/slow-ep')), 0,
        '... none of them answered yet');
    $rc->release('slow-ep');
    ok($rc->wait_requests($n, path => '/slow-ep', timeout => 60),
        'then the backlog drains');
}
$t4->stop;
$t4->check_log;
$rc->stop;
done_testing();
