package MR::Test;

# Test harness for ModelRoute: runs a real nginx with the module from a
# temporary prefix, speaks HTTP to it and checks its error log at the end.
#
#   my $t = MR::Test->new(extra_http => "modelroute_idempotency_ttl 2s;\n");
#   $t->start;
#   my $acct = $t->new_account(credit => '10.00');
#   my $r = $t->create_exec($acct->{key}, { model => 'demo-chat', ... });
#   $t->done;    # stops nginx, checks the error log, done_testing
#
# Environment: MR_MODULE (the .so, default build/…), MR_NGINX (default
# /usr/sbin/nginx), MR_KEEP=1 keeps the temporary prefix for a post-mortem,
# MR_SANITIZE (the ASan runtime, set by ./build.sh test-sanitize): see below,
# MR_STORE=postgres (./build.sh test-pg): every instance runs on
# PostgreSQL, see "the store" below.
# MR_CORE=1 makes the workers dump core into core/ in the prefix (the
# kernel's core_pattern must name a file, e.g. core.%e.%p, not a pipe), and
# keeps the prefix of a test file that failed or left a core, with a gdb
# backtrace of each core in the test's output (see core_report).
# A module or an nginx that is not there is a failure (BAIL_OUT), never a
# skip: a build that produced nothing must not pass.
#
# What check_log (and so done) fails on:
#   - [alert], [crit], [emerg] lines;
#   - "worker process N exited on signal S", unless the test killed N
#     with S itself through kill_workers / note_killed;
#   - the module's own lines that mean a bug (@BUG_LINES below: an
#     INTERNAL_ERROR answer, a commit or a store read that failed, a sweep,
#     a claim or an outcome that was not committed, ...);
#   - an nginx that did not stop cleanly: QUIT did not end it (a worker
#     did not quit), a worker outlived its master, or the master's exit
#     status was not 0 (the master is our child: see become_subreaper).
# A test that provokes one of these lines on purpose says so with
# expect_log(qr/.../): the per-test allow list.  (An expect_log pattern
# that matches "exited on signal" lines still exempts them, for old
# tests; kill_workers is the way that exempts only the pids it killed.)
#
# Functions added for the rules above (the rest of the API is unchanged):
#   $t->kill_workers($sig, @pids)  signals the pids (default: every live
#                                  worker), remembers them; returns them
#   $t->note_killed($sig, @pids)   remembers pids the test signalled itself
#   $t->problems                   what went wrong so far (stop, log)
#   $t->wait_terminal($key, \@ids, $timeout)
#                                  the executions by id once all ended
#   MR::Test::free_port()          a port no other MR::Test process takes
#                                  (see free_port for how)
#   - with MR_SANITIZE, any sanitizer report (check_sanitizer).

use strict;
use warnings;
use feature 'state';

use Carp qw(croak);
use Compress::Zlib ();
use Cwd qw(abs_path);
use Fcntl qw(:flock O_RDWR O_CREAT);
use File::Basename qw(dirname);
use File::Spec;
use File::Path qw(make_path);
use File::Temp qw(tempdir tempfile);
use HTTP::Tiny;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(WNOHANG);
use Test::More;
use IO::Handle;
use Time::HiRes qw(time sleep);

use Exporter 'import';
our @EXPORT_OK = qw(wait_for default_http sim_http make_key_string json_encode
    json_decode is_error is_rfc3339 parse_rfc3339 random_hex auth
    detail_for money_is micros http_message);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

our $ROOT = abs_path(dirname(__FILE__) . '/../../..');
our $NGINX = $ENV{MR_NGINX} || '/usr/sbin/nginx';

# The store the instances run on.  MR_STORE=postgres: a private PostgreSQL
# cluster of this test file (Debian's postgresql-15: initdb into a
# temporary directory, as the postgres user when the tests run as root,
# a unix socket only, a port of its own; stopped when the file ends, never
# a system instance), a database of its own for each instance, migrated
# with tools/pg-migrate; %%STORE%% is its conninfo, and the node's own
# files (its dispatch socket and secret) are in $t->store, as LMDB's.
# A file about LMDB itself says so with lmdb_only(): it is skipped there.
# new(store => 'postgres') runs one instance on PostgreSQL whatever
# MR_STORE says (the tests of the PostgreSQL store's faults).
# new(store => 'postgres', db => $other->db) runs one more node on the
# database of $other (a fleet: t/72); $t->kill_node kills a node's master
# and workers at once (kill -9), as a machine that disappears.
our $STORE = ($ENV{MR_STORE} // '') eq 'postgres' ? 'postgres' : 'lmdb';
our $PG_BIN = $ENV{MR_PG_BIN} || '/usr/lib/postgresql/15/bin';
my $PG;           # this file's cluster
# more postgresql.conf lines for this file's cluster (set before it starts)
our $PG_CONF = '';
my $PG_DBS = 0;

# A sanitizer run (./build.sh test-sanitize, the module built with ASan and
# UBSan): nginx is not built with ASan, so MR_SANITIZE names the ASan runtime
# to preload into it. ASan reports go to sanitizer/asan.<pid> in the prefix,
# UBSan's to nginx's stderr: the error log, or the output of an nginx
# command. check_log fails on any report, and a report nothing checked fails
# the test file when it ends.
our $SANITIZE = $ENV{MR_SANITIZE} // '';

# MR_CORE=1: core dumps of the workers, and the prefix of a failure kept.
our $CORE = $ENV{MR_CORE} // '';

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;
my @LIVE;    # instances started by this process, stopped in END
my @ALL;     # instances made by this process, their sanitizer logs checked
our %EXIT;   # wait status of the children we reaped (nginx masters), by pid

# The module's own log lines that mean a bug, whatever their level: a test
# that provokes one on purpose allows it with expect_log.  (Grep the C
# sources for ngx_log_error when adding one.)
our @BUG_LINES = (
    qr/\bmodelroute: request req_[0-9a-f]+: /,          # INTERNAL_ERROR
    qr/\[error\].*modelroute_store: commit of \d+ operations failed/,
    qr/modelroute_store: read transaction: /,
    qr/modelroute_store: reading \S+: /,
    qr/modelroute sweeper: the sweep was not committed/,
    qr/modelroute dispatch: a claim failed/,
    qr/modelroute dispatch: cannot send \d+ attempts/,
    qr/modelroute dispatch: cannot start an attempt/,
    qr/modelroute dispatch: cannot prepare an attempt/,
    qr/modelroute dispatch: the outcome of \S+ was not recorded/,
    qr/modelroute webhooks: \S+: cannot start (?:the delivery|resolving)/,
    qr/modelroute webhooks: an attempt of \S+ was not recorded/,
);

sub module_path {
    my $m = $ENV{MR_MODULE} || "$ROOT/build/ngx_http_modelroute_module.so";
    $m = "$ROOT/$m" unless $m =~ m{^/};
    return $m;
}

sub default_http {
    return <<'EOF';
modelroute_store %%STORE%%;
modelroute_model demo-chat per_request=0.04 timeout=5m;
modelroute_model demo-tokens input_per_mtok=1.00 output_per_mtok=2.00
                 max_tokens=1000;
modelroute_model demo-image per_image=0.02;
modelroute_model demo-video per_second=0.05;
server {
    listen 127.0.0.1:%%PORT%%;
    large_client_header_buffers 4 32k;
    location /v1/ { modelroute_api; client_max_body_size 64k; }
    location /admin/ { modelroute_admin; }
}
EOF
}

# One route to the simulator (m-sim, one attempt), the API, the admin API
# and the dispatch server; no sweep while a test counts; @extra: more
# directives of the http block.
sub sim_http {
    my (@extra) = @_;
    return join '', "modelroute_store %%STORE%%;\n",
        "modelroute_sweep_interval 1h;\n",
        "modelroute_route sim /p/sim protocol=openai_chat;\n",
        "modelroute_model m-sim per_request=0.01 routes=sim attempts=1;\n",
        map({ "$_\n" } @extra), <<'EOF';
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/sim { internal; modelroute_simulator; }
}
EOF
}

# ---------------------------------------------------------------- lifecycle

sub new {
    my ($class, %o) = @_;

    become_subreaper();
    my $module = module_path();
    # never a skip: a build that made no module must not look green
    BAIL_OUT("module not built: $module (run ./build.sh, or set MR_MODULE)")
        unless -f $module;
    BAIL_OUT("nginx not found: $NGINX (set MR_NGINX)") unless -x $NGINX;

    my $prefix = tempdir('mr-test-XXXXXX', TMPDIR => 1,
        CLEANUP => !$ENV{MR_KEEP} && !$CORE);
    chmod 0755, $prefix or croak "chmod $prefix: $!";
    make_path(map { "$prefix/$_" } qw(logs conf tmp));
    chmod 0755, "$prefix/tmp";
    if ($CORE) {
        # the workers' working directory: they run as nobody under root
        make_path("$prefix/core");
        chmod 01777, "$prefix/core";
        core_pattern_check();
    }
    if ($SANITIZE) {
        # workers run as nobody when the tests run as root
        make_path("$prefix/sanitizer");
        chmod 01777, "$prefix/sanitizer";
    }

    my $self = bless {
        module      => $module,
        prefix      => $prefix,
        workers     => $o{workers} // 2,
        http        => $o{http} // default_http(),
        extra_http  => $o{extra_http} // '',
        extra_main  => $o{extra_main} // '',
        expect_log  => $o{expect_log} // [],
        keep_alive  => $o{keep_alive} // 0,
        env         => $o{env} // {},
        access_log  => $o{access_log} // 0,
        timeout     => $o{timeout} // 10,
        backend     => $o{store} // $STORE,
        owner       => $$,
        seq         => 0,
        killed      => {},
        problems    => [],
    }, $class;
    $self->{port} = free_port();
    $self->{port2} = free_port();
    $self->{port3} = free_port();
    $self->{db} = $o{db} // pg_database() if $self->{backend} eq 'postgres';
    $self->write_config;
    push @ALL, $self;
    return $self;
}

sub prefix { $_[0]{prefix} }
sub port   { $_[0]{port} }
sub store  { "$_[0]{prefix}/store" }
sub db     { $_[0]{db} }
sub error_log_path { "$_[0]{prefix}/logs/error.log" }

# The daemonized nginx master is re-parented to us instead of to init, so
# that we reap it (init here may not).
sub become_subreaper {
    state $done;
    return if $done++;
    my ($sysname, undef, undef, undef, $machine) = POSIX::uname();
    return unless $sysname eq 'Linux' && $machine eq 'x86_64';
    syscall(157, 36, 1, 0, 0, 0);    # prctl(PR_SET_CHILD_SUBREAPER, 1)
}

# A port for a listener (nginx, a receiver, or one that must stay closed).
# A port checked free and then closed can be taken by anyone before it is
# used; so the ports come from 20000-31999, below the kernel's ephemeral
# range (32768-60999 here: nothing gets one of ours for an outgoing
# connection or a bind to port 0), and each is locked (flock on a file in
# $TMPDIR/mr-test-ports) for the life of the process that picked it, so
# that no other MR::Test process, in this file or another one running at
# the same time, picks it too.  The lock also keeps a receiver's port ours
# between its stop and its start, and nginx's across a restart.
my %PORT_LOCK;    # port => the locked handle, held until we exit

sub free_port {
    my $dir = File::Spec->tmpdir . '/mr-test-ports';
    unless (-d $dir) {
        mkdir $dir;
        chmod 01777, $dir;
    }
    for (1 .. 5000) {
        my $port = 20000 + int rand 12000;
        next if $PORT_LOCK{$port};
        sysopen(my $fh, "$dir/$port", O_RDWR | O_CREAT, 0666) or next;
        unless (flock $fh, LOCK_EX | LOCK_NB) {
            close $fh;
            next;
        }
        # something outside the harness may listen there
        my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
            LocalPort => $port, Proto => 'tcp', ReuseAddr => 1);
        unless ($s) {
            close $fh;
            next;
        }
        close $s;
        $PORT_LOCK{$port} = $fh;
        return $port;
    }
    croak "no free port in 20000-31999";
}

sub config_text {
    my ($self) = @_;
    my $p = $self->{prefix};
    my $http = $self->{extra_http} . $self->{http};
    my %sub = (PORT => $self->{port}, PORT2 => $self->{port2},
        PORT3 => $self->{port3}, STORE => $self->store_conf, PREFIX => $p);
    # PostgreSQL: the node's own files where LMDB's store would be
    $http = "modelroute_node_dir $p/store;\n$http"
        if $self->{backend} eq 'postgres';
    $http =~ s/%%(PORT[23]?|STORE|PREFIX)%%/$sub{$1}/g;
    (my $main = $self->{extra_main}) =~ s/%%PREFIX%%/$p/g;
    $http =~ s/^/    /mg;
    my $log = $self->{access_log}
        ? "log_format mr '\$pid \$status \$request';\n"
          . "    access_log $p/logs/access.log mr;"
        : 'access_log off;';
    # nginx keeps only the variables named by "env" for its workers and a
    # new binary
    my %env = $self->nginx_env;
    my $env = join '', map { "env $_;\n" } sort keys %env;
    $env .= "worker_rlimit_core 4g;\nworking_directory $p/core;\n"
        if $CORE;
    return <<EOF;
load_module $self->{module};
daemon on;
master_process on;
worker_processes $self->{workers};
error_log $p/logs/error.log notice;
pid $p/logs/nginx.pid;
$env$main
events { worker_connections 4096; }

http {
    $log
    client_body_temp_path $p/tmp/body;
    proxy_temp_path $p/tmp/proxy;
    fastcgi_temp_path $p/tmp/fastcgi;
    uwsgi_temp_path $p/tmp/uwsgi;
    scgi_temp_path $p/tmp/scgi;

$http}
EOF
}

sub write_config {
    my ($self, %o) = @_;
    $self->{$_} = $o{$_}
        for grep { exists $o{$_} } qw(http extra_http workers);
    my $f = "$self->{prefix}/conf/nginx.conf";
    open my $fh, '>', $f or croak "$f: $!";
    print $fh $self->config_text;
    close $fh;
}

sub nginx_cmd {
    my ($self, @args) = @_;
    return ($NGINX, '-p', "$self->{prefix}/", '-c',
        "$self->{prefix}/conf/nginx.conf", @args);
}

# Runs `nginx -t`; returns (exit code, output).
sub test_config {
    my ($self) = @_;
    my $out = $self->run_nginx('-t');
    return ($? >> 8, $out);
}

# The environment nginx runs with: new(env => {NAME => value}) and, in a
# sanitizer run, the preloaded ASan runtime and where reports go.
sub nginx_env {
    my ($self) = @_;
    my %env = %{ $self->{env} };
    if ($SANITIZE) {
        # ASan's runtime first, then what the test preloads (libfaketime)
        $env{LD_PRELOAD} = join ':', $SANITIZE, $env{LD_PRELOAD} // ();
        # no leak check: nginx's own allocations at exit are not the module's
        $env{ASAN_OPTIONS} = "log_path=$self->{prefix}/sanitizer/asan"
            . ':detect_leaks=0:halt_on_error=1';
    }
    return %env;
}

# Runs nginx with @args in its environment; returns its output.
sub run_nginx {
    my ($self, @args) = @_;
    my %env = $self->nginx_env;
    local @ENV{ keys %env } = values %env;
    my $out = run_capture($self->nginx_cmd(@args));
    push @{ $self->{sanitizer_out} }, sanitizer_lines($out) if $SANITIZE;
    return $out;
}

sub run_capture {
    my (@cmd) = @_;
    my $pid = open(my $fh, '-|') // croak "fork: $!";
    if (!$pid) {
        open STDERR, '>&', \*STDOUT;
        exec @cmd or POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return $out;
}

sub start {
    my ($self) = @_;
    croak 'already running' if $self->{running};
    unlink "$self->{prefix}/logs/nginx.pid";
    my $out = $self->run_nginx;
    croak "nginx failed to start (exit " . ($? >> 8) . "): $out\n"
        . $self->tail_log if $?;
    $self->{running} = 1;
    $self->{started} = 1;
    push @LIVE, $self;

    my $master = wait_for(sub { $self->master_pid }, $self->{timeout})
        or croak "no pid file\n" . $self->tail_log;
    $self->{master} = $master;
    wait_for(sub { $self->port_open }, $self->{timeout})
        or croak "port $self->{port} never opened\n" . $self->tail_log;
    wait_for(sub { $self->worker_pids == $self->{workers} }, $self->{timeout})
        or croak "workers did not start\n" . $self->tail_log;
    return $self;
}

sub master_pid {
    my ($self) = @_;
    open my $fh, '<', "$self->{prefix}/logs/nginx.pid" or return;
    my $pid = <$fh>;
    return unless defined $pid && $pid =~ /^(\d+)/;
    return alive($1) ? $1 : undef;
}

sub port_open {
    my ($self, $port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $port // $self->{port}, Proto => 'tcp', Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

# A pid is alive if it exists and is not a zombie (reaped if ours: the
# wait status of a reaped child is kept in %EXIT).
sub alive {
    my ($pid) = @_;
    my $w = waitpid($pid, WNOHANG);
    $EXIT{$pid} = $? if $w == $pid;
    my $st = proc_stat($pid) or return 0;
    return $st->{state} ne 'Z';
}

sub proc_stat {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/stat" or return;
    my $line = <$fh> // return;
    $line =~ /^\d+ \((.*)\) (\S) (\d+)/s or return;
    return { comm => $1, state => $2, ppid => $3 };
}

sub cmdline {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/cmdline" or return '';
    local $/;
    my $c = <$fh> // '';
    $c =~ tr/\0/ /;
    return $c;
}

sub children_of {
    my ($ppid) = @_;
    my @kids;
    opendir my $dh, '/proc' or return;
    for my $pid (grep { /^\d+$/ } readdir $dh) {
        my $st = proc_stat($pid) or next;
        push @kids, $pid if $st->{ppid} == $ppid && $st->{state} ne 'Z';
    }
    return sort { $a <=> $b } @kids;
}

# Live workers of the current master (not the ones shutting down).
sub worker_pids {
    my ($self) = @_;
    my $master = $self->{master} // $self->master_pid // return;
    return grep { cmdline($_) =~ /worker process\s*$/ } children_of($master);
}

sub all_children {
    my ($self) = @_;
    my $master = $self->{master} // return;
    return children_of($master);
}

# A graceful stop (QUIT).  Whatever is not clean is recorded as a problem
# that check_log fails on: nginx still there 30 s after QUIT (a worker that
# does not quit), a worker that outlives its master, a master that exits
# with a status other than 0.
sub stop {
    my ($self) = @_;
    return unless $self->{running};
    $self->{running} = 0;
    @LIVE = grep { $_ != $self } @LIVE;
    my $master = $self->{master} // $self->master_pid;
    unless ($master) {
        $self->problem('nginx had no master process at the stop');
        return;
    }
    my @kids = children_of($master);
    kill 'QUIT', $master;
    unless (wait_for(sub { !alive($master) }, 30)) {
        my @busy = map { "$_ (" . cmdline($_) . ')' }
            grep { alive($_) } children_of($master);
        $self->problem("nginx $master did not quit within 30 s of QUIT; "
            . "still running: @busy");
        kill 'TERM', $master;
        unless (wait_for(sub { !alive($master) }, 5)) {
            kill 'KILL', $master, @kids;
            wait_for(sub { !alive($master) }, 5);
        }
    } elsif (defined $EXIT{$master} && $EXIT{$master} != 0) {
        $self->problem(sprintf 'nginx master %d exited with status %d '
            . '(signal %d)', $master, $EXIT{$master} >> 8,
            $EXIT{$master} & 127);
    }
    # The workers end before the master; make sure none is left behind.
    my @left = grep { alive($_) } @kids;
    if (@left && !wait_for(sub { !grep { alive($_) } @kids }, 10)) {
        @left = grep { alive($_) } @kids;
        $self->problem("worker(s) @left still running after their master "
            . 'exited') if @left;
        kill 'KILL', @left;
    }
    delete $self->{master};
}

sub problem {
    my ($self, $what) = @_;
    push @{ $self->{problems} }, $what;
}

sub problems { @{ $_[0]{problems} } }

# Signals pids (default: every live worker of the current master) and
# remembers them: "worker process <pid> exited on signal <n>" is then
# allowed in the log for those pids and that signal only.  Returns the
# pids signalled.
sub kill_workers {
    my ($self, $sig, @pids) = @_;
    $sig //= 'KILL';
    @pids = $self->worker_pids unless @pids;
    $self->note_killed($sig, @pids);
    # all at once: stopped first, so that none sees another one die (its
    # connections close) and acts on it before its own signal arrives
    kill 'STOP', @pids if @pids > 1 && ($sig eq 'KILL' || $sig eq '9');
    kill $sig, @pids;
    return @pids;
}

# kill -9 of the master and its workers at once (stopped first): a node
# that disappears.  Its log has no "exited on signal" line (no master is
# left to write one); it is not running any more, and a later start runs
# it again in the same prefix.  Returns the pids killed.
sub kill_node {
    my ($self) = @_;
    my $master = $self->{master} // $self->master_pid
        or croak 'kill_node: not running';
    my @pids = ($master, children_of($master));
    $self->note_killed('KILL', @pids);
    kill 'STOP', @pids;
    kill 'KILL', @pids;
    wait_for(sub { !grep { alive($_) } @pids }, 10)
        or croak "kill_node: @pids still alive";
    $self->{running} = 0;
    @LIVE = grep { $_ != $self } @LIVE;
    delete $self->{master};
    return @pids;
}

# Remembers pids that the test signalled itself.
sub note_killed {
    my ($self, $sig, @pids) = @_;
    my $num = $sig =~ /^\d+$/ ? $sig : signal_number($sig);
    $self->{killed}{$_}{$num} = 1 for @pids;
}

sub signal_number {
    my ($name) = @_;
    require Config;
    my @names = split ' ', $Config::Config{sig_name};
    my @nums = split ' ', $Config::Config{sig_num};
    $name =~ s/^SIG//;
    for my $i (0 .. $#names) {
        return $nums[$i] if $names[$i] eq $name;
    }
    croak "unknown signal $name";
}

sub restart {
    my ($self) = @_;
    $self->stop;
    return $self->start;
}

# HUP; wait until every worker is new and the old ones are gone.
sub reload {
    my ($self) = @_;
    my $master = $self->{master} or croak 'not running';
    my @old = $self->all_children;
    my %old = map { $_ => 1 } @old;
    kill 'HUP', $master or croak "HUP: $!";
    wait_for(sub {
        my @w = $self->worker_pids;
        @w == $self->{workers} && !grep { $old{$_} } @w;
    }, $self->{timeout}) or croak "reload: no new workers\n" . $self->tail_log;
    wait_for(sub { !grep { alive($_) } @old }, $self->{timeout})
        or croak "reload: old workers did not exit\n" . $self->tail_log;
    return $self;
}

# ---------------------------------------------------------------- the store

# What modelroute_store names: LMDB's directory, or PostgreSQL's conninfo.
sub store_conf {
    my ($self) = @_;
    return $self->store if $self->{backend} ne 'postgres';
    return '"' . $self->conninfo . '"';
}

sub conninfo {
    my ($self) = @_;
    my $pg = pg_cluster();
    return "host=$pg->{dir} port=$pg->{port} user=postgres "
        . "dbname=$self->{db}";
}

sub backend { $_[0]{backend} }

# A file about LMDB itself: skipped on PostgreSQL, saying why.
sub lmdb_only {
    my ($why) = @_;
    plan skip_all => "LMDB only: $why" if $STORE eq 'postgres';
}

# Runs as root: PostgreSQL's own programs as its user.
sub pg_as { $> == 0 ? ('runuser', '-u', 'postgres', '--') : () }

sub pg_cluster {
    return $PG if $PG;
    BAIL_OUT("PostgreSQL 15 not found in $PG_BIN (apt-get install "
        . 'postgresql-15, or set MR_PG_BIN)') unless -x "$PG_BIN/initdb";
    my $dir = tempdir('mr-pg-XXXXXX', TMPDIR => 1, CLEANUP => 0);
    chmod 0755, $dir or croak "chmod $dir: $!";
    if ($> == 0) {
        # PostgreSQL refuses to run as root
        my ($uid, $gid) = (getpwnam 'postgres')[2, 3];
        BAIL_OUT('no "postgres" user (apt-get install postgresql-15)')
            unless defined $uid;
        chown $uid, $gid, $dir or croak "chown $dir: $!";
    }
    my $port = free_port();
    my $out = run_capture(pg_as(), "$PG_BIN/initdb", '-D', "$dir/data",
        '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C',
        '--no-sync');
    BAIL_OUT("initdb failed: $out") if $?;
    open my $fh, '>>', "$dir/data/postgresql.conf"
        or croak "postgresql.conf: $!";
    # its own socket and port, no TCP; fsync off: the tests kill and
    # restart the server, never the machine
    print $fh "listen_addresses = ''\n",
        "unix_socket_directories = '$dir'\n",
        "port = $port\n",
        "max_connections = 300\n",
        "shared_buffers = 32MB\n",
        "fsync = off\n",
        "full_page_writes = off\n",
        "log_min_messages = warning\n", $PG_CONF;
    close $fh;
    $PG = { dir => $dir, port => $port, owner => $$ };
    pg_ctl('start');
    return $PG;
}

# The environment of this file's cluster's server (t/99: libfaketime)
our %PG_ENV;

# pg_ctl start | stop [mode] | restart [mode] on this file's cluster
sub pg_ctl {
    my ($what, $mode) = @_;
    my $pg = $PG or croak 'no cluster';
    my @cmd = (pg_as(), "$PG_BIN/pg_ctl", '-D', "$pg->{dir}/data", '-w',
        '-t', '120');
    push @cmd, '-l', "$pg->{dir}/log" if $what ne 'stop';
    push @cmd, '-m', $mode if $mode;
    local @ENV{ keys %PG_ENV } = values %PG_ENV;
    my $out = run_capture(@cmd, $what);
    croak "pg_ctl $what failed: $out" if $?;
    return $out;
}

# Runs SQL on a database of this file's cluster; its rows, "|"-separated.
sub pg_sql {
    my ($db, $sql) = @_;
    my $pg = pg_cluster();
    my $out = run_capture('psql', '-X', '-q', '-A', '-t', '-v',
        'ON_ERROR_STOP=1', '-h', $pg->{dir}, '-p', $pg->{port}, '-U',
        'postgres', '-d', $db, '-c', $sql);
    croak "psql: $out" if $?;
    chomp $out;
    return $out;
}

# PostgreSQL's log of this file's cluster: its size now (a mark), and the
# plans auto_explain logged since a mark (each from its "duration: ...
# plan:" line to the next entry)
sub pg_log_mark { -s (pg_cluster()->{dir} . '/log') // 0 }

sub pg_plans_since {
    my ($from) = @_;
    open my $fh, '<', pg_cluster()->{dir} . '/log' or return ();
    seek $fh, $from, 0;
    my $log = do { local $/; <$fh> } // '';
    close $fh;
    return grep { /^\S[^\n]*LOG:\s+duration: [\d.]+ ms\s+plan:/ }
        split /\n(?=\S[^\n]*LOG:\s+duration:)/, $log;
}

# PostgreSQL logs the plan of every statement of this database's new
# sessions (auto_explain), with what each node did ("analyze") and read
# ("buffers") when asked; before start: the module's sessions load it
sub pg_auto_explain {
    my ($self, @what) = @_;
    my $db = $self->{db};
    $self->psql("ALTER DATABASE $db SET session_preload_libraries = "
        . "'auto_explain'");
    $self->psql("ALTER DATABASE $db SET auto_explain.log_min_duration = 0");
    $self->psql("ALTER DATABASE $db SET auto_explain.log_$_ = on")
        for @what;
}

# Waits until both connections of a worker have planned their statements
# again for $table (mr_store_pg_plans.c); true if they did
sub wait_planned_again {
    my ($self, $table) = @_;
    return wait_for(sub {
        my @l = $self->read_log
            =~ /\Q$table\E is \d+ kB, was \d+ kB .*planned again/g;
        @l >= 2 }, 20, 0.1);
}

# A new database of the cluster, with the schema
sub pg_database {
    my $db = sprintf 'mr_%d_%d', $$, ++$PG_DBS;
    my $pg = pg_cluster();
    pg_sql('postgres', "CREATE DATABASE $db");
    my $out = run_capture("$ROOT/tools/pg-migrate",
        "host=$pg->{dir} port=$pg->{port} user=postgres dbname=$db");
    BAIL_OUT("tools/pg-migrate failed: $out") if $?;
    return $db;
}

# SQL on this instance's database (PostgreSQL only)
sub psql {
    my ($self, $sql) = @_;
    croak 'psql: not a PostgreSQL store' unless $self->{db};
    return pg_sql($self->{db}, $sql);
}

# psql in a transaction of its own on this instance's database, begun
# with $sql and left open (its session named $name in pg_stat_activity):
# the rows $sql locked stay locked until psql_release.  Returns the pipe.
sub psql_hold {
    my ($self, $name, $sql) = @_;
    croak 'psql_hold: not a PostgreSQL store' unless $self->{db};
    my $pg = pg_cluster();
    open my $h, '|-', 'psql', '-X', '-q', '-o', '/dev/null', '-v',
        'ON_ERROR_STOP=1', '-h', $pg->{dir}, '-p', $pg->{port},
        '-U', 'postgres', '-d', $self->{db}
        or croak "psql: $!";
    $h->autoflush(1);
    print $h "SET application_name = '$name'; BEGIN; $sql;\n";
    ok(wait_for(sub {
        $self->psql("SELECT count(*) FROM pg_stat_activity "
            . "WHERE application_name = '$name' "
            . "AND state = 'idle in transaction'") == 1 }, 20, 0.02),
        "psql: $sql");
    return $h;
}

# More SQL in a psql_hold's transaction ($sql, if given), then COMMIT and
# psql quits (children forked since the hold share its pipe).
sub psql_release {
    my ($h, $sql) = @_;
    print $h ($sql // '') . "COMMIT;\n\\q\n";
    close $h;
}

# The entries of a table of the store (LMDB: its database, as mdb_stat
# counts them; PostgreSQL: the rows of its table); undef if unknown.
my %PG_TABLE = (idem => 'mr_idem', event => 'mr_events',
    exec => 'mr_executions', dlv => 'mr_deliveries', acct => 'mr_accounts');

sub store_entries {
    my ($self, $name) = @_;
    if ($self->{backend} eq 'postgres') {
        my $table = $PG_TABLE{$name} or croak "no table for $name";
        return $self->psql("SELECT count(*) FROM $table");
    }
    return undef unless -x '/usr/bin/mdb_stat';
    my $out = `/usr/bin/mdb_stat -s $name ${\ $self->store } 2>/dev/null`;
    return $out =~ /Entries: (\d+)/ ? $1 : undef;
}

# A secret of the store in hex: "dsecret" (the dispatch socket's, the
# node's own) or "cbkey" (the callback key); undef if unknown.
sub store_secret {
    my ($self, $name) = @_;
    if ($self->{backend} eq 'postgres') {
        if ($name eq 'dsecret') {
            open my $fh, '<', $self->store . '/dispatch.secret' or return;
            binmode $fh;
            local $/;
            my $raw = <$fh> // '';
            return length $raw == 32 ? unpack 'H*', $raw : undef;
        }
        my $v = $self->psql("SELECT encode(value, 'hex') FROM mr_meta "
            . "WHERE name = '$name'");
        return length $v ? $v : undef;
    }
    my $dump = `mdb_dump -s meta ${\ $self->store } 2>/dev/null`;
    return undef unless $? == 0 && $dump;
    # the bytevalue format: a key line, then its value, in hex
    my $key = unpack 'H*', $name;
    my ($v) = $dump =~ /^ $key\n ([0-9a-f]+)$/m;
    return $v;
}

# ---------------------------------------------------------------- error log

sub read_log {
    my ($self) = @_;
    open my $fh, '<', $self->error_log_path or return '';
    local $/;
    return <$fh> // '';
}

sub tail_log {
    my ($self, $n) = @_;
    my @l = split /\n/, $self->read_log;
    $n //= 20;
    @l = @l[-$n .. -1] if @l > $n;
    return join '', map { "  log: $_\n" } @l;
}

# Lines of the access log (with access_log => 1): "pid status request".
sub access_log_lines {
    my ($self) = @_;
    open my $fh, '<', "$self->{prefix}/logs/access.log" or return;
    chomp(my @l = <$fh>);
    return @l;
}

sub expect_log {
    my ($self, @re) = @_;
    push @{ $self->{expect_log} }, @re;
}

sub bad_log_lines {
    my ($self) = @_;
    my @bad;
    my $warned;
    for my $line (split /\n/, $self->read_log) {
        my $sig = $line =~ /worker process (\d+) exited on signal (\d+)/
            ? [$1, $2] : undef;
        next if $sig && $self->{killed}{ $sig->[0] }{ $sig->[1] };
        next unless $sig || $line =~ /\[(?:alert|crit|emerg)\]/
            || grep { $line =~ $_ } @BUG_LINES;
        if (grep { $line =~ $_ } @{ $self->{expect_log} }) {
            diag 'expect_log exempts a signal line: kill_workers exempts '
                . 'only the pids the test killed' if $sig && !$warned++;
            next;
        }
        push @bad, $line;
    }
    return @bad;
}

# One test: the error log is clean (see the top of this file); and one
# more: nginx stopped cleanly every time it was stopped.
sub check_log {
    my ($self) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @bad = $self->bad_log_lines;
    $self->{log_seen} = @bad;
    $self->{problems_seen} = $self->problems;
    ok(!@bad, 'error log has no alert/crit/emerg/signal lines, no module '
        . 'bug lines') or diag join "\n", @bad[0 .. ($#bad < 19 ? $#bad : 19)];
    my @p = $self->problems;
    ok(!@p, 'nginx stopped cleanly') or diag join "\n", @p;
    $self->check_sanitizer if $SANITIZE;
}

# The lines of sanitizer reports in a text, with their stack traces.
sub sanitizer_lines {
    my ($text) = @_;
    my (@r, $in);
    for my $l (split /\n/, $text) {
        if ($l =~ /: runtime error: |(?:ERROR|SUMMARY): \w+Sanitizer/) {
            $in = 1;
        } elsif (!$in || $l !~ /^\s+#\d+ /) {
            $in = 0;
            next;
        }
        push @r, $l;
    }
    return @r;
}

# Sanitizer reports of this instance: ASan's report files, and the report
# lines in the error log and in the output of nginx commands.
sub sanitizer_reports {
    my ($self) = @_;
    return () unless $SANITIZE;
    my @r;
    for my $f (sort glob "$self->{prefix}/sanitizer/asan.*") {
        open my $fh, '<', $f or next;
        local $/;
        my $c = <$fh> // '';
        push @r, "$f:\n$c" if length $c;
    }
    push @r, sanitizer_lines($self->read_log);
    push @r, @{ $self->{sanitizer_out} // [] };
    return @r;
}

sub check_sanitizer {
    my ($self) = @_;
    my @r = $self->sanitizer_reports;
    $self->{sanitizer_seen} = @r;
    ok(!@r, 'no sanitizer reports') or diag_some(@r);
}

sub diag_some {
    my (@l) = @_;
    diag join "\n", @l[0 .. ($#l < 19 ? $#l : 19)];
}

# Stops nginx, checks the error log and ends the test.
sub done {
    my ($self) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $self->stop;
    $self->check_log;
    done_testing();
}

END {
    my $rc = $?;
    for my $t (@LIVE) {
        next unless $t->{owner} == $$;
        $t->stop;
    }
    if ($PG && $PG->{owner} == $$) {
        eval { pg_ctl('stop', 'fast') };
        File::Path::remove_tree($PG->{dir}) unless $ENV{MR_KEEP};
        undef $PG;
    }
    # what a file's check_log (or done) did not see still fails it: the
    # whole log of a file that never checked it, the lines logged after
    # its check (a later restart, the stop above), and an nginx that did
    # not stop cleanly since
    for my $t (@ALL) {
        next unless $t->{owner} == $$ && $t->{started};
        my @bad = eval { $t->bad_log_lines };
        splice @bad, 0, $t->{log_seen} // 0;
        my @p = $t->problems;
        splice @p, 0, $t->{problems_seen} // 0;
        next unless @bad || @p;
        diag 'the error log of ' . $t->prefix . ', after what the test '
            . 'checked, has:' if @bad;
        diag_some(@bad) if @bad;
        diag_some(@p) if @p;
        $rc ||= 1;
    }
    for my $t (@ALL) {
        next unless $t->{owner} == $$;
        my @r = $t->sanitizer_reports;
        next unless @r > ($t->{sanitizer_seen} // 0);
        diag 'sanitizer reports in ' . $t->prefix . ':';
        diag_some(@r);
        $rc ||= 1;
    }
    if ($CORE) {
        my $failed = $rc || !Test::More->builder->is_passing;
        $_->core_report($failed) for grep { $_->{owner} == $$ } @ALL;
    }
    $? = $rc;
}

# ---------------------------------------------------------------- MR_CORE

# A core_pattern that pipes cores to a program (systemd-coredump, apport)
# leaves nothing in core/: said once, with what to do about it.
sub core_pattern_check {
    state $done;
    return if $done++;
    open my $fh, '<', '/proc/sys/kernel/core_pattern' or return;
    my $p = <$fh> // '';
    chomp $p;
    diag "MR_CORE: kernel.core_pattern is '$p': cores go to a program, not "
        . "to the prefix (as root: echo core.%e.%p "
        . '>/proc/sys/kernel/core_pattern)' if $p =~ /^\|/;
}

# The prefix is kept when the test file failed or a worker dumped core;
# each core's backtrace (gdb, when installed) goes to the test's output.
sub core_report {
    my ($self, $failed) = @_;
    my $p = $self->{prefix};
    my @cores = sort glob "$p/core/core*";
    unless ($failed || @cores) {
        File::Path::remove_tree($p);
        return;
    }
    diag "MR_CORE: kept $p" . (@cores ? " with @cores" : '');
    my $gdb = (grep { -x "$_/gdb" } split /:/, $ENV{PATH} // '')[0];
    for my $core (@cores) {
        last unless $gdb;
        my $bt = run_capture("$gdb/gdb", '-batch', '-nx', '-ex',
            'bt full 30', $NGINX, $core);
        diag "MR_CORE: $core:\n$bt";
    }
}

$SIG{PIPE} = 'IGNORE';
for my $sig (qw(INT TERM)) {
    $SIG{$sig} = sub { die "caught SIG$sig\n" };
}

# ---------------------------------------------------------------- polling

# Calls $cond until it returns true or $timeout seconds pass.
sub wait_for {
    my ($cond, $timeout, $step) = @_;
    my $deadline = time + ($timeout // 10);
    my $grow = !defined $step;
    $step //= 0.02;
    while (1) {
        my $v = $cond->();
        return $v if $v;
        return undef if time > $deadline;
        sleep $step;
        $step *= 1.5 if $grow && $step < 0.2;
    }
}

# ---------------------------------------------------------------- HTTP

sub json_encode { $JSON->encode($_[0]) }
sub json_decode { my $v = eval { $JSON->decode($_[0]) }; $v }

sub ua {
    my ($self) = @_;
    return $self->{ua} if $self->{ua} && $self->{ua_pid} == $$;
    $self->{ua_pid} = $$;
    return $self->{ua} = HTTP::Tiny->new(keep_alive => $self->{keep_alive},
        timeout => $self->{timeout}, agent => 'mr-test');
}

sub keep_alive {
    my ($self, $on) = @_;
    $self->{keep_alive} = $on;
    delete $self->{ua};
}

sub url {
    my ($self, $path, $port) = @_;
    return "http://127.0.0.1:" . ($port // $self->{port}) . $path;
}

# req(METHOD, PATH, {headers}, BODY) -> {status, headers, body, json}.
# A reference BODY is sent as JSON; a string as is. Header names in the
# answer are lowercase. Status 599 means a connection error.
sub req {
    my ($self, $method, $path, $headers, $body) = @_;
    my %h = %{ $headers // {} };
    my %opt = (headers => \%h);
    if (defined $body) {
        if (ref $body) {
            $body = json_encode($body);
            $h{'Content-Type'} //= 'application/json';
        }
        $opt{content} = $body;
    }
    my $r = $self->ua->request($method, $self->url($path), \%opt);
    return response($r->{status}, $r->{headers}, $r->{content});
}

sub response {
    my ($status, $headers, $body) = @_;
    my $res = { status => $status, headers => $headers, body => $body // '' };
    $res->{json} = json_decode($res->{body})
        if $res->{body} =~ /^\s*[\[{]/;
    return $res;
}

sub auth { return { Authorization => "Bearer $_[0]" } }

# Sends raw bytes on a new connection and reads the answer until EOF.
sub raw {
    my ($self, $bytes, $port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $port // $self->{port}, Proto => 'tcp',
        Timeout => $self->{timeout})
        or return response(599, {}, "connect: $!");
    binmode $s;
    $s->autoflush(1);
    print $s $bytes;
    my $in = '';
    my $deadline = time + $self->{timeout};
    while (time < $deadline) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        last unless select(my $rout = $rin, undef, undef, 1) >= 0;
        my $n = sysread($s, my $buf, 65536);
        last if defined $n && $n == 0;
        last if !defined $n && !$!{EINTR} && !$!{EAGAIN};
        $in .= $buf if $n;
    }
    close $s;
    return parse_http($in);
}

sub parse_http {
    my ($in) = @_;
    my @all = parse_http_all($in);
    return @all ? $all[0] : response(599, {}, $in);
}

# Splits a stream of HTTP answers (as read from one connection) into
# responses; the last one may be delimited by the end of the stream.
sub parse_http_all {
    my ($in) = @_;
    my @out;
    while (length $in) {
        last unless $in =~ s{^HTTP/1\.[01] (\d{3})[^\r\n]*\r\n}{};
        my $status = $1;
        my %h;
        while ($in =~ s/^([^\r\n]*)\r\n//) {
            my $line = $1;
            last if $line eq '';
            my ($k, $v) = $line =~ /^([^:]+):\s*(.*)$/ or next;
            $k = lc $k;
            $h{$k} = exists $h{$k}
                ? [ (ref $h{$k} ? @{ $h{$k} } : $h{$k}), $v ] : $v;
        }
        my $body = '';
        if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
            while ($in =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
                my $n = hex $1;
                if ($n == 0) {
                    $in =~ s/^\r\n//;
                    last;
                }
                $body .= substr($in, 0, $n, '');
                $in =~ s/^\r\n//;
            }
        } elsif (defined $h{'content-length'}) {
            $body = substr($in, 0, $h{'content-length'}, '');
        } elsif ($status !~ /^(?:1..|204|304)$/) {
            ($body, $in) = ($in, '');
        }
        push @out, response($status, \%h, $body);
    }
    return @out;
}

# Sends raw bytes (several requests, say) on one connection; returns every
# answer read until the server closes it.
sub raw_all {
    my ($self, @chunks) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $self->{port}, Proto => 'tcp',
        Timeout => $self->{timeout}) or return;
    binmode $s;
    $s->autoflush(1);
    for my $c (@chunks) {
        if (ref $c eq 'CODE') { $c->() } else { print $s $c }
    }
    my $in = '';
    my $deadline = time + $self->{timeout};
    while (time < $deadline) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        next unless select(my $rout = $rin, undef, undef, 0.5) > 0;
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $in .= $buf;
    }
    close $s;
    return parse_http_all($in);
}

# A raw request message (keep-alive unless $close).
sub http_message {
    my ($method, $path, $headers, $body, $close) = @_;
    my $msg = "$method $path HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    $msg .= "Connection: close\r\n" if $close;
    $msg .= "$_: $headers->{$_}\r\n" for sort keys %{ $headers // {} };
    $msg .= "Content-Length: " . length($body) . "\r\n" if defined $body;
    return "$msg\r\n" . ($body // '');
}

# A raw HTTP/1.1 request with the given body bytes (Connection: close).
sub raw_request {
    my ($self, $method, $path, $headers, $body) = @_;
    return $self->raw(http_message($method, $path, $headers, $body, 1));
}

# ---------------------------------------------------------------- checks

sub is_rfc3339 {
    my ($s) = @_;
    return defined $s && !ref $s
        && $s =~ /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z$/;
}

sub parse_rfc3339 {
    my ($s) = @_;
    my ($y, $mo, $d, $h, $mi, $sec, $frac) =
        $s =~ /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?Z$/
        or return;
    local $ENV{TZ} = 'UTC';
    POSIX::tzset();
    my $t = POSIX::mktime($sec, $mi, $h, $d, $mo - 1, $y - 1900);
    return $t + ($frac // 0);
}

# is_error($res, STATUS, CODE, NAME): the error envelope, checked in full.
# An undef CODE accepts any code.
sub is_error {
    my ($res, $status, $code, $name) = @_;
    my $tb = Test::More->builder;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @why;
    push @why, "status $res->{status}, want $status"
        if $res->{status} != $status;
    my $e = ref $res->{json} eq 'HASH' ? $res->{json}{error} : undef;
    if (ref $e ne 'HASH') {
        push @why, 'no error envelope';
    } else {
        push @why, "code " . ($e->{code} // 'undef') . ", want "
            . ($code // 'any') if defined $code
                ? ($e->{code} // '') ne $code : !length($e->{code} // '');
        push @why, 'message missing'
            unless defined $e->{message} && !ref $e->{message}
                && length $e->{message};
        push @why, 'retryable not a boolean'
            unless JSON::PP::is_bool($e->{retryable});
        my $rid = $e->{request_id} // '';
        push @why, "request_id '$rid' not req_<32 hex>"
            unless $rid =~ /^req_[0-9a-f]{32}$/;
        my $hid = $res->{headers}{'x-request-id'} // '';
        push @why, "X-Request-Id '$hid' differs from request_id '$rid'"
            if $hid ne $rid;
    }
    my $ok = $tb->ok(!@why, $name // "$status " . ($code // ''));
    $tb->diag(join("\n", @why) . "\nbody: " . substr($res->{body}, 0, 500))
        unless $ok;
    return $ok ? $e : undef;
}

# True if the error's details contain an entry for $field.
sub detail_for {
    my ($res, $field) = @_;
    my $d = eval { $res->{json}{error}{details} };
    return unless ref $d eq 'ARRAY';
    my ($hit) = grep { ref $_ eq 'HASH' && ($_->{field} // '') eq $field } @$d;
    return $hit;
}

# ---------------------------------------------------------------- keys

sub random_hex {
    my ($n) = @_;
    return join '', map { sprintf '%x', int rand 16 } 1 .. $n;
}

# make_key_string(hex => 64 hex chars, crc => 'good' | 'bad' | '8 hex').
sub make_key_string {
    my (%o) = @_;
    my $hex = $o{hex} // random_hex(64);
    my $crc = $o{crc} // 'good';
    my $good = sprintf '%08x', Compress::Zlib::crc32($hex);
    if ($crc eq 'good') {
        $crc = $good;
    } elsif ($crc eq 'bad') {
        $crc = sprintf '%08x', (hex($good) ^ 1);
    }
    return "sk_${hex}_$crc";
}

# ---------------------------------------------------------------- domain

sub admin {
    my ($self, $method, $path, $body) = @_;
    return $self->req($method, "/admin$path", {}, $body);
}

# A route's state as GET /admin/routes shows it ({} if it has none).
sub route_state {
    my ($self, $name) = @_;
    my $r = $self->admin(GET => '/routes')->{json};
    my ($p) = grep { $_->{name} eq $name } @{ $r->{data} // [] };
    return $p // {};
}

sub expect_status {
    my ($res, $want, $what) = @_;
    croak "$what: status $res->{status}, want $want: $res->{body}"
        unless $res->{status} == $want;
    return $res->{json};
}

sub admin_create_account {
    my ($self, %o) = @_;
    my %body;
    $body{credit} = $o{credit} if defined $o{credit};
    $body{name} = $o{name} if defined $o{name};
    my $r = $self->admin(POST => '/accounts', \%body);
    return expect_status($r, 201, 'create account');
}

# Returns (secret, key id) in list context, the secret otherwise.
sub admin_create_key {
    my ($self, $org, $perm, $name) = @_;
    my %body = (permission => $perm // 'full');
    $body{name} = $name if defined $name;
    my $r = $self->admin(POST => "/accounts/$org/keys", \%body);
    my $k = expect_status($r, 201, 'create key');
    return wantarray ? ($k->{key}, $k->{id}, $k) : $k->{key};
}

# An account with one key: {org, key, key_id, account}.
sub new_account {
    my ($self, %o) = @_;
    my $acct = $self->admin_create_account(credit => $o{credit} // '10.00',
        name => $o{name});
    my ($key, $id) = $self->admin_create_key($acct->{id},
        $o{permission} // 'full');
    return { org => $acct->{id}, key => $key, key_id => $id,
        account => $acct };
}

# Creates $n executions of $model with $key one at a time, each waited
# for until nothing is held on the account (it ended); how many did.
sub one_by_one {
    my ($self, $key, $model, $n) = @_;
    my $ok = 0;
    for (1 .. $n) {
        $ok++ if $self->create_exec($key, $self->exec_body(model => $model))
            ->{status} == 202
            && wait_for(sub { micros($self->balance($key)->{held}) == 0 },
                20, 0.02);
    }
    return $ok;
}

sub create_exec {
    my ($self, $key, $body, $headers) = @_;
    my %h = (%{ auth($key) }, %{ $headers // {} });
    return $self->req(POST => '/v1/executions', \%h, $body);
}

# A valid demo-chat body with a fresh idempotency key, plus %over.
sub exec_body {
    my ($self, %over) = @_;
    return { model => 'demo-chat', input => { prompt => 'hello' },
        idempotency_key => $self->fresh_key, %over };
}

sub fresh_key {
    my ($self) = @_;
    return sprintf 'k-%d-%d-%s', $$, ++$self->{seq}, random_hex(8);
}

sub get_exec {
    my ($self, $key, $id) = @_;
    return $self->req(GET => "/v1/executions/$id", auth($key));
}

# The id of an execution of $model created with $key (202), or undef.
sub create_id {
    my ($self, $key, $model, %over) = @_;
    my $r = $self->create_exec($key,
        $self->exec_body(model => $model, %over));
    return $r->{status} == 202 ? $r->{json}{id} : undef;
}

# An execution's status as $key reads it ('' if it cannot).
sub status_of {
    my ($self, $key, $id) = @_;
    return $self->get_exec($key, $id)->{json}{status} // '';
}

# The executions $ids (read with $key) by id, once every one is terminal,
# or as they were last seen when $timeout seconds (60) passed.
my %TERMINAL = map { $_ => 1 } qw(COMPLETED FAILED CANCELLED EXPIRED);

sub wait_terminal {
    my ($self, $key, $ids, $timeout) = @_;
    my %e;
    wait_for(sub {
        for my $id (@$ids) {
            next if $e{$id} && $TERMINAL{ $e{$id}{status} // '' };
            my $r = $self->get_exec($key, $id);
            return 0 unless $r->{status} == 200 && ref $r->{json} eq 'HASH';
            $e{$id} = $r->{json};
            return 0 unless $TERMINAL{ $e{$id}{status} // '' };
        }
        1;
    }, $timeout // 60, 0.2);
    return \%e;
}

sub balance {
    my ($self, $key) = @_;
    my $r = $self->req(GET => '/v1/balance', auth($key));
    return expect_status($r, 200, 'balance');
}

sub verify {
    my ($self, $org) = @_;
    my $r = $self->admin(GET => "/accounts/$org/verify");
    return expect_status($r, 200, 'verify');
}

# Every execution of an account, newest first, following pagination.
sub list_all {
    my ($self, $key, $query) = @_;
    my @all;
    my $after;
    for (1 .. 10_000) {
        my $q = 'limit=100' . ($query ? "&$query" : '')
            . ($after ? "&starting_after=$after" : '');
        my $r = $self->req(GET => "/v1/executions?$q", auth($key));
        my $j = expect_status($r, 200, 'list');
        push @all, @{ $j->{data} };
        last unless $j->{has_more};
        # a filtered page may stop early: it says where to go on
        $after = $j->{next_starting_after} // $j->{data}[-1]{id} // last;
    }
    return @all;
}

# ---------------------------------------------------------------- money

# Decimal string -> integer micro-dollars (exact).
sub micros {
    my ($s) = @_;
    croak "not a money string: " . ($s // 'undef')
        unless defined $s && $s =~ /^(-?)(\d+)(?:\.(\d{1,6}))?$/;
    my $v = $2 * 1_000_000 + substr(($3 // '') . '000000', 0, 6);
    return $1 ? -$v : $v;
}

# Same amount, whatever the number of decimals.
sub money_is {
    my ($got, $want, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok = defined $got && !ref $got
        && $got =~ /^-?\d+\.\d{2,6}$/ && micros($got) == micros($want);
    ok($ok, $name) or diag "got " . (defined $got ? "'$got'" : 'undef')
        . ", want $want";
    return $ok;
}

# ---------------------------------------------------------------- parallel

# Forks $n children; each runs $code->($i) and returns a JSON-able value.
# Returns the values in child order; a child that died gives
# {died => message}. Children that outlive the deadline are killed.
# Options: timeout (seconds), during => sub run by the parent while the
# children work. The children start together once all are forked.
sub parallel {
    my ($self, $n, $code, %o) = @_;
    my $timeout = $o{timeout} // 120;
    my $dir = tempdir('mr-par-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my %kid;
    for my $i (0 .. $n - 1) {
        my $pid = fork // croak "fork: $!";
        if (!$pid) {
            $SIG{$_} = 'DEFAULT' for qw(INT TERM);
            delete $self->{ua};
            srand($$ ^ time);
            wait_for(sub { -e "$dir/go" }, $timeout, 0.005);
            my $out = eval { { ok => $code->($i) } }
                // { died => "$@" };
            if (open my $fh, '>', "$dir/$i.tmp") {
                print $fh json_encode($out);
                close $fh;
                rename "$dir/$i.tmp", "$dir/$i.json";
            }
            POSIX::_exit(0);
        }
        $kid{$pid} = $i;
    }
    open my $go, '>', "$dir/go" or croak "$dir/go: $!";
    close $go;
    my $deadline = time + $timeout;
    if ($o{during}) {
        eval { $o{during}->(); 1 } or do {
            my $err = $@;
            kill 'KILL', keys %kid;
            waitpid($_, 0) for keys %kid;
            die $err;
        };
    }
    while (%kid) {
        my $pid = waitpid(-1, WNOHANG);
        if ($pid > 0) {
            $EXIT{$pid} = $? unless exists $kid{$pid};    # an nginx master
            delete $kid{$pid};
            next;
        }
        if (time > $deadline) {
            diag "parallel: killing " . scalar(keys %kid) . " late children";
            kill 'KILL', keys %kid;
            waitpid($_, 0) for keys %kid;
            last;
        }
        sleep 0.01;
    }
    my @res;
    for my $i (0 .. $n - 1) {
        my $j;
        if (open my $fh, '<', "$dir/$i.json") {
            local $/;
            $j = json_decode(<$fh>);
        }
        $j //= { died => 'no result (killed or crashed)' };
        push @res, exists $j->{ok} ? $j->{ok} : { died => $j->{died} };
    }
    return @res;
}

# Starts one background child running $code->() (e.g. a poller) until
# stop_background is called. The child's return value is collected.
sub background {
    my ($self, $code) = @_;
    my ($fh, $file) = tempfile('mr-bg-XXXXXX', TMPDIR => 1, UNLINK => 1);
    close $fh;
    my $stop = "$file.stop";
    my $pid = fork // croak "fork: $!";
    if (!$pid) {
        $SIG{$_} = 'DEFAULT' for qw(INT TERM);
        delete $self->{ua};
        my $out = eval { { ok => $code->(sub { -e $stop }) } }
            // { died => "$@" };
        if (open my $o, '>', "$file.tmp") {
            print $o json_encode($out);
            close $o;
            rename "$file.tmp", $file;
        }
        POSIX::_exit(0);
    }
    return { pid => $pid, file => $file, stop => $stop };
}

sub stop_background {
    my ($self, $bg) = @_;
    open my $s, '>', $bg->{stop};
    close $s;
    my $done = wait_for(sub { waitpid($bg->{pid}, WNOHANG) > 0 }, 30);
    unless ($done) {
        kill 'KILL', $bg->{pid};
        waitpid($bg->{pid}, 0);
    }
    unlink $bg->{stop};
    open my $fh, '<', $bg->{file} or return { died => 'no result' };
    local $/;
    my $j = json_decode(<$fh> // '') // { died => 'bad result' };
    return exists $j->{ok} ? $j->{ok} : { died => $j->{died} };
}

1;
