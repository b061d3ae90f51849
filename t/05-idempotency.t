# Idempotency: replays, reuse with another body, header keys, per-account
# scope, expiry, and 100 concurrent duplicates over both workers.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

my $t = MR::Test->new(access_log => 1);
$t->start;

sub held { MR::Test::micros($t->balance($_[0])->{held}) }

# ---- same key, same body
my $acc = $t->new_account(credit => '10.00');
my $key = $acc->{key};
my $body = { model => 'demo-chat', input => { prompt => 'Hello' },
    idempotency_key => 'order-1', metadata => { a => 1 } };
my $r1 = $t->create_exec($key, $body);
is($r1->{status}, 202, 'first: 202');
isnt($r1->{headers}{'idempotent-replayed'} // '', 'true',
    'first: not marked as replayed');
my $id = $r1->{json}{id};
my $r2 = $t->create_exec($key, $body);
is($r2->{status}, 202, 'replay: 202');
is($r2->{json}{id}, $id, 'replay: same id');
is($r2->{headers}{'idempotent-replayed'}, 'true',
    'replay: Idempotent-Replayed: true');
is($r2->{headers}{location}, "/v1/executions/$id", 'replay: Location');
is_deeply($r2->{json}, $r1->{json}, 'replay: same object');
is(held($key), 48_000, 'one hold only');

# Same body in another key order and spacing: the same request.
my $raw = '{ "metadata" : {"a":1}, "idempotency_key":"order-1",'
    . ' "input": {"prompt": "Hello"}, "model":"demo-chat" }';
my $r3 = $t->req(POST => '/v1/executions',
    { %{ auth($key) }, 'Content-Type' => 'application/json' }, $raw);
is($r3->{status}, 202, 'reordered body: 202');
is($r3->{json}{id}, $id, 'reordered body: same id');
is($r3->{headers}{'idempotent-replayed'}, 'true', 'reordered body: replayed');

# The replay shows the current object.
my $can = $t->req(POST => "/v1/executions/$id/cancel", auth($key));
is($can->{status}, 200, 'cancel');
my $r4 = $t->create_exec($key, $body);
is($r4->{status}, 202, 'replay after cancel: 202');
is($r4->{json}{status}, 'CANCELLED', 'replay shows the current status');
is(held($key), 0, 'no new hold after cancel + replay');

# ---- same key, different body
for my $change ([input => { prompt => 'Bye' }], [model => 'demo-image'],
    [metadata => { a => 2 }], [metadata => {}], [timeout_seconds => 60],
    [webhook_url => 'https://example.com/h']) {
    my $r = $t->create_exec($key, { %$body, @$change });
    is_error($r, 409, 'IDEMPOTENCY_KEY_REUSED', "different $change->[0]: 409");
}
is(scalar $t->list_all($key), 1, 'still one execution');

# ---- key from the header
my $h1 = $t->create_exec($key, { model => 'demo-chat', input => {} },
    { 'Idempotency-Key' => 'hdr-1' });
is($h1->{status}, 202, 'header key: 202');
is($h1->{json}{idempotency_key}, 'hdr-1', 'header key stored');
my $h2 = $t->create_exec($key, { model => 'demo-chat', input => {} },
    { 'Idempotency-Key' => 'hdr-1' });
is($h2->{json}{id}, $h1->{json}{id}, 'header key replay: same id');
is($h2->{headers}{'idempotent-replayed'}, 'true', 'header key replay: marked');
my $h3 = $t->create_exec($key, { model => 'demo-chat', input => {},
    idempotency_key => 'hdr-1' });
is($h3->{json}{id}, $h1->{json}{id}, 'same key in the body: same id');
my $h4 = $t->create_exec($key, { model => 'demo-chat', input => {},
    idempotency_key => 'hdr-1' }, { 'Idempotency-Key' => 'hdr-1' });
is($h4->{status}, 202, 'same key in header and body: 202');
is($h4->{json}{id}, $h1->{json}{id}, 'same key in header and body: same id');
is_error($t->create_exec($key, { model => 'demo-chat', input => { x => 1 } },
    { 'Idempotency-Key' => 'hdr-1' }), 409, 'IDEMPOTENCY_KEY_REUSED',
    'header key, different body: 409');
is(held($key), 48_000, 'one hold for the header key');

# ---- per account
my $oth = $t->new_account(credit => '10.00');
my $o1 = $t->create_exec($oth->{key}, $body);
is($o1->{status}, 202, 'other account, same key: 202');
isnt($o1->{json}{id}, $id, 'other account: a new execution');
isnt($o1->{headers}{'idempotent-replayed'} // '', 'true',
    'other account: not a replay');
is($o1->{json}{status}, 'PENDING', 'other account: PENDING');
is(held($oth->{key}), 48_000, 'other account: its own hold');
is_error($t->get_exec($oth->{key}, $id), 404, 'NOT_FOUND',
    'other account cannot see the first execution');

# ---- 100 concurrent duplicates, many connections, both workers
my $c = $t->new_account(credit => '10.00');
my $cbody = { model => 'demo-chat', input => { prompt => 'race' },
    idempotency_key => 'race-1' };
my $logged = () = $t->access_log_lines;
my @res = $t->parallel(50, sub {
    my @out;
    for (1 .. 2) {
        my $r = $t->create_exec($c->{key}, $cbody);
        push @out, [$r->{status}, $r->{json} ? $r->{json}{id} : $r->{body}];
    }
    return \@out;
});
my @all = map { ref $_ eq 'ARRAY' ? @$_ : ([0, $_->{died}]) } @res;
my %pids = map { (split / /)[0] => 1 }
    grep { defined && m{ POST /v1/executions } }
    ($t->access_log_lines)[$logged .. $logged + 99];
is(scalar keys %pids, 2, 'both workers served the concurrent duplicates');
is(scalar @all, 100, '100 answers');
my @not202 = grep { $_->[0] != 202 } @all;
is(scalar @not202, 0, 'every concurrent duplicate: 202')
    or diag explain [@not202[0 .. ($#not202 < 4 ? $#not202 : 4)]];
my %ids = map { ($_->[1] // '') => 1 } grep { $_->[0] == 202 } @all;
is(scalar keys %ids, 1, 'one id for all of them') or diag explain \%ids;
my @list = $t->list_all($c->{key});
is(scalar @list, 1, 'exactly one execution stored');
is($list[0]{id}, (keys %ids)[0], 'the stored one is the id answered');
is(held($c->{key}), 48_000, 'exactly one hold');
my $v = $t->verify($c->{org});
ok($v->{ok}, 'verify ok');
is($v->{executions}, 1, 'verify: one execution');

ok($t->verify($acc->{org})->{ok}, 'verify ok (first account)');

# ---- one key, two bodies, concurrently: one execution, the other body 409
my $d = $t->new_account(credit => '10.00');
my @dres = $t->parallel(40, sub {
    my ($i) = @_;
    my $r = $t->create_exec($d->{key}, { model => 'demo-chat',
        input => { body => $i % 2 }, idempotency_key => 'race-2' });
    my $code = ref $r->{json} eq 'HASH' && ref $r->{json}{error} eq 'HASH'
        ? $r->{json}{error}{code} : '';
    return [$i % 2, $r->{status}, $r->{json} ? $r->{json}{id} // $code : ''];
});
my $stored = [$t->list_all($d->{key})];
is(scalar @$stored, 1, 'two bodies, one key: one execution');
my %by;
for my $r (@dres) {
    next unless ref $r eq 'ARRAY';
    push @{ $by{"$r->[0] $r->[1]"} }, $r->[2];
}
my @winner = grep { /202$/ } keys %by;
is(scalar @winner, 1, 'only one body got 202s') or diag explain \%by;
my ($wb) = ($winner[0] // '9') =~ /^(\d)/;
is(scalar @{ $by{"$wb 202"} // [] }, 20, 'every request of the winner: 202');
is(scalar @{ $by{(1 - $wb) . ' 409'} // [] }, 20,
    'every request of the other body: 409');
my @loser = @{ $by{ (1 - $wb) . ' 409' } // [] };
ok(!grep({ $_ ne 'IDEMPOTENCY_KEY_REUSED' } @loser),
    '409s are IDEMPOTENCY_KEY_REUSED');
is(held($d->{key}), 48_000, 'one hold');

# ---- expiry of a key: restart with a 2 s ttl
$t->stop;
$t->write_config(extra_http => "modelroute_idempotency_ttl 2s;\n");
$t->start;
my $e = $t->new_account(credit => '10.00');
my $ebody = { model => 'demo-chat', input => {}, idempotency_key => 'ttl-1' };
my $e1 = $t->create_exec($e->{key}, $ebody);
is($e1->{status}, 202, 'ttl: first create');
my $first = $e1->{json}{id};
is($t->create_exec($e->{key}, $ebody)->{json}{id}, $first,
    'ttl: replayed while fresh');
my $fresh;
my $new = wait_for(sub {
    my $r = $t->create_exec($e->{key}, $ebody);
    return undef unless $r->{status} == 202;
    return undef if ($r->{json}{id} // '') eq $first;
    $fresh = $r;
    return 1;
}, 15, 0.2);
ok($new, 'after the ttl the key creates a new execution');
SKIP: {
    skip 'no new execution', 5 unless $new;
    isnt($fresh->{headers}{'idempotent-replayed'} // '', 'true',
        'ttl: new one is not a replay');
    is($t->get_exec($e->{key}, $first)->{status}, 200,
        'ttl: the old execution still exists');
    is($t->create_exec($e->{key}, $ebody)->{json}{id}, $fresh->{json}{id},
        'ttl: the key now replays the new execution');
    is(held($e->{key}), 2 * 48_000, 'ttl: two holds');
    is(scalar $t->list_all($e->{key}), 2, 'ttl: two executions');
}
ok($t->verify($e->{org})->{ok}, 'ttl: verify ok');

$t->done;
