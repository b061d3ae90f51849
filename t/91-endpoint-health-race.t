# An endpoint's health counted by two workers at once: every failed
# attempt adds one to its failure_count, whichever worker recorded it.
#
# Each worker records the outcomes of its deliveries in its own batches.
# The PostgreSQL store read an endpoint without a lock, counted the
# failure in the worker and wrote the count back: two batches recording
# failures of one endpoint at the same time both wrote the count read
# plus theirs, and one failure was lost (an endpoint then took more than
# 10 failures in a row to be deactivated).  Now a batch locks the
# endpoints whose health it changes before it reads them.
#
# Two workers, each sending at most 3 deliveries of a target at a time,
# so that both take part; 12 endpoints answering 500 (all held, then
# answered at once), 9 test events each (fewer than the 10 failures in a row that deactivate an
# endpoint), no retries within the test; then failure_count must equal
# the requests each endpoint's receiver got, and every attempt must be in
# its delivery's attempts.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $rc = MR::Receiver->new;
$rc->start;

my $t = MR::Test->new(workers => 2,
    extra_main => "error_log logs/info.log info;\n",
    extra_http => "modelroute_webhook_allow_private on;\n"
        . "modelroute_webhook_concurrency 64 3 64;\n"
        . "modelroute_webhook_timeout 60s;\n"
        . "modelroute_webhook_retry 1h;\n");
$t->start;

my ($E, $N) = (12, 9);
my @ep;
for my $a (1 .. 3) {
    my $acc = $t->new_account(credit => '10.00');
    for my $i (1 .. $E / 3) {
        my $path = '/f' . scalar @ep;
        $rc->set($path, status => 500, hold => 'go');
        my $r = wh_create($t, $acc->{key}, { url => $rc->url($path) });
        is($r->{status}, 201, "endpoint on $path") or diag $r->{body};
        push @ep, { key => $acc->{key}, path => $path,
                    id => $r->{json}{id} // 'wh_none' };
    }
}

# the events in turns, so that every endpoint has work in both workers
my $made = 0;
for my $i (1 .. $N) {
    for my $e (@ep) {
        my $r = $t->req(POST => "/v1/webhooks/endpoints/$e->{id}/test",
            auth($e->{key}));
        $made++ if $r->{status} == 202;
    }
}
is($made, $E * $N, "$N test events for each of $E endpoints");

# the receiver holds them until both workers have 3 in flight to each
# endpoint, then answers them all at once: both workers record failures
# of every endpoint at the same time
my $both = wait_for(sub {
    !grep { $rc->count(path => $_->{path}) < 6 } @ep;
}, 30);
ok($both, 'both workers send to every endpoint at once')
    or diag join ' ', map { "$_->{path}:" . $rc->count(path => $_->{path}) }
        @ep;
$rc->release('go');

sub recorded {
    my ($e) = @_;
    my $list = wh_deliveries($t, $e->{key}, $e->{id}) or return -1;
    my $n = 0;
    $n += @{ $_->{attempts} // [] } for @$list;
    return $n;
}

for my $e (@ep) {
    my $ok = wait_for(sub {
        $rc->count(path => $e->{path}) == $N && recorded($e) == $N;
    }, 60);
    ok($ok, "$e->{path}: $N attempts sent and recorded")
        or diag 'sent ' . $rc->count(path => $e->{path})
            . ', recorded ' . recorded($e);
}

my $lost = 0;
for my $e (@ep) {
    my $g = wh_get($t, $e->{key}, $e->{id}) // {};
    my $sent = $rc->count(path => $e->{path});
    $lost++ unless ($g->{failure_count} // -1) == $sent;
    is($g->{failure_count}, $sent,
        "$e->{path}: failure_count counts every failure ($sent)");
    ok(JSON::PP::is_bool($g->{is_active}) && $g->{is_active},
        "$e->{path}: still active (fewer than 10 failures)");
}
is($lost, 0, 'no endpoint lost a failure');

$t->stop;
$t->check_log;
done_testing;
