# The module in a configuration shaped like a production nginx, not a lab
# (issue 9, "the test that would have found them"): proxy_cache_path and a
# cached location (so a cache manager and a cache loader run), an ssl +
# http2 listener with a certificate the test makes, gzip, limit_req, map,
# auth_request in front of a location, several servers, the Lua module
# loaded and used, worker_processes auto and a user. Under a create-and-
# poll load (executions dispatched to the built-in simulator, so they
# complete) it goes through a reload (HUP), a binary upgrade (USR2, then
# WINCH and QUIT to the old master), a log reopen (USR1) and a graceful
# quit; then every acknowledged execution reaches a terminal status, the
# ledger verifies, and the error log has no [alert], [crit], [emerg] or
# signal line.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use HTTP::Tiny;
use POSIX ();
use Time::HiRes qw(time);
use MR::Test qw(:all);
use MR::Lifecycle qw(:all);

my $mods = '/usr/lib/nginx/modules';
for my $so ("$mods/ndk_http_module.so", "$mods/ngx_http_lua_module.so") {
    plan skip_all => "lua-nginx-module is not installed ($so missing)"
        unless -f $so;
}
plan skip_all => 'needs root (a user directive)' if $>;
plan skip_all => 'openssl is needed' unless -x '/usr/bin/openssl';
plan skip_all => 'curl is needed' unless -x '/usr/bin/curl';
plan skip_all => 'IO::Socket::SSL is needed'
    unless eval { require IO::Socket::SSL; 1 };

# what "worker_processes auto" makes: sysconf(_SC_NPROCESSORS_ONLN)
my ($ncpu) = MR::Test::run_capture('getconf', '_NPROCESSORS_ONLN') =~ /(\d+)/;
$ncpu ||= 1;
my $lua_lib = "$MR::Test::ROOT/lua-compat/lib";

my $t = MR::Test::Production->new(workers => $ncpu);
my $p = $t->prefix;

my $ssl = MR::Test::run_capture('openssl', 'req', '-x509', '-newkey',
    'rsa:2048', '-nodes', '-keyout', "$p/conf/key.pem",
    '-out', "$p/conf/cert.pem", '-days', '2', '-subj', '/CN=localhost');
BAIL_OUT("openssl req failed: $ssl") if $?;

my $http = <<"EOF";
lua_package_path "$lua_lib/?.lua;;";

gzip on;
gzip_types application/json;
gzip_min_length 20;

limit_req_zone \$binary_remote_addr zone=api:1m rate=5000r/s;
map \$http_x_tenant \$tenant {
    default         anonymous;
    ~^(?<t>[a-z]+)\$ \$t;
}
proxy_cache_path $p/cache levels=1:2 keys_zone=static:1m max_size=16m;

modelroute_store $p/store;
modelroute_model demo-chat per_request=0.04 timeout=5s;   # no route: EXPIRED
modelroute_route sim /providers/sim protocol=openai_chat;
modelroute_model sim-chat per_request=0.01 routes=sim timeout=2m;

upstream origin { server 127.0.0.1:%%PORT3%%; keepalive 8; }

# the origin of the cached and the protected locations
server {
    listen 127.0.0.1:%%PORT3%%;
    location / {
        add_header Cache-Control "max-age=60";
        return 200 "origin \$uri \$msec\\n";
    }
    location = /check {
        if (\$http_x_token = "letmein") { return 204; }
        return 401;
    }
}

# plain HTTP (the test's client)
server {
    listen 127.0.0.1:%%PORT%%;
    large_client_header_buffers 4 32k;
    location /v1/ {
        limit_req zone=api burst=5000 nodelay;
        modelroute_api;
        client_max_body_size 64k;
    }
    location /admin/ { allow 127.0.0.1; deny all; modelroute_admin; }
    location /_modelroute/ { internal; modelroute_lua; }
    location = /lua/balance {
        content_by_lua_block {
            local mr = require "resty.modelroute"
            local b, err = mr.balance(ngx.var.arg_account)
            ngx.say(b and b.balance or err, " ", ngx.var.tenant)
        }
    }
    location /cached/ {
        proxy_pass http://origin;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_cache static;
        proxy_cache_valid 200 1m;
        add_header X-Cache-Status \$upstream_cache_status;
    }
    location /private/ {
        auth_request /_check;
        proxy_pass http://origin;
    }
    location = /_check {
        internal;
        proxy_pass http://origin/check;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Token \$http_x_token;
    }
}

# TLS and HTTP/2
server {
    listen 127.0.0.1:%%PORT2%% ssl http2;
    server_name localhost;
    ssl_certificate $p/conf/cert.pem;
    ssl_certificate_key $p/conf/key.pem;
    location /v1/ {
        limit_req zone=api burst=5000 nodelay;
        modelroute_api;
    }
    location /cached/ {
        proxy_pass http://origin;
        proxy_cache static;
        proxy_cache_valid 200 1m;
    }
}

server {
    modelroute_dispatch;
    access_log off;
    location /providers/sim {
        internal;
        modelroute_simulator latency=30ms;
    }
}
EOF
$t->write_config(http => $http);
$t->start;

ok(wait_for(sub {
    role_pids($t->{master}, 'cache manager process')
        && role_pids($t->{master}, 'cache loader process')
}, 10), 'a cache manager and a cache loader run');
is(scalar($t->worker_pids), $ncpu, "worker_processes auto: $ncpu workers");
my ($nobody) = (getpwnam('nobody'))[2];
is((stat "/proc/" . ($t->worker_pids)[0])[4], $nobody,
    'the workers run as the configured user');

my $acc = $t->new_account(credit => '1000.00', name => 'prod');
my $key = $acc->{key};
my $A = auth($key);

# ---- the rest of the configuration works
sub features {
    my ($when) = @_;
    # (the first answer reaches the client just before its worker puts it
    # in the cache: a second request that another worker takes at once
    # may miss, under load)
    my $c1 = $t->req(GET => '/cached/x');
    is($c1->{status}, 200, "$when: proxy_cache's origin answers");
    ok(wait_for(sub {
        ($t->req(GET => '/cached/x')->{headers}{'x-cache-status'} // '')
            eq 'HIT';
    }, 10, 0.1), "$when: proxy_cache hits");
    is($t->req(GET => '/private/y')->{status}, 401,
        "$when: auth_request refuses");
    is($t->req(GET => '/private/y', { 'X-Token' => 'letmein' })->{status},
        200, "$when: auth_request lets through");
    my $lua = $t->req(GET => "/lua/balance?account=$acc->{org}",
        { 'X-Tenant' => 'acme' });
    like($lua->{body}, qr/^\d+\.\d+ acme$/,
        "$when: Lua reads the store; map sets the tenant");
    my $gz = $t->raw_request(GET => '/v1/models',
        { %$A, 'Accept-Encoding' => 'gzip' });
    is($gz->{headers}{'content-encoding'}, 'gzip', "$when: gzip");
    my $out = MR::Test::run_capture('curl', '-sk', '--http2',
        '-o', '/dev/null', '-w', '%{http_code} %{http_version}',
        '-H', "Authorization: Bearer $key",
        "https://127.0.0.1:$t->{port2}/v1/balance");
    is($out, '200 2', "$when: https with HTTP/2");
}

features('at the start');

# ---- the load: create and poll, over HTTP and HTTPS
sub client {
    my ($scheme, $stop) = @_;
    my $ua = HTTP::Tiny->new(timeout => 30, verify_SSL => 0,
        keep_alive => 0, agent => 'mr-prod');
    my $port = $scheme eq 'https' ? $t->{port2} : $t->{port};
    my (@acked, @refused);
    my $n = 0;
    while (!$stop->()) {
        my $body = json_encode({ model => ($n % 4 ? 'sim-chat' : 'demo-chat'),
            input => { prompt => "p$n" },
            idempotency_key => "$scheme-$$-" . $n++ });
        my $r = $ua->request(POST => "$scheme://127.0.0.1:$port/v1/executions",
            { headers => { %$A, 'Content-Type' => 'application/json' },
              content => $body });
        my $j = json_decode($r->{content} // '');
        if ($r->{status} == 202 && $j && $j->{id}) {
            push @acked, $j->{id};
        } else {
            push @refused, [time, $r->{status}, substr($r->{content}, 0, 200)];
            sleep 0.05 if $r->{status} == 599;    # nginx is gone
        }
        next unless @acked;
        my $g = $ua->request(GET => "$scheme://127.0.0.1:$port/v1/executions/"
            . $acked[rand @acked], { headers => $A });
        push @refused, [time, "GET $g->{status}", substr($g->{content}, 0, 200)]
            unless $g->{status} == 200;
    }
    return { acked => \@acked, refused => \@refused };
}

my @bg = map { my $s = $_; $t->background(sub { client($s, @_) }) }
    qw(http http https);

sub completed_since {
    my ($since, $n) = @_;
    return wait_for(sub {
        my $r = $t->req(GET => '/v1/executions?status=COMPLETED&limit=100',
            $A);
        my @new = grep { (parse_rfc3339($_->{completed_at} // '') // 0)
            > $since } @{ $r->{json}{data} // [] };
        @new >= $n;
    }, 60);
}

my $t0 = time;
ok(completed_since($t0 - 1, 10), 'executions complete under the load');

# ---- reload
{
    my $since = time;
    ok(eval { $t->reload; 1 }, 'reload (HUP)') or diag $@;
    ok(completed_since($since, 10), 'reload: executions complete after it');
    features('after the reload');
}

# ---- binary upgrade: USR2, WINCH, QUIT
{
    my $since = time;
    my $old = $t->{master};
    my @old_workers = $t->worker_pids;
    kill 'USR2', $old or die "USR2: $!";
    my $new;
    ok(wait_for(sub {
        -e "$p/logs/nginx.pid.oldbin" and $new = $t->master_pid
            and $new != $old
            and role_pids($new, 'worker process') == $ncpu;
    }, 20), 'binary upgrade: a new master and its workers run')
        or diag $t->tail_log;
    kill 'WINCH', $old or die "WINCH: $!";
    ok(wait_for(sub { !grep { MR::Test::alive($_) } @old_workers }, 30),
        'binary upgrade: the old workers finished (WINCH)');
    kill 'QUIT', $old or die "QUIT: $!";
    ok(wait_for(sub { !MR::Test::alive($old) }, 20),
        'binary upgrade: the old master quit');
    $t->{master} = $new;
    ok(completed_since($since, 10),
        'binary upgrade: executions complete after it');
    features('after the binary upgrade');
}

# ---- log reopen
{
    rename "$p/logs/access.log", "$p/logs/access.log.1" or die $!;
    my $off = length $t->read_log;
    kill 'USR1', $t->{master} or die "USR1: $!";
    ok(wait_for(sub { substr($t->read_log, $off) =~ /reopening logs/ }, 10),
        'USR1: the logs are reopened');
    $t->req(GET => '/cached/after-reopen');
    ok(wait_for(sub { -s "$p/logs/access.log" }, 10),
        '... the access log is written again');
    is((stat "$p/logs/access.log")[4], $nobody, '... it belongs to the user');
    ok(completed_since(time, 5), 'USR1: executions complete after it');
}

# ---- graceful quit with the load on, then a start to finish the rest
my $quit_at = time;
$t->stop;
my @res = map { $t->stop_background($_) } @bg;
my (@acked, @early);
for my $r (@res) {
    ok(!$r->{died}, 'a client ran to its end') or diag $r->{died};
    push @acked, @{ $r->{acked} // [] };
    push @early, grep { $_->[0] < $quit_at } @{ $r->{refused} // [] };
}
ok(@acked > 50, scalar(@acked) . ' executions acknowledged');
is(scalar @early, 0, 'every request before the quit was answered')
    or diag explain [ @early[0 .. ($#early < 9 ? $#early : 9)] ];

$t->start;
my %status;
ok(wait_for(sub {
    for my $id (grep { !$status{$_} } @acked) {
        my $s = $t->get_exec($key, $id)->{json}{status} // '';
        $status{$id} = $s if $s =~ /^(?:COMPLETED|FAILED|CANCELLED|EXPIRED)$/;
    }
    keys(%status) == @acked;
}, 120), 'every acknowledged execution reached a terminal status ('
    . scalar(keys %status) . '/' . scalar(@acked) . ')');
my %by;
$by{$_}++ for values %status;
note join ', ', map { "$_: $by{$_}" } sort keys %by;
my $v;
ok(wait_for(sub {
    $v = $t->verify($acc->{org});
    $v->{open_executions} == 0;
}, 60), 'no open execution is left (not even one whose answer was lost)')
    or diag explain $v;
ok($v->{ok}, 'verify ok') or diag explain $v;

$t->stop;
$t->check_log;
unlike($t->read_log, qr/exited on signal/, 'no process exited on a signal');
done_testing();


# The harness's instance with a production-shaped nginx.conf: the same
# prefix, ports and store, this test's main context and http block.
package MR::Test::Production;

use parent -norequire, 'MR::Test';

sub config_text {
    my ($self) = @_;
    my $p = $self->{prefix};
    my $http = $self->{http};
    my %sub = (PORT => $self->{port}, PORT2 => $self->{port2},
        PORT3 => $self->{port3});
    $http =~ s/%%(PORT[23]?)%%/$sub{$1}/g;
    $http =~ s/^/    /mg;
    # what the harness's nginx runs with (a sanitized run's LD_PRELOAD),
    # kept for the new binary of an upgrade too
    my %env = $self->nginx_env;
    my $env = join '', map { "env $_;\n" } sort keys %env;
    return <<EOF;
load_module $self->{module};
load_module $mods/ndk_http_module.so;
load_module $mods/ngx_http_lua_module.so;

user nobody nogroup;
daemon on;
master_process on;
worker_processes auto;
worker_shutdown_timeout 30s;
error_log $p/logs/error.log notice;
pid $p/logs/nginx.pid;
$env
events { worker_connections 4096; }

http {
    log_format main '\$remote_addr "\$request" \$status \$body_bytes_sent';
    access_log $p/logs/access.log main;
    client_body_temp_path $p/tmp/body;
    proxy_temp_path $p/tmp/proxy;
    fastcgi_temp_path $p/tmp/fastcgi;
    uwsgi_temp_path $p/tmp/uwsgi;
    scgi_temp_path $p/tmp/scgi;

$http}
EOF
}
