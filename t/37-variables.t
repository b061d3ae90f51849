# nginx variables for log_format and map: a JSON access log (the README's
# example, log_format escape=json) read back line by line: the account,
# key, execution, model, status, replay and error code of creates,
# replays, reads, cancels, refusals (the API's and nginx's own), admin
# requests; a map on $modelroute_error_code; and what other locations log.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use MR::Test qw(:all);

my $http = <<'EOF';
modelroute_store %%STORE%%;
modelroute_model demo-chat  per_request=0.04;
modelroute_model demo-video per_second=0.05;

map $modelroute_error_code $mr_refused {
    ""       0;
    default  1;
}

log_format modelroute escape=json '{'
    '"time":"$time_iso8601","status":$status,"request":"$request",'
    '"request_time":$request_time,'
    '"org":"$modelroute_org","key_id":"$modelroute_key_id",'
    '"execution_id":"$modelroute_execution_id",'
    '"model":"$modelroute_model","execution_status":"$modelroute_status",'
    '"replayed":"$modelroute_replayed",'
    '"error_code":"$modelroute_error_code","refused":$mr_refused}';

server {
    listen 127.0.0.1:%%PORT%%;
    access_log %%PREFIX%%/logs/api.json modelroute;
    location /v1/ { modelroute_api; client_max_body_size 4k; }
    location /admin/ { modelroute_admin; }
    location = /plain { return 204; }
}
EOF

my $t = MR::Test->new(http => $http);
$t->start;
my $log = $t->prefix . '/logs/api.json';

# the log lines, decoded, of the requests whose request line matches $re
my $seen = 0;
sub lines_for {
    my ($re, $n) = @_;
    my @hits;
    wait_for(sub {
        open my $fh, '<', $log or return;
        my @all = map { json_decode($_) } <$fh>;
        @hits = grep { defined && $_->{request} =~ $re } @all;
        @hits >= ($n // 1);
    }, 10);
    return @hits;
}

sub last_for {
    my ($re) = @_;
    my @l = lines_for($re);
    return $l[-1] // {};
}

my $acct = $t->new_account(credit => '10.00');
my $org = $acct->{org};

# ---- a create
my $body = $t->exec_body;
my $c = $t->create_exec($acct->{key}, $body);
is($c->{status}, 202, 'create');
my $id = $c->{json}{id};
my $l = last_for(qr{^POST /v1/executions HTTP});
ok(%$l, 'the create is logged, as JSON');
is($l->{status}, 202, 'status');
is($l->{org}, $org, '$modelroute_org');
is($l->{key_id}, $acct->{key_id}, '$modelroute_key_id');
is($l->{execution_id}, $id, '$modelroute_execution_id');
is($l->{model}, 'demo-chat', '$modelroute_model');
is($l->{execution_status}, 'PENDING', '$modelroute_status');
is($l->{replayed}, 'false', '$modelroute_replayed: false');
is($l->{error_code}, '', '$modelroute_error_code: empty');
is($l->{refused}, 0, 'map on the error code: 0');

# ---- its replay
my $rp = $t->create_exec($acct->{key}, $body);
is($rp->{headers}{'idempotent-replayed'}, 'true', 'replay');
my @creates = lines_for(qr{^POST /v1/executions HTTP}, 2);
is($creates[1]{replayed}, 'true', '$modelroute_replayed: true');
is($creates[1]{execution_id}, $id, '... the same execution');

# ---- a read, a cancel
$t->get_exec($acct->{key}, $id);
$l = last_for(qr{^GET /v1/executions/\Q$id\E HTTP});
is($l->{execution_id}, $id, 'GET: the execution');
is($l->{execution_status}, 'PENDING', 'GET: its status');
is($l->{model}, 'demo-chat', 'GET: its model');
$t->req(POST => "/v1/executions/$id/cancel", auth($acct->{key}));
$l = last_for(qr{^POST /v1/executions/\Q$id\E/cancel});
is($l->{execution_status}, 'CANCELLED', 'cancel: CANCELLED');
$t->req(GET => "/v1/executions/$id/result", auth($acct->{key}));
$l = last_for(qr{^GET /v1/executions/\Q$id\E/result});
is($l->{status}, 409, 'result of a cancelled one: 409');
is($l->{error_code}, 'EXECUTION_NOT_COMPLETED', '... its code');
is($l->{execution_status}, 'CANCELLED', '... and the execution\'s status');
is($l->{refused}, 1, 'map on the error code: 1');

# ---- refusals
my $ghost = 'exec_' . ('0' x 44);
$t->get_exec($acct->{key}, $ghost);
$l = last_for(qr{^GET /v1/executions/\Q$ghost\E });
is($l->{error_code}, 'NOT_FOUND', '404: NOT_FOUND');
is($l->{execution_id}, $ghost, '... the execution id of the path');
is($l->{model}, '', '... no model');
is($l->{org}, $org, '... the caller\'s account');

$t->req(GET => '/v1/balance', auth('sk_' . ('1' x 64) . '_00000000'));
$l = last_for(qr{^GET /v1/balance });
is($l->{error_code}, 'UNAUTHORIZED', '401: UNAUTHORIZED');
is($l->{org}, '', '... no account');
is($l->{key_id}, '', '... no key');

$t->create_exec($acct->{key}, { model => 'demo-chat', input => {},
    idempotency_key => 'x', metadata => 'no' });
$l = (lines_for(qr{^POST /v1/executions HTTP}, 3))[2] // {};
is($l->{error_code}, 'INPUT_VALIDATION_ERROR', '400: its code');
is($l->{execution_id}, '', '... no execution');

$t->req(POST => '/v1/executions',
    { %{ auth($acct->{key}) }, 'Content-Type' => 'application/json' },
    '{"input":"' . ('a' x 8000) . '"}');
my @big = grep { $_->{status} == 413 }
    lines_for(qr{^POST /v1/executions HTTP}, 4);
is($big[0]{error_code} // '', 'PAYLOAD_TOO_LARGE',
    'nginx\'s own 413: PAYLOAD_TOO_LARGE');

# ---- the admin API: the account of the path
$t->admin(POST => "/accounts/$org/credit", { amount => '1.00',
    reference => 'r-1' });
$t->admin(POST => "/accounts/$org/credit", { amount => '1.00',
    reference => 'r-1' });
my @cr = lines_for(qr{^POST /admin/accounts/\Q$org\E/credit}, 2);
is($cr[0]{org}, $org, 'admin: the account of the path');
is($cr[0]{replayed}, 'false', 'a credit: not replayed');
is($cr[1]{replayed}, 'true', 'the same reference again: replayed');
is($cr[0]{key_id}, '', 'admin: no key');

# ---- another location: nothing to say
$t->req(GET => '/plain');
$l = last_for(qr{^GET /plain });
is($l->{status}, 204, 'a plain location is logged');
is(join('', map { $l->{$_} } qw(org key_id execution_id model
    execution_status replayed error_code)), '',
    '... with every variable empty');

$t->done;
