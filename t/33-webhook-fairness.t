# One tenant must not stall webhook delivery for everyone.  The attacker
# creates and cancels executions whose webhook_url is a black hole (a
# server that takes connections and never answers), costing it nothing,
# on three ports; another account's deliveries must still go out while
# every delivery of the flood is pending: the attacker's attempts in
# flight stay within the caps (per target, that is per host and port,
# and per account), and the claims come by the other account whatever
# the attacker queued.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);
use MR::Test qw(:all);
use MR::Receiver qw(:all);

# A black hole: accepts, reads, never answers; counts the connections it
# holds (the most at once, and in all) in a file.
sub black_hole {
    my $l = IO::Socket::INET->new(Listen => 1024, LocalAddr => '127.0.0.1',
        LocalPort => 0, Proto => 'tcp', ReuseAddr => 1) or die "listen: $!";
    my $port = $l->sockport;
    my $file = ($ENV{TMPDIR} // '/tmp') . "/mr-hole-$port.$$";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        $SIG{TERM} = sub { POSIX::_exit(0) };
        my $sel = IO::Select->new($l);
        my ($max, $total) = (0, 0);
        while (1) {
            for my $s ($sel->can_read(0.2)) {
                if ($s == $l) {
                    my $c = $l->accept or next;
                    $sel->add($c);
                    $total++;
                } else {
                    my $n = sysread($s, my $buf, 65536);
                    if (!$n) { $sel->remove($s); close $s }
                }
            }
            my $now = $sel->count - 1;
            $max = $now if $now > $max;
            if (open my $fh, '>', "$file.tmp") {
                print $fh "$max $total $now\n";
                close $fh;
                rename "$file.tmp", $file;
            }
        }
    }
    close $l;
    return { pid => $pid, port => $port, file => $file };
}

sub hole_counts {
    my ($h) = @_;
    open my $fh, '<', $h->{file} or return (0, 0, 0);
    my $line = <$fh> // '';
    return split ' ', $line;
}

my @holes = map { black_hole() } 1 .. 3;

my $t = MR::Test->new(extra_http => "modelroute_webhook_allow_private on;\n"
    . "modelroute_webhook_concurrency 16 4;\n"
    . "modelroute_webhook_timeout 60s;\n"
    . "modelroute_webhook_retry 1h;\n");
$t->start;
my $rc = MR::Receiver->new;
$rc->start;

my $att = $t->new_account(credit => '100.00');
my $vic = $t->new_account(credit => '100.00');

# ---- the flood: 300 executions created and cancelled, free of charge
my @flood;
for my $i (1 .. 300) {
    my $hole = $holes[$i % 3];
    my $x = $t->create_exec($att->{key}, $t->exec_body(
        webhook_url => "http://127.0.0.1:$hole->{port}/hook/$i"))->{json}{id};
    next unless $x;
    push @flood, $x;
    $t->req(POST => "/v1/executions/$x/cancel", auth($att->{key}));
}
is(scalar @flood, 300, '300 flood executions, cancelled');
money_is($t->balance($att->{key})->{balance}, '100.00',
    'the flood cost the attacker nothing');

# the black holes fill up to the caps
ok(wait_for(sub {
    my $n = 0;
    $n += (hole_counts($_))[2] for @holes;
    return $n >= 4;
}, 20, 0.1), 'the flood\'s attempts are stuck in the black holes');

# ---- the other account's deliveries go out meanwhile
my $ep = wh_create($t, $vic->{key}, { url => $rc->url('/victim') });
is($ep->{status}, 201, 'the other account\'s endpoint');
my @ev;
for my $k (1 .. 3) {
    my $r = $t->req(POST => "/v1/webhooks/endpoints/$ep->{json}{id}/test",
        auth($vic->{key}));
    push @ev, $r->{json}{delivery_id} if $r->{status} == 202;
}
my $x = $t->create_exec($vic->{key}, $t->exec_body)->{json}{id};
$t->req(POST => "/v1/executions/$x/cancel", auth($vic->{key}));

my @got = $rc->wait_requests(4, path => "/victim", timeout => 30);
is(scalar @got, 4, 'the other account\'s four events were delivered');

# ... while the flood is still pending: no attempt of it has ended (the
# first could end only after the 60 s timeout)
my ($ended, $pending, $seen) = (0, 0, 0);
for my $id (@flood[0 .. 59]) {
    my $d = wh_exec_deliveries($t, $att->{key}, $id) // [];
    for my $dl (@$d) {
        $seen++;
        $pending++ if $dl->{status} eq 'pending';
        $ended += @{ $dl->{attempts} // [] };
    }
}
is($seen, 60, 'the flood\'s deliveries are there');
is($pending, 60, '... all still pending');
is($ended, 0, '... no attempt of the flood has ended yet');

# ---- the caps held: per target (host and port) and per account
my ($most, $total) = (0, 0);
for my $h (@holes) {
    my ($max, $all) = hole_counts($h);
    $most = $max if $max > $most;
    $total += $all;
}
ok($most <= 4 * 2, "at most 4 per worker at one black hole (most: $most)");
ok($total <= 4 * 2, "at most 4 per worker for the account (in all: $total)");

# (the receiver has them: each attempt's outcome is recorded just after)
for my $i (0 .. $#ev) {
    my $d = wait_delivery($t, $vic->{key}, $ep->{json}{id}, $ev[$i],
        sub { $_[0]{status} ne 'pending' }, 15) // {};
    is($d->{status}, 'succeeded', "the other account's test $i succeeded");
}

# the black holes go first: a graceful stop waits for the attempts in
# flight (up to modelroute_webhook_timeout), and their connections close
kill 'TERM', map { $_->{pid} } @holes;
waitpid($_->{pid}, 0) for @holes;
$t->stop;
$t->check_log;
unlink map { $_->{file} } @holes;
$rc->stop;
done_testing();
