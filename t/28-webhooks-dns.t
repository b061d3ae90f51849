# Webhook host names are resolved by nginx's resolver, never by libcurl or
# libc in a worker: a fake DNS server (MR::DNS) answers, delays or drops.
# A resolver that sleeps does not hold up the worker (one worker: a GET
# and the attempt's own record come back while the DNS server has not
# answered yet); names that do not resolve, resolve only to addresses that
# are not allowed, or are refused read the same to the tenant (one neutral
# reason; the details are in the error log at info); /etc/hosts is not
# read; every address a name resolves to is checked; the admin API's own
# addresses are refused even with modelroute_webhook_allow_private on.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time);
use MR::Test qw(:all);
use MR::Receiver qw(:all);
use MR::DNS;

my $UNREACHABLE = 'could not connect';

my $dns = MR::DNS->new;
$dns->add('hook.test', a => ['127.0.0.1']);
$dns->add('both.test', a => ['127.0.0.1'], aaaa => ['::1']);
$dns->add('slow.test', a => ['127.0.0.1'], delay => 5);
$dns->add('lost.test', drop => 1);
$dns->add('fail.test', rcode => 2);
$dns->start;

my $rc = MR::Receiver->new;
$rc->start;
my $port = $rc->port;

# One worker, so that a blocked event loop would hold up everything.
my $t = MR::Test->new(workers => 1,
    extra_main => "error_log logs/info.log info;\n",
    extra_http => "modelroute_webhook_allow_private on;\n"
        . "modelroute_webhook_resolver " . $dns->address . ";\n"
        . "modelroute_webhook_timeout 1s;\n"
        . "modelroute_webhook_retry 30s;\n");
$t->start;

sub info_log {
    open my $fh, '<', $t->prefix . '/logs/info.log' or return '';
    local $/;
    return <$fh> // '';
}

# An endpoint on $url for a fresh account, and a test event sent to it:
# (key, endpoint id, delivery id).
sub endpoint_event {
    my ($t, $url) = @_;
    my $acc = $t->new_account(credit => '10.00');
    my $r = wh_create($t, $acc->{key}, { url => $url });
    is($r->{status}, 201, "endpoint $url") or diag $r->{body};
    my $id = $r->{json}{id} // 'wh_none';
    my $ev = $t->req(POST => "/v1/webhooks/endpoints/$id/test",
        auth($acc->{key}));
    is($ev->{status}, 202, "$url: test event") or diag $ev->{body};
    return ($acc->{key}, $id, $ev->{json}{delivery_id} // 'dlv_none');
}

sub first_attempt {
    my ($t, $key, $id, $did, $timeout) = @_;
    my $d = wait_delivery($t, $key, $id, $did,
        sub { @{ $_[0]{attempts} // [] } >= 1 }, $timeout // 15);
    return ($d->{attempts} // [])->[0] // {}, $d;
}

# ---------------------------------------------------------------- nginx -t

sub conf_result {
    my ($extra) = @_;
    my $c = MR::Test->new(extra_http => $extra);
    return $c->test_config;
}

for my $bad ([ "modelroute_webhook_resolver valid=10s;\n",
        qr/no name servers defined/, 'without an address' ],
    [ "modelroute_webhook_resolver 127.0.0.1 ipv6=maybe;\n",
        qr/invalid parameter: ipv6=maybe/, 'a bad parameter' ],
    [ "modelroute_webhook_resolver 127.0.0.1;\n"
        . "modelroute_webhook_resolver 127.0.0.2;\n",
        qr/"modelroute_webhook_resolver" directive is duplicate/,
        'twice' ],
    [ "modelroute_webhook_resolver_timeout 0;\n",
        qr/"modelroute_webhook_resolver_timeout" must be at least 1ms/,
        'a zero timeout' ]) {
    my ($extra, $re, $what) = @$bad;
    my ($code, $out) = conf_result($extra);
    isnt($code, 0, "nginx -t refuses the resolver directives: $what");
    like($out, $re, "... saying why") or diag $out;
}
{
    my ($code, $out) = conf_result("modelroute_webhook_resolver "
        . "127.0.0.1:5353 [::1] valid=30s ipv6=off;\n"
        . "modelroute_webhook_resolver_timeout 3s;\n");
    is($code, 0, 'nginx -t: modelroute_webhook_resolver with its parameters')
        or diag $out;
    ($code, $out) = conf_result('');
    is($code, 0, 'nginx -t: the default resolver (from /etc/resolv.conf)')
        or diag $out;
}

# ---------------------------------------------------------------- resolving

for my $host ('hook.test', 'HOOK.Test', 'hook.test.', 'both.test') {
    my ($key, $id, $did) = endpoint_event($t, "http://$host:$port/ok");
    my $d = wait_delivery($t, $key, $id, $did,
        sub { $_[0]{status} ne 'pending' }, 15);
    is($d->{status}, 'succeeded', "$host: resolved by the DNS server, "
        . 'delivered') or diag explain $d;
    is($d->{attempts}[0]{status_code}, 200, "$host: 200");
}
is(scalar $rc->requests(path => '/ok'), 4, 'the receiver got each event');
ok(scalar $dns->queries(name => 'hook.test', type => 'A'),
    'the names were asked of the configured DNS server');
ok(scalar $dns->queries(name => 'both.test', type => 'AAAA'),
    'A and AAAA are asked');

# ---------------------------------------------------------------- failures
# A name the DNS server does not know, a SERVFAIL, a question it never
# answers (the attempt ends within the webhook timeout), a name that is in
# /etc/hosts but not in DNS, and a refused connection: the same reason.

my %reason;
for my $case ([ 'nope.test', 'an unknown name' ],
    [ 'fail.test', 'SERVFAIL' ], [ 'lost.test', 'no answer' ],
    [ 'localhost', '/etc/hosts is not read' ]) {
    my ($host, $what) = @$case;
    my ($key, $id, $did) = endpoint_event($t, "http://$host:$port/$host");
    my ($a, $d) = first_attempt($t, $key, $id, $did);
    is($a->{error}, $UNREACHABLE, "$what ($host): '$UNREACHABLE'")
        or diag explain $d;
    ok(!$a->{status_code}, "$what: no status code");
    $reason{$host} = $a->{error} // '';
}
ok(scalar $dns->queries(name => 'localhost'),
    'localhost is asked of the DNS server, not read from /etc/hosts');
is(scalar $rc->requests(path => '/localhost'), 0,
    'localhost: nothing reached the receiver');
ok(!$dns->answers(name => 'lost.test'), 'lost.test was never answered');

{
    my $down = MR::Receiver::free_port();
    my ($key, $id, $did) = endpoint_event($t,
        "http://127.0.0.1:$down/refused");
    my ($a) = first_attempt($t, $key, $id, $did);
    is($a->{error}, $UNREACHABLE, "a refused connection: '$UNREACHABLE'");
    ($key, $id, $did) = endpoint_event($t, "http://hook.test:$down/refused");
    ($a) = first_attempt($t, $key, $id, $did);
    is($a->{error}, $UNREACHABLE, "a name, then a refused connection: "
        . "'$UNREACHABLE'");
    ($key, $id, $did) = endpoint_event($t, "http://[::1]:$down/refused6");
    ($a) = first_attempt($t, $key, $id, $did);
    is($a->{error}, $UNREACHABLE, "an IPv6 literal, refused: "
        . "'$UNREACHABLE'");
}

{
    $rc->set('/late', delay => 3);
    my ($key, $id, $did) = endpoint_event($t, "http://hook.test:$port/late");
    my ($a) = first_attempt($t, $key, $id, $did);
    is($a->{error}, 'timed out', "an answer after the timeout: 'timed out'");
    $rc->set('/closed', close => 1);
    ($key, $id, $did) = endpoint_event($t, "http://hook.test:$port/closed");
    ($a) = first_attempt($t, $key, $id, $did);
    is($a->{error}, 'no valid HTTP answer',
        "a connection closed without an answer: 'no valid HTTP answer'");
}

my $info = info_log();
like($info, qr/"nope\.test" could not be resolved \(3: Host not found\)/,
    'the operator sees why at info: NXDOMAIN');
like($info,
    qr/"lost\.test" could not be resolved \(110: Operation timed out\)/,
    'the operator sees why at info: the resolver timed out');
like($info,
    qr/"127\.0\.0\.1" failed \(could not connect\): .*Connection refused/,
    'the operator sees why at info: the connection was refused');
unlike($info, qr/libcurl was about to resolve/,
    'libcurl never had a name to resolve');

# ---------------------------------------------------------------- slow DNS
# The DNS server answers slow.test after 5 s; the webhook timeout is 1 s.
# With the one worker resolving, a GET is answered, the attempt is
# recorded as failed, and a GET after that is answered, all before the DNS
# server has even answered. (libcurl 7.88's resolver thread, joined when
# its transfer timed out, held the worker until the answer came.)

{
    my $acc = $t->new_account(credit => '10.00');
    my %A = %{ auth($acc->{key}) };
    my $r = wh_create($t, $acc->{key}, { url => "http://slow.test:$port/s" });
    is($r->{status}, 201, 'slow DNS: endpoint');
    my $id = $r->{json}{id} // 'wh_none';
    $r = $t->req(POST => "/v1/webhooks/endpoints/$id/test", \%A);
    is($r->{status}, 202, 'slow DNS: test event');
    my $did = $r->{json}{delivery_id} // 'dlv_none';

    ok($dns->wait_queries(1, name => 'slow.test', timeout => 10),
        'slow DNS: the worker asked for slow.test');
    my $m = $t->req(GET => '/v1/models', \%A);
    is($m->{status}, 200, 'slow DNS: GET /v1/models answered while the '
        . 'name resolves');
    is(scalar $dns->answers(name => 'slow.test'), 0,
        '... before the DNS server answered');

    my $d = wait_delivery($t, $acc->{key}, $id, $did,
        sub { @{ $_[0]{attempts} // [] } >= 1 }, 15);
    my $answered = scalar $dns->answers(name => 'slow.test');
    is($d->{attempts}[0]{error}, $UNREACHABLE,
        "slow DNS: the attempt failed, '$UNREACHABLE'") or diag explain $d;
    is($answered, 0, '... and was recorded before the DNS server answered');
    $m = $t->req(GET => '/v1/models', \%A);
    is($m->{status}, 200, 'slow DNS: GET /v1/models after the attempt');
    is(scalar $dns->answers(name => 'slow.test'), 0,
        '... still before the DNS server answered');
    is(scalar $rc->requests(path => '/s'), 0, 'slow DNS: nothing was sent');
    ok(wait_for(sub { scalar $dns->answers(name => 'slow.test') }, 15),
        'slow DNS: the DNS server answered in the end');
}

$t->stop;
$t->check_log;

# ---------------------------------------------------------------- SSRF
# Without modelroute_webhook_allow_private: names that resolve to loopback
# or private addresses (A, AAAA, IPv4-mapped, several of them) fail with
# the same reason as a name that does not resolve, and reach nothing.

$dns->add('loop.test', a => ['127.0.0.1']);
$dns->add('loop6.test', aaaa => ['::1']);
$dns->add('mapped.test', aaaa => ['::ffff:127.0.0.1']);
$dns->add('private.test', a => ['10.0.0.1', '192.168.1.1', '169.254.169.254']);
$dns->add('mixed.test', a => ['127.0.0.1', '10.1.1.1'], aaaa => ['fd00::1']);

my $s = MR::Test->new(workers => 1,
    extra_main => "error_log logs/info.log info;\n",
    extra_http => "modelroute_webhook_resolver " . $dns->address . ";\n"
        . "modelroute_webhook_timeout 2s;\n"
        . "modelroute_webhook_retry 30s;\n");
$s->start;
$rc->clear;
my %seen;
for my $host ('loop.test', 'loop6.test', 'mapped.test', 'private.test',
    'mixed.test', 'nope.test') {
    my ($key, $id, $did) = endpoint_event($s, "https://$host:$port/$host");
    my ($a, $d) = first_attempt($s, $key, $id, $did);
    is($a->{error}, $UNREACHABLE, "strict: $host: '$UNREACHABLE'")
        or diag explain $d;
    $seen{ $a->{error} // '' }++;
}
is(scalar keys %seen, 1, 'strict: a private address and an unknown name '
    . 'read the same');
my @conn = $rc->connections;
is(scalar @conn, 0, 'strict: nothing reached the receiver')
    or diag explain \@conn;
{
    open my $fh, '<', $s->prefix . '/logs/info.log';
    local $/;
    my $log = <$fh> // '';
    for my $a ('127.0.0.1', '10.1.1.1', 'fd00::1') {
        like($log, qr/"mixed\.test" resolves to \Q$a\E, not a public address/,
            "strict: mixed.test: $a is not used (info)");
    }
}
$s->stop;
$s->check_log;

# ---------------------------------------------------------------- admin
# With modelroute_webhook_allow_private on, the addresses on which this
# nginx serves the admin API are still refused: a specific listen (the
# public API shares it here), and a wildcard one (its port on loopback and
# on this host's addresses); another server is reachable.

$dns->add('admin.test', a => ['127.0.0.1']);
my $http = <<'EOF';
modelroute_store %%STORE%%;
modelroute_model demo-chat per_request=0.04;
modelroute_webhook_allow_private on;
modelroute_webhook_timeout 2s;
modelroute_webhook_retry 30s;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    listen %%PORT2%%;
    location /ops/ { modelroute_admin; }
}
server {
    listen 127.0.0.1:%%PORT3%%;
    location / { return 200; }
}
EOF

# this host's address on its way out (no packet is sent), if it has one
sub host_address {
    my $sock = IO::Socket::INET->new(Proto => 'udp',
        PeerAddr => '192.0.2.1', PeerPort => 9) or return;
    my $a = $sock->sockhost // return;
    return $a =~ /^(?:127\.|0\.)/ ? undef : $a;
}

my $u = MR::Test->new(workers => 1, access_log => 1,
    http => "modelroute_webhook_resolver " . $dns->address . ";\n" . $http);
$u->start;
{
    my ($p1, $p2, $p3) = ($u->port, $u->{port2}, $u->{port3});
    my @urls = ("http://127.0.0.1:$p1/admin/accounts?via=webhook",
        "http://admin.test:$p1/admin/accounts?via=webhook",
        "http://127.0.0.1:$p2/ops/accounts?via=webhook",
        "http://127.0.0.2:$p2/ops/accounts?via=webhook",
        "http://[::1]:$p2/ops/accounts?via=webhook",
        "http://admin.test:$p2/ops/accounts?via=webhook");
    my $host = host_address();
    push @urls, "http://$host:$p2/ops/accounts?via=webhook" if $host;
    note "this host's address: " . ($host // 'none but loopback');
    for my $url (@urls) {
        my ($key, $id, $did) = endpoint_event($u, $url);
        my ($a, $d) = first_attempt($u, $key, $id, $did);
        is($a->{error}, $UNREACHABLE, "an admin API address is refused: "
            . $url) or diag explain $d;
    }
    my ($key, $id, $did) = endpoint_event($u,
        "http://127.0.0.1:$p3/other?via=webhook");
    my $d = wait_delivery($u, $key, $id, $did,
        sub { $_[0]{status} ne 'pending' }, 15);
    is($d->{status}, 'succeeded', 'another server is reachable');
    my @hits = grep { /via=webhook/ } $u->access_log_lines;
    is(scalar @hits, 1, 'no webhook reached the admin API')
        or diag join "\n", @hits;
    like($hits[0] // '', qr{ /other\?}, '... only the other server');
}
$u->stop;
$u->check_log;

$rc->stop;
$dns->stop;
done_testing();
