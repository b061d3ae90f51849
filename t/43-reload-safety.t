# Reloads that cannot kill the master (issue 9, item 2) and a read-only
# "nginx -t" (item 10). Every check that can fail runs when the
# configuration is read: a reload that meets a damaged, foreign or
# other-format data.mdb, a store the worker user can no longer reach, a
# map size below the data it holds or beyond the address space, or a
# store path that is a file, is refused with an [emerg] naming the
# problem; the master lives on and the old workers keep serving; once the
# problem is undone a reload works. The master never writes the store:
# a reload goes through while another process holds LMDB's write lock.
# "nginx -t" neither waits for that lock, nor creates or chowns anything,
# and still refuses a store it can see is unusable.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Copy qw(copy);
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use POSIX qw(WNOHANG);
use Time::HiRes qw(time);
use MR::Test qw(:all);
use MR::Lifecycle qw(:all);

MR::Test::lmdb_only("data.mdb, map sizes and LMDB's write lock checked on reloads");

plan skip_all => 'needs root (the workers run as another user)' if $>;
plan skip_all => 'mdb_load and mdb_stat are needed (apt-get install '
    . 'lmdb-utils)' unless -x '/usr/bin/mdb_load' && -x '/usr/bin/mdb_stat';

sub http_for {
    my (%o) = @_;
    my $http = MR::Test::default_http();
    my $store = $o{store} // '%%PREFIX%%/lib/store';
    $http =~ s/%%STORE%%/$store/;
    $http = "modelroute_store_map_size $o{map};\n$http" if $o{map};
    return $http;
}

my $t = MR::Test->new(http => http_for());
my $lib = $t->prefix . '/lib';
my $store = "$lib/store";
make_path($lib);
chmod 0755, $lib;
$t->expect_log(qr/\[emerg\][^\n]*modelroute_store/);
$t->start;
my $master = $t->{master};

my $acc = $t->new_account(credit => '100.00');
my @ids = map { $t->create_exec($acc->{key}, $t->exec_body)->{json}{id} }
    1 .. 5;
is(scalar(grep { defined } @ids), 5, 'executions in the store');
my ($uid) = (getpwnam('nobody'))[2];
is((stat "$store/data.mdb")[4], $uid, 'data.mdb belongs to the worker '
    . 'user (made by a worker)');

sub log_since {
    my ($off) = @_;
    return substr($t->read_log, $off);
}

sub serving {
    my ($name) = @_;
    my $b = $t->req(GET => '/v1/balance', auth($acc->{key}));
    is($b->{status}, 200, "$name: reads are served");
    my $c = $t->create_exec($acc->{key}, $t->exec_body);
    is($c->{status}, 202, "$name: creates are served");
    push @ids, $c->{json}{id} if $c->{status} == 202;
}

# A master that died (as it did before the fix) is replaced, so that the
# cases after it are still tried; its orphaned workers are killed first.
my @workers = $t->worker_pids;

sub revive {
    return if MR::Test::alive($master);
    diag 'the master died: starting nginx again';
    kill 'KILL', @workers;
    wait_for(sub { !grep { MR::Test::alive($_) } @workers }, 10);
    $t->{running} = 0;
    $t->start;
    $master = $t->{master};
    @workers = $t->worker_pids;
}

sub refused {
    my ($name, $re) = @_;
    revive();
    my @before = sort { $a <=> $b } $t->worker_pids;
    my $off = length $t->read_log;
    kill 'HUP', $master or die "HUP: $!";
    ok(wait_for(sub { log_since($off) =~ /\[emerg\][^\n]*$re/ }, 15),
        "$name: the reload is refused with a message")
        or diag log_since($off);
    ok(MR::Test::alive($master), "$name: the master lives");
    is(join(' ', sort { $a <=> $b } $t->worker_pids), join(' ', @before),
        "$name: the old workers keep running");
    serving($name);
}

sub reload_ok {
    my ($name) = @_;
    revive();
    ok(eval { $t->reload; 1 }, "$name: then a reload works") or diag $@;
    @workers = $t->worker_pids;
    serving("$name, after the reload");
}

# an LMDB environment made by mdb_load from a dump in "print" format
sub lmdb_env {
    my ($table, %kv) = @_;
    my $dir = tempdir('mr-env-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    open my $in, '|-', 'mdb_load', '-s', $table, $dir or die "mdb_load: $!";
    print $in "VERSION=3\nformat=print\ntype=btree\nHEADER=END\n";
    print $in " $_\n $kv{$_}\n" for sort keys %kv;
    print $in "DATA=END\n";
    close $in or die "mdb_load failed";
    return "$dir/data.mdb";
}

# swap data.mdb for another file: the running workers keep the old one
sub with_data {
    my ($name, $file, $re) = @_;
    rename "$store/data.mdb", "$store/data.mdb.real" or die "rename: $!";
    copy($file, "$store/data.mdb") or die "copy: $!";
    refused($name, $re);
    rename "$store/data.mdb.real", "$store/data.mdb" or die "rename: $!";
    reload_ok($name);
}

# ---- faults that appear between the start and a reload

my $garbage = $t->prefix . '/garbage';
open my $g, '>', $garbage or die;
print $g 'not an LMDB file ' x 2000;
close $g;
with_data('a damaged data.mdb', $garbage,
    qr/data\.mdb" is not an LMDB file/);

with_data('a foreign LMDB environment', lmdb_env(users => (alice => 1)),
    qr/not a ModelRoute store/);

with_data('a store of another format',
    lmdb_env(meta => (version => '\01\00\00\00')),
    qr/another version of the module \(format 1/);

# the previous format is upgraded when nginx starts, never on a reload
my ($format) = do {
    open my $h, '<', "$MR::Test::ROOT/ngx_modelroute_module/mr_store_lmdb.h"
        or die $!;
    map { /^#define MR_STORE_VERSION\s+(\d+)/ ? $1 : () } <$h>;
};
with_data('a store of the previous format',
    lmdb_env(meta => (version => sprintf('\\%02x\\00\\00\\00',
        $format - 1))),
    qr/upgrades it to format $format when nginx starts, not on a reload/);

chmod 0700, $lib or die;
refused('a store the worker user cannot reach',
    qr/\(user "nobody"\) cannot reach "\Q$store\E": they need search permission on "\Q$lib\E"/);
chmod 0755, $lib or die;
reload_ok('search permission back');

chmod 0600, "$store/data.mdb" or die;
chown 0, 0, "$store/data.mdb" or die;
reload_ok('data.mdb given to root (handed back to the worker user)');
is((stat "$store/data.mdb")[4], $uid, '... it belongs to nobody again');

# 2 MB of data in a table of the test's own, then a 1 MB map
release_write_lock(hold_write_lock($store, grow => 2));
$t->write_config(http => http_for(map => '1m'));
refused('a map size below the data', qr/holds \d+ bytes, more than /
    . qr/modelroute_store_map_size 1048576/);

$t->write_config(http => http_for(map => '300000g'));
refused('a map size beyond the address space',
    qr/modelroute_store_map_size \d+ cannot be mapped/);

$t->write_config(http => http_for(store => $garbage));
refused('a store path that is a file', qr/"\Q$garbage\E" is not a directory/);

$t->write_config(http => http_for());
reload_ok('the configuration back');

# ---- the master never writes: a reload while the write lock is taken

{
    revive();
    my $lock = hold_write_lock($store);
    my @old = $t->worker_pids;
    my $off = length $t->read_log;
    kill 'HUP', $master or die;
    my $through = wait_for(sub {
        log_since($off) =~ /start worker process/ }, 15);
    ok($through, 'a reload starts new workers while another process '
        . 'holds the write lock (the master does not wait for it)');
    ok(MR::Test::alive($master), '... the master lives');
    release_write_lock($lock);
    ok(wait_for(sub {
        my @w = $t->worker_pids;
        @w == 2 && !grep { my $o = $_; grep { $_ == $o } @w } @old;
    }, 20), '... the new workers run once the lock is free');
    @workers = $t->worker_pids;
    serving('after the reload under the lock');
}

# ---- a new store path on a reload: made by the master and the workers

{
    my $new = "$lib/store2";
    $t->write_config(http => http_for(store => $new));
    revive();
    ok(eval { $t->reload; 1 }, 'a reload to a new store path') or diag $@;
    my $other = $t->new_account(credit => '1.00');
    is($t->create_exec($other->{key}, $t->exec_body)->{status}, 202,
        '... which serves');
    ok(-d $new && (stat $new)[4] == $uid, '... its directory was made and '
        . 'given to the worker user');
    wait_for(sub { -e "$new/data.mdb" }, 10);
    is((stat "$new/data.mdb")[4], $uid, '... its data.mdb was made by a '
        . 'worker');
    $t->write_config(http => http_for());
    $t->reload;
    @workers = $t->worker_pids;
}

# ---- nginx -t: read-only

sub nginx_t {
    my ($timeout) = @_;
    my $out = File::Temp->new;
    my $pid = fork // die;
    if (!$pid) {
        open STDOUT, '>', $out->filename;
        open STDERR, '>&', \*STDOUT;
        # the harness's environment (a sanitized run preloads ASan)
        my %env = $t->nginx_env;
        @ENV{ keys %env } = values %env;
        { exec $t->nginx_cmd('-t') }
        POSIX::_exit(127);
    }
    my $st;
    my $done = wait_for(sub {
        return 0 unless waitpid($pid, WNOHANG) == $pid;
        $st = $?;
        return 1;
    }, $timeout);
    unless ($done) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
    open my $fh, '<', $out->filename;
    local $/;
    return ($done ? $st >> 8 : -1, <$fh> // '');
}

{
    my $lock = hold_write_lock($store);
    my ($rc, $out) = nginx_t(15);
    is($rc, 0, 'nginx -t does not wait for the write lock') or diag $out;
    release_write_lock($lock);

    my ($duid) = (getpwnam('daemon'))[2];
    chown $duid, -1, "$store/data.mdb" or die;
    ($rc, $out) = nginx_t(15);
    is($rc, 0, 'nginx -t with a data.mdb of another owner') or diag $out;
    is((stat "$store/data.mdb")[4], $duid, '... which it leaves as it is');
    chown $uid, -1, "$store/data.mdb" or die;

    rename "$store/data.mdb", "$store/data.mdb.real" or die;
    copy($garbage, "$store/data.mdb") or die;
    ($rc, $out) = nginx_t(15);
    isnt($rc, 0, 'nginx -t refuses a damaged data.mdb');
    like($out, qr/is not an LMDB file/, '... and says so');
    rename "$store/data.mdb.real", "$store/data.mdb" or die;

    chmod 0700, $lib or die;
    ($rc, $out) = nginx_t(15);
    isnt($rc, 0, 'nginx -t refuses a store the workers cannot reach');
    like($out, qr/cannot reach/, '... and says so');
    chmod 0755, $lib or die;

    my $fresh = "$lib/fresh";
    $t->write_config(http => http_for(store => $fresh));
    ($rc, $out) = nginx_t(15);
    is($rc, 0, 'nginx -t with a store that does not exist yet') or diag $out;
    ok(!-e $fresh, '... creates nothing');
    $t->write_config(http => http_for());
}

serving('at the end');
my @all = $t->list_all($acc->{key});
is(scalar @all, scalar @ids, 'every acknowledged execution is listed');
ok($t->verify($acc->{org})->{ok}, 'verify ok');
$t->done;
