# Readiness (modelroute_health, {admin}/health): 200 with its JSON when
# the store takes a write and every worker beats with its dispatcher and
# webhook sender running; GET only; 503 with the reason when a worker's
# event loop stops (SIGSTOP) and 200 again when it goes on; 503 "full"
# when the store refuses new work, 200 again after a larger map and a
# reload (LMDB: a PostgreSQL store has no map; its faults are t/71's).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use HTTP::Tiny;
use Time::HiRes qw(time sleep);
use MR::Test qw(:all);

sub http_with {
    my ($map) = @_;
    my $h = MR::Test::default_http();
    $h =~ s/client_max_body_size 64k;/client_max_body_size 256k;/;
    $h =~ s{(location /admin/ \{ modelroute_admin; \})}
           {$1\n    location = /healthz { modelroute_health; }};
    # one account fills the store: no account limit of its own in the way
    return "modelroute_store_map_size $map;\n"
        . "modelroute_account_limits bytes=1g;\n$h";
}

my $t = MR::Test->new(http => http_with('64m'));
# PostgreSQL: every statement in its log (the health answer's reads)
$t->psql("ALTER DATABASE ${\ $t->db } SET log_min_duration_statement = 0")
    if $t->backend ne 'lmdb';
$t->start;

# ---- healthy
for my $path ('/healthz', '/admin/health') {
    my $r = $t->req(GET => $path);
    is($r->{status}, 200, "$path: 200") or diag $r->{body};
    like($r->{headers}{'content-type'} // '', qr{^application/json},
        '... JSON');
    my $h = $r->{json} // {};
    is($h->{status}, 'ok', '... status ok');
    is_deeply($h->{reasons}, [], '... no reason');
    ok($h->{store}{writable}, '... the store took a write');
    like($h->{store}{commit_ms} // '', qr/^\d+$/, '... in some ms');
    if ($t->backend eq 'lmdb') {
        cmp_ok($h->{store}{map_used}, '>', 0, '... map use');
        is($h->{store}{map_size_bytes}, 64 * 1024 * 1024, '... map size');
    } else {
        cmp_ok($h->{store}{size_bytes}, '>', 0, '... the database\'s size');
        is($h->{store}{map_size_bytes}, 0, '... no map');
    }
    is(scalar @{ $h->{workers} // [] }, 2, '... two workers');
    is_deeply([sort { $a <=> $b } map { $_->{pid} } @{ $h->{workers} }],
        [sort { $a <=> $b } $t->worker_pids], '... their pids');
    ok(!grep({ !$_->{dispatcher} || !$_->{webhook_sender} }
        @{ $h->{workers} }), '... each runs its dispatcher and sender');
    ok(is_rfc3339($h->{checked_at}), '... checked_at');
}
is_error($t->req(POST => '/healthz'), 405, 'METHOD_NOT_ALLOWED',
    'POST: 405');

# ---- PostgreSQL: an answer reads the database's size, never the counts
# of the metrics (mr_stats reads every open execution, and a balancer
# asks every second or so): 300 open executions (a model without routes:
# PENDING), 10 answers
if ($t->backend ne 'lmdb') {
    my $acct = $t->new_account(credit => '100.00');
    my $open = 0;
    for (1 .. 300) {
        $open++ if $t->create_exec($acct->{key}, $t->exec_body)
            ->{status} == 202;
    }
    is($open, 300, '300 executions open');
    my $from = MR::Test::pg_log_mark();
    my $ok = 0;
    for (1 .. 10) {
        $ok++ if $t->req(GET => '/healthz')->{status} == 200;
    }
    is($ok, 10, '10 answers: 200');
    my %n = (size => 0, stats => 0);
    wait_for(sub {
        open my $fh, '<', MR::Test::pg_cluster()->{dir} . '/log' or return;
        seek $fh, $from, 0;
        %n = (size => 0, stats => 0);
        while (<$fh>) {
            $n{size}++ if /duration: [\d.]+ ms\s+execute mr_db_size:/;
            $n{stats}++ if /duration: [\d.]+ ms\s+execute mr_stats:/;
        }
        $n{size} >= 10;
    }, 10, 0.1);
    cmp_ok($n{size}, '>=', 10, '... each read the database\'s size');
    is($n{stats}, 0, '... none read the statistics');
}
is($t->req(HEAD => '/healthz')->{status}, 200, 'HEAD: 200');

# ---- a worker whose event loop stops
my $ua = HTTP::Tiny->new(timeout => 1, keep_alive => 0);
sub health {
    my $r = $ua->get('http://127.0.0.1:' . $t->port . '/healthz');
    return unless $r->{status} == 200 || $r->{status} == 503;
    return { status => $r->{status}, json => json_decode($r->{content}) };
}
my ($w0, $w1) = sort { $a <=> $b } $t->worker_pids;
kill 'STOP', $w1;
my $h;
my $seen = wait_for(sub {
    $h = health();
    $h && $h->{status} == 503;
}, 20, 0.2);
ok($seen, 'a stopped worker: 503');
my @why = @{ $h->{json}{reasons} // [] };
ok(grep({ /^worker \d+: no heartbeat for \d+ ms/ } @why),
    '... "no heartbeat" for it') or diag explain \@why;
is($h->{json}{status}, 'unavailable', '... status unavailable');
ok($h->{json}{store}{writable}, '... the store still takes writes');
kill 'CONT', $w1;
ok(wait_for(sub { my $x = health(); $x && $x->{status} == 200 }, 20, 0.2),
    'it goes on: 200 again');

# ---- after a reload: the new workers beat from their start
$t->reload;
my $after = $t->req(GET => '/healthz');
is($after->{status}, 200, 'after a reload: 200 at once')
    or diag $after->{body};
is_deeply([sort { $a <=> $b } map { $_->{pid} }
    @{ $after->{json}{workers} // [] }],
    [sort { $a <=> $b } $t->worker_pids], '... the new workers\' pids');

# ---- a full store
$t->stop;
$t->check_log;
if ($t->backend ne 'lmdb') {
    done_testing;
    exit;
}
my $small = MR::Test->new(http => http_with('1m'));
my $size;
for my $s (qw(1m 2m 4m 8m)) {
    $small->write_config(http => http_with($s));
    my ($rc) = $small->test_config;
    if ($rc == 0) { $size = $s; last }
}
ok($size, "a small map: $size");
$small->start;
my $acct = $small->new_account(credit => '1000.00');
my $big = 'x' x 20_000;
my $full;
for my $i (1 .. 5000) {
    my $r = $small->create_exec($acct->{key}, $small->exec_body(
        input => { prompt => $big, i => $i }));
    next if $r->{status} == 202;
    $full = $r;
    last;
}
is($full && $full->{status}, 507, 'the store filled: 507 STORAGE_FULL');
my $r = $small->req(GET => '/healthz');
is($r->{status}, 503, 'health of a full store: 503');
is($r->{json}{store}{writable}, JSON::PP::false, '... not writable');
ok(grep({ /^store: full/ } @{ $r->{json}{reasons} // [] }),
    '... the reason says full') or diag $r->{body};
$small->write_config(http => http_with('64m'));
$small->reload;
$r = $small->req(GET => '/healthz');
is($r->{status}, 200, 'a larger map and a reload: 200') or diag $r->{body};
$small->stop;
$small->check_log;

done_testing;
