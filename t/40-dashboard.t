# The dashboard ({admin}/) in a real browser: headless Chromium (Debian's
# chromium; ./build.sh installs it) loads it from a running gateway, lets
# its script run, and the rendered DOM is checked against the admin API and
# the metrics: health, accounts and balances (a name is text, not markup),
# routes with breaker, in flight, attempts and failures, executions by
# status, open holds, the webhook backlog and the recent failed deliveries.
# A screenshot is kept: build/artifacts/40-dashboard.png (and the DOM, .html).
# Also the page itself (one self-contained answer, its CSP), and the admin
# lists it reads: accounts (paginated) and deliveries.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Path qw(make_path);
use POSIX ();
use Time::HiRes qw(time sleep);
use MR::Test qw(:all);
use MR::Receiver qw(:all);
use MR::Metrics qw(:all);

my $chromium = (grep { -x } qw(/usr/bin/chromium
    /usr/bin/chromium-browser))[0];
ok($chromium, 'chromium is installed (Debian package chromium)')
    or diag 'install it: ./build.sh installs what the tests need';

my $http = <<'EOF';
modelroute_store %%STORE%%;
modelroute_webhook_allow_private on;
modelroute_webhook_retry 1s;

modelroute_route ok  /providers/ok  protocol=openai_chat;
modelroute_route bad /providers/bad protocol=openai_chat
                 breaker=1 breaker_reset=1h;
modelroute_model good   per_request=0.01 routes=ok;
modelroute_model broken per_request=0.01 routes=bad attempts=1;
modelroute_model idle   per_request=0.25;

server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /providers/ok  { internal; modelroute_simulator; }
    location /providers/bad {
        internal;
        modelroute_simulator failure_rate=1 failure_status=500;
    }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;
my $rc = MR::Receiver->new;
$rc->start;
$rc->set('/down', status => 503);

# ---- the page itself
my $page = $t->admin(GET => '/');
is($page->{status}, 200, 'GET /admin/: 200');
like($page->{headers}{'content-type'} // '', qr{^text/html}, '... HTML');
like($page->{headers}{'content-security-policy'} // '',
    qr/default-src 'none'.*connect-src 'self'/,
    '... a CSP that lets it load nothing from elsewhere');
unlike($page->{body}, qr{(?:src|href)\s*=\s*["']?(?:https?:)?//}i,
    '... no external script, style or image');
like($page->{body}, qr{<script>.*refresh\(\);}s, '... its script inline');
is($t->admin(GET => '/dashboard')->{body}, $page->{body},
    'GET /admin/dashboard: the same page');
is_error($t->admin(POST => '/dashboard', {}), 405, 'METHOD_NOT_ALLOWED',
    'POST: 405');

# ---- some work to show
my @accts;
for my $i (1 .. 24) {
    push @accts, $t->new_account(credit => sprintf('%d.%02d', 10 + $i, $i),
        name => $i == 7 ? '<b>bold</b> & co' : "customer $i");
}
my $key = $accts[0]{key};
my @good = map { $t->create_exec($key, $t->exec_body(model => 'good'))
    ->{json}{id} } 1 .. 6;
my $broken = $t->create_exec($key, $t->exec_body(model => 'broken'))
    ->{json}{id};
my @open = map { $t->create_exec($accts[1]{key},
    $t->exec_body(model => 'idle'))->{json}{id} } 1 .. 3;
my $cancel = $t->create_exec($key, $t->exec_body(model => 'idle'))
    ->{json}{id};
$t->req(POST => "/v1/executions/$cancel/cancel", auth($key));
ok(wait_for(sub {
    !grep { $t->get_exec($key, $_)->{json}{status} !~ /COMPLETED|FAILED/ }
        @good, $broken;
}, 20), 'the dispatched executions ended');

my $ep = wh_create($t, $accts[2]{key}, { url => $rc->url('/down') });
is($ep->{status}, 201, 'an endpoint that answers 503');
$t->req(POST => "/v1/webhooks/endpoints/$ep->{json}{id}/test",
    auth($accts[2]{key}));
my $failed;
ok(wait_for(sub {
    my $d = $t->admin(GET => '/deliveries')->{json}{data} // [];
    ($failed) = grep { $_->{status} eq 'failed' } @$d;
}, 20), 'a delivery failed');

# ---- the admin lists the page reads
my $l1 = $t->admin(GET => '/accounts?limit=20');
is($l1->{status}, 200, 'GET /admin/accounts');
is(scalar @{ $l1->{json}{data} }, 20, '... 20 of 24');
ok($l1->{json}{has_more}, '... has_more');
my @ids = map { $_->{id} } @{ $l1->{json}{data} };
is_deeply(\@ids, [sort @ids], '... in the order of their ids');
my $l2 = $t->admin(GET => "/accounts?limit=20&starting_after=$ids[-1]");
is(scalar @{ $l2->{json}{data} }, 4, '... then the other 4');
ok(!$l2->{json}{has_more}, '... and no more');
is_deeply([sort map { $_->{id} } @{ $l1->{json}{data} },
    @{ $l2->{json}{data} }], [sort map { $_->{org} } @accts],
    '... every account once');
is_deeply($l1->{json}{data}[0],
    $t->admin(GET => "/accounts/$ids[0]")->{json},
    '... each as GET /admin/accounts/{org} shows it');
is_error($t->admin(GET => '/accounts?limit=0'), 400,
    'INPUT_VALIDATION_ERROR', 'limit 0: 400');
is_error($t->admin(GET => '/accounts?limit=101'), 400,
    'INPUT_VALIDATION_ERROR', 'limit 101: 400');
is_error($t->admin(GET => '/accounts?starting_after=nope'), 400,
    'INPUT_VALIDATION_ERROR', 'a bad starting_after: 400');
is($t->admin(POST => '/accounts', {})->{status}, 201,
    'POST /admin/accounts still creates');
push @accts, { org => $t->admin(GET => '/accounts?limit=100')
    ->{json}{data}[-1]{id} };

my $dl = $t->admin(GET => '/deliveries?limit=5');
is($dl->{status}, 200, 'GET /admin/deliveries');
is($dl->{json}{data}[0]{id}, $failed->{id}, '... the failed one');
is($dl->{json}{data}[0]{account}, $accts[2]{org}, '... its account');
is($dl->{json}{data}[0]{attempts}, 2, '... two attempts');
is($dl->{json}{data}[0]{last_attempt}{status_code}, 503,
    '... the last answered 503');
is($dl->{json}{data}[0]{event_type}, 'webhook.test', '... its event');
is_error($t->admin(GET => '/deliveries?limit=500'), 400,
    'INPUT_VALIDATION_ERROR', 'limit 500: 400');

# ---- the browser
SKIP: {
skip 'no chromium', 1 unless $chromium;

my $dir = "$MR::Test::ROOT/build/artifacts";
make_path($dir);
my $png = "$dir/40-dashboard.png";
my $html = "$dir/40-dashboard.html";
unlink $png, $html;
my $url = $t->url('/admin/');
my @flags = ('--headless', '--no-sandbox', '--disable-gpu',
    '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync',
    '--user-data-dir=' . $t->prefix . '/chromium',
    '--virtual-time-budget=7000', '--window-size=1400,1800');

sub browse {
    my (@args) = @_;
    my $out = $t->prefix . '/chromium.out';
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', $out or die "$out: $!";
        open STDERR, '>', $t->prefix . '/chromium.err';
        exec $chromium, @flags, @args, $url or POSIX::_exit(127);
    }
    my $done = wait_for(sub { waitpid($pid, POSIX::WNOHANG()) == $pid },
        120, 0.1);
    unless ($done) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
        diag 'chromium did not finish';
    }
    open my $fh, '<', $out or return '';
    local $/;
    return <$fh> // '';
}

# what the API says, at rest
my $m = parse_metrics($t->admin(GET => '/metrics')->{body});
my $routes = $t->admin(GET => '/routes')->{json}{data};
my $list = $t->admin(GET => '/accounts?limit=20')->{json}{data};

my $dom = browse('--dump-dom');
if (open my $fh, '>', $html) {
    print $fh $dom;
    close $fh;
}
note "the rendered DOM: $html";

my ($ready) = $dom =~ /<body[^>]*data-ready="(\d+)"/;
ok(($ready // 0) >= 2, 'the page refreshed ' . ($ready // 0) . ' times')
    or diag substr($dom, 0, 2000);

sub text_of {
    my ($id) = @_;
    my ($v) = $dom =~ /id="\Q$id\E"[^>]*>([^<]*)</;
    return $v;
}
sub cells {
    my ($attr, $value) = @_;
    my ($tr) = $dom =~ m{(<tr[^>]*\Q$attr\E="\Q$value\E"[^>]*>.*?</tr>)}s;
    return {} unless $tr;
    my %c;
    while ($tr =~ m{<td[^>]*data-field="([^"]+)"[^>]*>(.*?)</td>}gs) {
        $c{$1} = $2;
    }
    return \%c;
}

is(text_of('health'), 'ok', 'health: ok');
is(text_of('accounts'), metric($m, 'modelroute_accounts'),
    'accounts: as the metrics');
is(text_of('accounts'), 25, '... 25');
is(text_of('holds-open'), 3, 'open holds: 3');
is(text_of('held'), '0.900000', 'held: 0.900000 (3 x 0.30)');
is(text_of('backlog'), 0, 'webhook backlog: 0');
like(text_of('map-used') // '', qr/^\d+\.\d\d %$/, 'store map used');

my $shown = () = $dom =~ /<tr[^>]*data-account="org_/g;
is($shown, 20, '20 accounts on the first page');
for my $acc (@$list) {
    my $c = cells('data-account', $acc->{id});
    my %want = (id => $acc->{id}, balance => $acc->{balance},
        held => $acc->{held}, available => $acc->{available});
    is_deeply({ map { $_ => $c->{$_} } keys %want }, \%want,
        "account $acc->{id}: id, balance, held, available as the API");
}
my ($seven) = grep { ($_->{name} // '') =~ /bold/ } @$list;
if ($seven) {
    is(cells('data-account', $seven->{id})->{name},
        '&lt;b&gt;bold&lt;/b&gt; &amp; co', 'a name is text, not markup');
}
unlike($dom, qr{<b>bold</b>}, 'no markup from a name');
like($dom, qr{<button id="next"(?![^>]*disabled)}, 'a next page');

for my $r (@$routes) {
    my $c = cells('data-route', $r->{name});
    is_deeply([@$c{qw(breaker in_flight attempts failures)}],
        [@$r{qw(breaker in_flight attempts failures)}],
        "route $r->{name}: breaker, in flight, attempts, failures");
}
is(cells('data-route', 'bad')->{breaker}, 'open', 'bad: open');
is(cells('data-route', 'bad')->{failure_rate}, '100.0 %',
    'bad: failure rate 100 %');
is(cells('data-route', 'ok')->{attempts}, 6, 'ok: 6 attempts');

for my $s (qw(COMPLETED FAILED CANCELLED EXPIRED)) {
    is(cells('data-status', $s)->{total},
        msum($m, 'modelroute_executions_finished_total', status => $s),
        "executions $s: as the metrics");
}
is(cells('data-status', 'COMPLETED')->{total}, 6, 'COMPLETED: 6');
is(cells('data-status', 'created')->{total}, 11, 'created: 11');
my $lines = () = $dom =~ /<polyline /g;
is($lines, 5, 'the chart: a line per series');

my $d = cells('data-delivery', $failed->{id});
is($d->{status}, 'failed', 'the failed delivery is shown');
is($d->{account}, $accts[2]{org}, '... its account');
is($d->{last}, 'HTTP 503', '... its last answer');
is($d->{attempts}, 2, '... its attempts');
is(text_of('dlv-failed'), 1, 'webhook attempts failed: 1');
is(text_of('dlv-retrying'), 1, 'webhook attempts retrying: 1');

browse("--screenshot=$png");
ok(-s $png && -s $png > 20_000, "a screenshot: $png");
open my $pf, '<:raw', $png;
read $pf, my $magic, 8 if $pf;
is($magic // '', "\x89PNG\r\n\x1a\n", '... a PNG');
diag "screenshot: $png" if $ENV{MR_KEEP};
}

$rc->stop;
$t->done;
