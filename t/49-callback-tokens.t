# The callback token (issue 10, item 9), played as an attacker and as a
# provider.  On main the token was HMAC(execution id) in the callback
# URL's query: in every access log that logs $request, good for ever,
# and the same for every attempt.  Now:
#
#  - the provider is given callback_url with nothing secret in it and
#    callback_token, "<attempt>.<64 hex>", in the request's body, and
#    sends the token back as "Authorization: Bearer"; no access log line
#    holds it, and a token in the URL's query is refused (401);
#  - a token is bound to the attempt that sent the job: a job taken on
#    an attempt that then timed out may still call back with its own
#    token (the dispatch rule: the provider may have the job), but a
#    token of an attempt that was not made (made with the real key, or
#    an attempt number pasted on another attempt's MAC) is refused, and
#    so is one of another execution;
#  - its lifetime is the execution's expires_at: past it, 401.
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
my $RP = $rc->port;

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_callback_url http://127.0.0.1:%%PORT%%/v1/callbacks;
modelroute_route hang /p/hang protocol=async timeout=1s;
modelroute_route take /p/take protocol=async timeout=5s;
modelroute_model m-two per_request=0.01 routes=hang,take attempts=2;
modelroute_model m-one per_request=0.01 routes=take;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/hang { internal; proxy_pass http://127.0.0.1:$RP/hang; }
    location /p/take { internal; proxy_pass http://127.0.0.1:$RP/take; }
}
EOF

my $t = MR::Test->new(http => $http, access_log => 1);
$t->start;

# "hang" takes the job and answers after the route's timeout: the attempt
# times out although the provider has the job; "take" answers 202 at once
$rc->set('/hang', status => 202, json => { job_id => 'h' }, delay => 3);
$rc->set('/take', status => 202, json => { job_id => 't' });

my $acc = $t->new_account(credit => '10.00');
my $OK = { status => 'succeeded', output => { text => 'done' } };

sub exec_of {
    my ($id) = @_;
    my $r = $t->get_exec($acc->{key}, $id);
    return $r->{status} == 200 ? $r->{json} : {};
}

sub wait_status {
    my ($id, $want) = @_;
    my $e = {};
    wait_for(sub { $e = exec_of($id); ($e->{status} // '') eq $want }, 20);
    return $e;
}

sub create {
    my ($model, %over) = @_;
    my $r = $t->create_exec($acc->{key},
        $t->exec_body(model => $model, input => { prompt => 'job' }, %over));
    is($r->{status}, 202, "$model: created") or diag $r->{body};
    return $r->{json}{id} // 'exec_none';
}

# the provider request of an execution on a path (waits for it)
sub job_of {
    my ($path, $id) = @_;
    my ($q) = $rc->wait_requests(1, path => $path, timeout => 15,
        where => sub { ($_[0]{json}{execution_id} // '') eq $id });
    return ($q // {})->{json} // {};
}

sub callback {
    my ($id, $token, %o) = @_;
    my $path = "/v1/callbacks/$id";
    $path .= "?token=$token" if $o{query};
    return $t->req(POST => $path,
        $o{query} ? {} : { Authorization => "Bearer $token" }, $o{body} // $OK);
}

# the callback key, to make tokens with it as an insider would
my $cbkey = $t->store_secret('cbkey');
ok($cbkey, 'the callback key, read from the store');
sub token_of {
    my ($id, $attempt) = @_;
    return "$attempt." . hmac_sha256_hex("modelroute-callback\0$id\0$attempt",
        pack 'H*', $cbkey // '');
}

# ---------------------------------------------------- what the provider gets

my $id = create('m-one');
my $job = job_of('/take', $id);
my $base = "http://127.0.0.1:" . $t->port . "/v1/callbacks/$id";
is($job->{callback_url}, $base,
    'the callback_url is <base>/<execution id>: no token, no query')
    or diag explain $job;
like($job->{callback_token} // '', qr/^0\.[0-9a-f]{64}$/,
    'the token is in the body: callback_token "<attempt>.<64 hex>"');
my $tok = $job->{callback_token} // '0.' . '0' x 64;
is($tok, token_of($id, 0), 'it is the HMAC of the id and the attempt');
is(wait_status($id, 'AWAITING_WEBHOOK')->{status}, 'AWAITING_WEBHOOK',
    'the job was taken');

my $r = callback($id, $tok);
is($r->{status}, 200, 'the token as Authorization: Bearer: 200')
    or diag $r->{body};
is(exec_of($id)->{status}, 'COMPLETED', 'COMPLETED');

# no access log line holds the token (log_format: $status $request)
my $mac = (split /\./, $tok)[1] // 'none';
my @lines;
wait_for(sub { @lines = grep { m{/v1/callbacks/\Q$id\E} }
    $t->access_log_lines }, 5);
is(scalar @lines, 1, 'the callback is in the access log')
    or diag join "\n", $t->access_log_lines;
ok(!grep({ index($_, $mac) >= 0 } $t->access_log_lines),
    'no access log line holds the token') or diag join "\n",
    grep { index($_, $mac) >= 0 } $t->access_log_lines;

# the right token in the URL's query: refused (a provider that put it
# there has logged it: it must learn to send the header)
my $idq = create('m-one');
my $tokq = job_of('/take', $idq)->{callback_token} // '';
wait_status($idq, 'AWAITING_WEBHOOK');
$r = callback($idq, $tokq, query => 1);
is_error($r, 401, 'UNAUTHORIZED', 'the right token in the query: 401');
like(($r->{json} // {})->{error}{message} // '', qr/Authorization/,
    '... the message says where it goes');
is(exec_of($idq)->{status}, 'AWAITING_WEBHOOK', '... and changes nothing');

# ---------------------------------------------------- bound to the attempt

# attempt 0 on "hang" times out (the provider took the job); attempt 1 on
# "take" is accepted: AWAITING_WEBHOOK
my $id2 = create('m-two');
my $tok0 = job_of('/hang', $id2)->{callback_token} // '';
my $tok1 = job_of('/take', $id2)->{callback_token} // '';
like($tok0, qr/^0\./, 'attempt 0 got a token of attempt 0');
like($tok1, qr/^1\./, 'attempt 1 got a token of attempt 1');
isnt(substr($tok0, 2), substr($tok1, 2), 'the two tokens differ');
my $e2 = wait_status($id2, 'AWAITING_WEBHOOK');
is_deeply([ map { $_->{outcome} } @{ $e2->{attempts} // [] } ],
    [ 'timed_out', 'accepted' ], 'attempts: timed_out, accepted')
    or diag explain $e2;

my %refused = (
    'a token of attempt 2, not made (made with the real key)'
        => token_of($id2, 2),
    'attempt 2 pasted on the MAC of attempt 1' => '2.' . substr($tok1, 2),
    'attempt 0 pasted on the MAC of attempt 1' => '0.' . substr($tok1, 2),
    'the token of another execution, same attempt' => $tok,
    'a token of attempt 99 (made with the real key)' => token_of($id2, 99),
    'a leading zero' => '01.' . substr(token_of($id2, 1), 2),
    'attempt 0 spelt 00 (made with the real key)'
        => '00.' . substr(token_of($id2, 0), 2),
    'the MAC alone' => substr($tok1, 2),
);
for my $name (sort keys %refused) {
    is_error(callback($id2, $refused{$name}), 401, 'UNAUTHORIZED',
        "$name: 401");
}
is(exec_of($id2)->{status}, 'AWAITING_WEBHOOK', 'refused: nothing changed');

# the provider that took the job on the attempt that timed out calls back
# with its own token: taken
$r = callback($id2, $tok0, body => { status => 'succeeded',
    output => { text => 'from hang' } });
is($r->{status}, 200, 'the token of attempt 0 (timed out, job taken): 200')
    or diag $r->{body};
is(exec_of($id2)->{result}{text}, 'from hang', '... its result is kept');
$r = callback($id2, $tok1);
is_deeply($r->{json}, { received => JSON::PP::true,
    duplicate => JSON::PP::true, status => 'COMPLETED' },
    'the token of attempt 1 afterwards: a duplicate');

# ---------------------------------------------------- lifetime

my $id3 = create('m-one', timeout_seconds => 2);
my $tok3 = job_of('/take', $id3)->{callback_token} // '';
my $e3 = wait_status($id3, 'AWAITING_WEBHOOK');
my $expires = parse_rfc3339($e3->{expires_at} // '') // time;
ok(wait_for(sub { time > $expires + 0.2 }, 10), 'past expires_at');
$r = callback($id3, $tok3);
is_error($r, 401, 'UNAUTHORIZED', 'past expires_at, the token is refused');
like(($r->{json} // {})->{error}{message} // '', qr/expired/,
    '... it has expired');
isnt(exec_of($id3)->{status}, 'COMPLETED', '... nothing completed');

my $v = $t->verify($acc->{org});
ok($v->{ok}, 'the ledger verifies') or diag explain $v;

$rc->stop;
$t->done;
