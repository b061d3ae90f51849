package MR::Lifecycle;

# Helpers for the tests of nginx's process roles, reloads and signals:
# what a process has mapped, LMDB's reader table, a process outside nginx
# that holds LMDB's write lock (mdb_load from lmdb-utils, fed through a
# pipe), which threads wait for that lock, HTTP requests left in flight,
# and the dispatch configuration that makes executions complete through
# the built-in simulator.
#
#   my $lock = hold_write_lock($t->store, grow => 3);  # commits 3 MB first
#   ... the workers' commits now wait ...
#   release_write_lock($lock);

use strict;
use warnings;

use Carp qw(croak);
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time);

use MR::Test qw(wait_for);

use Exporter 'import';
our @EXPORT_OK = qw(maps_store mapped_size store_readers hold_write_lock
    grow_write_lock
    release_write_lock waits_on_store sim_http send_request read_response
    lmdb_txnid role_pids);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

# ---------------------------------------------------------------- processes

# True if the process has the store's data.mdb mapped.
sub maps_store {
    my ($pid, $store) = @_;
    open my $fh, '<', "/proc/$pid/maps" or return 0;
    return scalar grep { index($_, "$store/data.mdb") >= 0 } <$fh>;
}

# The size of the process's mapping of data.mdb (LMDB's map size there).
sub mapped_size {
    my ($pid, $store) = @_;
    open my $fh, '<', "/proc/$pid/maps" or return 0;
    my $size = 0;
    while (<$fh>) {
        next unless index($_, "$store/data.mdb") >= 0;
        my ($lo, $hi) = /^([0-9a-f]+)-([0-9a-f]+)/ or next;
        $size += hex_big($hi) - hex_big($lo);
    }
    return $size;
}

sub hex_big {
    no warnings 'portable';
    return hex $_[0];
}

# Children of $master whose title names $role ("worker process",
# "cache manager process", "cache loader process").
sub role_pids {
    my ($master, $role) = @_;
    return grep { MR::Test::cmdline($_) =~ /\Q$role\E/ }
        MR::Test::children_of($master);
}

# ---------------------------------------------------------------- LMDB

# The pids in LMDB's reader table (mdb_stat -r).
sub store_readers {
    my ($store) = @_;
    my $out = MR::Test::run_capture('mdb_stat', '-r', $store);
    return map { /^\s*(\d+)\s+[0-9a-f]+\s/ ? $1 : () } split /\n/, $out;
}

# The last committed transaction id.
sub lmdb_txnid {
    my ($store) = @_;
    my $out = MR::Test::run_capture('mdb_stat', '-e', $store);
    return $out =~ /Last transaction ID:\s*(\d+)/ ? $1 : undef;
}

# Starts mdb_load on the store, feeding it through a pipe: it commits
# 100 records into a table of its own ("mr_test_lock"; grow => N makes them
# N MB in all), then begins its next write transaction and waits for more
# input, holding LMDB's write lock until release_write_lock(). Its map is
# 64 MB, so that the store may outgrow a smaller map of nginx's.
sub hold_write_lock {
    my ($store, %o) = @_;
    my $pid = open(my $in, '|-') // croak "fork: $!";
    if (!$pid) {
        open STDOUT, '>', '/dev/null';
        { exec 'mdb_load', '-s', 'mr_test_lock', $store }
        POSIX::_exit(127);
    }
    binmode $in;
    my $old = select $in;
    $| = 1;
    select $old;
    print $in "VERSION=3\nformat=print\ntype=btree\n"
        . "mapsize=67108864\nHEADER=END\n";
    my $lock = { pid => $pid, fh => $in, store => $store };
    unless (eval { grow_write_lock($lock, $o{grow} // 0); 1 }) {
        kill 'KILL', $pid;
        close $in;
        croak "mdb_load did not take the write lock";
    }
    return $lock;
}

# mdb_load commits 100 more records ($mb MB in all) and holds the lock
# again in its next transaction.
sub grow_write_lock {
    my ($lock, $mb) = @_;
    my $before = lmdb_txnid($lock->{store}) // 0;
    my $size = $mb ? int($mb * 1_000_000 / 100) : 1;
    my $tag = sprintf '%d-%d-%d', $$, time * 1000, $before;
    for my $i (1 .. 100) {
        print { $lock->{fh} } " $tag-$i\n " . ('x' x $size) . "\n";
    }
    wait_for(sub {
        (lmdb_txnid($lock->{store}) // 0) > $before
            && blocked_reading($lock->{pid})
    }, 30) or croak "mdb_load did not commit";
}

sub blocked_reading {
    my ($pid) = @_;
    open my $w, '<', "/proc/$pid/wchan" or return 0;
    my $wchan = <$w> // '';
    my $st = MR::Test::proc_stat($pid) or return 0;
    return $st->{state} eq 'S' && $wchan =~ /pipe/;
}

# Ends mdb_load's input: it commits its empty transaction and exits.
sub release_write_lock {
    my ($lock) = @_;
    return unless $lock && $lock->{fh};
    print { $lock->{fh} } "DATA=END\n";
    close delete $lock->{fh};
}

# True if a thread of $pid waits on a futex inside the store's lock.mdb
# (LMDB's write mutex): a commit of that process is waiting for the lock.
sub waits_on_store {
    my ($pid, $store) = @_;
    my @ranges;
    open my $m, '<', "/proc/$pid/maps" or return 0;
    while (<$m>) {
        next unless index($_, "$store/lock.mdb") >= 0;
        my ($lo, $hi) = /^([0-9a-f]+)-([0-9a-f]+)/ or next;
        push @ranges, [hex_big($lo), hex_big($hi)];
    }
    return 0 unless @ranges;
    for my $task (glob "/proc/$pid/task/*") {
        open my $s, '<', "$task/syscall" or next;
        my $line = <$s> // next;
        my ($nr, $addr) = split ' ', $line;
        next unless defined $addr && $nr eq '202';    # futex, x86-64
        $addr = hex_big($addr =~ s/^0x//r);
        return 1 if grep { $addr >= $_->[0] && $addr < $_->[1] } @ranges;
    }
    return 0;
}

# ---------------------------------------------------------------- HTTP

# Sends one request on a new connection and leaves the answer to
# read_response().
sub send_request {
    my ($port, $method, $path, $headers, $body) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $port, Proto => 'tcp', Timeout => 10)
        or croak "connect: $!";
    binmode $s;
    $s->autoflush(1);
    print $s MR::Test::http_message($method, $path, $headers,
        ref $body ? MR::Test::json_encode($body) : $body, 1);
    return $s;
}

# The answer on $s, or undef if none is complete within $timeout seconds.
sub read_response {
    my ($s, $timeout) = @_;
    my $in = '';
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        next unless select(my $rout = $rin, undef, undef, 0.05) > 0;
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $in .= $buf;
    }
    return undef unless length $in;
    my $r = MR::Test::parse_http($in);
    return $r->{status} == 599 ? undef : $r;
}

# ---------------------------------------------------------------- config

# A model dispatched to the built-in simulator, and the dispatch server
# that holds its route (for MR::Test's http => ...).
sub sim_http {
    my (%o) = @_;
    my $latency = $o{latency} // '20ms';
    return <<"EOF";
modelroute_route sim /providers/sim protocol=openai_chat;
modelroute_model sim-chat per_request=0.01 routes=sim timeout=1m;
server {
    modelroute_dispatch;
    access_log off;
    location /providers/sim {
        internal;
        modelroute_simulator latency=$latency;
    }
}
EOF
}

1;
