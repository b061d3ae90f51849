# openapi.yaml against the gateway: Redocly's linter finds no problem in
# the document, then every operation is driven for real (each success and
# each documented error: account limits, the rate limit's 429, a full
# store's 507 and its health's 503, and the errors any path may give:
# 405 with Allow, 403 from deny, 429 and 503 from limit_req, unknown
# paths), and every answer, and every webhook delivery received, is
# validated against the document with Ajv (JSON Schema 2020-12, the
# dialect of OpenAPI 3.1): status, headers, body. The response schemas
# forbid fields they do not name and require those they do, so a field
# the code sends and the document does not describe fails, and so does
# the reverse; so does a header the gateway sets that the response does
# not declare, and, with rate limits on, an answer to a valid key
# without X-RateLimit-*. Every response an operation documents must have
# been seen, with each error code it names.
#
# The checks run in node (tools/openapi/: lint.mjs, validate.mjs, with
# the packages of package-lock.json, which build.sh installs).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Digest::SHA qw(hmac_sha256_hex);
use File::Temp qw(tempfile);
use Test::More;
use MR::Test qw(:all);
use MR::Receiver;

my $ROOT = $MR::Test::ROOT;
my $DOC = "$ROOT/openapi.yaml";

# node and the packages are build.sh's to install: missing, they fail
my $node = `sh -c 'command -v node'`;
chomp $node;
unless ($node && -d "$ROOT/node_modules/ajv"
    && -d "$ROOT/node_modules/\@redocly/openapi-core")
{
    fail('node and the npm packages of package-lock.json are needed: '
        . 'run ./build.sh (npm ci)');
    done_testing();
    exit;
}

# ---------------------------------------------------------------- lint

# the document's version is the package's
{
    open my $dfh, '<', $DOC or die "$DOC: $!";
    my ($version) = join('', <$dfh>) =~ /^info:\n(?:  .*\n)*?  version: (\S+)$/m;
    open my $cfh, '<', "$ROOT/debian/changelog" or die "changelog: $!";
    my ($pkg) = (<$cfh> // '') =~ /^\S+ \(([^)]+)\)/;
    is($version, $pkg, 'info.version is the version in debian/changelog');
}

{
    my $out = MR::Test::run_capture($node, "$ROOT/tools/openapi/lint.mjs",
        $DOC);
    is($? >> 8, 0, 'openapi.yaml: Redocly finds no problem') or diag $out;
}

# ---------------------------------------------------------------- gateway

# the fake providers and the webhook receiver
my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;
$rc->set('/job', status => 202, content_type => 'application/json',
    body => '{"job_id":"job-1"}');
$rc->set('/bad', status => 400, content_type => 'application/json',
    body => '{"error":{"message":"bad input","type":"invalid_request_error"}}');

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_webhook_allow_private on;
modelroute_sweep_interval 200ms;
modelroute_callback_url http://127.0.0.1:%%PORT%%/v1/callbacks;

modelroute_route sim      /providers/sim      protocol=openai_chat;
modelroute_route sim-anth /providers/sim-anth protocol=anthropic;
modelroute_route sim-emb  /providers/sim-emb  protocol=openai_embeddings;
modelroute_route sim-img  /providers/sim-img  protocol=openai_images;
modelroute_route job      /providers/job      protocol=async timeout=5s;
modelroute_route bad      /providers/bad      protocol=openai_chat;

modelroute_model chat  per_request=0.002 input_per_mtok=1 output_per_mtok=2
                 routes=sim:sim-small;
modelroute_model anth  per_request=0.002 routes=sim-anth;
modelroute_model emb   per_request=0.001 routes=sim-emb;
modelroute_model img   per_image=0.02 routes=sim-img;
modelroute_model async per_request=0.01 input_per_mtok=1 output_per_mtok=2
                 routes=job;
modelroute_model bad   per_request=0.01 routes=bad attempts=1;
modelroute_model idle  per_request=0.01;
modelroute_model dear  per_request=5;
modelroute_model small per_request=0.001 max_input=64;

# every answer to a valid key carries X-RateLimit-*; accounts get their
# own, small, limit through the admin API
modelroute_rate_limit 100000 1h;

limit_req_zone \$binary_remote_addr zone=mr429:1m rate=1r/m;
limit_req_zone \$binary_remote_addr zone=mr503:1m rate=1r/m;

server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; client_max_body_size 16k; }
    location /admin/ { modelroute_admin; client_max_body_size 16k; }
}

# what an operator's configuration adds: limit_req, deny
server {
    listen 127.0.0.1:%%PORT2%%;
    location /v1/ { modelroute_api; limit_req zone=mr429;
                    limit_req_status 429; }
}
server {
    listen 127.0.0.1:%%PORT3%%;
    location /v1/ { modelroute_api; limit_req zone=mr503; }
    location /admin/ { modelroute_admin; deny all; }
}

server {
    modelroute_dispatch;
    location /providers/sim      { internal; modelroute_simulator; }
    location /providers/sim-anth { internal;
                                   modelroute_simulator format=anthropic; }
    location /providers/sim-emb  { internal;
                                   modelroute_simulator format=embeddings; }
    location /providers/sim-img  { internal;
                                   modelroute_simulator format=images; }
    location /providers/job { internal;
                              proxy_pass http://127.0.0.1:$RPORT/job; }
    location /providers/bad { internal;
                              proxy_pass http://127.0.0.1:$RPORT/bad; }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;
my $MAIN = $t;    # the gateway with modelroute_rate_limit

# ---------------------------------------------------------------- driving

my @EX;

# ex(LABEL, WANT, METHOD, PATH, key => secret, body => ref|string,
#    headers => {}, port => n): sends the request, checks the status we
# expect and records the exchange for the validator. The public API of
# the main gateway is rate-limited: its answers to a valid key must carry
# X-RateLimit-* (the validator checks all but the 401s).
sub ex {
    my ($label, $want, $method, $path, %o) = @_;
    my %h = %{ $o{headers} // {} };
    $h{Authorization} = "Bearer $o{key}" if defined $o{key};
    my $body = $o{body};
    if (ref $body) {
        $body = json_encode($body);
        $h{'Content-Type'} //= 'application/json';
    }
    my %opt = (headers => \%h);
    $opt{content} = $body if defined $body;
    my $r = $t->ua->request($method, $t->url($path, $o{port}), \%opt);
    my $res = MR::Test::response($r->{status}, $r->{headers}, $r->{content});
    # nginx refuses a body over client_max_body_size (16k here) before the
    # module reads the key: no X-RateLimit-* then
    my $limited = $t == $MAIN && !$o{port} && $path =~ m{^/v1/}
        && $path !~ m{^/v1/callbacks/}
        && length($body // '') <= 16 * 1024;
    # the headers as received: text (a later numeric comparison in a test
    # would make JSON::PP send a number)
    my %rh = map { my $v = $res->{headers}{$_};
                   ($_ => ref $v ? [ map { "$_" } @$v ] : "$v") }
             keys %{ $res->{headers} };
    push @EX, { label => $label, kind => 'response', method => $method,
        path => $path, status => $res->{status} + 0,
        headers => \%rh, body => $res->{body},
        request => { headers => { map { lc($_) => $h{$_} } keys %h },
                     body => $body },
        rate_limited => $limited ? JSON::PP::true : JSON::PP::false,
    };
    is($res->{status}, $want, "$label: $want")
        or diag substr($res->{body}, 0, 300);
    return $res;
}

# the error code of an answer
sub code_of { ($_[0]{json} && $_[0]{json}{error} || {})->{code} // '' }

my $BIG = '{"x":"' . ('a' x 20_000) . '"}';
my %TEXT = (body => 'hello', headers => { 'Content-Type' => 'text/plain' });
my %LARGE = (body => $BIG,
    headers => { 'Content-Type' => 'application/json' });
my $BADKEY = make_key_string(crc => 'bad');
my $NOKEY = make_key_string();
my $GHOST_EXEC = sprintf 'exec_%012x%032x', 1, 1;
my $GHOST_KEY = 'key_' . '0' x 24;
my $GHOST_WH = 'wh_' . '0' x 24;
my $GHOST_DLV = sprintf 'dlv_%012x%032x', 1, 1;
my $GHOST_ORG = 'org_' . '0' x 24;

# ---- accounts and keys (admin)

my $acct = ex('admin: create account', 201, POST => '/admin/accounts',
    body => { name => 'conformance', credit => '50.00' })->{json};
my $org = $acct->{id};
ex('admin: create account, empty body', 201, POST => '/admin/accounts');
my $poor = ex('admin: create account without credit', 201,
    POST => '/admin/accounts', body => { name => undef })->{json}{id};
my $other = ex('admin: another account', 201, POST => '/admin/accounts',
    body => { credit => '1.00' })->{json}{id};

my $kfull = ex('admin: full key', 201, POST => "/admin/accounts/$org/keys",
    body => { permission => 'full', name => 'backend' })->{json};
my $KA = $kfull->{key};
my $KE = ex('admin: execution key', 201,
    POST => "/admin/accounts/$org/keys",
    body => { permission => 'execution' })->{json}{key};
my $spare = ex('admin: a key to rotate', 201,
    POST => "/admin/accounts/$org/keys",
    body => { permission => 'full' })->{json};
my $doomed = ex('admin: a key to revoke', 201,
    POST => "/admin/accounts/$org/keys",
    body => { permission => 'execution' })->{json};
my $KP = ex('admin: key of the poor account', 201,
    POST => "/admin/accounts/$poor/keys",
    body => { permission => 'full' })->{json}{key};
my $KO = ex('admin: key of the other account', 201,
    POST => "/admin/accounts/$other/keys",
    body => { permission => 'full' })->{json}{key};

ex('admin: create key, bad permission', 400,
    POST => "/admin/accounts/$org/keys", body => { permission => 'root' });
ex('admin: create key, unknown account', 404,
    POST => "/admin/accounts/$GHOST_ORG/keys",
    body => { permission => 'full' });
ex('admin: create key, too large', 413, POST => "/admin/accounts/$org/keys",
    %LARGE);
ex('admin: create key, not JSON', 415, POST => "/admin/accounts/$org/keys",
    %TEXT);
ex('admin: create account, bad credit', 400, POST => '/admin/accounts',
    body => { credit => 'ten' });
ex('admin: create account, malformed JSON', 400, POST => '/admin/accounts',
    body => '{"name":', headers => { 'Content-Type' => 'application/json' });
ex('admin: create account, too large', 413, POST => '/admin/accounts',
    %LARGE);
ex('admin: create account, not JSON', 415, POST => '/admin/accounts',
    %TEXT);

ex('admin: read account', 200, GET => "/admin/accounts/$org");
ex('admin: read account, HEAD', 200, HEAD => "/admin/accounts/$org");
ex('admin: read unknown account', 404, GET => "/admin/accounts/$GHOST_ORG");
ex('admin: read malformed account', 404, GET => '/admin/accounts/org_x');
ex('admin: list keys', 200, GET => "/admin/accounts/$org/keys");
ex('admin: list keys, unknown account', 404,
    GET => "/admin/accounts/$GHOST_ORG/keys");

ex('admin: credit', 200, POST => "/admin/accounts/$org/credit",
    body => { amount => '10.00', reference => 'inv-1' });
my $replay = ex('admin: credit replayed', 200,
    POST => "/admin/accounts/$org/credit",
    body => { amount => '10.00', reference => 'inv-1' });
is($replay->{headers}{'idempotent-replayed'}, 'true',
    'admin: a replayed credit says so');
ex('admin: credit, same reference, other amount', 409,
    POST => "/admin/accounts/$org/credit",
    body => { amount => '11.00', reference => 'inv-1' });
ex('admin: credit, bad amount', 400, POST => "/admin/accounts/$org/credit",
    body => { amount => '-1' });
ex('admin: credit, unknown account', 404,
    POST => "/admin/accounts/$GHOST_ORG/credit", body => { amount => '1' });
ex('admin: credit, too large', 413, POST => "/admin/accounts/$org/credit",
    %LARGE);
ex('admin: credit, not JSON', 415, POST => "/admin/accounts/$org/credit",
    %TEXT);
ex('admin: debit', 200, POST => "/admin/accounts/$org/debit",
    body => { amount => '1.00' });
ex('admin: debit, more than available', 402,
    POST => "/admin/accounts/$other/debit", body => { amount => '5.00' });
ex('admin: debit, no amount', 400, POST => "/admin/accounts/$org/debit",
    body => {});
ex('admin: debit, unknown account', 404,
    POST => "/admin/accounts/$GHOST_ORG/debit", body => { amount => '1' });
ex('admin: debit, too large', 413, POST => "/admin/accounts/$org/debit",
    %LARGE);
ex('admin: debit, not JSON', 415, POST => "/admin/accounts/$org/debit",
    %TEXT);

ex('admin: revoke', 200, POST => "/admin/keys/$doomed->{id}/revoke");
ex('admin: revoke again', 200, POST => "/admin/keys/$doomed->{id}/revoke");
ex('admin: revoke unknown key', 404, POST => "/admin/keys/$GHOST_KEY/revoke");
ex('admin: revoke, too large', 413, POST => "/admin/keys/$doomed->{id}/revoke",
    %LARGE);
ex('admin: revoke, not JSON', 415, POST => "/admin/keys/$doomed->{id}/revoke",
    %TEXT);

ex('admin: routes', 200, GET => '/admin/routes');

# ---- operations: the accounts, metrics, readiness, the dashboard

ex('admin: list accounts', 200, GET => '/admin/accounts');
ex('admin: list accounts, HEAD', 200, HEAD => '/admin/accounts');
my $apage = ex('admin: list accounts, a page', 200,
    GET => '/admin/accounts?limit=2');
ok($apage->{json}{has_more}, 'admin: more accounts than a page of 2');
my $alast = $apage->{json}{data}[-1]{id} // $GHOST_ORG;
ex('admin: list accounts, the next page', 200,
    GET => "/admin/accounts?limit=2&starting_after=$alast");
ex('admin: list accounts, bad limit and starting_after', 400,
    GET => '/admin/accounts?limit=0&starting_after=org_x');
my $metrics = ex('admin: metrics', 200, GET => '/admin/metrics');
like($metrics->{headers}{'content-type'} // '',
    qr{^text/plain; version=0\.0\.4\b}, 'admin: metrics, format 0.0.4');
ex('admin: health', 200, GET => '/admin/health');
ex('admin: dashboard', 200, GET => '/admin/');
ex('admin: dashboard by name', 200, GET => '/admin/dashboard');

# ---- the public API: models, balance

for my $k (['full', $KA], ['execution', $KE]) {
    ex("models ($k->[0] key)", 200, GET => '/v1/models', key => $k->[1]);
    ex("balance ($k->[0] key)", 200, GET => '/v1/balance', key => $k->[1]);
}
ex('balance, HEAD', 200, HEAD => '/v1/balance', key => $KA);
ex('models without a key', 401, GET => '/v1/models');
ex('balance with a bad checksum', 401, GET => '/v1/balance', key => $BADKEY);
ex('balance with an unknown key', 401, GET => '/v1/balance', key => $NOKEY);
ex('balance with a revoked key', 401, GET => '/v1/balance',
    key => $doomed->{key});

# ---- executions

# endpoints first: they get the events that happen after their creation
my $ep = ex('create endpoint', 201, POST => '/v1/webhooks/endpoints', key => $KA,
    body => { url => $rc->url('/hook'), description => 'all events',
              headers => { 'X-Tenant' => 'conformance' } })->{json};
my $ep2 = ex('create endpoint for some events', 201,
    POST => '/v1/webhooks/endpoints', key => $KA,
    body => { url => $rc->url('/hook2'),
              events => ['execution.completed'] })->{json};

$rc->set('/own', status => 200);
my $hook = $rc->url('/own');

my %c = (key => $KA);
my $body = { model => 'chat', input => { prompt => 'hello' },
    idempotency_key => 'conf-chat', webhook_url => $hook,
    metadata => { order => 42 } };
my $chat = ex('create chat', 202, POST => '/v1/executions', %c,
    body => $body)->{json};
my $rep = ex('create chat replayed', 202, POST => '/v1/executions', %c,
    body => $body);
is($rep->{headers}{'idempotent-replayed'}, 'true', 'a replay says so');
ex('create with the key in the header', 202, POST => '/v1/executions',
    key => $KE, headers => { 'Idempotency-Key' => 'conf-header' },
    body => { model => 'anth', input => { prompt => 'hi', max_tokens => 50 } });
my $emb = ex('create embeddings', 202, POST => '/v1/executions', %c,
    body => { model => 'emb', input => { input => 'vector me' },
              idempotency_key => 'conf-emb' })->{json};
my $img = ex('create images', 202, POST => '/v1/executions', %c,
    body => { model => 'img', input => { prompt => 'a cat', n => 2 },
              idempotency_key => 'conf-img' })->{json};
my $bad = ex('create for a provider that refuses the input', 202,
    POST => '/v1/executions', %c,
    body => { model => 'bad', input => { prompt => 'x' },
              idempotency_key => 'conf-bad' })->{json};
my $pend = ex('create, never dispatched', 202, POST => '/v1/executions', %c,
    body => { model => 'idle', input => { prompt => 'wait' },
              idempotency_key => 'conf-idle', metadata => undef })->{json};
my $tocancel = ex('create, to cancel', 202, POST => '/v1/executions', %c,
    body => { model => 'idle', input => {},
              idempotency_key => 'conf-cancel' })->{json};
my $short = ex('create, to expire', 202, POST => '/v1/executions', %c,
    body => { model => 'idle', input => {}, timeout_seconds => 1,
              idempotency_key => 'conf-expire' })->{json};
my $async = ex('create, asynchronous provider', 202, POST => '/v1/executions',
    %c, body => { model => 'async', input => { prompt => 'later' },
                  idempotency_key => 'conf-async' })->{json};

ex('create, no model', 400, POST => '/v1/executions', %c,
    body => { input => {}, idempotency_key => 'conf-x' });
ex('create, unknown model and bad fields', 400, POST => '/v1/executions', %c,
    body => { model => 'nope', input => [], idempotency_key => '',
              metadata => 1, timeout_seconds => 'x' });
ex('create, header and body keys differ', 400, POST => '/v1/executions', %c,
    headers => { 'Idempotency-Key' => 'one' },
    body => { model => 'chat', input => {}, idempotency_key => 'two' });
ex('create, malformed JSON', 400, POST => '/v1/executions', %c,
    body => '{"model":', headers => { 'Content-Type' => 'application/json' });
ex('create, no key', 401, POST => '/v1/executions', body => $body);
ex('create, balance too low', 402, POST => '/v1/executions', key => $KP,
    body => { model => 'chat', input => {}, idempotency_key => 'conf-p' });
ex('create, a dear model', 402, POST => '/v1/executions', key => $KO,
    body => { model => 'dear', input => {}, idempotency_key => 'conf-d' });
ex('create, key reused with another body', 409, POST => '/v1/executions', %c,
    body => { %$body, input => { prompt => 'other' } });
ex('create, too large', 413, POST => '/v1/executions', %c, %LARGE);
my $over = ex('create, an input over the model\'s max_input', 413,
    POST => '/v1/executions', %c,
    body => { model => 'small', input => { prompt => 'x' x 100 },
              idempotency_key => 'conf-small' });
is(($over->{json}{error}{details} // [{}])->[0]{field}, 'input',
    'max_input: the detail names input');
ex('create, not JSON', 415, POST => '/v1/executions', %c, %TEXT);

# wait for the ends
sub final {
    my ($id, $want) = @_;
    my $e;
    wait_for(sub {
        $e = $t->get_exec($KA, $id)->{json};
        $e && $e->{status} =~ $want;
    }, 15);
    return $e // {};
}
my $TERMINAL = qr/^(?:COMPLETED|FAILED|CANCELLED|EXPIRED)$/;
is(final($chat->{id}, $TERMINAL)->{status}, 'COMPLETED', 'chat completed');
is(final($emb->{id}, $TERMINAL)->{status}, 'COMPLETED', 'embeddings completed');
is(final($img->{id}, $TERMINAL)->{status}, 'COMPLETED', 'images completed');
is(final($bad->{id}, $TERMINAL)->{status}, 'FAILED', 'refused input: FAILED');
is(final($short->{id}, $TERMINAL)->{status}, 'EXPIRED', 'short: EXPIRED');
is(final($async->{id}, qr/^AWAITING_WEBHOOK$|$TERMINAL/)->{status},
   'AWAITING_WEBHOOK', 'asynchronous job taken');

ex('cancel', 200, POST => "/v1/executions/$tocancel->{id}/cancel", %c);
ex('cancel again', 200, POST => "/v1/executions/$tocancel->{id}/cancel", %c);
ex('cancel a completed execution', 409,
    POST => "/v1/executions/$chat->{id}/cancel", %c);
ex('cancel an unknown execution', 404,
    POST => "/v1/executions/$GHOST_EXEC/cancel", %c);
ex('cancel another account\'s execution', 404,
    POST => "/v1/executions/$pend->{id}/cancel", key => $KO);
ex('cancel, no key', 401, POST => "/v1/executions/$pend->{id}/cancel");
ex('cancel, too large', 413, POST => "/v1/executions/$pend->{id}/cancel",
    %c, %LARGE);
ex('cancel, not JSON', 415, POST => "/v1/executions/$pend->{id}/cancel",
    %c, %TEXT);

for my $e ($chat, $emb, $img, $bad, $pend, $tocancel, $short, $async) {
    ex("get $e->{model} ($e->{idempotency_key})", 200,
        GET => "/v1/executions/$e->{id}", %c);
}
ex('get, HEAD', 200, HEAD => "/v1/executions/$chat->{id}", %c);
ex('get, execution key', 200, GET => "/v1/executions/$chat->{id}", key => $KE);
ex('get an unknown execution', 404, GET => "/v1/executions/$GHOST_EXEC", %c);
ex('get a malformed id', 404, GET => '/v1/executions/exec_123', %c);
ex('get another account\'s execution', 404,
    GET => "/v1/executions/$chat->{id}", key => $KO);
ex('get, no key', 401, GET => "/v1/executions/$chat->{id}");
ex('get a malformed id, no key', 401, GET => '/v1/executions/exec_123');

ex('result', 200, GET => "/v1/executions/$chat->{id}/result", %c);
ex('result of images', 200, GET => "/v1/executions/$img->{id}/result", %c);
ex('result of a pending execution', 409,
    GET => "/v1/executions/$pend->{id}/result", %c);
ex('result of a failed execution', 409,
    GET => "/v1/executions/$bad->{id}/result", %c);
ex('result, unknown', 404, GET => "/v1/executions/$GHOST_EXEC/result", %c);
ex('result, no key', 401, GET => "/v1/executions/$chat->{id}/result");

ex('list', 200, GET => '/v1/executions', %c);
ex('list, filtered', 200,
    GET => '/v1/executions?status=COMPLETED&model=chat&limit=2', %c);
my $page = ex('list, a page', 200, GET => '/v1/executions?limit=3', %c);
my $last = $page->{json}{data}[-1]{id} // $GHOST_EXEC;
ex('list, the next page', 200,
    GET => "/v1/executions?limit=3&starting_after=$last", %c);
ex('list, bad limit and status', 400,
    GET => '/v1/executions?limit=0&status=DONE', %c);
ex('list, unknown starting_after', 400,
    GET => "/v1/executions?starting_after=$GHOST_EXEC", %c);
ex('list, no key', 401, GET => '/v1/executions');

# ---- key rotation

my $rot = ex('rotate', 200, POST => "/v1/api-keys/$spare->{id}/rotate", %c)
    ->{json};
ex('rotate with a key in its grace period', 403,
    POST => "/v1/api-keys/$rot->{id}/rotate", key => $spare->{key});
ex('rotate a key that was rotated', 403,
    POST => "/v1/api-keys/$spare->{id}/rotate", %c);
ex('rotate a revoked key', 404, POST => "/v1/api-keys/$doomed->{id}/rotate",
    %c);
ex('rotate with an execution key', 403,
    POST => "/v1/api-keys/$spare->{id}/rotate", key => $KE);
ex('rotate an unknown key', 404, POST => "/v1/api-keys/$GHOST_KEY/rotate", %c);
ex('rotate another account\'s key', 404,
    POST => "/v1/api-keys/$spare->{id}/rotate", key => $KO);
ex('rotate, no key', 401, POST => "/v1/api-keys/$spare->{id}/rotate");
ex('rotate, too large', 413, POST => "/v1/api-keys/$spare->{id}/rotate",
    %c, %LARGE);
ex('rotate, not JSON', 415, POST => "/v1/api-keys/$spare->{id}/rotate",
    %c, %TEXT);

# ---- webhooks

ex('create endpoint, no url, bad events', 400,
    POST => '/v1/webhooks/endpoints', %c, body => { events => ['nope'] });
ex('create endpoint, execution key', 403, POST => '/v1/webhooks/endpoints',
    key => $KE, body => { url => $rc->url('/hook') });
ex('create endpoint, no key', 401, POST => '/v1/webhooks/endpoints',
    body => { url => $rc->url('/hook') });
ex('create endpoint, too large', 413, POST => '/v1/webhooks/endpoints', %c,
    %LARGE);
ex('create endpoint, not JSON', 415, POST => '/v1/webhooks/endpoints', %c,
    %TEXT);

ex('list endpoints', 200, GET => '/v1/webhooks/endpoints', %c);
ex('list endpoints, execution key', 403, GET => '/v1/webhooks/endpoints',
    key => $KE);
ex('list endpoints, no key', 401, GET => '/v1/webhooks/endpoints');

my $EP = "/v1/webhooks/endpoints/$ep->{id}";
ex('get endpoint', 200, GET => $EP, %c);
ex('get endpoint, execution key', 403, GET => $EP, key => $KE);
ex('get endpoint, unknown', 404, GET => "/v1/webhooks/endpoints/$GHOST_WH",
    %c);
ex('get endpoint, other account', 404, GET => $EP, key => $KO);
ex('get endpoint, no key', 401, GET => $EP);

ex('patch endpoint', 200, PATCH => $EP, %c,
    body => { description => undef, is_active => JSON::PP::true });
ex('patch endpoint, bad is_active', 400, PATCH => $EP, %c,
    body => { is_active => 'yes' });
ex('patch endpoint, execution key', 403, PATCH => $EP, key => $KE,
    body => {});
ex('patch endpoint, unknown', 404, PATCH => "/v1/webhooks/endpoints/$GHOST_WH",
    %c, body => {});
ex('patch endpoint, no key', 401, PATCH => $EP, body => {});
ex('patch endpoint, too large', 413, PATCH => $EP, %c, %LARGE);
ex('patch endpoint, not JSON', 415, PATCH => $EP, %c, %TEXT);

ex('test endpoint', 202, POST => "$EP/test", %c);
ex('test endpoint, execution key', 403, POST => "$EP/test", key => $KE);
ex('test endpoint, unknown', 404,
    POST => "/v1/webhooks/endpoints/$GHOST_WH/test", %c);
ex('test endpoint, no key', 401, POST => "$EP/test");
ex('test endpoint, too large', 413, POST => "$EP/test", %c, %LARGE);
ex('test endpoint, not JSON', 415, POST => "$EP/test", %c, %TEXT);

ex('secret', 200, GET => '/v1/webhooks/default/secret', %c);
ex('secret again', 200, GET => '/v1/webhooks/default/secret', %c);
ex('secret, execution key', 403, GET => '/v1/webhooks/default/secret',
    key => $KE);
ex('secret, no key', 401, GET => '/v1/webhooks/default/secret');

# ---- the asynchronous provider's callback

my ($job) = $rc->wait_requests(1, path => '/job');
my ($cpath) = (($job && $job->{json} || {})->{callback_url} // '') =~
    m{^http://127\.0\.0\.1:\d+(/v1/callbacks/exec_[0-9a-f]{44})$};
my ($token) = (($job && $job->{json} || {})->{callback_token} // '') =~
    m{^(\d+\.[0-9a-f]{64})$};
ok($cpath && $token, 'the provider got its callback_url and callback_token')
    or diag explain $job;
$cpath //= "/v1/callbacks/$async->{id}";
$token //= '0.' . '0' x 64;
my $OK = { status => 'succeeded', output => { text => 'done' },
    usage => { input_tokens => 10, output_tokens => 20 } };

# tokens for any execution and attempt: the key is in the store
my $cbkey = $t->store_secret('cbkey');
ok($cbkey, 'the callback key, read from the store');
sub token_of {
    my ($id, $attempt) = @_;
    return "$attempt." . hmac_sha256_hex("modelroute-callback\0$id\0$attempt",
        pack 'H*', $cbkey // '');
}
sub bearer { return (Authorization => "Bearer $_[0]") }

ex('callback, wrong token', 401, POST => $cpath,
    headers => { bearer('0.' . '0' x 64) }, body => $OK);
ex('callback, no token', 401, POST => $cpath, body => $OK);
ex('callback, malformed JSON', 400, POST => $cpath, body => '{"status"',
    headers => { 'Content-Type' => 'application/json', bearer($token) });
ex('callback, too large', 413, POST => $cpath, body => $LARGE{body},
    headers => { %{ $LARGE{headers} }, bearer($token) });
ex('callback, not JSON', 415, POST => $cpath, body => $TEXT{body},
    headers => { %{ $TEXT{headers} }, bearer($token) });
ex('callback, the token of an attempt not made', 401,
    POST => "/v1/callbacks/$pend->{id}",
    headers => { bearer(token_of($pend->{id}, 0)) }, body => $OK);
ex('callback, unknown execution', 404, POST => "/v1/callbacks/$GHOST_EXEC",
    headers => { bearer(token_of($GHOST_EXEC, 0)) }, body => $OK);
ex('callback, malformed execution id', 404, POST => '/v1/callbacks/exec_1',
    headers => { bearer($token) }, body => $OK);
ex('callback', 200, POST => $cpath, headers => { bearer($token) },
    body => $OK);
ex('callback, again', 200, POST => $cpath, headers => { bearer($token) },
    body => $OK);
is(final($async->{id}, $TERMINAL)->{status}, 'COMPLETED',
   'the callback completed the asynchronous execution');
ex('get the called back execution', 200, GET => "/v1/executions/$async->{id}",
    %c);
ex('result of the called back execution', 200,
    GET => "/v1/executions/$async->{id}/result", %c);

# a job whose execution expired before its result came: its token ended
# with it
my $late = ex('create, asynchronous, to expire while the job runs', 202,
    POST => '/v1/executions', %c,
    body => { model => 'async', input => { prompt => 'too late' },
              timeout_seconds => 1,
              idempotency_key => 'conf-async-late' })->{json};
is(final($late->{id}, $TERMINAL)->{status}, 'EXPIRED',
   'the asynchronous execution expired');
ex('callback after expires_at: the token has expired', 401,
    POST => "/v1/callbacks/$late->{id}",
    headers => { bearer(token_of($late->{id}, 0)) }, body => $OK);

# ---- deliveries

$rc->wait_requests(1, path => '/own', timeout => 15);
$rc->wait_requests(2, path => '/hook', timeout => 15);
my $dl = ex('deliveries of an endpoint', 200, GET => "$EP/deliveries?limit=50",
    %c);
ex('deliveries of an endpoint, bad limit', 400, GET => "$EP/deliveries?limit=0",
    %c);
ex('deliveries of an endpoint, execution key', 403, GET => "$EP/deliveries",
    key => $KE);
ex('deliveries of an unknown endpoint', 404,
    GET => "/v1/webhooks/endpoints/$GHOST_WH/deliveries", %c);
ex('deliveries of an endpoint, no key', 401, GET => "$EP/deliveries");
ex('deliveries of an execution', 200,
    GET => "/v1/webhooks/deliveries?execution_id=$chat->{id}", %c);
ex('deliveries of an execution, no id', 400,
    GET => '/v1/webhooks/deliveries', %c);
ex('deliveries of an unknown execution', 404,
    GET => "/v1/webhooks/deliveries?execution_id=$GHOST_EXEC", %c);
ex('deliveries of an execution, execution key', 403,
    GET => "/v1/webhooks/deliveries?execution_id=$chat->{id}", key => $KE);
ex('deliveries of an execution, no key', 401,
    GET => "/v1/webhooks/deliveries?execution_id=$chat->{id}");

my $dlv = $dl->{json}{data}[0]{id} // $GHOST_DLV;
my $DR = "/v1/webhooks/deliveries/$dlv/retry";
ex('retry a delivery', 202, POST => $DR, %c);
ex('retry, execution key', 403, POST => $DR, key => $KE);
ex('retry an unknown delivery', 404,
    POST => "/v1/webhooks/deliveries/$GHOST_DLV/retry", %c);
ex('retry, no key', 401, POST => $DR);
ex('retry, too large', 413, POST => $DR, %c, %LARGE);
ex('retry, not JSON', 415, POST => $DR, %c, %TEXT);

my $EP2 = "/v1/webhooks/endpoints/$ep2->{id}";
ex('delete endpoint, execution key', 403, DELETE => $EP2, key => $KE);
ex('delete endpoint, no key', 401, DELETE => $EP2);
ex('delete endpoint, too large', 413, DELETE => $EP2, %c, %LARGE);
ex('delete endpoint, not JSON', 415, DELETE => $EP2, %c, %TEXT);
ex('delete endpoint', 200, DELETE => $EP2, %c);
ex('delete it again', 404, DELETE => $EP2, %c);

# ---- a failed delivery: an endpoint where nobody listens

my $nobody = MR::Receiver->new;    # never started
my $epd = ex('create endpoint where nobody listens', 201,
    POST => '/v1/webhooks/endpoints', %c,
    body => { url => $nobody->url('/gone'),
              events => ['execution.expired'] })->{json};
my $tdead = ex('test endpoint where nobody listens', 202,
    POST => "/v1/webhooks/endpoints/$epd->{id}/test", %c)->{json} // {};
my $failed;
wait_for(sub {
    my $l = $t->admin(GET => '/deliveries?limit=100')->{json} // {};
    ($failed) = grep { $_->{id} eq ($tdead->{delivery_id} // '') }
        @{ $l->{data} // [] };
    $failed;
}, 15);
is(($failed // {})->{last_attempt}{error}, 'could not connect',
    'the failed attempt: could not connect');
ex('admin: failed deliveries', 200, GET => '/admin/deliveries?limit=100');
ex('admin: failed deliveries, HEAD', 200, HEAD => '/admin/deliveries');
ex('admin: failed deliveries, bad limit', 400,
    GET => '/admin/deliveries?limit=0');
ex('deliveries of the endpoint where nobody listens', 200,
    GET => "/v1/webhooks/endpoints/$epd->{id}/deliveries", %c);

# ---- account limits: set at creation and later, each refusal

my $lacct = ex('admin: create account with limits', 201,
    POST => '/admin/accounts',
    body => { name => 'limited', credit => '20.00',
              limits => { executions => 100, endpoints => 4,
                          keys => undef } })->{json};
my $LO = $lacct->{id};
is_deeply($lacct->{limit_overrides}, { bytes => undef, executions => 100,
    endpoints => 4, keys => undef }, 'admin: the account\'s own limits');
ex('admin: create account, bad limits', 400, POST => '/admin/accounts',
    body => { limits => { bytes => -1, keys => 'x' } });
my $kl = ex('admin: key of the limited account', 201,
    POST => "/admin/accounts/$LO/keys",
    body => { permission => 'full' })->{json};
my %l = (key => $kl->{key});
my $epl = ex('create endpoint of the limited account', 201,
    POST => '/v1/webhooks/endpoints', %l,
    body => { url => $rc->url('/limited'),
              events => ['execution.expired'] })->{json};

# no more bytes than it keeps now: whatever stores more is refused
my $used = ex('admin: read the limited account', 200,
    GET => "/admin/accounts/$LO")->{json}{usage};
my $at = ex('admin: limit its bytes to what it keeps', 200,
    POST => "/admin/accounts/$LO/limits",
    body => { bytes => $used->{bytes} })->{json};
is($at->{limits}{bytes}, $used->{bytes}, 'admin: the bytes limit in force');
my $lx = ex('create, over the account\'s bytes', 403,
    POST => '/v1/executions', %l,
    body => { model => 'idle', input => {}, idempotency_key => 'lim-1' });
is_deeply([ map { @$_{qw(field code limit value current)} }
            @{ $lx->{json}{error}{details} // [] } ],
    [ 'bytes', 'ACCOUNT_LIMIT_EXCEEDED', 'bytes', $used->{bytes},
      $used->{bytes} ], 'the detail: the limit, its value, the use');
ex('create endpoint, over the account\'s bytes', 403,
    POST => '/v1/webhooks/endpoints', %l,
    body => { url => $rc->url('/limited2') });
ex('patch endpoint, over the account\'s bytes', 403,
    PATCH => "/v1/webhooks/endpoints/$epl->{id}", %l,
    body => { description => 'a description that makes it larger' });
ex('test endpoint, over the account\'s bytes', 403,
    POST => "/v1/webhooks/endpoints/$epl->{id}/test", %l);
ex('rotate, over the account\'s bytes', 403,
    POST => "/v1/api-keys/$kl->{id}/rotate", %l);
ex('admin: create key, over the account\'s bytes', 403,
    POST => "/admin/accounts/$LO/keys", body => { permission => 'full' });

# no live execution: the bytes back to the default
ex('admin: no live executions, bytes by default', 200,
    POST => "/admin/accounts/$LO/limits",
    body => { executions => 0, bytes => undef });
my $le = ex('create, over the account\'s live executions', 403,
    POST => '/v1/executions', %l,
    body => { model => 'idle', input => {}, idempotency_key => 'lim-2' });
is_deeply([ map { @$_{qw(limit value current)} }
            @{ $le->{json}{error}{details} // [] } ],
    [ 'executions', 0, 0 ], 'the detail: executions, 0, 0');
ex('admin: limits, bad values', 400, POST => "/admin/accounts/$LO/limits",
    body => { keys => 'x', endpoints => -1 });
ex('admin: limits, no body', 400, POST => "/admin/accounts/$LO/limits");
ex('admin: limits of an unknown account', 404,
    POST => "/admin/accounts/$GHOST_ORG/limits", body => { keys => 1 });
ex('admin: limits, too large', 413, POST => "/admin/accounts/$LO/limits",
    %LARGE);
ex('admin: limits, not JSON', 415, POST => "/admin/accounts/$LO/limits",
    %TEXT);
my $back = ex('admin: limits back to the defaults', 200,
    POST => "/admin/accounts/$LO/limits",
    body => { executions => undef, endpoints => undef })->{json} // {};
is_deeply($back->{limit_overrides}, { bytes => undef, executions => undef,
    endpoints => undef, keys => undef }, 'admin: no limit of its own left');
ex('create, within the limits again', 202, POST => '/v1/executions', %l,
    body => { model => 'idle', input => {}, idempotency_key => 'lim-3' });

# ---- rate limits: the default, an account's own, 429

my $rl = ex('admin: rate limit of an account', 200,
    GET => "/admin/accounts/$org/rate_limit")->{json} // {};
is_deeply([ @$rl{qw(source requests window_seconds)} ],
    [ 'default', 100000, 3600 ], 'admin: the default rate limit');
ex('admin: rate limit of an unknown account', 404,
    GET => "/admin/accounts/$GHOST_ORG/rate_limit");
my $racct = ex('admin: an account to rate-limit', 201,
    POST => '/admin/accounts', body => { credit => '1.00' })->{json}{id};
my %r = (key => ex('admin: its key', 201,
    POST => "/admin/accounts/$racct/keys",
    body => { permission => 'full' })->{json}{key});
my $own = ex('admin: set its rate limit', 200,
    PUT => "/admin/accounts/$racct/rate_limit",
    body => { requests => 2 })->{json} // {};
is_deeply([ @$own{qw(source requests)} ], [ 'account', 2 ],
    'admin: the account\'s own rate limit');
ex('admin: set a rate limit, bad requests', 400,
    PUT => "/admin/accounts/$racct/rate_limit", body => { requests => 0 });
ex('admin: set a rate limit, unknown account', 404,
    PUT => "/admin/accounts/$GHOST_ORG/rate_limit", body => { requests => 5 });
ex('admin: set a rate limit, too large', 413,
    PUT => "/admin/accounts/$racct/rate_limit", %LARGE);
ex('admin: set a rate limit, not JSON', 415,
    PUT => "/admin/accounts/$racct/rate_limit", %TEXT);

ex('rate limit: the first request', 200, GET => '/v1/balance', %r);
my $second = ex('rate limit: the second', 200, GET => '/v1/models', %r);
is($second->{headers}{'x-ratelimit-limit'}, 2, 'X-RateLimit-Limit: 2');
is($second->{headers}{'x-ratelimit-remaining'}, 0,
    'X-RateLimit-Remaining: 0');
my $RX = "/v1/executions/$GHOST_EXEC";
my $RW = "/v1/webhooks/endpoints/$GHOST_WH";
for my $q ([POST => '/v1/executions', body => { model => 'idle',
                input => {}, idempotency_key => 'rl-1' }],
           [GET => '/v1/executions'], [GET => $RX], [GET => "$RX/result"],
           [POST => "$RX/cancel"], [GET => '/v1/balance'],
           [GET => '/v1/models'], [POST => "/v1/api-keys/$GHOST_KEY/rotate"],
           [POST => '/v1/webhooks/endpoints',
            body => { url => $rc->url('/rl') }],
           [GET => '/v1/webhooks/endpoints'], [GET => $RW],
           [PATCH => $RW, body => {}], [DELETE => $RW],
           [POST => "$RW/test"], [GET => "$RW/deliveries"],
           [GET => "/v1/webhooks/deliveries?execution_id=$GHOST_EXEC"],
           [POST => "/v1/webhooks/deliveries/$GHOST_DLV/retry"],
           [GET => '/v1/webhooks/default/secret'])
{
    my $res = ex("rate limited: $q->[0] $q->[1]", 429, @$q, %r);
    is(code_of($res), 'RATE_LIMITED', "rate limited: $q->[0] $q->[1]: code");
    ok(($res->{headers}{'retry-after'} // 0) >= 1,
        "rate limited: $q->[0] $q->[1]: Retry-After");
}
my $d = ex('admin: remove its rate limit', 200,
    DELETE => "/admin/accounts/$racct/rate_limit")->{json} // {};
is($d->{source}, 'default', 'admin: the default rate limit again');
ex('rate limit: the default again', 200, GET => '/v1/balance', %r);
ex('admin: remove a rate limit, unknown account', 404,
    DELETE => "/admin/accounts/$GHOST_ORG/rate_limit");
ex('admin: remove a rate limit, too large', 413,
    DELETE => "/admin/accounts/$racct/rate_limit", %LARGE);
ex('admin: remove a rate limit, not JSON', 415,
    DELETE => "/admin/accounts/$racct/rate_limit", %TEXT);

# ---- methods a path does not serve, unknown paths

my @unserved = (
    [DELETE => '/v1/executions'],
    [POST => "/v1/executions/$chat->{id}"],
    [POST => "/v1/executions/$chat->{id}/result"],
    [GET => "/v1/executions/$chat->{id}/cancel"],
    [POST => '/v1/balance'],
    [DELETE => '/v1/models'],
    [GET => "/v1/api-keys/$spare->{id}/rotate"],
    [PUT => '/v1/webhooks/endpoints'],
    [POST => $EP],
    [GET => "$EP/test"],
    [POST => "$EP/deliveries"],
    [POST => '/v1/webhooks/deliveries'],
    [GET => $DR],
    [POST => '/v1/webhooks/default/secret'],
    [GET => $cpath],
    [DELETE => '/admin/accounts'],
    [POST => "/admin/accounts/$org"],
    [GET => "/admin/accounts/$org/limits"],
    [POST => "/admin/accounts/$org/rate_limit"],
    [PUT => "/admin/accounts/$org/keys"],
    [GET => "/admin/accounts/$org/credit"],
    [GET => "/admin/accounts/$org/debit"],
    [POST => "/admin/accounts/$org/verify"],
    [GET => "/admin/keys/$doomed->{id}/revoke"],
    [POST => '/admin/routes'],
    [POST => '/admin/deliveries'],
    [POST => '/admin/metrics'],
    [POST => '/admin/health'],
    [POST => '/admin/'],
    [DELETE => '/admin/dashboard'],
);
for my $u (@unserved) {
    ex("$u->[0] $u->[1]: not served", 405, @$u, %c);
}
ex('a method not served, no key', 401, POST => '/v1/balance');

ex('unknown path', 404, GET => '/v1/nope', %c);
ex('unknown path under executions', 404,
    GET => "/v1/executions/$chat->{id}/nope", %c);
ex('unknown path, no key', 401, GET => '/v1/nope');
ex('unknown admin path', 404, GET => '/admin/nope');

# ---- what the operator's nginx configuration adds (port 2: limit_req
# with 429, port 3: limit_req with its default 503, and deny on /admin/)

my ($P2, $P3) = ($t->{port2}, $t->{port3});
ex('limit_req: the first request passes', 200, GET => '/v1/balance', %c,
    port => $P2);
my $lr = ex('limit_req: 429', 429, GET => '/v1/balance', %c, port => $P2);
is($lr->{headers}{'retry-after'}, 1, 'limit_req: 429 with Retry-After: 1');
ex('limit_req: 429 for a create', 429, POST => '/v1/executions', %c,
    port => $P2, body => $body);
ex('limit_req (503): the first request passes', 200, GET => '/v1/models', %c,
    port => $P3);
$lr = ex('limit_req: 503', 503, GET => '/v1/models', %c, port => $P3);
is($lr->{headers}{'retry-after'}, 1, 'limit_req: 503 with Retry-After: 1');

my @admin = (
    [POST => '/admin/accounts', body => {}],
    [GET => "/admin/accounts/$org"],
    [POST => "/admin/accounts/$org/keys", body => { permission => 'full' }],
    [GET => "/admin/accounts/$org/keys"],
    [POST => "/admin/accounts/$org/credit", body => { amount => '1' }],
    [POST => "/admin/accounts/$org/debit", body => { amount => '1' }],
    [GET => "/admin/accounts/$org/verify"],
    [POST => "/admin/keys/$doomed->{id}/revoke"],
    [GET => '/admin/routes'],
    [GET => '/admin/accounts'],
    [POST => "/admin/accounts/$org/limits", body => { keys => 16 }],
    [GET => "/admin/accounts/$org/rate_limit"],
    [PUT => "/admin/accounts/$org/rate_limit", body => { requests => 1 }],
    [DELETE => "/admin/accounts/$org/rate_limit"],
    [GET => '/admin/deliveries'],
    [GET => '/admin/metrics'],
    [GET => '/admin/health'],
    [GET => '/admin/'],
    [GET => '/admin/dashboard'],
);
for my $a (@admin) {
    ex("deny: $a->[0] $a->[1]", 403, @$a, port => $P3);
}

my $v = ex('admin: verify', 200, GET => "/admin/accounts/$org/verify");
ok($v->{json}{ok}, 'the ledger checks out');
ex('admin: verify unknown account', 404,
    GET => "/admin/accounts/$GHOST_ORG/verify");

# ---------------------------------------------------------------- 507

# a second gateway whose store is full (one account fills it: no limit of
# stored bytes in the way); LMDB's: a PostgreSQL store has no map to fill
if ($t->backend eq 'lmdb') {
    my $fhttp = <<'EOF';
modelroute_store %%STORE%%;
modelroute_store_map_size 2m;
modelroute_account_limits bytes=1g;
modelroute_webhook_allow_private on;
modelroute_model fill per_request=0.001;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; client_max_body_size 256k; }
    location /admin/ { modelroute_admin; client_max_body_size 256k; }
}
EOF
    my $f = MR::Test->new(http => $fhttp);
    my ($frc, $fout) = $f->test_config;
    is($frc, 0, 'full store: a 2m map') or diag $fout;
    $f->start;
    my $main = $t;
    $t = $f;    # ex() speaks to this one now
    my $fa = ex('full store: account', 201, POST => '/admin/accounts',
        body => { credit => '1000.00' })->{json};
    my $fk = ex('full store: key', 201,
        POST => "/admin/accounts/$fa->{id}/keys",
        body => { permission => 'full' })->{json};
    my $fe = ex('full store: endpoint', 201, POST => '/v1/webhooks/endpoints',
        key => $fk->{key}, body => { url => $rc->url('/full'),
                                     events => ['execution.failed'] })->{json};
    my $fd = ex('full store: a test event, before', 202,
        POST => "/v1/webhooks/endpoints/$fe->{id}/test",
        key => $fk->{key})->{json};
    $rc->wait_requests(1, path => '/full');
    my $filler = 'x' x 100_000;
    my $full;
    for my $i (1 .. 200) {
        my $r = $f->create_exec($fk->{key}, { model => 'fill',
            input => { prompt => $filler, i => $i },
            idempotency_key => "fill-$i" });
        next if $r->{status} == 202;
        $full = $r;
        last;
    }
    is($full && $full->{status}, 507, 'full store: it filled up');
    my %fc = (key => $fk->{key});
    ex('full store: create', 507, POST => '/v1/executions', %fc,
        body => { model => 'fill', input => {}, idempotency_key => 'f-x' });
    ex('full store: rotate', 507, POST => "/v1/api-keys/$fk->{id}/rotate",
        %fc);
    ex('full store: create endpoint', 507, POST => '/v1/webhooks/endpoints',
        %fc, body => { url => $rc->url('/full') });
    ex('full store: test event', 507,
        POST => "/v1/webhooks/endpoints/$fe->{id}/test", %fc);
    ex('full store: create account', 507, POST => '/admin/accounts',
        body => {});
    ex('full store: create key', 507,
        POST => "/admin/accounts/$fa->{id}/keys",
        body => { permission => 'full' });
    ex('full store: credit', 507, POST => "/admin/accounts/$fa->{id}/credit",
        body => { amount => '1.00' });
    ex('full store: a larger endpoint', 507,
        PATCH => "/v1/webhooks/endpoints/$fe->{id}", %fc,
        body => { description => 'a description that makes it larger' });
    ex('full store: retry a delivery', 507,
        POST => "/v1/webhooks/deliveries/$fd->{delivery_id}/retry", %fc);
    ex('full store: the default secret, made on first use', 507,
        GET => '/v1/webhooks/default/secret', %fc);
    ex('full store: a rate limit of its own', 507,
        PUT => "/admin/accounts/$fa->{id}/rate_limit",
        body => { requests => 10 });
    my $fh = ex('full store: health', 503, GET => '/admin/health');
    like(join(' ', @{ ($fh->{json} // {})->{reasons} // [] }),
        qr/^store: full/, 'full store: the reason');
    ex('full store: limits can change', 200,
        POST => "/admin/accounts/$fa->{id}/limits", body => { keys => 2 });
    ex('full store: reads work', 200, GET => '/v1/balance', %fc);
    $t = $main;
    $f->stop;
    $f->check_log;
}

# ---------------------------------------------------------------- webhooks

# the deliveries received, each a webhook of the document
$rc->wait_requests(1, path => '/hook',
    where => sub { ($_[0]{body} // '') =~ /"webhook\.test"/ });
$rc->wait_requests(1, path => '/hook',
    where => sub { ($_[0]{body} // '') =~ /"execution\.completed"/ });
for my $req ($rc->requests_to('/hook'), $rc->requests_to('/hook2'),
    $rc->requests_to('/own'))
{
    my $type = (($req->{body} // '') =~ /"event_type":"([^"]+)"/)[0] // '?';
    push @EX, { label => "webhook $req->{path} $type", kind => 'webhook',
        headers => $req->{headers}, body => $req->{body} };
}
my %types = map { ((($_->{body} // '') =~ /"event_type":"([^"]+)"/)[0]
    // '?') => 1 } grep { $_->{kind} eq 'webhook' } @EX;
for my $want (qw(execution.started execution.completed execution.failed
    execution.cancelled execution.expired webhook.test))
{
    ok($types{$want}, "a $want delivery was received");
}

# ---------------------------------------------------------------- validate

# MR_OPENAPI_EXCHANGES=file keeps the exchanges, to run the validator on
# them again while the document changes
my ($fh, $file) = $ENV{MR_OPENAPI_EXCHANGES}
    ? (undef, $ENV{MR_OPENAPI_EXCHANGES})
    : tempfile('mr-openapi-XXXXXX', TMPDIR => 1, UNLINK => 1);
open $fh, '>', $file or die "$file: $!" unless $fh;
print $fh json_encode(\@EX);
close $fh;
my $out = MR::Test::run_capture($node, "$ROOT/tools/openapi/validate.mjs",
    $DOC, $file);
my $report = json_decode($out);
ok($report && ref $report->{results} eq 'ARRAY', 'the validator ran')
    or diag substr($out, 0, 2000);
$report //= { results => [], coverage => { ok => 0, missing => ['?'] } };
is(scalar @{ $report->{results} }, scalar @EX, 'every exchange validated');

for my $i (0 .. $#{ $report->{results} }) {
    my $r = $report->{results}[$i];
    ok($r->{ok}, "as documented: $r->{label}")
        or diag join "\n", @{ $r->{errors} };
}
# on PostgreSQL, the answers of a full store cannot be seen (above)
my @missing = grep {
    $t->backend eq 'lmdb' || !(/ 507$/ || m{^GET /admin/health 503$})
} @{ $report->{coverage}{missing} };
ok(!@missing, 'every documented response was seen')
    or diag join "\n", 'not seen:', @missing;

$rc->stop;
$t->done;
