# The metrics zone is shared memory that every worker writes, and the
# workers run as another user than the master (root): the master must
# take nothing in it for a pointer.  It did: on a reload, the master
# read the addresses of the model and route slots from the zone and wrote
# the new models' names there, so a worker that wrote into the zone chose
# where the master (root) wrote.  Here the test plays that worker: every
# word of the module's part of the zone (its header and slots, not
# nginx's slab pool before them) that holds an address inside the zone is
# overwritten, and a reload that adds a model must go through, with the
# master alive and the counters still served.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Metrics qw(:all);
use POSIX ();

plan skip_all => 'needs root (writes into nginx\'s memory)' if $>;
plan skip_all => 'Linux x86_64 only (/proc/PID/mem, 64-bit words)'
    unless $^O eq 'linux' && (POSIX::uname())[4] eq 'x86_64';

my $t = MR::Test->new;
$t->start;
my $master = $t->{master};

my $acc = $t->new_account(credit => '10.00');
is($t->create_exec($acc->{key}, $t->exec_body)->{status}, 202,
    'an execution counted');

# the mapping of a worker that holds the zone: it starts with the slab
# pool, and the zone's header carries the magic "MRM1" (a 64-bit word)
sub zone_mapping {
    my ($pid) = @_;
    my $magic = pack 'Q<', 0x4d524d31;
    open my $maps, '<', "/proc/$pid/maps" or die "maps: $!";
    open my $mem, '+<:raw', "/proc/$pid/mem" or die "mem: $!";
    while (<$maps>) {
        my ($lo, $hi, $perm, $name) =
            /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/ or next;
        next unless $perm eq 'rw-s' && $name =~ m{^/dev/zero|^/SYSV|^$};
        no warnings "portable";    # 64-bit addresses
        my ($start, $end) = (hex $lo, hex $hi);
        next if $end - $start > 64 * 1024 * 1024;
        sysseek $mem, $start, 0 or next;
        my $n = sysread $mem, my $buf, $end - $start;
        next unless $n && $n == $end - $start;
        my $at = index $buf, $magic;
        next if $at < 0 || $at % 8;
        return ($mem, $start, $buf, $at);
    }
    return;
}

my ($worker) = $t->worker_pids;
my ($mem, $start, $buf, $at) = zone_mapping($worker);
ok($mem, 'the metrics zone found in a worker') or BAIL_OUT('no zone');

# every aligned word of the module's part of the zone (from its header on,
# past nginx's slab pool) that points into the zone: garbage
my $end = $start + length $buf;
my $n = 0;
for (my $o = $at; $o + 8 <= length $buf; $o += 8) {
    my $v = unpack 'Q<', substr($buf, $o, 8);
    next unless $v >= $start && $v < $end;
    sysseek $mem, $start + $o, 0 or die;
    syswrite($mem, pack('Q<', 0x10)) == 8 or die "write: $!";
    $n++;
}
note "$n words of the zone that held addresses overwritten (the "
    . 'module keeps none there now)';
close $mem;

# a reload that adds a model: the master assigns it a slot
$t->write_config(http => default_http() =~ s/^(modelroute_store .*\n)/$1
    . "modelroute_model zone-test per_request=0.01;\n"/er);
my $off = length $t->read_log;
ok(eval { $t->reload; 1 }, 'a reload with a new model goes through')
    or diag $@;
ok(MR::Test::alive($master), 'the master lives');

my $r = $t->req(GET => '/admin/metrics');
is($r->{status}, 200, 'the metrics are served');
my $m = parse_metrics($r->{body});
ok(defined metric($m, 'modelroute_executions_created_total',
    model => 'zone-test'), '... with the new model');
is($t->create_exec($acc->{key},
    $t->exec_body(model => 'zone-test'))->{status}, 202,
    'an execution of the new model');

$t->done;
