# The store's files as the master meets them when the configuration is
# read (a reload, a start, "nginx -t"): the master runs as root, the
# store's directory belongs to the worker user, so whoever runs as that
# user chooses what data.mdb and lock.mdb are.
#
#   - a data.mdb shorter than the pages its meta page names (a half-copied
#     or truncated file): reading it must not kill the master with SIGBUS
#     (LMDB maps the file and reads pages past its end); the reload is
#     refused with a message, "nginx -t" says so;
#   - a lock.mdb or data.mdb that is a symbolic link to a file of root's:
#     the master must neither open it as LMDB's lock file (which truncates
#     and rewrites it) nor give it to the worker user (chown follows
#     links); the reload is refused with a message and the file is left
#     as it was.
# Each case is undone afterwards and a reload works again.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Copy qw(copy);
use MR::Test qw(:all);

plan skip_all => 'needs root (the workers run as another user)' if $>;
MR::Test::lmdb_only('the LMDB store\'s files (data.mdb, lock.mdb)');

my $t = MR::Test->new;
$t->expect_log(qr/\[emerg\][^\n]*modelroute_store/);
$t->start;
my $master = $t->{master};
my $store = $t->store;

my $acc = $t->new_account(credit => '100.00');
my $made = grep { $t->create_exec($acc->{key}, $t->exec_body)->{status}
    == 202 } 1 .. 20;
is($made, 20, 'executions in the store');
my ($nobody) = (getpwnam('nobody'))[2];
is((stat "$store/data.mdb")[4], $nobody, 'data.mdb belongs to the worker '
    . 'user');

sub log_since { substr($t->read_log, $_[0]) }

sub serving {
    my ($name) = @_;
    is($t->req(GET => '/v1/balance', auth($acc->{key}))->{status}, 200,
        "$name: the old workers serve");
}

# A master that died (as it did before the fixes) is replaced, so that the
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

# "nginx -t" in the harness's environment: (wait status, output)
sub nginx_t {
    my $out = $t->run_nginx('-t');
    return ($?, $out);
}

# a file of root's that the worker user must not be able to touch
sub victim {
    my ($name, $content) = @_;
    my $f = $t->prefix . "/$name";
    open my $fh, '>', $f or die "$f: $!";
    binmode $fh;
    print $fh $content;
    close $fh;
    chown 0, 0, $f or die;
    chmod 0600, $f or die;
    return $f;
}

sub slurp {
    open my $fh, '<', $_[0] or return;
    binmode $fh;
    local $/;
    return <$fh>;
}

# ---- a truncated data.mdb

{
    my $cut = $t->prefix . '/cut.mdb';
    copy("$store/data.mdb", $cut) or die "copy: $!";
    truncate $cut, 4 * 4096 or die "truncate: $!";
    ok(-s "$store/data.mdb" > 4 * 4096, 'the store has more than 4 pages');

    rename "$store/data.mdb", "$store/data.mdb.real" or die;
    copy($cut, "$store/data.mdb") or die;
    chown $nobody, -1, "$store/data.mdb";

    my ($st, $out) = nginx_t();
    ok($st > 0 && ($st & 127) == 0,
        'nginx -t with a truncated data.mdb fails, without a signal')
        or diag "status $st: $out";
    like($out, qr/data\.mdb" is damaged/, '... and says why');

    refused('a truncated data.mdb', qr/data\.mdb" is damaged/);

    rename "$store/data.mdb.real", "$store/data.mdb" or die;
    reload_ok('a truncated data.mdb');
}

# ---- lock.mdb, a symbolic link to a file of root's

{
    my $content = "root's own file\n" x 100;
    my $victim = victim('victim-lock', $content);

    rename "$store/lock.mdb", "$store/lock.mdb.real" or die;
    symlink $victim, "$store/lock.mdb" or die;
    lchown_nobody("$store/lock.mdb");

    refused('lock.mdb linked to a file of root\'s',
        qr/lock\.mdb" is a symbolic link/);
    is(slurp($victim), $content, '... that file is unchanged');
    is((stat $victim)[4], 0, '... and still belongs to root');

    my ($st, $out) = nginx_t();
    isnt($st, 0, 'nginx -t refuses it too');
    is(slurp($victim), $content, '... and leaves the file as it was');

    unlink "$store/lock.mdb";
    rename "$store/lock.mdb.real", "$store/lock.mdb" or die;
    reload_ok('lock.mdb linked to a file of root\'s');
}

# ---- data.mdb, a symbolic link to a file of root's (an LMDB store)

{
    my $victim = $t->prefix . '/victim-data.mdb';
    copy("$store/data.mdb", $victim) or die;
    chown 0, 0, $victim or die;
    chmod 0600, $victim or die;

    rename "$store/data.mdb", "$store/data.mdb.real" or die;
    symlink $victim, "$store/data.mdb" or die;
    lchown_nobody("$store/data.mdb");

    refused('data.mdb linked to a file of root\'s',
        qr/data\.mdb" is a symbolic link/);
    is((stat $victim)[4], 0, '... that file still belongs to root');

    unlink "$store/data.mdb";
    rename "$store/data.mdb.real", "$store/data.mdb" or die;
    reload_ok('data.mdb linked to a file of root\'s');
}

# a link that the worker user made
sub lchown_nobody {
    system('chown', '-h', $nobody, $_[0]) == 0 or die "chown -h";
}

is($t->create_exec($acc->{key}, $t->exec_body)->{status}, 202,
    'the store works after all of it');

$t->done;
