# SHA-256 on two threads at once: the event loop hashes every API key it
# checks (and every execution's fingerprint), the store's commit thread
# hashes the target of every webhook_url delivery it queues, claims and
# records.  They shared one digest context (mr_sha256()): a valid key was
# refused now and then (401: its hash was computed into the other
# thread's), and the worker died in SHA256_Final (SIGSEGV) or with its
# heap corrupted (SIGABRT) -- the "exited on signal 11" of a full run.
#   - 100 cancelled executions whose webhook_url answers 500 are retried
#     every 20 ms (the commit thread hashes all the time), while three
#     clients send pipelined authenticated GETs to the same worker;
#   - every one of them is answered 200, and the worker does not die.
# A race: before the fix the first wrong answer (or the crash) came after
# 1 to 12 s here (2 cores, loaded; 6 s at the median), so the clients try
# for 20 s (MR_RACE_SECONDS), and all stop at the first wrong answer.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $SECONDS = $ENV{MR_RACE_SECONDS} // 20;

# one worker: its event loop and its commit thread meet
my $t = MR::Test->new(workers => 1,
    extra_http => "modelroute_webhook_allow_private on;\n"
        . 'modelroute_webhook_retry ' . join(' ', ('20ms') x 60) . ";\n"
        . "modelroute_webhook_timeout 2s;\n");
$t->start;
my $rc = MR::Receiver->new;
$rc->start;
$rc->set('/fail', status => 500);

my $acc = $t->new_account(credit => '100.00');
my $key = $acc->{key};
my $made = 0;
for (1 .. 100) {
    my $id = $t->create_exec($key,
        $t->exec_body(webhook_url => $rc->url('/fail')))->{json}{id} or next;
    $made += $t->req(POST => "/v1/executions/$id/cancel", auth($key))
        ->{status} == 200;
}
is($made, 100, '100 executions with a webhook_url, cancelled');
ok(wait_for(sub { $rc->count(path => '/fail') >= 200 }, 30),
    'their deliveries fail and are retried (the commit thread hashes '
    . 'their target each time)');

my $before = $rc->count(path => '/fail');
my $stop = $t->prefix . '/race-lost';    # the first client to lose says so
my $t0 = time;
my @res = $t->parallel(3, sub {
    my (%st, $short);
    my $end = time + $SECONDS;
    while (time < $end && !-e $stop) {
        my @msg = map { http_message(GET => '/v1/balance', auth($key),
            undef, $_ == 100) } 1 .. 100;
        my @got = $t->raw_all(join '', @msg);
        $st{ $_->{status} }++ for @got;
        $short += 100 - @got;
        if ($short || grep { $_ ne '200' } keys %st) {
            open my $fh, '>', $stop;
            printf $fh "%.1f\n", time - $t0;
            last;
        }
    }
    return { status => \%st, missing => $short // 0 };
}, timeout => $SECONDS + 60);
if (open my $fh, '<', $stop) {
    diag 'the first wrong answer came after ' . (<$fh> // '?') . ' s';
}

my (%status, $missing, @died);
for my $r (@res) {
    if (ref $r ne 'HASH' || $r->{died}) {
        push @died, ref $r eq 'HASH' ? $r->{died} : 'no result';
        next;
    }
    $status{$_} += $r->{status}{$_} for keys %{ $r->{status} };
    $missing += $r->{missing};
}
is("@died", '', 'the clients ran to the end');
ok(($status{200} // 0) >= 300, 'authenticated requests: at least a batch '
    . 'of 100 per client (' . ($status{200} // 0) . ')');
is_deeply([ grep { $_ ne '200' } sort keys %status ], [],
    'every one answered 200 (a valid key is never refused)')
    or diag explain \%status;
is($missing, 0, 'none lost (the worker did not die under them)');
ok($rc->count(path => '/fail') > $before, 'deliveries were retried '
    . 'meanwhile (' . ($rc->count(path => '/fail') - $before) . ' attempts)');

$t->done;
$rc->stop;
