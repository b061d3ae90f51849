# Expiry (API.md §3, §4): an execution whose expires_at passes before a
# result becomes EXPIRED with an error, and its hold is released; a cancel
# of an EXPIRED execution is 409 EXECUTION_TERMINAL.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);

my $t = MR::Test->new;
$t->start;

my $acc = $t->new_account(credit => '1.00');
my $key = $acc->{key};
my $r = $t->create_exec($key, $t->exec_body(timeout_seconds => 1));
is($r->{status}, 202, 'create with timeout_seconds 1');
my $id = $r->{json}{id};
my $keep = $t->create_exec($key, $t->exec_body)->{json}{id};
my $expires = parse_rfc3339($r->{json}{expires_at} // '') // 0;

my $e;
my $expired = wait_for(sub {
    $e = $t->get_exec($key, $id)->{json};
    return $e && ($e->{status} // '') eq 'EXPIRED';
}, 10, 0.1);
ok($expired, 'the execution expires') or diag explain $e;
unless ($expired) {
    $t->done;
    exit;
}
ok(is_rfc3339($e->{completed_at})
    && parse_rfc3339($e->{completed_at}) >= $expires,
    'EXPIRED: completed_at is not before expires_at')
    or diag "completed_at $e->{completed_at}, expires_at "
        . "$r->{json}{expires_at}";
is(ref $e->{error}, 'HASH', 'EXPIRED: error object');
is($e->{error}{code}, 'GENERATION_TIMEOUT', 'EXPIRED: GENERATION_TIMEOUT');
ok(length($e->{error}{message} // ''), 'EXPIRED: error message');
ok(JSON::PP::is_bool($e->{error}{retryable}) && $e->{error}{retryable},
    'EXPIRED: retryable true (GENERATION_TIMEOUT is retryable)');
money_is($e->{cost}, '0.00', 'EXPIRED: cost 0.00');
ok(!defined $e->{result}, 'EXPIRED: result null');
ok(is_rfc3339($e->{completed_at}), 'EXPIRED: completed_at set');

my $b = $t->balance($key);
money_is($b->{held}, '0.048', 'EXPIRED: its hold released');
money_is($b->{balance}, '1.00', 'EXPIRED: nothing charged');

is_error($t->req(POST => "/v1/executions/$id/cancel", auth($key)), 409,
    'EXECUTION_TERMINAL', 'cancel of an EXPIRED execution: 409');
is($t->get_exec($key, $id)->{json}{status}, 'EXPIRED', 'still EXPIRED');
is_error($t->req(GET => "/v1/executions/$id/result", auth($key)), 409,
    'EXECUTION_NOT_COMPLETED', 'result of an EXPIRED execution: 409');
my $l = $t->req(GET => '/v1/executions?status=EXPIRED', auth($key))->{json};
is_deeply([map { $_->{id} } @{ $l->{data} // [] }], [$id],
    'status=EXPIRED filter');
is($t->get_exec($key, $keep)->{json}{status}, 'PENDING',
    'an execution with time left stays PENDING');

my $v = $t->verify($acc->{org});
ok($v->{ok}, 'verify ok');
is($v->{open_executions}, 1, 'verify: one open execution');

# Expiry survives a restart: the state is stored, not computed on read.
$t->restart;
is($t->get_exec($key, $id)->{json}{status}, 'EXPIRED',
    'EXPIRED after a restart');
money_is($t->balance($key)->{held}, '0.048', 'hold still released');

$t->done;
