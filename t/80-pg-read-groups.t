# PostgreSQL: the reads of a key (by its hash) and of an execution (by
# its id) that come in one turn of a worker's event loop are answered by
# one statement each, not one per request.  Every request still gets its
# own answer, as it would alone:
#  1. many clients of many accounts at once, each with its own key and its
#     own execution, another account's execution, a revoked key, an
#     unknown key and an unknown execution: every answer is the one the
#     same request gets alone (status, the execution's id and account);
#  2. a key revoked (and answered) before the requests are sent is refused
#     in a group: a group reads after its requests came;
#  3. the groups happened: PostgreSQL's log shows the statements of
#     several keys and several executions (else this file proves nothing).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes ();
use MR::Test qw(:all);

my $http = <<'EOF';
modelroute_store %%STORE%%;
modelroute_model m-held per_request=0.04;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
EOF

my $t = MR::Test->new(store => 'postgres', http => $http, workers => 2,
    timeout => 30);

# every statement of the module's sessions, with its parameters
$t->psql("ALTER DATABASE ${\ $t->db } SET log_min_duration_statement = 0");
$t->start;

my $PGLOG = MR::Test::pg_cluster()->{dir} . '/log';
my $port = $t->port;

# ------------------------------------------------------------ the accounts

my (@acc, @cases);

for my $i (0 .. 11) {
    my $a = $t->new_account(credit => '5.00');
    my $r = $t->create_exec($a->{key}, $t->exec_body(model => 'm-held'));
    is($r->{status}, 202, "account $i: an execution") or BAIL_OUT('create');
    $a->{exec} = $r->{json}{id};
    push @acc, $a;
}

my @revoked;
for my $i (0 .. 2) {
    my ($key, $id) = $t->admin_create_key($acc[$i]{org}, 'full');
    my $rv = $t->admin(POST => "/keys/$id/revoke");
    is($rv->{status}, 200, "account $i: a key revoked");
    push @revoked, $key;
}

(my $unknown_exec = $acc[0]{exec}) =~ s/(.)$/$1 eq '0' ? '1' : '0'/e;
my ($late_key, $late_id) = $t->admin_create_key($acc[3]{org}, 'full');

for my $i (0 .. $#acc) {
    my $a = $acc[$i];
    my $b = $acc[($i + 1) % @acc];
    push @cases, [ $a->{key}, $a->{exec} ], [ $a->{key}, $b->{exec} ],
        [ $a->{key}, $unknown_exec ];
}
push @cases, map { [ $_, $acc[0]{exec} ] } @revoked;
push @cases, [ 'mr_live_' . ('a' x 40), $acc[1]{exec} ];
push @cases, [ $late_key, $acc[3]{exec} ];

# what a request's answer says: its status, and the execution it shows
sub summary {
    my ($r) = @_;
    return 'no answer' unless $r;
    my $j = $r->{json} // {};
    return join ' ', $r->{status}, $j->{id} // '-', $j->{org} // '-',
        (ref $j->{error} ? $j->{error}{code} : '-');
}

sub get_alone {
    my ($key, $id) = @_;
    return summary($t->get_exec($key, $id));
}

# all the cases at once: connected first, then every request written
sub get_together {
    my (@cases) = @_;
    my @s;
    for (@cases) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
            PeerPort => $port, Proto => 'tcp', Timeout => 10)
            or die "connect: $!";
        binmode $s;
        push @s, $s;
    }
    for my $i (0 .. $#cases) {
        my ($key, $id) = @{ $cases[$i] };
        syswrite $s[$i], MR::Test::http_message(GET => "/v1/executions/$id",
            auth($key), undef, 1);
    }
    my @in = ('') x @s;
    my %open = map { $_ => 1 } 0 .. $#s;
    my $deadline = Time::HiRes::time() + 20;
    while (%open && Time::HiRes::time() < $deadline) {
        my $rin = '';
        vec($rin, fileno($s[$_]), 1) = 1 for keys %open;
        next unless select(my $rout = $rin, undef, undef, 0.1) > 0;
        for my $i (keys %open) {
            next unless vec($rout, fileno($s[$i]), 1);
            my $n = sysread($s[$i], my $buf, 65536);
            if ($n) { $in[$i] .= $buf } else { delete $open{$i} }
        }
    }
    close $_ for @s;
    return map { length $_ ? summary(MR::Test::parse_http($_)) : 'no answer' }
        @in;
}

# ------------------------------------------------ 1, 2: together, as alone

my %alone = map { ("@$_" => get_alone(@$_)) } @cases;

like($alone{"$acc[0]{key} $acc[0]{exec}"}, qr/^200 \Q$acc[0]{exec}\E /,
    'alone: an account reads its own execution');
like($alone{"$acc[0]{key} $acc[1]{exec}"}, qr/^404 /,
    "alone: not another account's");
like($alone{"$revoked[0] $acc[0]{exec}"}, qr/^401 /, 'alone: revoked: 401');
like($alone{"$late_key $acc[3]{exec}"}, qr/^200 /,
    'alone: the key revoked later is valid yet');

sub groups_in_log {
    my ($from) = @_;
    open my $fh, '<', $PGLOG or return (0, 0);
    seek $fh, $from, 0;
    my ($auths, $execs, $stmt) = (0, 0, '');
    while (<$fh>) {
        # a GET reads an execution without its input (mr_execs_shown)
        if (/execute (mr_auths|mr_execs_shown):/) { $stmt = $1; next }
        if ($stmt && /DETAIL:\s+parameters: \$1 = '\{([^}]*)\}'/) {
            my $n = () = $1 =~ /,/g;
            $auths++ if $stmt eq 'mr_auths' && $n >= 1;
            $execs++ if $stmt eq 'mr_execs_shown' && $n >= 1;
        }
        $stmt = '';
    }
    return ($auths, $execs);
}

my $log_from = -s $PGLOG;
my ($rounds, @wrong) = (0);
my ($auths, $execs) = (0, 0);
my $deadline = time + 60;

while ($rounds < 5 || (($auths == 0 || $execs == 0) && time < $deadline)) {
    $rounds++;
    my @got = get_together(@cases);
    for my $i (0 .. $#cases) {
        my $want = $alone{"@{ $cases[$i] }"};
        push @wrong, "round $rounds, case $i: '$got[$i]', alone '$want'"
            if $got[$i] ne $want;
    }
    ($auths, $execs) = groups_in_log($log_from);

    if ($rounds == 3) {
        # 2: a key revoked now is refused in every later round
        my $rv = $t->admin(POST => "/keys/$late_id/revoke");
        is($rv->{status}, 200, 'a key revoked between two rounds');
        $alone{"$late_key $acc[3]{exec}"} = get_alone($late_key,
            $acc[3]{exec});
        like($alone{"$late_key $acc[3]{exec}"}, qr/^401 /,
            'alone: it is refused');
    }
}

is(scalar @wrong, 0, "$rounds rounds of " . scalar(@cases)
    . ' requests at once: each answered as alone')
    or diag(join "\n", @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)]);

# ---------------------------------------------------------- 3: grouped

ok($auths > 0, "keys read in groups ($auths statements of several keys)");
ok($execs > 0,
    "executions read in groups ($execs statements of several executions)");

$t->stop;
done_testing();
