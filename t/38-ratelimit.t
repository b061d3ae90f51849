# Rate limits per account (modelroute_rate_limit): the limit is hit
# exactly at N, with X-RateLimit-Limit, -Remaining and -Reset on every
# answer to a valid key (errors included, not 401), 429 RATE_LIMITED with
# Retry-After and nothing stored; refused requests do not count; the
# window resets at X-RateLimit-Reset; keys of one account share its limit;
# per-account overrides through the admin API (set, read, removed,
# validated); exact under a burst served by both workers; nginx -t
# refusals; off without the directive.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use MR::Test qw(:all);

my $t = MR::Test->new(extra_http => "modelroute_rate_limit 5 3s;\n",
    access_log => 1);
$t->start;

sub rl {
    my ($r) = @_;
    return [map { $r->{headers}{"x-ratelimit-$_"} } qw(limit remaining
        reset)];
}

# waits until the current window of $key's account has ended: the next
# request opens a new one
sub fresh_window {
    my ($key) = @_;
    my $r = $t->req(GET => '/v1/balance', auth($key));
    my $reset = $r->{headers}{'x-ratelimit-reset'} // 0;
    sleep 0.05 while time < $reset;
}

my $acct_a = $t->new_account(credit => '10.00');
my $key = $acct_a->{key};

# ---- exactly N in a window
my @r = map { $t->create_exec($key, $t->exec_body) } 1 .. 5;
is_deeply([map { $_->{status} } @r], [(202) x 5], 'five creates accepted');
is_deeply([map { $_->{headers}{'x-ratelimit-limit'} } @r], [(5) x 5],
    'X-RateLimit-Limit: 5');
is_deeply([map { $_->{headers}{'x-ratelimit-remaining'} } @r],
    [4, 3, 2, 1, 0], 'X-RateLimit-Remaining counts down to 0');
my $reset = $r[0]{headers}{'x-ratelimit-reset'} // 0;
like($reset, qr/^\d{10}$/, 'X-RateLimit-Reset: Unix time');
ok($reset >= int(time) && $reset <= time + 4,
    'Reset: the end of the 3 s window');
is(scalar(grep { ($_->{headers}{'x-ratelimit-reset'} // 0) == $reset } @r),
    5, 'one window, one Reset');

my $over = $t->create_exec($key, $t->exec_body);
is_error($over, 429, 'RATE_LIMITED', 'the sixth: 429 RATE_LIMITED');
ok($over->{json}{error}{retryable}, 'retryable');
my $ra = $over->{headers}{'retry-after'} // '';
like($ra, qr/^\d+$/, "Retry-After: $ra");
ok($ra >= 1 && $ra <= 3, 'Retry-After within the window');
is_deeply(rl($over), [5, 0, $reset], 'X-RateLimit-* on the 429 too');
is($t->verify($acct_a->{org})->{executions}, 5, 'the refused create stored '
    . 'nothing');

# refused requests do not count, and do not move the window
my $again = $t->req(GET => '/v1/balance', auth($key));
is($again->{status}, 429, 'a read is limited too');
is_deeply(rl($again), [5, 0, $reset], 'same window');

# ---- the window ends at Reset
sleep 0.05 while time < $reset;
my $next = $t->req(GET => '/v1/balance', auth($key));
is($next->{status}, 200, 'after Reset: accepted again');
is($next->{headers}{'x-ratelimit-remaining'}, 4, 'Remaining 4 again');
cmp_ok($next->{headers}{'x-ratelimit-reset'}, '>=', $reset,
    'a new Reset');

# ---- every answer to a valid key, errors too; not 401
fresh_window($key);
my $nf = $t->get_exec($key, 'exec_' . ('0' x 44));
is($nf->{status}, 404, 'a 404');
is($nf->{headers}{'x-ratelimit-limit'}, 5, '... carries X-RateLimit-Limit');
is($nf->{headers}{'x-ratelimit-remaining'}, 4, '... and counts');
my ($ek) = $t->admin_create_key($acct_a->{org}, 'execution');
my $fb = $t->req(POST => "/v1/api-keys/$acct_a->{key_id}/rotate", auth($ek));
is($fb->{status}, 403, 'a 403 (permission)');
is($fb->{headers}{'x-ratelimit-remaining'}, 3,
    '... counts against the account: another key, the same limit');
my $bad = $t->req(GET => '/v1/balance', auth('sk_' . ('2' x 64)
    . '_00000000'));
is($bad->{status}, 401, 'a 401');
ok(!defined $bad->{headers}{'x-ratelimit-limit'}, '... has no X-RateLimit');
my $adm = $t->admin(GET => "/accounts/$acct_a->{org}");
ok(!defined $adm->{headers}{'x-ratelimit-limit'},
    'the admin API is not limited');

# ---- overrides
my $acct_b = $t->new_account(credit => '10.00');
my $g = $t->admin(GET => "/accounts/$acct_b->{org}/rate_limit");
is($g->{status}, 200, 'GET rate_limit');
is_deeply($g->{json}, { object => 'rate_limit', account => $acct_b->{org},
    requests => 5, window_seconds => 3, source => 'default',
    enabled => JSON::PP::true }, '... the default');
my $p = $t->admin(PUT => "/accounts/$acct_b->{org}/rate_limit",
    { requests => 2 });
is($p->{status}, 200, 'PUT rate_limit {requests: 2}') or diag $p->{body};
is($p->{json}{requests}, 2, '... 2');
is($p->{json}{source}, 'account', '... the account\'s own');
is_deeply($t->admin(GET => "/accounts/$acct_b->{org}/rate_limit")->{json},
    $p->{json}, 'GET shows it');
fresh_window($acct_b->{key});
my @o = map { $t->req(GET => '/v1/balance', auth($acct_b->{key})) } 1 .. 3;
is_deeply([map { $_->{status} } @o], [200, 200, 429],
    'the override applies: 2 in the window');
is($o[0]{headers}{'x-ratelimit-limit'}, 2, 'X-RateLimit-Limit: 2');
is($t->req(GET => '/v1/balance', auth($key))->{headers}{'x-ratelimit-limit'},
    5, 'other accounts keep the default');

my $raise = $t->admin(PUT => "/accounts/$acct_b->{org}/rate_limit",
    { requests => 1000 });
is($raise->{json}{requests}, 1000, 'raised to 1000');
my $now = $t->req(GET => '/v1/balance', auth($acct_b->{key}));
is($now->{status}, 200, 'a raised limit applies within the window');
is($now->{headers}{'x-ratelimit-limit'}, 1000, '... Limit 1000');
my $d = $t->admin(DELETE => "/accounts/$acct_b->{org}/rate_limit");
is($d->{status}, 200, 'DELETE rate_limit');
is($d->{json}{source}, 'default', '... back to the default');
is($d->{json}{requests}, 5, '... 5');
is($t->req(GET => '/v1/balance', auth($acct_b->{key}))
    ->{headers}{'x-ratelimit-limit'}, 5, 'the default applies again');

is_error($t->admin(PUT => "/accounts/$acct_b->{org}/rate_limit",
    { requests => 0 }), 400, 'INPUT_VALIDATION_ERROR', 'requests 0: 400');
is_error($t->admin(PUT => "/accounts/$acct_b->{org}/rate_limit",
    { requests => '10' }), 400, 'INPUT_VALIDATION_ERROR',
    'requests as a string: 400');
is_error($t->admin(PUT => "/accounts/$acct_b->{org}/rate_limit", {}), 400,
    'INPUT_VALIDATION_ERROR', 'no requests: 400');
is_error($t->admin(PUT => '/accounts/org_' . ('0' x 24) . '/rate_limit',
    { requests => 3 }), 404, 'NOT_FOUND', 'an unknown account: 404');
is_error($t->admin(GET => '/accounts/org_' . ('0' x 24) . '/rate_limit'),
    404, 'NOT_FOUND', 'GET of an unknown account: 404');
my $pm = $t->admin(POST => "/accounts/$acct_b->{org}/rate_limit",
    { requests => 3 });
is_error($pm, 405, 'METHOD_NOT_ALLOWED', 'POST: 405');
is($pm->{headers}{allow}, 'GET, HEAD, PUT, DELETE', '... Allow');

# ---- a burst over both workers is exact
my $c = $t->new_account(credit => '10.00');
is($t->admin(PUT => "/accounts/$c->{org}/rate_limit", { requests => 12 })
    ->{status}, 200, 'account c: 12 per window');
fresh_window($c->{key});
my @before = $t->access_log_lines;
my @burst = $t->parallel(12, sub {
    my @s;
    for (1 .. 3) {
        my $r = $t->req(GET => '/v1/balance', auth($c->{key}));
        push @s, [$r->{status}, $r->{headers}{'x-ratelimit-reset'} // 0];
    }
    return \@s;
});
my %win;    # Reset => {status => answers}
my $answers = 0;
for my $s (map { @$_ } grep { ref $_ eq 'ARRAY' } @burst) {
    $win{ $s->[1] }{ $s->[0] }++;
    $answers++;
}
is($answers, 36, '36 answers');
my ($first) = sort { $a <=> $b } keys %win;
ok($win{$first}{429}, 'the burst went past the limit in its window')
    or diag explain \%win;
for my $w (sort { $a <=> $b } keys %win) {
    my ($ok, $no) = ($win{$w}{200} // 0, $win{$w}{429} // 0);
    ok(keys %{ $win{$w} } == ($ok ? 1 : 0) + ($no ? 1 : 0) && $ok <= 12
        && (!$no || $ok == 12),
        "window ending at $w: $ok accepted, $no refused: exactly 12 "
        . "when any was refused") or diag explain \%win;
}
my @all = $t->access_log_lines;
my %pids = map { (split ' ', $_)[0] => 1 }
    grep { m{ GET /v1/balance } } @all[@before .. $#all];
cmp_ok(scalar keys %pids, '>=', 2, 'both workers served the burst');

$t->stop;
$t->check_log;

# ---- off, and configuration refusals
my $off = MR::Test->new;
$off->start;
my $oa = $off->new_account(credit => '1.00');
my $or = $off->req(GET => '/v1/balance', auth($oa->{key}));
is($or->{status}, 200, 'without modelroute_rate_limit');
ok(!defined $or->{headers}{'x-ratelimit-limit'}, '... no X-RateLimit');
is($off->admin(GET => "/accounts/$oa->{org}/rate_limit")->{json}{enabled},
    JSON::PP::false, '... the admin API says it is off');
$off->stop;
$off->check_log;

for my $bad ('0 1s', '5 0s', '5 500ms', 'x 1s', '5 2d', '5',
    '5 1s zone=1k', '5 1s size=1m')
{
    my $n = MR::Test->new(extra_http => "modelroute_rate_limit $bad;\n");
    my ($code, $out) = $n->test_config;
    isnt($code, 0, "nginx -t refuses modelroute_rate_limit $bad");
    like($out, qr/modelroute_rate_limit/, '... naming the directive');
}
done_testing;
