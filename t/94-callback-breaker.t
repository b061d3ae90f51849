# A callback of an earlier attempt leaves the breaker of the route whose
# attempt is current as it is.
#
# An asynchronous attempt on route ja gets no answer in time (its
# provider took the job all the same); the execution fails over to jb,
# whose breaker is half-open: that attempt is jb's probe.  ja's provider
# then calls back with its attempt's token: the execution completes, and
# the lease of jb's attempt ends.  It ended as if jb had answered: the
# probe closed jb's breaker, and traffic went to a route that was down.
# Now only a callback of the current attempt counts as its route's
# answer; an earlier attempt's lets the probe go (another may be sent)
# and leaves the breaker half-open.  The callback is recorded under ja's
# attempt (it was under jb's), and jb's attempt, whose request is still
# out, as abandoned (it was not recorded).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver;

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $t = MR::Test->new(workers => 1, http => <<"EOF");
modelroute_store %%STORE%%;
modelroute_sweep_interval 200ms;
modelroute_callback_url http://127.0.0.1:%%PORT%%/v1/callbacks;
modelroute_route ja /p/ja protocol=async timeout=2s;
modelroute_route jb /p/jb protocol=async timeout=60s breaker=1
                 breaker_reset=2s;
modelroute_model m-b  per_request=0.01 routes=jb attempts=1;
modelroute_model m-fo per_request=0.01 routes=ja,jb attempts=2;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/ja { internal; proxy_pass http://127.0.0.1:$RPORT/ja; }
    location /p/jb { internal; proxy_pass http://127.0.0.1:$RPORT/jb;
                     proxy_read_timeout 90s; }
}
EOF
$t->start;

sub route { $t->route_state($_[0]) }

sub exec_of {
    my ($key, $id) = @_;
    my $r = $t->get_exec($key, $id);
    return $r->{status} == 200 ? $r->{json} : {};
}

my $acc = $t->new_account(credit => '10.00');
my $key = $acc->{key};

# jb's provider fails: its breaker opens, then is half-open
$rc->set('/jb', status => 500, json => { error => { message => 'down' } });
my $x = $t->create_exec($key, $t->exec_body(model => 'm-b'));
is($x->{status}, 202, 'm-b on jb') or diag $x->{body};
my $e = $t->wait_terminal($key, [ $x->{json}{id} // '-' ], 20);
is((values %$e)[0]{status}, 'FAILED', 'jb answered 500: FAILED');
is(route('jb')->{breaker}, 'open', "jb's breaker opened (breaker=1)")
    or diag explain route('jb');
ok(wait_for(sub { (route('jb')->{breaker} // '') eq 'half_open' }, 20),
    'jb half-open after breaker_reset');

# ja holds its attempt past the route's timeout; jb holds the probe
$rc->set('/ja', hold => 'ja', status => 202, json => { job_id => 'ja-1' });
$rc->set('/jb', hold => 'jb', status => 202, json => { job_id => 'jb-1' });
$x = $t->create_exec($key, $t->exec_body(model => 'm-fo'));
is($x->{status}, 202, 'm-fo: ja, then jb') or diag $x->{body};
my $id = $x->{json}{id} // 'exec_none';
my ($ja) = $rc->wait_requests(1, path => '/ja', timeout => 20);
ok($ja, 'the attempt on ja was sent (and is held)');
my ($jb) = $rc->wait_requests(1, path => '/jb', timeout => 20,
    where => sub { ($_[0]{json}{execution_id} // '') eq $id });
ok($jb, "ja's attempt timed out: the next one is jb's probe");
is(route('jb')->{breaker}, 'half_open', 'jb: the probe in flight');

# ja's provider calls back with its attempt's token
my ($path) = (($ja->{json} // {})->{callback_url} // '')
    =~ m{^http://127\.0\.0\.1:\d+(/v1/callbacks/exec_[0-9a-f]{44})$};
my $tok = ($ja->{json} // {})->{callback_token} // '';
like($tok, qr/^0\.[0-9a-f]{64}$/, "ja's token is attempt 0's");
my $r = $t->req(POST => $path // '/v1/callbacks/none',
    { Authorization => "Bearer $tok" },
    { status => 'succeeded', output => { text => 'from ja' } });
is($r->{status}, 200, "ja's callback: 200") or diag $r->{body};
my $done = exec_of($key, $id);
is($done->{status}, 'COMPLETED', 'the execution completed with it');
is(($done->{result} // {})->{text}, 'from ja', "... ja's result");

# the attempts: ja timed out, ja called back (under ja and its attempt's
# start, not jb's), and jb's request, still out, abandoned
my @att = @{ $done->{attempts} // [] };
is(scalar @att, 3, 'three entries in attempts') or diag explain \@att;
is(join(',', map { "$_->{route}:$_->{outcome}" } @att),
    'ja:timed_out,ja:called_back,jb:abandoned',
    "ja's timeout, ja's callback, jb's attempt abandoned")
    or diag explain \@att;
is($att[1]{started_at}, $att[0]{started_at},
    "the callback's entry starts when ja's attempt did");
ok(!defined $att[2]{error_code}, "jb's abandoned attempt has no error code")
    or diag explain $att[2];
ok(($att[2]{started_at} // '') gt ($att[0]{started_at} // 'z'),
    "jb's entry starts after ja's");

my $rs = route('jb');
isnt($rs->{breaker}, 'closed', "jb's breaker is not closed by ja's answer")
    or diag explain $rs;
is($rs->{breaker}, 'half_open', '... it is half-open: the probe let go');
is($rs->{in_flight}, 0, "... and jb's slot came back");

$rc->release('ja');
$rc->release('jb');
my $v = $t->verify($acc->{org});
ok($v->{ok}, 'verify exact') or diag explain $v;

$t->stop;
$t->check_log;
done_testing;
