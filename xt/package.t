# The Debian package on this machine: dpkg -i, Debian's own nginx loading
# the module from where the package put it (through the modules-enabled
# link, with the package's example configuration), a create -> poll ->
# COMPLETED round trip against the simulated provider, the Lua library
# from its installed path, then dpkg --remove, dpkg --purge, and nothing
# of the package left behind. The system's nginx service is never started
# or reloaded, and its configuration still passes nginx -t.
#
# Run by `./build.sh test-package` (which builds the .deb and sets
# MR_DEB), and by .ci/run. It needs root and changes the machine's
# package database, so it is not in t/; it never skips: a missing
# prerequisite is a failure.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(time sleep);
use MR::Test qw(wait_for json_encode json_decode random_hex);

my $PKG = 'libnginx-mod-http-modelroute';
my $NGINX = '/usr/sbin/nginx';
my $ENABLED = '/etc/nginx/modules-enabled/50-mod-http-modelroute.conf';
my $AVAILABLE = '/usr/share/nginx/modules-available/mod-http-modelroute.conf';
my $SO = '/usr/lib/nginx/modules/ngx_http_modelroute_module.so';
my $LUA = '/usr/share/lua/5.1/resty/modelroute.lua';
my $DOC = "/usr/share/doc/$PKG";

# ---------------------------------------------------------------- helpers

sub run {
    my (@cmd) = @_;
    my $out = MR::Test::run_capture(@cmd);
    return ($? >> 8, $out);
}

sub pkg_status {
    my ($rc, $out) = run('dpkg-query', '-W', '-f=${Status}', $PKG);
    return $rc == 0 ? $out : 'not-installed';
}

# nginx masters that run the system's configuration (no -c: tests here
# and elsewhere on the machine run their own)
sub system_masters {
    my @m;
    opendir my $dh, '/proc' or return;
    for my $pid (grep { /^\d+$/ } readdir $dh) {
        my $c = MR::Test::cmdline($pid);
        push @m, $pid if $c =~ /^nginx: master process/ && $c !~ / -c /;
    }
    return sort { $a <=> $b } @m;
}

sub system_nginx_running {
    open my $fh, '<', '/run/nginx.pid' or return 0;
    my $pid = <$fh> // '';
    return $pid =~ /^(\d+)/ && MR::Test::alive($1);
}

# nginx -t of the system's configuration: 0 if it passes. nginx -t
# creates an empty pid file to see that it can: removed again if there
# was none.
sub system_nginx_t {
    my $had_pid = -e '/run/nginx.pid';
    my ($rc, $out) = run($NGINX, '-t', '-q');
    unlink '/run/nginx.pid' if !$had_pid && -z '/run/nginx.pid';
    return ($rc, $out);
}

# ---------------------------------------------------------------- before

my $deb = $ENV{MR_DEB} // '';

BAIL_OUT('run as root: the test installs and purges a package')
    unless $> == 0;
BAIL_OUT('not a Debian system (no /etc/debian_version)')
    unless -f '/etc/debian_version';
BAIL_OUT("MR_DEB is not a .deb: '$deb' (run ./build.sh test-package)")
    unless $deb =~ /\.deb$/ && -f $deb;
BAIL_OUT("$PKG is installed on this machine: the test would purge it; "
    . "dpkg --purge $PKG first") if pkg_status() !~ /not-installed$/;
BAIL_OUT('the system nginx service is running (/run/nginx.pid): the '
    . "package's trigger would reload it; stop it first")
    if system_nginx_running();
BAIL_OUT("Debian's nginx is not installed ($NGINX)") unless -x $NGINX;

MR::Test::become_subreaper();

my @masters_before = system_masters();
my $had_pid = -e '/run/nginx.pid';
my ($sys_t_rc, $sys_t_out) = system_nginx_t();
note "system nginx -t before: rc $sys_t_rc $sys_t_out";

# the package's files, from the .deb itself
my ($rc, $list) = run('sh', '-c',
    "dpkg-deb --fsys-tarfile '$deb' | tar -t");
is($rc, 0, 'dpkg-deb lists the package');
my @paths = map { s{^\./}{/}r =~ s{/$}{}r } grep { $_ ne './' }
    split /\n/, $list;
my %existed = map { $_ => 1 } grep { -e $_ || -l $_ } @paths;
my @pre = grep { $existed{$_} && !-d $_ } @paths;
ok(!@pre, 'none of the package\'s files exist before it is installed')
    or diag "@pre";
ok(!-e $ENABLED && !-l $ENABLED && !-l "$ENABLED.removed",
   'no modules-enabled link before');

for my $want ($SO, $AVAILABLE, $LUA, "$DOC/copyright", "$DOC/changelog.gz",
    "$DOC/examples/modelroute.conf")
{
    ok((grep { $_ eq $want } @paths), "the package has $want");
}
ok((grep { m{^\Q$DOC\E/README\.md(\.gz)?$} } @paths), 'and the README');
ok((grep { m{^\Q$DOC\E/openapi\.yaml(\.gz)?$} } @paths),
   'and the OpenAPI document');

my ($frc, $fields) = run('dpkg-deb', '-f', $deb, 'Depends');
like($fields, qr/(^|, )nginx-abi-[\d.]+-\d+(,|$)/m,
     'Depends on the nginx ABI');
like($fields, qr/liblmdb0/, 'and on the libraries (shlibs)');

# ---------------------------------------------------------------- install

our $installed = 1;
($rc, my $out) = run('dpkg', '-i', $deb);
is($rc, 0, 'dpkg -i installs the package') or diag $out;
like(pkg_status(), qr/^install ok installed/, 'dpkg says it is installed');

ok(-f $SO, "the module is in $SO");
is(readlink($ENABLED), $AVAILABLE,
   'modules-enabled links to modules-available, as dh_nginx does');
open my $cfh, '<', $AVAILABLE;
my $conf_line = do { local $/; <$cfh> } // '';
like($conf_line, qr{^load_module modules/ngx_http_modelroute_module\.so;$}m,
     'the module conf loads it from nginx\'s modules directory');
ok(-f $LUA, "the Lua library is in $LUA");

is_deeply([system_masters()], \@masters_before,
          'installing started no nginx');
ok(!-e '/run/nginx.pid', 'the system nginx service was not started')
    unless $had_pid;

# the system's configuration now loads the module (modules-enabled/*)
# without any modelroute directive: it still passes if it did before
my ($t_rc, $t_out) = system_nginx_t();
is($t_rc, $sys_t_rc, 'the system nginx.conf passes nginx -t as before')
    or diag $t_out;

# ---------------------------------------------------------------- use

my $tmp = tempdir('mr-pkg-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{MR_KEEP});
chmod 0755, $tmp;
mkdir "$tmp/$_" for qw(logs tmp);
chmod 0755, "$tmp/tmp";
my $port = MR::Test::free_port();
my $lua_port = MR::Test::free_port();

# the example, as installed, with a store and a port of the test's own
my $ex = "$DOC/examples/modelroute.conf";
open my $efh, '<', $ex or BAIL_OUT("$ex: $!");
my $example = do { local $/; <$efh> };
close $efh;
my $subs = 0;
$subs += $example =~ s{/var/lib/modelroute\b}{$tmp/store}g;
$subs += $example =~ s{127\.0\.0\.1:8080}{127.0.0.1:$port}g;
ok($subs >= 2, 'the example names its store and its address');
open my $wfh, '>', "$tmp/modelroute.conf" or die;
print $wfh $example;
close $wfh;

# relative paths resolve against Debian's prefix (no -p): the modules
# directory is the real one
my @lua_mods = grep { -e $_ } map { "/etc/nginx/modules-enabled/$_" }
    qw(10-mod-http-ndk.conf 50-mod-http-lua.conf);
ok(@lua_mods == 2, 'the Lua module is enabled too (build.sh installs it)')
    or diag 'apt-get install libnginx-mod-http-lua lua-resty-core lua-cjson';
my $lua_includes = join '', map { "include $_;\n" } @lua_mods;

open my $nfh, '>', "$tmp/nginx.conf" or die;
print $nfh <<EOF;
$lua_includes
include $ENABLED;
daemon on;
master_process on;
worker_processes 2;
pid $tmp/logs/nginx.pid;
lock_file $tmp/logs/nginx.lock;
error_log $tmp/logs/error.log notice;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $tmp/tmp/body;
    proxy_temp_path $tmp/tmp/proxy;
    fastcgi_temp_path $tmp/tmp/fastcgi;
    uwsgi_temp_path $tmp/tmp/uwsgi;
    scgi_temp_path $tmp/tmp/scgi;

    include $tmp/modelroute.conf;

    # the Lua library from its installed path: no lua_package_path
    server {
        listen 127.0.0.1:$lua_port;
        location /_modelroute/ { internal; modelroute_lua; }
        location = /lua/balance {
            content_by_lua_block {
                local mr = require "resty.modelroute"
                local cjson = require "cjson"
                local res, err = mr.balance(ngx.var.arg_account)
                ngx.say(cjson.encode({ res = res or cjson.null,
                                       err = err or cjson.null }))
            }
        }
    }
}
EOF
close $nfh;

my @ngx = ($NGINX, '-e', "$tmp/logs/error.log", '-c', "$tmp/nginx.conf");
($rc, $out) = run(@ngx, '-t');
is($rc, 0, "Debian's nginx accepts the configuration") or diag $out;
($rc, $out) = run(@ngx);
is($rc, 0, "Debian's nginx starts with the installed module") or diag $out;

our $master = wait_for(sub {
    open my $fh, '<', "$tmp/logs/nginx.pid" or return;
    my $p = <$fh> // '';
    return $p =~ /^(\d+)/ ? $1 : undef;
}, 10);
ok($master, 'it runs') or diag tail_log();
# (a connection that never sends a request would hold a worker at its
# graceful stop for client_header_timeout: close it)
ok(wait_for(sub {
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port",
        Timeout => 1) or return 0;
    close $s;
    return 1;
}, 10), 'it listens');

my $ua = HTTP::Tiny->new(timeout => 10, agent => 'mr-package-test');

sub call {
    my ($method, $path, $body, $headers) = @_;
    my %h = %{ $headers // {} };
    my %opt = (headers => \%h);
    if (defined $body) {
        $opt{content} = json_encode($body);
        $h{'Content-Type'} = 'application/json';
    }
    my $r = $ua->request($method, "http://127.0.0.1:$port$path", \%opt);
    return { status => $r->{status}, json => json_decode($r->{content}),
        body => $r->{content} };
}

my $acct = call(POST => '/admin/accounts', { name => 'pkg', credit => '5.00' });
is($acct->{status}, 201, 'admin: account created') or diag $acct->{body};
my $org = $acct->{json}{id} // '';
my $k = call(POST => "/admin/accounts/$org/keys", { permission => 'full' });
is($k->{status}, 201, 'admin: key created') or diag $k->{body};
my %auth = (Authorization => 'Bearer ' . ($k->{json}{key} // ''));

my $c = call(POST => '/v1/executions', { model => 'demo-chat',
    input => { prompt => 'hello from the package test' },
    idempotency_key => 'pkg-' . random_hex(16) }, \%auth);
is($c->{status}, 202, 'POST /v1/executions: 202') or diag $c->{body};
my $id = $c->{json}{id} // '';
like($id, qr/^exec_[0-9a-f]{44}$/, 'an execution id');

my $last;
my $done = wait_for(sub {
    $last = call(GET => "/v1/executions/$id", undef, \%auth);
    return ($last->{json}{status} // '') =~ /^(COMPLETED|FAILED|EXPIRED)$/;
}, 30);
is($last->{json}{status}, 'COMPLETED',
   'polled until COMPLETED by the simulated provider')
    or diag $last->{body};
ok(length($last->{json}{result}{text} // ''), 'with a result');
is($last->{json}{cost}, '0.002', 'charged the model\'s price');

my $v = call(GET => "/admin/accounts/$org/verify");
ok($v->{json}{ok}, 'the ledger checks out') or diag $v->{body};

my $lb = $ua->get("http://127.0.0.1:$lua_port/lua/balance?account=$org");
my $lj = json_decode($lb->{content}) // {};
is($lj->{res}{balance}, '4.998', 'resty.modelroute from /usr/share/lua/5.1')
    or diag $lb->{content};

# stop
if ($master) {
    kill 'QUIT', $master;
    ok(wait_for(sub { !MR::Test::alive($master) }, 20), 'nginx stops')
        or diag tail_log();
}

END {
    # a test that died half-way: no nginx left behind
    local $?;
    if ($master && MR::Test::alive($master)) {
        kill 'TERM', $master;
        wait_for(sub { !MR::Test::alive($master) }, 10);
    }
    # nor the package
    if ($installed && pkg_status() !~ /not-installed$/) {
        diag "purging $PKG";
        run('dpkg', '--purge', $PKG);
    }
}

sub tail_log {
    open my $fh, '<', "$tmp/logs/error.log" or return '';
    my @l = <$fh>;
    return join '', @l > 30 ? @l[-30 .. -1] : @l;
}

my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ }
    split /\n/, do { open my $fh, '<', "$tmp/logs/error.log"; local $/;
    <$fh> // '' };
ok(!@bad, 'error log has no alert/crit/emerg/signal lines')
    or diag join "\n", @bad;

# ---------------------------------------------------------------- remove

($rc, $out) = run('dpkg', '--remove', $PKG);
is($rc, 0, 'dpkg --remove') or diag $out;
ok(!-e $SO, 'the module is gone');
ok(!-e $ENABLED && !-l $ENABLED, 'the modules-enabled link is gone');
ok(-l "$ENABLED.removed",
   'kept as .removed until purge (the admin\'s choice survives a '
   . 'reinstall), as Debian\'s module packages do');

($rc, $out) = run('dpkg', '--purge', $PKG);
is($rc, 0, 'dpkg --purge') or diag $out;
like(pkg_status(), qr/not-installed$/, 'dpkg knows nothing of it')
    or diag pkg_status();

my @left = grep { (-e $_ || -l $_) && !$existed{$_} }
    @paths, $ENABLED, "$ENABLED.removed";
ok(!@left, 'nothing of the package is left behind') or diag "@left";
my @info = glob("/var/lib/dpkg/info/$PKG.*");
ok(!@info, 'no maintainer scripts or lists left') or diag "@info";

is_deeply([system_masters()], \@masters_before,
          'no nginx left running, none started');
ok(!-e '/run/nginx.pid', 'the system nginx service was never started')
    unless $had_pid;
($t_rc, $t_out) = system_nginx_t();
is($t_rc, $sys_t_rc, 'the system nginx.conf passes nginx -t as before')
    or diag $t_out;

done_testing();
