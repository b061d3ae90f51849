# Process roles (issue 9, item 1, and the thread pool of item 10): nginx
# runs init_process in its cache manager and cache loader too (any
# proxy_cache_path); only workers run the store, the dispatcher, the
# sender and the sweeper. Those helper processes never map the store, are
# never in LMDB's reader table and never crash (no respawn loop), while
# executions are dispatched, completed and expired around them. A worker
# commits in one thread of a pool of its own, not in nginx's 32-thread
# "default" pool; a pool declared by the configuration is used as is.
# On PostgreSQL (./build.sh test-pg) nothing is mapped and no commit
# thread is made: the store is answered on the event loop.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Lifecycle qw(:all);

my $http = MR::Test::default_http() . sim_http();
my $t = MR::Test->new(
    http => "modelroute_sweep_interval 10ms;\n"
        . "proxy_cache_path %%PREFIX%%/cache keys_zone=mr_cache:1m;\n"
        . "fastcgi_cache_path %%PREFIX%%/fcache keys_zone=mr_fcache:1m;\n"
        . $http,
);
$t->start;
my $store = $t->store;
my $master = $t->{master};
my $lmdb = $t->backend eq 'lmdb';

my @mgr;
ok(wait_for(sub {
    @mgr = (role_pids($master, 'cache manager process'),
        role_pids($master, 'cache loader process'));
    @mgr == 2;
}, 10), 'a cache manager and a cache loader run')
    or diag join "\n", map { "$_: " . MR::Test::cmdline($_) }
        $t->all_children;
my %first = map { $_ => 1 } @mgr;

# the title is set after init_process: the helpers are past it
my @workers = $t->worker_pids;
my $acc = $t->new_account(credit => '5.00');
ok(!$lmdb || wait_for(sub { !grep { !maps_store($_, $store) } @workers }, 10),
    'the workers map the store (LMDB)');
for my $pid (@mgr) {
    ok(!maps_store($pid, $store),
        MR::Test::cmdline($pid) =~ s/\s+$//r . ": the store is not mapped");
}

# work around them: completions through the simulator, and expiries by
# the sweeper (every 10 ms in each process that runs one)
my @done = map {
    $t->create_exec($acc->{key}, $t->exec_body(model => 'sim-chat'))
        ->{json}{id}
} 1 .. 5;
my @exp = map {
    $t->create_exec($acc->{key}, $t->exec_body(timeout_seconds => 1))
        ->{json}{id}
} 1 .. 3;
ok(wait_for(sub {
    !grep { ($t->get_exec($acc->{key}, $_)->{json}{status} // '')
        ne 'COMPLETED' } @done
}, 20), 'executions complete through the simulator');
ok(wait_for(sub {
    !grep { ($t->get_exec($acc->{key}, $_)->{json}{status} // '')
        ne 'EXPIRED' } @exp
}, 20), 'executions expire (the sweeper runs)');

my @readers = $lmdb ? store_readers($store) : ();
ok(!$lmdb || scalar(grep { my $w = $_; grep { $_ == $w } @readers } @workers),
    'workers are in the reader table (LMDB)') or diag "readers: @readers";
for my $pid (@mgr) {
    ok(!grep({ $_ == $pid } @readers), "helper $pid is not a reader");
    ok(!maps_store($pid, $store), "helper $pid still does not map it");
}

my @now = (role_pids($master, 'cache manager process'),
    role_pids($master, 'cache loader process'));
ok(@now == 2 && join(' ', sort @now) eq join(' ', sort keys %first),
    'the same helper processes run (none was respawned)')
    or diag "first: @{[ sort keys %first ]}, now: @now";
unlike($t->read_log,
    qr/exited on signal|cache (?:manager|loader) process \d+ exited/,
    'no helper exited');

# ---- one commit thread per worker
for my $w (@workers) {
    my @tasks = glob "/proc/$w/task/*";
    is(scalar @tasks, $lmdb ? 2 : 1,
        "worker $w: its thread" . ($lmdb ? ' and one pool thread' : ''));
}
ok($t->verify($acc->{org})->{ok}, 'verify ok');
$t->stop;
$t->check_log;

# a pool declared before the http block is used as declared, and
# "modelroute_thread_pool default" is nginx's default pool (32 threads)
for my $case (['thread_pool modelroute threads=3;', '', 4],
    ['', "modelroute_thread_pool default;\n", $lmdb ? 33 : 1],
    ['', "modelroute_thread_pool off;\n", 1])
{
    my ($main, $directive, $want) = @$case;
    my $p = MR::Test->new(workers => 1, extra_main => $main,
        extra_http => $directive);
    $p->start;
    my $a = $p->new_account;
    money_is($p->balance($a->{key})->{balance}, '10.00',
        "$want thread(s): the store works");
    my ($w) = $p->worker_pids;
    my @tasks = glob "/proc/$w/task/*";
    is(scalar @tasks, $want, ($main || $directive) =~ s/\n//r
        . " $want thread(s) in the worker");
    $p->stop;
    $p->check_log;
}

done_testing();
