# The store's commits in a thread pool shared with nginx's own file reads
# (`aio threads`), whose queue fills.
#
# An operator may point modelroute_thread_pool at a pool that static files
# use too.  When that pool's queue is full, nginx refuses the task
# ("queue overflow") and the module commits the batch on the event loop
# instead: every create still answered and durable, every execution
# dispatched and completed, the ledger exact; the module says so when a
# stretch of such commits begins and when it ends (nginx logs each
# overflow), and commits go back to the pool.  While posts fail, claims are
# not made at once after a commit (that is only right when commits run in
# a thread): a timing, which the suite's other files cover for both ways
# of committing.
#
# One worker; a pool of one thread and a queue of one; 12 clients reading
# a 4 MB file through the pool while 8 clients create executions.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

MR::Test::lmdb_only('the thread pool commits LMDB batches');

my $files = <<'EOF';
server {
    listen 127.0.0.1:%%PORT2%%;
    location /files/ {
        root %%PREFIX%%;
        aio threads=shared;
        sendfile off;
        output_buffers 2 32k;
    }
}
EOF

my $t = MR::Test->new(workers => 1,
    extra_main => "thread_pool shared threads=1 max_queue=1;\n",
    http => MR::Test::sim_http('modelroute_thread_pool shared;', $files));

my $dir = $t->prefix . '/files';
mkdir $dir or die "mkdir $dir: $!";
chmod 0755, $dir;
open my $fh, '>', "$dir/big.bin" or die "$dir/big.bin: $!";
print $fh 'x' x (4 * 1024 * 1024);
close $fh;
chmod 0644, "$dir/big.bin";

$t->start;

my $acc = $t->new_account(credit => '100.00');
my $key = $acc->{key};

# readers of the file until told to stop (or orphaned, or late): how many
# reads ended whole
my $parent = $$;
my @readers = map {
    $t->background(sub {
        my ($stop) = @_;
        my $ua = HTTP::Tiny->new(timeout => 10);
        my ($whole, $cut, $end) = (0, 0, time + 180);
        until ($stop->() || getppid() != $parent || time > $end) {
            my $r = $ua->get($t->url('/files/big.bin', $t->{port2}));
            if ($r->{success} && length($r->{content}) == 4 * 1024 * 1024) {
                $whole++;
            } else {
                $cut++;
            }
        }
        return { whole => $whole, cut => $cut };
    })
} 1 .. 12;

my $refused = qr/committing on the event loop until the thread pool takes/;
my $back = qr/modelroute_store: the thread pool takes tasks again/;
my (@ids, $bad, $rounds);
($bad, $rounds) = (0, 0);

# rounds of creates until the pool refused a batch (at most 30 rounds)
wait_for(sub {
    my @res = $t->parallel(8, sub {
        my @mine;
        for (1 .. 10) {
            my $r = $t->create_exec($key, $t->exec_body(model => 'm-sim'));
            push @mine, $r->{status} == 202 ? $r->{json}{id}
                                            : "bad:$r->{status}";
        }
        return \@mine;
    });
    for my $r (@res) {
        if (ref $r ne 'ARRAY') {
            $bad++;
            next;
        }
        for (@$r) {
            if (/^bad:/) { $bad++ } else { push @ids, $_ }
        }
    }
    return ++$rounds >= 30 || $t->read_log =~ $refused;
}, 120, 0);

my ($whole, $cut) = (0, 0);
for my $bg (@readers) {
    open my $s, '>', $bg->{stop} or die "$bg->{stop}: $!";    # all at once
    close $s;
}
for my $bg (@readers) {
    my $res = $t->stop_background($bg);
    $whole += $res->{whole} // 0;
    $cut += $res->{cut} // 0;
}

ok($t->read_log =~ $refused, "the pool refused a batch in $rounds rounds: "
    . 'committed on the event loop');
ok($t->read_log =~ /thread pool "shared" queue overflow/,
    'nginx logged the overflow');
is($bad, 0, 'every create answered 202');
note("readers: $whole reads whole, $cut cut short by an overflow");

my $file = HTTP::Tiny->new->get($t->url('/files/big.bin', $t->{port2}));
is(length($file->{content} // ''), 4 * 1024 * 1024,
    'the pool reads files once the readers are gone');

# a create once the readers are gone: its batch is posted, which ends the
# last stretch of refusals; every stretch said once when it began and once
# when it ended
my $r = $t->create_exec($key, $t->exec_body(model => 'm-sim'));
is($r->{status}, 202, 'a create after the readers');
my $one = $t->wait_terminal($key, [ $r->{json}{id} // 'exec_none' ], 30);
is((values %$one)[0]{status}, 'COMPLETED', 'and its execution completed');

my @said;
ok(wait_for(sub {
    @said = map { /$refused/ ? 'refused' : 'back' }
        grep { /$refused|$back/ } split /\n/, $t->read_log;
    @said && $said[-1] eq 'back';
}, 10, 0.05), 'commits went back to the pool');
my $alternate = 1;
for my $i (0 .. $#said) {
    $alternate = 0 if $said[$i] ne ($i % 2 ? 'back' : 'refused');
}
ok($alternate, scalar(@said) / 2 . ' stretches of refusals, each said when '
    . 'it began and when it ended');

my $e = $t->wait_terminal($key, \@ids, 120);
is(scalar(grep { ($_->{status} // '') eq 'COMPLETED' } values %$e),
    scalar(@ids), scalar(@ids) . ' executions completed');
is(scalar(grep { @{ $_->{attempts} // [] } == 1 } values %$e),
    scalar(@ids), 'each with one attempt');

my $v = $t->verify($acc->{org});
ok($v->{ok}, 'verify ok');
money_is($v->{held}, '0', 'nothing held');

$t->restart;
my $after = $t->wait_terminal($key, [ @ids[0 .. 9] ], 30);
is(scalar(grep { ($_->{status} // '') eq 'COMPLETED' } values %$after), 10,
    'kept across a restart');

$t->done;
