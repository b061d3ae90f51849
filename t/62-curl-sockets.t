# libcurl's sockets on nginx's event loop: a socket libcurl gives up while
# it connects is closed by libcurl before it tells the module to stop
# watching it (libcurl 7.88).  nginx must not ask epoll to forget a
# descriptor that is gone or that is another socket by then: that was an
# "[alert] epoll_ctl(2, N) failed (9: Bad file descriptor)", or epoll
# forgetting a connection of nginx's own that had taken the number.
#   - a connect that times out (the address's listen queue is full, so
#     its SYNs are dropped): the attempt fails "timed out", nothing else;
#   - "happy eyeballs": a name with an IPv4 address that never answers
#     and an IPv6 one that does; libcurl starts IPv6 after 200 ms, it
#     wins, and the IPv4 socket is closed unfinished: the delivery
#     succeeds, nothing else;
#   - the worker answers and delivers as before afterwards.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use IO::Socket::IP;
use POSIX ();
use Socket qw(AF_INET6);
use MR::Test qw(:all);
use MR::Receiver qw(:all);
use MR::DNS;

# A listener on 127.0.0.1:$port that never accepts, its queue full.
my $port = MR::Test::free_port();
my $hole = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
    LocalPort => $port, Proto => 'tcp', ReuseAddr => 1)
    or die "listen 127.0.0.1:$port: $!\n";
my @fill;
for (1 .. 8) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
        Proto => 'tcp', Timeout => 0.3) or last;
    push @fill, $s;
}
ok(@fill && @fill < 8, 'the listen queue of 127.0.0.1:' . $port
    . ' is full (' . scalar(@fill) . ' connections)');
{
    my $probe = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $port, Proto => 'tcp', Timeout => 0.5);
    ok(!$probe, '... a connect to it does not complete');
}

# An HTTP server on [::1]:$port that answers 200 to anything.
my $v6 = IO::Socket::IP->new(Listen => 16, LocalHost => '::1',
    LocalPort => $port, Proto => 'tcp', ReuseAddr => 1, V6Only => 1)
    or die "listen [::1]:$port (the test needs IPv6 on lo): $!\n";
my $v6pid = fork // die "fork: $!\n";
if (!$v6pid) {
    $SIG{TERM} = 'DEFAULT';
    while (my $c = $v6->accept) {
        my $req = '';
        while ($req !~ /\r\n\r\n/) {
            my $n = sysread $c, $req, 4096, length $req;
            last unless $n;
        }
        my ($len) = $req =~ /^Content-Length:\s*(\d+)/mi;
        my ($head) = $req =~ /^(.*?\r\n\r\n)/s;
        my $body = length($req) - length($head // '');
        while (defined $len && $body < $len) {
            my $n = sysread $c, my $more, $len - $body or last;
            $body += $n;
        }
        print $c "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
            . "Connection: close\r\n\r\n";
        close $c;
    }
    POSIX::_exit(0);
}
close $v6;

my $dns = MR::DNS->new;
$dns->add('eyeballs.test', a => ['127.0.0.1'], aaaa => ['::1']);
$dns->start;

my $rc = MR::Receiver->new;
$rc->start;

my $t = MR::Test->new(workers => 1,
    extra_main => "error_log logs/info.log info;\n",
    extra_http => "modelroute_webhook_allow_private on;\n"
        . "modelroute_webhook_resolver " . $dns->address . ";\n"
        . "modelroute_webhook_timeout 2s;\n"
        . "modelroute_webhook_retry 30s;\n");
$t->start;

sub info_log {
    open my $fh, '<', $t->prefix . '/logs/info.log' or return '';
    local $/;
    return <$fh> // '';
}

# a test event to a new endpoint on $url: (key, endpoint id, delivery id)
sub endpoint_event {
    my ($url) = @_;
    my $acc = $t->new_account(credit => '10.00');
    my $r = wh_create($t, $acc->{key}, { url => $url });
    is($r->{status}, 201, "endpoint $url") or diag $r->{body};
    my $id = $r->{json}{id} // 'wh_none';
    my $ev = $t->req(POST => "/v1/webhooks/endpoints/$id/test",
        auth($acc->{key}));
    is($ev->{status}, 202, "$url: test event") or diag $ev->{body};
    return ($acc->{key}, $id, $ev->{json}{delivery_id} // 'dlv_none');
}

# ---------------------------------------------------------------- timeout
{
    my ($key, $id, $did) = endpoint_event("http://127.0.0.1:$port/hole");
    my $d = wait_delivery($t, $key, $id, $did,
        sub { @{ $_[0]{attempts} // [] } }, 15);
    is($d->{attempts}[0]{error}, 'timed out',
        'a connect that does not complete: the attempt timed out')
        or diag explain $d;
    like(info_log(), qr/\Q$did\E: an attempt to "127\.0\.0\.1" failed \(timed out\): Connection timed out/,
        '... while connecting (libcurl gave the socket up)');
    ok(!grep({ /epoll_ctl/ } split /\n/, $t->read_log),
        '... and epoll was not asked about a closed socket')
        or diag $t->tail_log(5);
}

# ---------------------------------------------------------------- eyeballs
{
    my ($key, $id, $did) = endpoint_event("http://eyeballs.test:$port/v6");
    my $d = wait_delivery($t, $key, $id, $did,
        sub { $_[0]{status} ne 'pending' }, 15);
    is($d->{status}, 'succeeded', 'IPv4 never answers, IPv6 does: delivered')
        or diag explain $d;
    is($d->{attempts}[0]{status_code}, 200, '... 200, in one attempt');
    ok(!grep({ /epoll_ctl/ } split /\n/, $t->read_log),
        '... and epoll was not asked about the IPv4 socket libcurl closed')
        or diag $t->tail_log(5);
}

# ---------------------------------------------------------------- after
{
    my ($key, $id, $did) = endpoint_event($rc->url('/after'));
    my $d = wait_delivery($t, $key, $id, $did,
        sub { $_[0]{status} ne 'pending' }, 15);
    is($d->{status}, 'succeeded', 'afterwards: a delivery succeeds');
    is($t->req(GET => '/v1/executions?limit=1', auth($key))->{status}, 200,
        'afterwards: the API answers');
}

$t->done;
kill 'TERM', $v6pid;
waitpid $v6pid, 0;
$rc->stop;
$dns->stop;
