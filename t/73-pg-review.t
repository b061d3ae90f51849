# The PostgreSQL store under an attacker's review (after issue 11), on a
# private PostgreSQL cluster whatever MR_STORE says:
#  - a host list whose first host is passed over after its connection was
#    made (target_session_attrs=read-write, a server that says it is read
#    only): libpq closes that socket and opens the next host's, most often
#    with the same descriptor; the workers still connect to the next host
#    (they used to keep waiting on the closed socket's events until
#    modelroute_store_connect_timeout, and never connected);
#  - a host list whose first host takes connections and answers nothing:
#    after modelroute_store_connect_timeout a worker starts from the next
#    host (libpq's connect_timeout is left to the application with
#    PQconnectPoll(): the workers tried the silent host alone forever);
#  - a sweep whose retention step purged and whose expiry step expired,
#    in one run: each step commits with an id of its own (the expiry used
#    to fail on the purge's id in mr_batches, its holds kept until a run
#    purged nothing);
#  - nginx -t (and a start, a reload) while mr_schema is locked: the
#    master's check of the schema waits modelroute_store_connect_timeout
#    at most (a blocking PQexec() waited for as long as the lock was held,
#    the master answering no signal meanwhile);
#  - a server named by libpq's variables (PGHOST, "env PGHOST;"), not in
#    modelroute_store: its host name is resolved by the master, as one
#    written there (a worker resolved it, blocking, on every connection).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time);
use MR::Test qw(:all);

my $t0 = MR::Test->new(store => 'postgres');
my $pg = MR::Test::pg_cluster();

# A server that speaks just enough of the protocol: no TLS, no password,
# a read-only session; libpq then tries the next host
sub fake_read_only {
    my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
        Listen => 64, ReuseAddr => 1) or die "listen: $!";
    my $pid = fork // die "fork: $!";
    if ($pid) {
        my $port = $srv->sockport;
        close $srv;
        return ($pid, $port);
    }
    local $SIG{CHLD} = 'IGNORE';
    local $SIG{TERM} = sub { POSIX::_exit(0) };
    while (my $c = $srv->accept) {
        next if fork;
        my $read = sub {
            my $buf = '';
            while (length $buf < 4) {
                sysread($c, $buf, 4 - length $buf, length $buf) or exit 0;
            }
            my $len = unpack 'N', $buf;
            while (length $buf < $len) {
                sysread($c, $buf, $len - length $buf, length $buf) or exit 0;
            }
            return substr $buf, 4;
        };
        my $msg = $read->();
        if (unpack('N', $msg) == 80877103) {            # SSLRequest
            syswrite $c, 'N';
            $msg = $read->();
        }
        my $ps = sub {
            my $b = join("\0", @_) . "\0";
            return 'S' . pack('N', 4 + length $b) . $b;
        };
        syswrite $c, 'R' . pack('NN', 8, 0)              # AuthenticationOk
            . $ps->('server_version', '15.0')
            . $ps->('default_transaction_read_only', 'on')
            . $ps->('in_hot_standby', 'on')
            . 'K' . pack('NNN', 12, 4242, 4242)
            . 'Z' . pack('N', 5) . 'I';
        # until libpq hangs up
        1 while sysread $c, my $junk, 4096;
        POSIX::_exit(0);
    }
    POSIX::_exit(0);
}

my ($fake, $fport) = fake_read_only();

my $http = MR::Test::default_http();
my $ci = "host=127.0.0.1,$pg->{dir} port=$fport,$pg->{port} user=postgres "
    . "dbname=$t0->{db} target_session_attrs=read-write";
$http =~ s/%%STORE%%/"$ci"/;

my $t = MR::Test->new(store => 'postgres', http => $http,
    extra_http => "modelroute_store_connect_timeout 3s;\n");
$t->{db} = $t0->{db};
$t->start;

my $acc = $t->new_account(credit => '5.00');
ok(wait_for(sub {
    $t->create_exec($acc->{key}, $t->exec_body)->{status} == 202 }, 20, 0.2),
    'a read-only first host: the workers connect to the next one');
unlike($t->read_log, qr/timed out \(modelroute_store_connect_timeout\)/,
    '... without waiting for the connection\'s timeout');

$t->stop;
kill 'TERM', $fake;
waitpid $fake, 0;

# ---- a first host that answers nothing
{
    my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
        LocalPort => 0, Listen => 64, ReuseAddr => 1) or die "listen: $!";
    my $sport = $srv->sockport;
    my $silent = fork // die "fork: $!";
    if (!$silent) {
        local $SIG{TERM} = sub { POSIX::_exit(0) };
        my @keep;
        while (my $c = $srv->accept) { push @keep, $c }    # and nothing
        POSIX::_exit(0);
    }
    close $srv;

    my $h = MR::Test::default_http();
    my $ci2 = "host=127.0.0.1,$pg->{dir} port=$sport,$pg->{port} "
        . "user=postgres dbname=$t0->{db}";
    $h =~ s/%%STORE%%/"$ci2"/;
    my $u = MR::Test->new(store => 'postgres', http => $h, timeout => 60,
        extra_http => "modelroute_store_connect_timeout 2s;\n");
    $u->start;
    # 503 while the workers wait for the silent host, then served
    my $a = wait_for(sub { eval { $u->new_account(credit => '5.00') } },
        30, 0.2);
    ok($a && wait_for(sub {
        $u->create_exec($a->{key}, $u->exec_body)->{status} == 202 }, 30, 0.2),
        'a silent first host: the workers connect to the next one');
    $u->stop;
    $u->check_log;
    kill 'TERM', $silent;
    waitpid $silent, 0;
}

# ---- a sweep that purges and expires in one run
{
    my $s = MR::Test->new(store => 'postgres', extra_http =>
        "modelroute_retention 1s;\nmodelroute_sweep_interval 200ms;\n");
    $s->start;
    my $a = $s->new_account(credit => '10.00');
    # no route: they wait until their deadline; a group every 0.4 s, so
    # that a run of the sweep finds some to purge and others to expire
    my @ids;
    for my $g (1 .. 10) {
        for (1 .. 5) {
            my $r = $s->create_exec($a->{key},
                $s->exec_body(timeout_seconds => 1));
            push @ids, $r->{json}{id} if $r->{status} == 202;
        }
        select undef, undef, undef, 0.4;
    }
    is(scalar @ids, 50, '50 executions, a group every 0.4 s');
    # every one expires about 1 s after its create: 10 s at the most
    ok(wait_for(sub { $s->balance($a->{key})->{held} eq '0.00' }, 10, 0.2),
        'every one expired: no hold left');
    unlike($s->read_log, qr/mr_batches|operations failed/,
        '... and no step of the sweep failed');
    # batch ids older than an hour are purged by the sweep, the others kept
    $s->psql("INSERT INTO mr_batches (id, at) SELECT gen_random_uuid(), "
        . "now() - interval '2 hours' - g * interval '1 second' "
        . "FROM generate_series(1, 600) g");
    $s->psql("INSERT INTO mr_batches (id, at) VALUES "
        . "('00000000-0000-0000-0000-00000000beef', "
        . "now() - interval '50 minutes')");
    ok(wait_for(sub { $s->psql("SELECT count(*) FROM mr_batches "
        . "WHERE at < now() - interval '1 hour'") == 0 }, 20, 0.2),
        'batch ids older than an hour purged');
    is($s->psql("SELECT count(*) FROM mr_batches "
        . "WHERE id = '00000000-0000-0000-0000-00000000beef'"), 1,
        '... one of 50 minutes kept');
    ok($s->verify($a->{org})->{ok}, 'verify ok');
    $s->stop;
    $s->check_log;
}

# ---- the master's check of the schema, while mr_schema is locked
{
    my $u = MR::Test->new(store => 'postgres',
        extra_http => "modelroute_store_connect_timeout 2s;\n");
    my $locker = fork // die "fork: $!";
    if (!$locker) {
        $ENV{PGAPPNAME} = 'mr-locker';
        open STDERR, '>', '/dev/null';
        { exec 'psql', '-X', '-q', '-h', $pg->{dir}, '-p', $pg->{port},
            '-U', 'postgres', '-d', $u->{db}, '-c',
            'BEGIN; LOCK TABLE mr_schema IN ACCESS EXCLUSIVE MODE; '
            . 'SELECT pg_sleep(120)' };
        POSIX::_exit(1);
    }
    ok(wait_for(sub { MR::Test::pg_sql('postgres', "SELECT count(*) FROM "
        . "pg_stat_activity WHERE application_name = 'mr-locker' "
        . "AND query LIKE '%pg_sleep%'") }, 20, 0.2),
        'mr_schema locked by another session');
    my $t0 = time;
    my ($rc, $out) = $u->test_config;
    my $took = time - $t0;
    isnt($rc, 0, 'nginx -t fails while it is locked');
    like($out, qr/no answer to the schema's check within modelroute_store_connect_timeout/,
        '... saying the server did not answer');
    cmp_ok($took, '<', 30, '... without waiting for the lock')
        or diag "took $took s";
    MR::Test::pg_sql('postgres', 'SELECT pg_terminate_backend(pid) FROM '
        . "pg_stat_activity WHERE application_name = 'mr-locker'");
    waitpid $locker, 0;
    my ($rc2, $out2) = $u->test_config;
    is($rc2, 0, 'the lock gone: nginx -t is happy') or diag $out2;
}

# ---- the server named by PGHOST
{
    my $store = "\"port=$pg->{port} user=postgres dbname=$t0->{db}\"";
    my $h = MR::Test::default_http();
    $h =~ s/%%STORE%%/$store/;

    my $u = MR::Test->new(store => 'postgres', http => $h,
        extra_main => "env PGHOST;\n",
        env => { PGHOST => 'mr-no-such-host.invalid' });
    my ($rc, $out) = $u->test_config;
    isnt($rc, 0, 'PGHOST names a host that does not resolve: refused');
    like($out, qr/PostgreSQL host "mr-no-such-host\.invalid" cannot be resolved/,
        '... by the master\'s own resolution of it');

    my $v = MR::Test->new(store => 'postgres', http => $h,
        extra_main => "env PGHOST;\n", env => { PGHOST => $pg->{dir} });
    $v->start;
    my $a = $v->new_account(credit => '1.00');
    is($v->create_exec($a->{key}, $v->exec_body)->{status}, 202,
        'PGHOST names the server: the workers connect');
    $v->stop;
    $v->check_log;
}

$t->done;
