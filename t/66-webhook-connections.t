# Webhook deliveries keep their connections to a receiver between bursts.
#
# libcurl keeps, by default, four idle connections per transfer running at
# the time: once a burst of deliveries ended, it closed nearly all of them,
# and the next burst connected again (a benchmark: one delivery in three
# made a TCP connection).  The sender now keeps as many idle connections as
# transfers it may run at once.
#
# One worker, three bursts to one receiver (an nginx server block logging
# the connection of each delivery): a backlog made while the endpoint
# is inactive, delivered at once when it is activated again.  The second
# and third bursts must go over the connections of the first.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_webhook_allow_private on;
modelroute_model m per_request=0.01;
log_format hook '\$pid-\$connection \$http_webhook_id';
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    listen 127.0.0.1:%%PORT2%%;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    location /hook {
        access_log %%PREFIX%%/logs/hook.log hook;
        return 200;
    }
}
EOF

# one worker: each worker has connections of its own
my $t = MR::Test->new(http => $http, workers => 1);
$t->start;

my $acc = $t->new_account(credit => '10.00');
my $key = $acc->{key};
my $log = $t->prefix . '/logs/hook.log';

my $ep = $t->req(POST => '/v1/webhooks/endpoints', auth($key),
    { url => "http://127.0.0.1:$t->{port2}/hook", events => [] });
is($ep->{status}, 201, 'an endpoint');
my $wh = $ep->{json}{id} // 'wh_none';

# lines of the receiver's log: [connection, webhook-id]
sub hook_lines {
    open my $fh, '<', $log or return ();
    return map { [ split ' ' ] } grep { /\S/ } <$fh>;
}

my $N = 150;
my (%seen, @new);
for my $burst (1 .. 3) {
    my $r = $t->req(PATCH => "/v1/webhooks/endpoints/$wh", auth($key),
        { is_active => JSON::PP::false() });
    is($r->{status}, 200, "burst $burst: the endpoint inactive");

    my $made = 0;
    for (1 .. $N) {
        $made++ if $t->req(POST => "/v1/webhooks/endpoints/$wh/test",
            auth($key))->{status} == 202;
    }
    is($made, $N, "burst $burst: $N test events");

    my $before = () = hook_lines();
    $r = $t->req(PATCH => "/v1/webhooks/endpoints/$wh", auth($key),
        { is_active => JSON::PP::true() });
    is($r->{status}, 200, "burst $burst: active again");

    ok(wait_for(sub { hook_lines() >= $before + $N }, 60, 0.2),
        "burst $burst: delivered")
        or diag scalar(hook_lines()) - $before . " of $N arrived";

    my @lines = hook_lines();
    my %conns = map { $_->[0] => 1 } @lines[ $before .. $#lines ];
    my @fresh = grep { !$seen{$_} } keys %conns;
    push @new, scalar @fresh;
    $seen{$_} = 1 for keys %conns;
    note "burst $burst: " . scalar(keys %conns) . ' connections, '
        . scalar(@fresh) . ' new';
}

# the first burst ran transfers side by side (else this proves nothing)
cmp_ok($new[0], '>=', 8, 'the first burst used many connections at once');
# the later bursts reuse them (a few more may be needed if a burst runs
# wider than the first)
cmp_ok($new[1] + $new[2], '<=', $new[0] / 4,
    'the second and third bursts went over the connections of the first')
    or diag "new connections per burst: @new";

$t->done;
