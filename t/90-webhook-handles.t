# Webhook deliveries of different tenants on the libcurl handles the sender
# keeps: each delivery carries its own endpoint's headers and signatures,
# and its own outcome, nothing of the delivery the handle made before it.
#
# The sender no longer makes a libcurl handle per delivery: a finished
# delivery's handle is reset and kept for the next (up to the worker's
# "modelroute_webhook_concurrency" total).  One worker, one transfer at a
# time, so that each delivery gets the handle of the one before it (if
# that one's was kept): endpoint A (tenant 1: headers of its own, a name
# it resolves), B (tenant 2: no headers, an address), C (tenant 2: a port
# where nobody listens), D (tenant 1: a receiver that closes without
# answering) and E (tenant 2: a receiver that answers 500), their test
# events made in turns.  libcurl 7.88's reset keeps
# the system error of a failed connect: a handle that has one is not kept,
# else D's failures would be logged with C's "Connection refused".
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);
use MR::DNS;

my $dns = MR::DNS->new;
$dns->add('hooks.tenant-one.test', a => ['127.0.0.1']);
$dns->start;

my $rc = MR::Receiver->new;
$rc->start;
$rc->set('/d', close => 1);
$rc->set('/e', status => 500);

my $t = MR::Test->new(workers => 1,
    extra_main => "error_log logs/info.log info;\n",
    extra_http => "modelroute_webhook_allow_private on;\n"
        . "modelroute_webhook_concurrency 1 1 1;\n"
        . "modelroute_webhook_resolver " . $dns->address . ";\n");
$t->start;

my $one = $t->new_account(credit => '10.00');
my $two = $t->new_account(credit => '10.00');

my %ep;
for ([ a => $one, { url => 'http://hooks.tenant-one.test:' . $rc->port
                       . '/a',
                    headers => { 'X-Custom' => 'tenant-one',
                                 'X-Tenant' => 't-1' } } ],
     [ b => $two, { url => $rc->url('/b') } ],
     [ c => $two, { url => 'http://127.0.0.1:' . MR::Test::free_port()
                       . '/c' } ],
     [ d => $one, { url => $rc->url('/d') } ],
     [ e => $two, { url => $rc->url('/e') } ]) {
    my ($n, $acc, $body) = @$_;
    my $r = wh_create($t, $acc->{key}, $body);
    is($r->{status}, 201, "endpoint $n: $body->{url}");
    $ep{$n} = { key => $acc->{key}, id => $r->{json}{id} // 'wh_none',
                secret => $r->{json}{secret} // 'whsec_' };
}

# fewer than the 10 failures in a row that deactivate C, D and E
my $N = 8;
my (%events, $made);
for my $i (1 .. $N) {
    for my $n (qw(a b c d e)) {
        my $r = $t->req(POST => "/v1/webhooks/endpoints/$ep{$n}{id}/test",
            auth($ep{$n}{key}));
        next unless $r->{status} == 202;
        $made++;
        push @{ $events{$n} }, $r->{json};
    }
}
is($made, 5 * $N, "$N test events for each endpoint, in turns");

my @got_a = $rc->wait_requests($N, path => '/a', timeout => 60);
my @got_b = $rc->wait_requests($N, path => '/b', timeout => 60);
is(scalar @got_a, $N, "A: $N deliveries arrived");
is(scalar @got_b, $N, "B: $N deliveries arrived");

# each request is its own endpoint's, whatever the handle did before
sub check {
    my ($name, $want_headers, $other, @reqs) = @_;
    my (@bad, %ids);
    for my $q (@reqs) {
        my $h = $q->{headers} // {};
        my $id = $h->{'webhook-id'} // '-';
        $ids{$id}++;
        my @p = signature_problems($q, $ep{$name}{secret});
        push @bad, "$id: " . join('; ', @p) if @p;
        push @bad, "$id: also valid for another endpoint's secret"
            if !signature_problems($q, $ep{$other}{secret});
        for my $hd (qw(x-custom x-tenant)) {
            my $want = $want_headers->{$hd};
            push @bad, "$id: $hd is '" . ($h->{$hd} // 'absent') . "'"
                unless (defined $want && ($h->{$hd} // '') eq $want)
                    || (!defined $want && !exists $h->{$hd});
        }
        my ($host) = split /:/, $h->{host} // '';
        push @bad, "$id: Host " . ($h->{host} // 'absent')
            unless ($host // '') eq ($name eq 'a' ? 'hooks.tenant-one.test'
                                                  : '127.0.0.1');
    }
    my %want = map { ($_->{event_id} // '') => 1 } @{ $events{$name} };
    my @missing = grep { !$ids{$_} } sort keys %want;
    my @foreign = grep { !$want{$_} } sort keys %ids;
    ok(!@bad && !@missing && !@foreign,
        "$name: headers, Host and both signatures its own, each event once")
        or diag explain { bad => \@bad, missing => \@missing,
                          foreign => \@foreign };
}

check('a', { 'x-custom' => 'tenant-one', 'x-tenant' => 't-1' }, 'b', @got_a);
check('b', {}, 'a', @got_b);

# the first attempt of each of an endpoint's deliveries
sub first_attempts {
    my ($n) = @_;
    my @at;
    for my $ev (@{ $events{$n} }) {
        my $d = wait_delivery($t, $ep{$n}{key}, $ep{$n}{id},
            $ev->{delivery_id} // '-',
            sub { @{ $_[0]{attempts} // [] } >= 1 }, 30);
        push @at, [ $ev->{delivery_id} // '-',
                    ($d->{attempts} // [])->[0] // {} ];
    }
    return @at;
}

my %why = (c => 'could not connect', d => 'no valid HTTP answer');
my $log = $t->prefix . '/logs/info.log';

# E: each answer logged once, with its status
{
    my @at = first_attempts('e');
    my @wrong = grep { ($_->[1]{status_code} // 0) != 500 } @at;
    ok(@at == $N && !@wrong, 'e: each first attempt answered 500')
        or diag explain \@wrong;
    open my $fh, '<', $log or die "$log: $!";
    my @lines = <$fh>;
    my @bad = grep {
        my $id = $_->[0];
        1 != grep { /\[info\].*\Q$id\E: "127\.0\.0\.1" answered 500$/ }
            @lines } @at;
    ok(!@bad, 'e: each answer logged once, at info, with its status')
        or diag explain \@bad;
}

for my $n (qw(c d)) {
    my @at = first_attempts($n);
    my @wrong = grep { defined $_->[1]{status_code}
                       || ($_->[1]{error} // '') ne $why{$n} } @at;
    ok(@at == $N && !@wrong, "$n: each first attempt failed: $why{$n}")
        or diag explain \@wrong;

    # one line each, with the system's error only where there was one
    open my $fh, '<', $log or die "$log: $!";
    my @lines = grep { /modelroute webhooks: dlv_/ } <$fh>;
    my @errno;
    for my $a (@at) {
        my @l = grep { index($_, "$a->[0]: an attempt") >= 0 } @lines;
        push @errno, @l ? $l[0] : "$a->[0]: no line\n"
            if @l != 1 || ($n eq 'd' ? $l[0] =~ /\(\d+: [^)]*\)$/
                                     : $l[0] !~ /\(111: [^)]*\)$/);
    }
    ok(!@errno, $n eq 'c' ? 'c: logged with "Connection refused"'
                          : "d: logged without another attempt's "
                            . 'system error')
        or diag @errno;
}

my %failed = map { ($_->{event_id} // '') => 1 } @{ $events{c} },
    @{ $events{d} }, @{ $events{e} };
ok(!grep({ $failed{ $_->{headers}{'webhook-id'} // '' } }
        $rc->requests(path => '/a'), $rc->requests(path => '/b')),
    "C's, D's and E's events reached neither A nor B");

$t->done;
$rc->stop;
$dns->stop;
